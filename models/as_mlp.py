"""AS-MLP (Lian et al., "AS-MLP: An Axial Shifted MLP Architecture for Vision", arXiv 2107.08391, ICLR 2022).

A Swin-like four-stage NCHW network whose token mixer shifts channel groups along one axis at a time: the map is
split with ``torch.chunk`` into ``shift_size`` groups and group g is moved by ``g - shift_size // 2`` pixels,
zeros coming in at the border, once along W and once along H; each shifted map goes through its own 1x1 conv and
GELU, and the two are summed. Every norm is GroupNorm with one group, every MLP a 1x1 conv.

The official code (svip-lab/AS-MLP, ``models/as_mlp.py``) shifts with a CuPy CUDA kernel, which neither runs on a
CPU nor exports; its pure-PyTorch equivalent, left commented out in that file, is what ``AxialShift.shift`` is:
zero pad, roll each group, concatenate, narrow back. It exports as Pad + Slice + Concat, which
``shift_to_conv`` rewrites exactly into one-hot grouped convs. ``torch.chunk`` makes the groups uneven where the
channels do not divide (96 channels: 20, 20, 20, 20, 16), as in the reference.

Module and parameter names are the official ones, so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import ConvMlp, GroupNorm1, init_weights
from ._registry import DataCfg, Family, Paper, VariantSpec, register_family


class AxialShift(nn.Module):
    """conv1 -> GN -> GELU, then a W-shifted and an H-shifted branch (1x1 conv, GELU each), summed -> GN -> conv3."""

    def __init__(self, dim: int, shift_size: int, as_bias: bool = True) -> None:
        super().__init__()
        self.shift_size = shift_size
        self.pad = shift_size // 2
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=as_bias)
        self.conv2_1 = nn.Conv2d(dim, dim, 1, bias=as_bias)
        self.conv2_2 = nn.Conv2d(dim, dim, 1, bias=as_bias)
        self.conv3 = nn.Conv2d(dim, dim, 1, bias=as_bias)
        self.actn = nn.GELU()
        self.norm1 = GroupNorm1(dim)
        self.norm2 = GroupNorm1(dim)

    def shift(self, x: Tensor, dim: int) -> Tensor:
        """Group g of the channels moves by ``g - pad`` along ``dim`` (2: H, 3: W); zeros enter at the border."""
        _, _, h, w = x.shape
        p = self.pad
        x = F.pad(x, (p, p, p, p))
        groups = torch.chunk(x, self.shift_size, 1)
        x = torch.cat([torch.roll(g, s, dim) for g, s in zip(groups, range(-p, p + 1), strict=False)], 1)
        return torch.narrow(torch.narrow(x, 2, p, h), 3, p, w)

    def forward(self, x: Tensor) -> Tensor:
        x = self.actn(self.norm1(self.conv1(x)))
        x_lr = self.actn(self.conv2_1(self.shift(x, 3)))
        x_td = self.actn(self.conv2_2(self.shift(x, 2)))
        return self.conv3(self.norm2(x_lr + x_td))


class AxialShiftedBlock(nn.Module):
    """x + AxialShift(GN(x)), then x + MLP(GN(x))."""

    def __init__(self, dim: int, shift_size: int, mlp_ratio: float, as_bias: bool) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.axial_shift = AxialShift(dim, shift_size, as_bias)
        self.norm2 = GroupNorm1(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.axial_shift(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 space-to-channel in the official order (even/even, odd/even, even/odd, odd/odd), GN, 1x1 conv 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = GroupNorm1(4 * dim)
        self.reduction = nn.Conv2d(4 * dim, 2 * dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], 1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: its blocks, then PatchMerging (every stage but the last)."""

    def __init__(self, dim: int, depth: int, shift_size: int, mlp_ratio: float, as_bias: bool,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([AxialShiftedBlock(dim, shift_size, mlp_ratio, as_bias) for _ in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patch conv, then GN (``patch_norm``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = GroupNorm1(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class ASMLP(nn.Module):
    """AS-MLP. Fully convolutional; the input side must be a multiple of patch_size * 2 ** (stages - 1)."""

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        shift_size: int = 5,
        mlp_ratio: float = 4.0,
        as_bias: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.layers = nn.ModuleList([
            BasicLayer(embed_dim * 2**i, depth, shift_size, mlp_ratio, as_bias, downsample=i < len(depths) - 1)
            for i, depth in enumerate(depths)
        ])
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = GroupNorm1(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) image -> (B, C, H/32, W/32) normalised map (GN before the pool, as the official code)."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


FAMILY = Family(
    name="asmlp",
    builder=ASMLP,
    default="asmlp_tiny",  # what `vmlp-deploy export --model asmlp` builds
    aliases=("as_mlp",),
    # 20 channels: torch.chunk makes 5 groups of 4, so every shift offset is exercised at tiny size too.
    tiny={"depths": (1, 1, 2, 1), "embed_dim": 20, "img_size": 64, "num_classes": 10},
    input_divisor=32,
    min_input_size=32,
)

_SOURCE = "arXiv 2107.08391 Tab. 1 (svip-lab/AS-MLP README)"
# The official evaluation: resize to 256/224 of the crop, bicubic, center crop (config.py, data/build.py).
_DATA = DataCfg(crop_pct=0.875, interpolation="bicubic")

VARIANTS: dict[str, VariantSpec] = {
    "asmlp_tiny": VariantSpec(
        arch={"embed_dim": 96, "depths": (2, 2, 6, 2)},
        paper=Paper(params_m=28, macs_g=4.4, top1=81.3, source=_SOURCE),
        data=_DATA,
    ),
    "asmlp_small": VariantSpec(
        arch={"embed_dim": 96, "depths": (2, 2, 18, 2)},
        paper=Paper(params_m=50, macs_g=8.5, top1=83.1, source=_SOURCE),
        data=_DATA,
    ),
    "asmlp_base": VariantSpec(
        arch={"embed_dim": 128, "depths": (2, 2, 18, 2)},
        paper=Paper(params_m=88, macs_g=15.2, top1=83.3, source=_SOURCE),
        data=_DATA,
    ),
}

register_family(FAMILY, VARIANTS)
