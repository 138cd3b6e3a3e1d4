"""PoolFormer v1 (Yu et al., "MetaFormer is Actually What You Need for Vision", arXiv 2111.11418).

A four-stage MetaFormer whose token mixer is ``AvgPool3x3(x) - x`` with padding excluded from the average, so the
border pixels average only their in-bounds neighbours. All norms are GroupNorm with one group (statistics over
C, H and W together, per-channel affine) and the channel MLP is a pair of 1x1 convolutions.

Module and parameter names follow timm's ``metaformer.py`` so ``poolformer_*.sail_in1k`` state_dicts load as is;
``checkpoint_filter`` maps the official sail-sg/poolformer layout. The head follows timm too (global average pool,
then LayerNorm over channels, then Linear); the official code applies its GroupNorm to the full map before
pooling instead, and timm's evaluation of the converted weights reproduces the published top-1 (77.24 for S12).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from ._layers import ConvMlp, GroupNorm1, PooledClassifierHead, StagedConvClassifier, init_weights
from ._registry import DataCfg, Family, Paper, StateDict, VariantSpec, register_family


class Pooling(nn.Module):
    """Token mixer: local average minus the input (the block adds the input back through the residual)."""

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x) - x


class Scale(nn.Module):
    """Per-channel LayerScale on an NCHW map; the vector is stored as ``scale`` of shape [C] like timm's."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(-1, 1, 1)


class PoolFormerBlock(nn.Module):
    """x + s1 * Pool(GN(x)), then x + s2 * MLP(GN(x))."""

    def __init__(self, dim: int, mlp_ratio: float, pool_size: int, layer_scale_init_value: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = Pooling(pool_size)
        self.layer_scale1 = Scale(dim, layer_scale_init_value)
        self.norm2 = GroupNorm1(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = Scale(dim, layer_scale_init_value)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.layer_scale1(self.token_mixer(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Stem(nn.Module):
    """Overlapping 7x7 stride-4 patch embedding (padding 2), no norm."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Downsampling(nn.Module):
    """Overlapping 3x3 stride-2 convolution (padding 1) between stages, no norm."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class PoolFormerStage(nn.Module):
    """Optional downsampling (every stage but the first), then the stage's blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        downsample: bool,
        mlp_ratio: float,
        pool_size: int,
        layer_scale_init_value: float,
    ) -> None:
        super().__init__()
        self.downsample = Downsampling(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[PoolFormerBlock(dim, mlp_ratio, pool_size, layer_scale_init_value) for _ in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class PoolFormer(StagedConvClassifier):
    """PoolFormer v1. Fully convolutional, so any input side >= 3 works; ``img_size`` only records the recipe."""

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        dims: tuple[int, ...] = (64, 128, 320, 512),
        mlp_ratio: float = 4.0,
        pool_size: int = 3,
        layer_scale_init_value: float = 1e-5,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.stem = Stem(in_chans, dims[0])
        block_args = (mlp_ratio, pool_size, layer_scale_init_value)
        self.stages = nn.Sequential(
            *[PoolFormerStage(dims[max(i - 1, 0)], dims[i], depths[i], i > 0, *block_args) for i in range(len(depths))]
        )
        self.head = PooledClassifierHead(dims[-1], num_classes)
        init_weights(self)


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Map the official sail-sg/poolformer key layout onto ours (timm's); our own keys pass unchanged.

    ====================================================  ==============================================
    official (sail-sg/poolformer)                          ours / timm
    ====================================================  ==============================================
    ``patch_embed.proj.*``                                 ``stem.conv.*``
    ``network.{2i}.{j}.*`` (blocks of stage i)             ``stages.{i}.blocks.{j}.*``
    ``network.{2i-1}.proj.*`` (i = 1, 2, 3)                ``stages.{i}.downsample.conv.*``
    ``...layer_scale_1`` / ``...layer_scale_2``  [C]       ``...layer_scale1.scale`` / ``...layer_scale2.scale``
    ``norm.*``                                             ``head.norm.*``
    ``head.weight`` / ``head.bias``                        ``head.fc.weight`` / ``head.fc.bias``
    ====================================================  ==============================================

    Shapes are identical in both layouts (the MLP is stored as [out, in, 1, 1] convs, layer scales as [C]).
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        key = key.replace("patch_embed.proj.", "stem.conv.")
        key = re.sub(r"layer_scale_([12])$", r"layer_scale\1.scale", key)
        key = re.sub(r"^network\.(\d+)\.proj\.", lambda m: f"stages.{(int(m[1]) + 1) // 2}.downsample.conv.", key)
        key = re.sub(r"^network\.(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}.", key)
        key = re.sub(r"^norm\.", "head.norm.", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out


FAMILY = Family(
    name="poolformer",
    builder=PoolFormer,
    default="poolformer_s12",  # what `vmlp-deploy export --model poolformer` builds
    tiny={"depths": (2, 1, 2, 1), "dims": (16, 24, 32, 48), "img_size": 32, "num_classes": 10},
    input_divisor=1,
    min_input_size=3,
    checkpoint_filter=checkpoint_filter,
)

_SMALL = {"dims": (64, 128, 320, 512)}
_MEDIUM = {"dims": (96, 192, 384, 768)}
_SOURCE = "sail-sg/poolformer README (arXiv 2111.11418); fvcore MACs"
# The crop_pct of timm's sail_in1k default_cfgs: 0.9 for the S models, 0.95 for the M models.
_DATA_SMALL = DataCfg(crop_pct=0.9, interpolation="bicubic")
_DATA_MEDIUM = DataCfg(crop_pct=0.95, interpolation="bicubic")

VARIANTS: dict[str, VariantSpec] = {
    "poolformer_s12": VariantSpec(
        arch={**_SMALL, "depths": (2, 2, 6, 2), "layer_scale_init_value": 1e-5},
        paper=Paper(params_m=12, macs_g=1.8, top1=77.2, source=_SOURCE),
        data=_DATA_SMALL,
        timm_name="poolformer_s12.sail_in1k",
    ),
    "poolformer_s24": VariantSpec(
        arch={**_SMALL, "depths": (4, 4, 12, 4), "layer_scale_init_value": 1e-5},
        paper=Paper(params_m=21, macs_g=3.4, top1=80.3, source=_SOURCE),
        data=_DATA_SMALL,
        timm_name="poolformer_s24.sail_in1k",
    ),
    "poolformer_s36": VariantSpec(
        arch={**_SMALL, "depths": (6, 6, 18, 6), "layer_scale_init_value": 1e-6},
        paper=Paper(params_m=31, macs_g=5.0, top1=81.4, source=_SOURCE),
        data=_DATA_SMALL,
        timm_name="poolformer_s36.sail_in1k",
    ),
    "poolformer_m36": VariantSpec(
        arch={**_MEDIUM, "depths": (6, 6, 18, 6), "layer_scale_init_value": 1e-6},
        paper=Paper(params_m=56, macs_g=8.8, top1=82.1, source=_SOURCE),
        data=_DATA_MEDIUM,
        timm_name="poolformer_m36.sail_in1k",
    ),
    "poolformer_m48": VariantSpec(
        arch={**_MEDIUM, "depths": (8, 8, 24, 8), "layer_scale_init_value": 1e-6},
        paper=Paper(params_m=73, macs_g=11.6, top1=82.5, source=_SOURCE),
        data=_DATA_MEDIUM,
        timm_name="poolformer_m48.sail_in1k",
    ),
}

register_family(FAMILY, VARIANTS)
