"""ResMLP (Touvron et al., arXiv 2105.03404): a token Linear and a channel MLP, Affine "norm" and LayerScale.

Module and parameter names follow timm's ``mlp_mixer.py`` (``linear_tokens``, ``mlp_channels``, ``ls1``/``ls2``,
Affine ``alpha``/``beta`` of shape (1, 1, C)), so timm state_dicts load as they are; ``checkpoint_filter`` maps
the official ``facebookresearch/deit`` layout. The token Linear spans (H/p)*(W/p) tokens: one input size only.

``resmlp_b24_224`` is ResMLP-B24 with 16x16 patches, as in the paper's Tab. 1. The released B24 weights
(deit ``resmlpB_24``, timm ``resmlp_big_24_224``) are B24/8 (129.1M params, 100.2 GMACs, Tab. 4): build that
model with ``create_model("resmlp_b24_224", patch_size=8)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._layers import Mlp, TokenSequenceClassifier
from ._registry import Family, Paper, StateDict, VariantSpec, register_family


class Affine(nn.Module):
    """Per-channel ``alpha * x + beta``: ResMLP's replacement for LayerNorm (no statistics, foldable at export)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * x + self.beta


class ResBlock(nn.Module):
    """Residual token Linear (over the token axis), then residual channel MLP, each scaled by LayerScale."""

    def __init__(self, dim: int, seq_len: int, mlp_ratio: float, init_values: float) -> None:
        super().__init__()
        self.norm1 = Affine(dim)
        self.linear_tokens = nn.Linear(seq_len, seq_len)
        self.norm2 = Affine(dim)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio))
        self.ls1 = nn.Parameter(torch.full((dim,), init_values))
        self.ls2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1 * self.linear_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.ls2 * self.mlp_channels(self.norm2(x))


class ResMlp(TokenSequenceClassifier):
    """Patch stem, ``num_blocks`` ResMLP blocks, Affine, global average over tokens, linear classifier."""

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        num_blocks: int = 12,
        embed_dim: int = 384,
        mlp_ratio: float = 4.0,
        init_values: float = 0.1,
    ) -> None:
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, num_classes, num_blocks,
            block=lambda seq_len: ResBlock(embed_dim, seq_len, mlp_ratio, init_values),
            norm=Affine,
        )


_DEIT_RENAMES = (
    ("patch_embed.", "stem."),
    (".attn.", ".linear_tokens."),
    (".mlp.", ".mlp_channels."),
    (".gamma_1", ".ls1"),
    (".gamma_2", ".ls2"),
)


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Map the official ``facebookresearch/deit`` ``resmlp_models.py`` checkpoints onto this module tree.

    Our own keys (= timm's) pass unchanged: none contains a renamed fragment, and reshaping a (1, 1, C)
    Affine parameter to (1, 1, C) is a no-op.

    ========================================  ======================================  ===================
    deit                                      ours (= timm)                           value
    ========================================  ======================================  ===================
    ``patch_embed.proj.{weight,bias}``        ``stem.proj.{weight,bias}``
    ``blocks.{i}.norm{1,2}.{alpha,beta}``     ``blocks.{i}.norm{1,2}.{alpha,beta}``   (C,) -> (1, 1, C)
    ``blocks.{i}.attn.{weight,bias}``         ``blocks.{i}.linear_tokens.*``
    ``blocks.{i}.gamma_1``, ``gamma_2``       ``blocks.{i}.ls1``, ``ls2``
    ``blocks.{i}.mlp.fc{1,2}.*``              ``blocks.{i}.mlp_channels.fc{1,2}.*``
    ``norm.{alpha,beta}``                     ``norm.{alpha,beta}``                   (C,) -> (1, 1, C)
    ``head.{weight,bias}``                    ``head.{weight,bias}``
    ========================================  ======================================  ===================
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        for old, new in _DEIT_RENAMES:
            key = key.replace(old, new)
        if key.endswith((".alpha", ".beta")):
            value = value.reshape(1, 1, -1)
        out[key] = value
    return out


#: Every variant tiles the image into 16x16 patches, so every input side must be a multiple of 16.
PATCH_SIZE = 16

FAMILY = Family(
    name="resmlp",
    builder=ResMlp,
    default="resmlp_12_224",  # what `vmlp-deploy export --model resmlp` builds
    tiny={"img_size": 64, "num_blocks": 2, "embed_dim": 24, "num_classes": 10},
    fixed_input_size=True,
    input_divisor=PATCH_SIZE,
    min_input_size=PATCH_SIZE,
    checkpoint_filter=checkpoint_filter,
)

_SOURCE = "arXiv 2105.03404v2 Tab. 1 & 4"

VARIANTS: dict[str, VariantSpec] = {
    "resmlp_12_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "num_blocks": 12, "embed_dim": 384, "init_values": 0.1},
        paper=Paper(params_m=15.4, macs_g=3.0, top1=76.6, source=_SOURCE),
        timm_name="resmlp_12_224",
    ),
    "resmlp_24_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "num_blocks": 24, "embed_dim": 384, "init_values": 1e-5},
        paper=Paper(params_m=30, macs_g=6.0, top1=79.4, source=_SOURCE),
        timm_name="resmlp_24_224",
    ),
    "resmlp_b24_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "num_blocks": 24, "embed_dim": 768, "init_values": 1e-6},
        paper=Paper(params_m=115.7, macs_g=23.0, top1=81.0, source="arXiv 2105.03404v2 Tab. 1"),
    ),
}

register_family(FAMILY, VARIANTS)
