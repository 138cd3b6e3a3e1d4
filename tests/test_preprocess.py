"""Preprocessing recipe and the embedded calibration set."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from vmlp_deploy.embedded_images import embedded_batch, embedded_images
from vmlp_deploy.errors import UserError
from vmlp_deploy.preprocess import Recipe, load_image, to_rgb, transform

RECIPE = Recipe((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_pct=0.8, interpolation="bilinear")


def test_resize_shorter_side_then_center_crop() -> None:
    """A 80x40 image: shorter side -> 40 (=32/0.8) is a no-op, the crop keeps the centre 32x32."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 40:] = 255
    out = transform(Image.fromarray(arr), RECIPE)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    left, right = out[:, :, :15], out[:, :, 17:]
    assert np.allclose(left, (0 - 0.5) / 0.25) and np.allclose(right, (1 - 0.5) / 0.25)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    elif mode == "RGBA":
        img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    else:
        img = Image.new(mode, (8, 8))
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    if mode in ("I;16", "RGBA"):
        assert np.asarray(rgb).min() == 255  # full-scale 16-bit and transparent-on-white are white


@pytest.mark.parametrize(("scale", "overshoot"), [(1.0, 0.0), (1.0, 0.05), (255.0, 0.0)])
def test_float_tiff_keeps_its_range(tmp_path, scale: float, overshoot: float) -> None:
    """A float TIFF in 0..1 (or 0..255) keeps its grey levels; PIL's own conversion would clip 0..1 to black. A
    pixel a little above 1.0 (resampling overshoot) is clipped, not taken for a 0..255 image."""
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8) * scale
    ramp[-1, -1] += overshoot
    path = tmp_path / "ramp.tif"
    Image.fromarray(ramp, mode="F").save(path)
    rgb = np.asarray(to_rgb(load_image(path)), dtype=np.float64)
    assert rgb.shape == (8, 8, 3)
    assert np.abs(rgb[..., 0] - np.clip(ramp / scale, 0, 1) * 255.0).max() <= 0.5


def test_float_image_with_nan_names_the_file(tmp_path) -> None:
    arr = np.zeros((8, 8), np.float32)
    arr[3, 3] = np.nan
    path = tmp_path / "bad.tif"
    Image.fromarray(arr, mode="F").save(path)
    with pytest.raises(UserError, match=r"bad\.tif has NaN"):
        load_image(path)


def test_bad_recipe_values_are_user_errors() -> None:
    with pytest.raises(UserError, match="interpolation"):
        Recipe((8, 8), (0, 0, 0), (1, 1, 1), interpolation="cubic")
    with pytest.raises(UserError, match="crop_pct"):
        Recipe((8, 8), (0, 0, 0), (1, 1, 1), crop_pct=1.5)


def test_recipe_roundtrips_through_json() -> None:
    assert Recipe.from_dict(json.loads(json.dumps(RECIPE.to_dict()))) == RECIPE


def test_embedded_set_has_provenance_for_every_file() -> None:
    root = resources.files("vmlp_deploy.calibration_data")
    provenance = {e["file"].split("/")[-1]: e for e in json.loads((root / "provenance.json").read_text())}
    readme = (root / "README.md").read_text()
    files = embedded_images()
    assert len(files) >= 6
    for path in files:
        entry = provenance[path.name]
        assert entry["licence"] and entry["source"]
        assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(entry["sha256"][:16])
        assert path.name in readme
        with Image.open(path) as img:
            assert max(img.size) <= 320


def test_embedded_batch_is_normalised_photographs() -> None:
    batch, names = embedded_batch(Recipe((64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert batch.shape == (len(names), 3, 64, 64)
    assert -2.5 < batch.mean() < 2.5 and batch.std() > 0.3
