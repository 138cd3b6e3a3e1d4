"""Calibration and evaluation data: one protocol (NCHW float32 batches) whatever the source.

Sources: a directory of images (searched recursively; grayscale, RGBA and 16-bit become RGB) preprocessed
with the model's own recipe, ``.npy``/``.npz`` tensors that are already preprocessed, or, with no data given,
deterministic crops and flips of the photographs embedded in ``calibration/``. A seeded shuffle decides which
samples calibrate and which are held out to measure fidelity; held-out samples never calibrate.

:class:`BatchReader` is ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next``) and a plain iterable
of batches (what ``nncf.Dataset`` takes), so every backend reads the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..embedded_images import embedded_images
from ..errors import UserError
from ..preprocess import IMAGE_SUFFIXES, Recipe, load_image, transform
from ..progress import Progress
from ._bar import bar

TENSOR_SUFFIXES = (".npy", ".npz")
#: Embedded photographs held out from calibration to measure fidelity on (the rest are cropped to calibrate).
EMBEDDED_HELD_OUT = 2


@dataclass
class DataStats:
    """What went into calibration, for the manifest and the report."""

    source: str
    files_found: int = 0
    files_used: int = 0
    images: int = 0
    tensors: int = 0
    skipped_unreadable: list[str] = field(default_factory=list)
    skipped_too_small: list[str] = field(default_factory=list)
    calibration_samples: int = 0
    held_out_samples: int = 0
    seed: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files_found": self.files_found,
            "files_used": self.files_used,
            "images": self.images,
            "tensors": self.tensors,
            "skipped_unreadable": len(self.skipped_unreadable),
            "skipped_unreadable_files": self.skipped_unreadable[:20],
            "skipped_too_small": len(self.skipped_too_small),
            "skipped_too_small_files": self.skipped_too_small[:20],
            "calibration_samples": self.calibration_samples,
            "held_out_samples": self.held_out_samples,
            "seed": self.seed,
            "note": self.note,
        }


@dataclass
class SampleSet:
    """Preprocessed samples, (N, C, H, W) float32 each: calibration and held-out never overlap."""

    calibration: np.ndarray
    held_out: np.ndarray
    stats: DataStats


def fill_batch(x: np.ndarray, batch: int | None) -> np.ndarray:
    """``x`` padded to a whole number of fixed batches by repeating its last sample (unchanged without one)."""
    short = -len(x) % (batch or 1)
    return np.concatenate([x, np.repeat(x[-1:], short, axis=0)]) if short else x


def whole_batches(samples: np.ndarray, batch: int | None, at_least: int = 0) -> np.ndarray:
    """The first ``max(at_least, batch)`` samples, the last batch filled: a fixed batch size would otherwise drop
    a short tail (``BatchReader``), or leave nothing to run at all."""
    return fill_batch(samples[: max(at_least, batch or 1)], batch)


class BatchReader:
    """NCHW batches of ``samples`` under ``input_name``: ONNX Runtime's calibration reader and an iterable.

    A fixed batch size > 1 groups samples and drops the incomplete last group; ``None`` (a symbolic batch
    dimension) feeds one sample at a time, which is also how NNCF counts its ``subset_size``.
    """

    def __init__(self, samples: np.ndarray, input_name: str, batch: int | None = None) -> None:
        self.samples = samples
        self.input_name = input_name
        self.batch = batch or 1
        self._next = 0
        self._end = len(self)

    def __len__(self) -> int:
        return len(self.samples) // self.batch

    def batches(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.samples[i * self.batch : (i + 1) * self.batch]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches()

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        i = self._next
        self._next += 1
        return {self.input_name: self.samples[i * self.batch : (i + 1) * self.batch]}


def require_data_root(root: Path) -> None:
    """``--calibration-data`` names something that exists (checked with the options, before any work)."""
    if not root.exists():
        raise UserError(f"calibration data {root} does not exist: pass a directory of images or .npy/.npz files")


def _visible(path: Path, root: Path) -> bool:
    """Not hidden below ``root`` (``.ipynb_checkpoints/``, macOS ``._*`` copies): never data of the user's."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _candidate_files(root: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES + TENSOR_SUFFIXES
    require_data_root(root)
    if root.is_file():
        if root.suffix.lower() not in suffixes:
            raise UserError(f"{root} is neither an image nor a .npy/.npz tensor file")
        return [root]
    if not root.is_dir():
        raise UserError(f"calibration data {root} is neither a directory nor a file: pass a directory of images "
                        "or .npy/.npz files")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and _visible(p, root))


