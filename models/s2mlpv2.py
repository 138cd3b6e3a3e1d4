"""S2-MLPv2 (Yu et al., arXiv 2108.01072): spatial-shift MLP with split attention, ViP-style two-level pyramid.

There is no official code or checkpoint. The most used PyTorch version is liuruiyang98/Jittor-MLP
``models_pytorch/s2_mlp_v2.py``; ``checkpoint_filter`` maps its keys onto ours. The shifts are the ones of
``s2mlp`` (edge-replicate, written into a copy; see that module for why).

Split attention: the paper's parameter counts (25M / 55M) need ViP's reweighting MLP, C -> C/4 -> 3C with
biases (about 11 C^2 parameters per block), which is the default here. Jittor-MLP's SplitAttention is
C -> C -> 3C without biases (about 14 C^2 per block, 31M for Small); ``sa_hidden_ratio=1.0, sa_bias=False``
reproduces it. Both sum the branches over all positions and take a softmax over the branches per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._layers import Mlp, PatchEmbedChannelsLast, PreNormBlock, TokenMapClassifier, init_weights
from ._registry import DataCfg, Family, Paper, StateDict, VariantSpec, register_family
from .s2mlp import remap_keys, spatial_shift1, spatial_shift2


class SplitAttention(nn.Module):
    """Weights K branches per channel: a = sum over branches and positions, MLP -> (B, K, C), softmax over K."""

    def __init__(self, dim: int, num_branches: int = 3, hidden_ratio: float = 0.25, bias: bool = True) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.reweight = Mlp(dim, int(dim * hidden_ratio), dim * num_branches, bias=bias)

    def forward(self, branches: Tensor) -> Tensor:
        """(B, K, H, W, C) -> (B, H, W, C)."""
        c = branches.shape[-1]
        a = branches.sum(dim=(1, 2, 3))
        weights = self.reweight(a).reshape(-1, self.num_branches, c).softmax(dim=1)
        return (weights[:, :, None, None, :] * branches).sum(dim=1)


class ShiftSplitMixer(nn.Module):
    """Token mixing of S2-MLPv2: MLP1 (C -> 3C), shift two of the three chunks, split attention, MLP2."""

    def __init__(self, dim: int, sa_hidden_ratio: float, sa_bias: bool) -> None:
        super().__init__()
        self.mlp1 = nn.Linear(dim, dim * 3)
        self.split_attn = SplitAttention(dim, 3, sa_hidden_ratio, sa_bias)
        self.mlp2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2, x3 = self.mlp1(x).chunk(3, dim=-1)
        branches = torch.stack([spatial_shift1(x1), spatial_shift2(x2), x3], dim=1)
        return self.mlp2(self.split_attn(branches))


class S2MLPv2Stage(nn.Module):
    """Patch conv (NCHW in, the first stage's is the 7x7 patch embedding) then blocks on channels-last maps."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        patch_size: int,
        depth: int,
        mlp_ratio: float,
        sa_hidden_ratio: float,
        sa_bias: bool,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbedChannelsLast(in_dim, dim, patch_size)
        self.blocks = nn.Sequential(
            *[PreNormBlock(dim, ShiftSplitMixer(dim, sa_hidden_ratio, sa_bias), mlp_ratio) for _ in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, H/p, W/p, C)."""
        return self.blocks(self.patch_embed(x))


class S2MLPv2(TokenMapClassifier):
    """Stages of (patch conv, S2-MLPv2 blocks), mean over tokens, linear classifier.

    As in Jittor-MLP there is no LayerNorm before the head. The input side must be a multiple of the product
    of the patch sizes; nothing else ties the network to one input size.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_sizes: Sequence[int] = (7, 2),
        dims: Sequence[int] = (192, 384),
        depths: Sequence[int] = (4, 14),
        mlp_ratio: float = 3.0,
        sa_hidden_ratio: float = 0.25,
        sa_bias: bool = True,
    ) -> None:
        super().__init__()
        if not len(patch_sizes) == len(dims) == len(depths):
            raise ValueError("patch_sizes, dims and depths must have one entry per stage")
        stride = 1
        for p in patch_sizes:
            stride *= p
        if img_size[0] % stride or img_size[1] % stride:
            raise ValueError(f"img_size {img_size} must be a multiple of the total patch stride {stride}")
        in_dims = (in_chans, *dims[:-1])
        self.stages = nn.ModuleList(
            S2MLPv2Stage(i, d, p, n, mlp_ratio, sa_hidden_ratio, sa_bias)
            for i, d, p, n in zip(in_dims, dims, patch_sizes, depths)
        )
        self.head = nn.Linear(dims[-1], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, H', W', C') channels-last token map of the last stage."""
        x = self.stages[0](x)
        for stage in self.stages[1:]:
            x = stage(x.permute(0, 3, 1, 2))  # patch convs read NCHW, blocks work channels-last
        return x


_BLOCK = r"^stages\.(\d+)\.1\.model\.(\d+)\."
_JITTOR_RENAMES = (
    (r"^stages\.(\d+)\.0\.", r"stages.\1.patch_embed.proj."),
    (_BLOCK + r"0\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (_BLOCK + r"0\.fn\.mlp1\.", r"stages.\1.blocks.\2.mixer.mlp1."),
    (_BLOCK + r"0\.fn\.mlp2\.", r"stages.\1.blocks.\2.mixer.mlp2."),
    (_BLOCK + r"0\.fn\.split_attention\.mlp1\.", r"stages.\1.blocks.\2.mixer.split_attn.reweight.fc1."),
    (_BLOCK + r"0\.fn\.split_attention\.mlp2\.", r"stages.\1.blocks.\2.mixer.split_attn.reweight.fc2."),
    (_BLOCK + r"1\.norm\.", r"stages.\1.blocks.\2.norm2."),
    (_BLOCK + r"1\.fn\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (_BLOCK + r"1\.fn\.3\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^mlp_head\.1\.", "head."),
)


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Map Jittor-MLP's PyTorch ``S2MLPv2`` keys onto this module tree; our own keys pass unchanged.

    Jittor-MLP's split attention has no biases and a C -> C hidden layer, so its checkpoints load into a
    model built with ``sa_hidden_ratio=1.0, sa_bias=False``.

    ======================================================  ==============================================
    Jittor-MLP ``models_pytorch/s2_mlp_v2.py``              here
    ======================================================  ==============================================
    ``stages.{s}.0.*`` (patch conv)                         ``stages.{s}.patch_embed.proj.*``
    ``stages.{s}.1.model.{j}.0.norm.*``                     ``stages.{s}.blocks.{j}.norm1.*``
    ``stages.{s}.1.model.{j}.0.fn.mlp1.*``                  ``stages.{s}.blocks.{j}.mixer.mlp1.*``
    ``stages.{s}.1.model.{j}.0.fn.mlp2.*``                  ``stages.{s}.blocks.{j}.mixer.mlp2.*``
    ``stages.{s}.1.model.{j}.0.fn.split_attention.mlp1.*``  ``stages.{s}.blocks.{j}.mixer.split_attn.reweight.fc1.*``
    ``stages.{s}.1.model.{j}.0.fn.split_attention.mlp2.*``  ``stages.{s}.blocks.{j}.mixer.split_attn.reweight.fc2.*``
    ``stages.{s}.1.model.{j}.1.norm.*``                     ``stages.{s}.blocks.{j}.norm2.*``
    ``stages.{s}.1.model.{j}.1.fn.0.*``                     ``stages.{s}.blocks.{j}.mlp.fc1.*``
    ``stages.{s}.1.model.{j}.1.fn.3.*``                     ``stages.{s}.blocks.{j}.mlp.fc2.*``
    ``mlp_head.1.*``                                        ``head.*``
    ======================================================  ==============================================
    """
    return remap_keys(state_dict, _JITTOR_RENAMES)


FAMILY = Family(
    name="s2mlpv2",
    builder=S2MLPv2,
    default="s2mlpv2_small",  # what `vmlp-deploy export --model s2mlpv2` builds
    tiny={"img_size": 56, "dims": (16, 32), "depths": (1, 1), "num_classes": 10},
    input_divisor=14,
    min_input_size=14,
    checkpoint_filter=checkpoint_filter,
)

# The paper trains with ViP's recipe; ViP's default_cfgs: ViP_S crop 0.875, ViP_M crop 0.9, bicubic.
VARIANTS: dict[str, VariantSpec] = {
    "s2mlpv2_small": VariantSpec(
        arch={"patch_sizes": (7, 2), "dims": (192, 384), "depths": (4, 14), "mlp_ratio": 3.0},
        paper=Paper(25, 6.9, 82.0, "arXiv 2108.01072v1 Tab. 1-3 (Small/7)"),
        data=DataCfg(crop_pct=0.875, interpolation="bicubic"),
    ),
    "s2mlpv2_medium": VariantSpec(
        arch={"patch_sizes": (7, 2), "dims": (256, 512), "depths": (7, 17), "mlp_ratio": 3.0},
        paper=Paper(55, 16.3, 83.6, "arXiv 2108.01072v1 Tab. 1-3 (Medium/7)"),
        data=DataCfg(crop_pct=0.9, interpolation="bicubic"),
    ),
}

register_family(FAMILY, VARIANTS)
