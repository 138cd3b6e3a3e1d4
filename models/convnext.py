"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", arXiv 2201.03545), the ImageNet-1k T/S/B variants.

A four-stage convnet written as a MetaFormer: a 7x7 depthwise convolution mixes tokens (zero padding), then a
channels-last LayerNorm and a Linear MLP with LayerScale mix channels. Stochastic depth is training-only and left out.

Every LayerNorm exports as one ONNX ``LayerNormalization`` node at opset >= 17: the block's norm runs channels-last
like timm's ``conv_mlp=False`` path, and the channels-first norms (stem, downsampling) permute around
``F.layer_norm``. Module and parameter names follow timm's ``convnext.py`` so ``convnext_*.fb_in1k`` state_dicts
load as is; ``checkpoint_filter`` maps the official facebookresearch/ConvNeXt layout.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import Mlp, PooledClassifierHead, StagedConvClassifier, init_weights
from ._registry import Family, Paper, StateDict, VariantSpec, register_family


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (eps 1e-6): permute to NHWC, normalise the last dim, permute back."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LN(DWConv7x7(x))), with the norm, MLP and gamma applied channels-last."""

    def __init__(self, dim: int, mlp_ratio: float, ls_init_value: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm, then a 2x2 stride-2 conv; every stage but the first), then the blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, downsample: bool, mlp_ratio: float, ls_init_value: float
    ) -> None:
        super().__init__()
        self.downsample = (
            nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, mlp_ratio, ls_init_value) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(StagedConvClassifier):
    """ConvNeXt. Input sides should be multiples of 32 (4x4 and 2x2 non-overlapping patch convolutions)."""

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        mlp_ratio: float = 4.0,
        ls_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(
            *[
                ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i], i > 0, mlp_ratio, ls_init_value)
                for i in range(len(depths))
            ]
        )
        self.head = PooledClassifierHead(dims[-1], num_classes)
        init_weights(self)


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Map the official facebookresearch/ConvNeXt key layout onto ours (timm's); our own keys pass unchanged.

    ==============================================  ============================================
    official (facebookresearch/ConvNeXt)             ours / timm
    ==============================================  ============================================
    ``downsample_layers.0.{0,1}.*`` (conv, LN)       ``stem.{0,1}.*``
    ``downsample_layers.{i}.{0,1}.*`` (LN, conv)     ``stages.{i}.downsample.{0,1}.*``
    ``stages.{i}.{j}.dwconv.*``                      ``stages.{i}.blocks.{j}.conv_dw.*``
    ``stages.{i}.{j}.norm.*`` / ``.gamma`` [C]       ``stages.{i}.blocks.{j}.norm.*`` / ``.gamma``
    ``stages.{i}.{j}.pwconv1.*`` / ``pwconv2.*``     ``stages.{i}.blocks.{j}.mlp.fc1.*`` / ``mlp.fc2.*``
    ``norm.*``                                       ``head.norm.*``
    ``head.weight`` / ``head.bias``                  ``head.fc.weight`` / ``head.fc.bias``
    ==============================================  ============================================

    Shapes are identical in both layouts: the official pwconvs are nn.Linear like ours. A checkpoint wrapped in
    ``{"model": ...}`` is unwrapped by the checkpoint reader before this runs.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
        key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        key = key.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        key = re.sub(r"^norm\.", "head.norm.", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out


FAMILY = Family(
    name="convnext",
    builder=ConvNeXt,
    default="convnext_tiny",  # what `vmlp-deploy export --model convnext` builds
    tiny={"depths": (2, 1, 2, 1), "dims": (16, 24, 32, 48), "img_size": 32, "num_classes": 10},
    input_divisor=32,
    min_input_size=32,
    checkpoint_filter=checkpoint_filter,
)

_SOURCE = "facebookresearch/ConvNeXt README (arXiv 2201.03545); fvcore FLOPs = MACs"

VARIANTS: dict[str, VariantSpec] = {
    "convnext_tiny": VariantSpec(
        arch={"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)},
        paper=Paper(params_m=28, macs_g=4.5, top1=82.1, source=_SOURCE),
        timm_name="convnext_tiny.fb_in1k",
    ),
    "convnext_small": VariantSpec(
        arch={"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)},
        paper=Paper(params_m=50, macs_g=8.7, top1=83.1, source=_SOURCE),
        timm_name="convnext_small.fb_in1k",
    ),
    "convnext_base": VariantSpec(
        arch={"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)},
        paper=Paper(params_m=89, macs_g=15.4, top1=83.8, source=_SOURCE),
        timm_name="convnext_base.fb_in1k",
    ),
}

register_family(FAMILY, VARIANTS)
