"""Fuzz what `quantize` reads from outside (hypothesis, bounded budget): calibration folders of random files
and names, and random JSON/TOML preprocessing recipes.

Property: the command ends in success (exit 0) or one clean `error:` line (exit 2), never an internal error or a
traceback, and leaves no half-written output; each example is bounded in time by hypothesis's deadline.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vmlp_deploy import cli
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model

FAST = ["--backend", "cpu", "--num-samples", "8", "--holdout", "2", "--layout", "as-given", "--no-gate"]
FUZZ = settings(max_examples=15, deadline=30_000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "s2"
    export_model(load_model("s2mlpv2_small", tiny=True), out, ExportOptions())
    return out


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    _, err = capsys.readouterr()
    return code, err


def _image_bytes(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "CMYK", "I;16", "P", "1"]))
    w, h = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "WEBP"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    data = b""
    for candidate, img in ((fmt, image), ("TIFF", image), ("PNG", image.convert("RGB"))):
        buf = io.BytesIO()
        try:  # not every format stores every mode: TIFF stores most, RGB PNG always works
            img.save(buf, format=candidate)
        except (OSError, ValueError, KeyError):
            continue
        data = buf.getvalue()
        break
    if draw(st.booleans()) and len(data) > 8:
        data = data[: draw(st.integers(1, len(data) - 1))]  # truncated
    return data


@st.composite
def folders(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """(relative path, content) pairs: images of any mode/size/format, truncated ones, random bytes, empty files,
    arrays, odd names and extensions, nested folders."""
    names = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12)
    files = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["image", "bytes", "empty", "npy"]))
        ext = draw(st.sampled_from([".png", ".jpg", ".jpeg", ".bmp", ".tif", ".webp", ".npy", ".npz", ".txt", ""]))
        if kind == "image":
            content = _image_bytes(draw)
        elif kind == "npy":
            buf = io.BytesIO()
            shape = draw(st.sampled_from([(3, 56, 56), (2, 3, 56, 56), (56, 56), (1,), (3, 57, 56)]))
            dtype = draw(st.sampled_from(["float32", "float64", "int8", "uint8", "bool"]))
            np.save(buf, np.zeros(shape, dtype=dtype))
            content = buf.getvalue()
        else:
            content = b"" if kind == "empty" else draw(st.binary(max_size=64))
        sub = draw(st.sampled_from(["", "a/", "a/b/"]))
        name = draw(names).replace(".", "_") or "f"
        if name in (".", ".."):
            name = "f"
        files.append((f"{sub}{name}{len(files)}{ext}", content))
    return files


@FUZZ
@given(files=folders())
def test_random_calibration_folders_succeed_or_fail_cleanly(files: list[tuple[str, bytes]], tiny_run: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "calib"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for rel, content in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    out = tmp_path / "q"
    shutil.rmtree(out, ignore_errors=True)
    code, err = _run(["quantize", str(tiny_run), "-o", str(out), "--calibration-data", str(root), *FAST], capsys)
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        assert err.count("error:") == 1 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 100_000) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
_keys = st.sampled_from(["input_size", "mean", "std", "resize", "crop_pct", "interpolation", "extra"])


@FUZZ
@given(recipe=st.dictionaries(_keys, _values | st.lists(st.floats(0.01, 2.0), min_size=3, max_size=3)
                              | st.lists(st.integers(1, 300), min_size=2, max_size=2), max_size=6),
       as_toml=st.booleans(), garbage=st.booleans())
def test_random_recipes_succeed_or_fail_cleanly(recipe: dict, as_toml: bool, garbage: bool, tiny_run: Path,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if as_toml:
        lines = [f"{k} = {json.dumps(v)}" for k, v in recipe.items()]  # JSON literals are mostly valid TOML
        text = "\n".join(lines)
        path = tmp_path / "recipe.toml"
    else:
        text = json.dumps(recipe)
        path = tmp_path / "recipe.json"
    if garbage:
        text = text[: len(text) // 2] + "}{["
    path.write_text(text)
    out = tmp_path / "q"
    shutil.rmtree(out, ignore_errors=True)
    code, err = _run(["quantize", str(tiny_run / "model.onnx"), "-o", str(out), "--recipe", str(path), *FAST], capsys)
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        assert err.count("error:") == 1 and not out.exists()