def _tensor_samples(path: Path, shape: tuple[int, ...] | None) -> list[np.ndarray]:
    """Samples in one .npy/.npz file: (C, H, W) is one sample, (N, C, H, W) is N. Raises ValueError if unreadable."""
    loaded = np.load(path, allow_pickle=False)  # by content, not by name: a .npz may hold one .npy and back
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    else:
        with loaded as z:
            arrays = [z[k] for k in z.files]
    out: list[np.ndarray] = []
    for a in arrays:
        stored = tuple(a.shape)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or (shape is not None and tuple(a.shape[1:]) != shape):
            want = "(C, H, W) or (N, C, H, W)" if shape is None else f"{shape} or (N, {', '.join(map(str, shape))})"
            raise UserError(f"{path} holds a tensor of shape {stored}; the model takes {want}: "
                            "save preprocessed NCHW float tensors of the model's input size")
        if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            raise UserError(f"{path} holds {a.dtype} tensors, which look like raw pixels: .npy/.npz calibration data "
                            "is fed to the model as it is, so save it preprocessed (normalised) as float32, or pass "
                            "the images themselves")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{path.name} has dtype {a.dtype}: save preprocessed float32 tensors")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise UserError(f"{path} holds NaN or infinite values: fix the tensors")
        out.extend(a)
    return out


def _no_recipe(source: str) -> UserError:
    return UserError(f"{source} needs preprocessing, and the model carries no recipe: pass --mean R G B --std R G B "
                     "(and --resize, --interpolation) or --recipe FILE")


def _fits(img: Image.Image, recipe: Recipe) -> bool:
    h, w = recipe.input_size
    return img.height >= h and img.width >= w


