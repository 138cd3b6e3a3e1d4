"""A real-accuracy check for the quantizer that needs no download: tiny zoo models trained on scikit-learn's digits.

scikit-learn ships the 1 797 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten Digits"
set inside the package. They are upsampled to 32x32 RGB PNGs (calibration images in one folder, the fixed
test split as an ImageFolder), a small S2-MLPv2 and a small ConvNeXt are trained on them in a few seconds
(seeded, CPU), exported with ``export_model``, and then quantized like any other run directory: the INT8
top-1 accuracy on the test images must stay within a point of FP32. Used by the test suite and by
``benchmarks/quantize_digits.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..export import ExportOptions, ExportResult, export_model
from ..model import LoadedModel
from ..models import create_model
from ..preprocess import Recipe

SIZE = 32
#: The digits are already 32x32 after upsampling: no resize, no crop, [0, 1] -> [-1, 1].
RECIPE = Recipe((SIZE, SIZE), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=1.0, interpolation="bilinear")

#: name -> (zoo variant, create_model overrides): ~32 px, 10 classes, a few blocks.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "s2mlpv2": ("s2mlpv2_small", {"img_size": SIZE, "num_classes": 10, "patch_sizes": (8, 2), "dims": (32, 64),
                                  "depths": (2, 2)}),
    "convnext": ("convnext_tiny", {"img_size": SIZE, "num_classes": 10, "dims": (16, 32, 48, 64),
                                   "depths": (1, 1, 1, 1), "ls_init_value": 1.0}),
    # 16 tokens of 8x8 px: 89% in 20 epochs (4x4 px patches need 40 epochs for 91%)
    "deit": ("deit_small_patch16_224", {"img_size": SIZE, "num_classes": 10, "patch_size": 8, "embed_dim": 96,
                                        "depth": 4, "num_heads": 4}),
}


@dataclass
class DigitsSplit:
    """The PNGs on disk and the same pixels as tensors (identical to what the recipe makes of the PNGs)."""

    train_dir: Path
    test_dir: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _to_tensor(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def write_digits(root: Path, test_fraction: float = 0.3, seed: int = 0) -> DigitsSplit:
    """Upsample the digits to 32x32 RGB PNGs: ``root/train/*.png`` and ``root/test/<digit>/*.png``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits check needs scikit-learn: pip install 'vmlp-deploy[test]'") from None
    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0) + 0.5, 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(d, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                               .convert("RGB")) for d in small])
    order = np.random.default_rng(seed).permutation(len(big))
    n_test = round(len(big) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in train:
        Image.fromarray(big[i]).save(root / "train" / f"{i:04d}.png")
    for i in test:
        folder = root / "test" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big[i]).save(folder / f"{i:04d}.png")
    return DigitsSplit(root / "train", root / "test", _to_tensor(big[train]), digits.target[train],
                       _to_tensor(big[test]), digits.target[test])


def train(config: str, split: DigitsSplit, epochs: int = 20, seed: int = 0, threads: int = 2) -> LoadedModel:
    """AdamW with a one-cycle schedule, batch 128, no augmentation: seconds on two cores."""
    name, overrides = CONFIGS[config]
    torch.manual_seed(seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = create_model(name, **overrides).train()
        x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train).long()
        steps_per_epoch = len(x) // 128
        opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for s in range(steps_per_epoch):
                idx = perm[s * 128 : (s + 1) * 128]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(previous)
    model.eval()
    return LoadedModel(model, name, model.vmlp_cfg, RECIPE, random_weights=False, checkpoint=None)


def accuracy(lm: LoadedModel, split: DigitsSplit) -> float:
    with torch.no_grad():
        pred = lm.module(torch.from_numpy(split.x_test)).argmax(1).numpy()
    return float((pred == split.y_test).mean())


def export(lm: LoadedModel, out: Path) -> ExportResult:
    return export_model(lm, out, ExportOptions())
