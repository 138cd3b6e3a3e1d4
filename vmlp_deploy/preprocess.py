"""Image preprocessing with a model's own recipe, identical for export validation and INT8 calibration.

Recipe semantics follow timm's eval transform: resize the shorter side to floor(size / crop_pct) (or to the
exact scaled (H, W) when the crop is not square), center-crop to the input size, scale to [0, 1], normalise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Recipe:
    """Everything needed to turn a photograph into the model's input tensor (stored in every manifest)."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise UserError(
                f"unknown interpolation {self.interpolation!r}: use one of {', '.join(_INTERPOLATION)}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise UserError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def resize_to(self) -> tuple[int, int]:
        h, w = self.input_size
        return (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize_shorter_to"] = self.resize_to[0] if self.resize_to[0] == self.resize_to[1] else None
        d["resize_to"] = list(self.resize_to)
        d["center_crop"] = list(self.input_size)
        d["layout"] = "NCHW"
        d["channel_order"] = "RGB"
        d["scale"] = "1/255"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d.get("crop_pct", 0.875)),
            interpolation=d.get("interpolation", "bicubic"),
        )


#: The largest float pixel still read as a 0..1 image (above it, 0..255).
FLOAT_UNIT_RANGE_MAX = 2.0


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA (composited on white), 16-bit and float images all become 8-bit RGB.

    PIL's own conversion clips integer and float pixels to 0..255, which turns 16-bit scans white-ish and
    float images in 0..1 (the usual float TIFF) black; their range is read from the pixels instead. Float pixels
    up to 2.0 count as 0..1 with overshoot (resampling, highlights), clipped like any out-of-range value.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max(initial=0.0))
        peak = 1.0 if img.mode == "F" and top <= FLOAT_UNIT_RANGE_MAX else 255.0 if top <= 255 else 65535.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def transform(img: Image.Image, recipe: Recipe) -> np.ndarray:
    """PIL image -> float32 CHW array normalised with the recipe."""
    img = to_rgb(img)
    h, w = recipe.input_size
    rh, rw = recipe.resize_to
    resample = _INTERPOLATION[recipe.interpolation]
    if rh == rw:
        scale = rh / min(img.size)
        size = (max(rw, round(img.width * scale)), max(rh, round(img.height * scale)))
    else:
        size = (rw, rh)
    img = img.resize(size, resample=resample)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(recipe.mean, dtype=np.float32)) / np.asarray(recipe.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            out = img.copy()
    except Image.DecompressionBombError as e:
        raise UserError(f"image {path} is too large to decode safely ({e}): resize it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if out.mode == "F" and not np.isfinite(np.asarray(out)).all():
        raise UserError(f"image {path} has NaN or infinite pixels: save it again with finite values")
    return out