def load_directory(
    root: Path,
    recipe: Recipe | None,
    sample_shape: tuple[int, ...] | None,
    num_samples: int,
    holdout: int,
    seed: int,
    allow_upscale: bool,
    progress: Progress,
) -> SampleSet:
    """Read up to ``num_samples + holdout`` samples from ``root`` in a seeded random order and split them."""
    files = _candidate_files(root)
    stats = DataStats(source=f"directory {root}" if root.is_dir() else f"file {root}", files_found=len(files), seed=seed)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or .npy/.npz tensors found in {root}: "
                        "point --calibration-data at a directory of your own images")
    order = np.random.default_rng(seed).permutation(len(files))
    wanted = num_samples + holdout
    samples: list[np.ndarray] = []
    first_problem = ""
    with bar(progress, f"Reading calibration data from {root}", min(wanted, len(files))) as advance:
        for idx in order:
            if len(samples) >= wanted:
                break
            path = files[idx]
            if path.suffix.lower() in TENSOR_SUFFIXES:
                try:
                    got = _tensor_samples(path, sample_shape)
                except UserError:
                    raise
                except Exception as e:  # numpy's decoders raise zipfile, zlib, tokenize, ... errors: all unreadable
                    stats.skipped_unreadable.append(str(path))
                    first_problem = first_problem or str(e).splitlines()[0][:200]
                    continue
                samples.extend(got)
                stats.tensors += len(got)
                stats.files_used += 1
                advance(1)
                continue
            if recipe is None:
                raise _no_recipe(f"image {path}")
            try:
                img = load_image(path)
            except UserError as e:
                stats.skipped_unreadable.append(str(path))
                first_problem = first_problem or str(e)
                continue
            if not allow_upscale and not _fits(img, recipe):
                stats.skipped_too_small.append(str(path))
                continue
            samples.append(transform(img, recipe))
            stats.images += 1
            stats.files_used += 1
            advance(1)
    if not samples:
        if stats.skipped_too_small:
            h, w = recipe.input_size if recipe else (0, 0)
            raise UserError(f"all {len(stats.skipped_too_small)} readable images in {root} are smaller than the "
                            f"model's {h}x{w} crop: use larger images, or pass --allow-upscale to enlarge them")
        raise UserError(f"none of the {len(files)} files in {root} could be read as an image or tensor "
                        f"(first: {first_problem}): check the files (they may be corrupt or not images)")
    if len(samples) < 2:
        raise UserError(f"{root} gave only 1 usable sample: calibration and the held-out fidelity check need at "
                        "least 2 (a few hundred is better)")
    n_hold = holdout if len(samples) >= wanted else max(1, min(holdout, len(samples) // 5))
    shapes = sorted({tuple(x.shape) for x in samples[:wanted]})
    if len(shapes) > 1:
        raise UserError(f"the tensors in {root} have different sample shapes ({', '.join(map(str, shapes[:3]))}): "
                        "give every .npy/.npz the model's (C, H, W)")
    stacked = np.stack(samples[:wanted]).astype(np.float32)
    held_out, calibration = stacked[:n_hold], stacked[n_hold:]
    stats.calibration_samples, stats.held_out_samples = len(calibration), len(held_out)
    if len(calibration) < num_samples or len(held_out) < holdout:
        stats.note = (f"only {len(samples)} samples in {root}: {len(calibration)} calibrate (asked for {num_samples}) "
                      f"and {len(held_out)} are held out to measure fidelity (asked for {holdout})")
    return SampleSet(calibration, held_out, stats)


def _random_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Inception-style crop: 30-100 % of the area, aspect ratio 3/4..4/3, then a coin-flip mirror."""
    area = img.width * img.height
    for _ in range(10):
        target = area * rng.uniform(0.3, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= img.width and 0 < h <= img.height:
            left = int(rng.integers(0, img.width - w + 1))
            top = int(rng.integers(0, img.height - h + 1))
            img = img.crop((left, top, left + w, top + h))
            break
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def load_embedded(recipe: Recipe | None, num_samples: int, holdout: int, seed: int, progress: Progress) -> SampleSet:
    """Crops and flips of the embedded photographs: calibration from six, held-out from the other two."""
    if recipe is None:
        raise _no_recipe("the embedded calibration set (no --calibration-data given)")
    paths = embedded_images()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    held_paths = [paths[i] for i in order[:EMBEDDED_HELD_OUT]]
    calib_paths = [paths[i] for i in order[EMBEDDED_HELD_OUT:]]
    images = {p: load_image(p) for p in paths}
    stats = DataStats(source="embedded photographs (calibration/)", files_found=len(paths), files_used=len(paths),
                      images=len(paths), seed=seed,
                      note=f"crops/flips of {len(calib_paths)} photographs calibrate; crops of "
                           f"{', '.join(p.name for p in held_paths)} are held out")

    def crops(pool: list[Path], n: int, advance: Any) -> np.ndarray:
        out = []
        for _ in range(n):
            out.append(transform(_random_crop(images[pool[int(rng.integers(len(pool)))]], rng), recipe))
            advance(1)
        return np.stack(out).astype(np.float32)

    with bar(progress, "Cropping the embedded calibration photographs", num_samples + holdout) as advance:
        calibration = crops(calib_paths, num_samples, advance)
        held_out = crops(held_paths, holdout, advance)
    stats.calibration_samples, stats.held_out_samples = len(calibration), len(held_out)
    return SampleSet(calibration, held_out, stats)


@dataclass
class ImageFolder:
    """An evaluation set in ImageFolder layout: one sub-directory per class, classes sorted by name."""

    root: Path
    classes: list[str]
    files: list[tuple[Path, int]]

    @staticmethod
    def require_root(root: Path) -> None:
        """``--eval-data`` is a directory (checked with the options, before any work)."""
        if not root.is_dir():
            raise UserError(f"--eval-data {root} is not a directory: pass an ImageFolder (one folder per class)")

    @classmethod
    def open(cls, root: Path, num_classes: int | None) -> ImageFolder:
        cls.require_root(root)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"--eval-data {root} has no class folders: use one sub-directory of images per class")
        if num_classes is not None and len(classes) > num_classes:
            raise UserError(f"--eval-data {root} has {len(classes)} class folders but the model predicts "
                            f"{num_classes} classes")
        files = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, root)]
        if not files:
            raise UserError(f"--eval-data {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return cls(root, classes, files)

    def batches(self, recipe: Recipe, batch: int, skipped: list[str], too_small: list[str] | None = None,
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Preprocessed (images, labels) in chunks of ``batch``; unreadable files go to ``skipped``, and images
        smaller than the crop to ``too_small`` when it is given (else they are enlarged)."""
        xs: list[np.ndarray] = []
        ys: list[int] = []
        for path, label in self.files:
            try:
                img = load_image(path)
            except UserError:
                skipped.append(str(path))
                continue
            if too_small is not None and not _fits(img, recipe):
                too_small.append(str(path))
                continue
            xs.append(transform(img, recipe))
            ys.append(label)
            if len(xs) == batch:
                yield np.stack(xs), np.asarray(ys)
                xs, ys = [], []
        if xs:
            yield np.stack(xs), np.asarray(ys)
