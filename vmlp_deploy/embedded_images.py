"""The embedded calibration photographs (``calibration/`` in the repository), preprocessed on demand."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .preprocess import IMAGE_SUFFIXES, Recipe, load_image, transform


def embedded_images() -> list[Path]:
    """Paths of the shipped photographs, sorted for determinism."""
    root = resources.files("vmlp_deploy.calibration_data") / "images"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))


def embedded_batch(recipe: Recipe, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The embedded photographs as one NCHW float32 batch, with their file names."""
    paths = embedded_images()[:limit]
    return np.stack([transform(load_image(p), recipe) for p in paths]), [p.name for p in paths]
