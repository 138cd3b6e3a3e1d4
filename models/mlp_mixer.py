"""MLP-Mixer (Tolstikhin et al., arXiv 2105.01601): alternating token-mixing and channel-mixing MLPs.

Module and parameter names follow timm's ``mlp_mixer.py`` (``stem.proj``, ``blocks.{i}.mlp_tokens.fc1`` ...),
so timm state_dicts load as they are; ``checkpoint_filter`` maps the official JAX ``.npz`` layout.
The token MLP is a Linear over the (H/p)*(W/p) patch tokens, so a built model accepts one input size only.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from ._layers import Mlp, TokenSequenceClassifier
from ._registry import DataCfg, Family, Paper, StateDict, VariantSpec, register_family


class MixerBlock(nn.Module):
    """Pre-norm residual token-mixing MLP (over the token axis), then pre-norm residual channel MLP."""

    def __init__(self, dim: int, seq_len: int, tokens_mlp_dim: int, channels_mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_mlp_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(TokenSequenceClassifier):
    """Patch stem, ``num_blocks`` Mixer blocks, LayerNorm, global average over tokens, linear classifier."""

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        num_blocks: int = 8,
        embed_dim: int = 512,
        tokens_mlp_dim: int = 256,
        channels_mlp_dim: int = 2048,
    ) -> None:
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, num_classes, num_blocks,
            block=lambda seq_len: MixerBlock(embed_dim, seq_len, tokens_mlp_dim, channels_mlp_dim),
            norm=lambda dim: nn.LayerNorm(dim, eps=1e-6),
        )


_JAX_BLOCK_MODULES = {
    "LayerNorm_0": "norm1",
    "token_mixing/Dense_0": "mlp_tokens.fc1",
    "token_mixing/Dense_1": "mlp_tokens.fc2",
    "LayerNorm_1": "norm2",
    "channel_mixing/Dense_0": "mlp_channels.fc1",
    "channel_mixing/Dense_1": "mlp_channels.fc2",
}
_JAX_TOP_MODULES = {"stem": "stem.proj", "pre_head_layer_norm": "norm", "head": "head"}
_JAX_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _jax_key(key: str) -> str:
    module, leaf = key.rsplit("/", 1)
    ours = _JAX_TOP_MODULES.get(module)
    block = re.fullmatch(r"MixerBlock_(\d+)/(.+)", module)
    if block and block[2] in _JAX_BLOCK_MODULES:
        ours = f"blocks.{block[1]}.{_JAX_BLOCK_MODULES[block[2]]}"
    if ours is None or leaf not in _JAX_LEAVES:
        raise ValueError(f"unknown MLP-Mixer JAX checkpoint key {key!r}")
    return f"{ours}.{_JAX_LEAVES[leaf]}"


def _jax_value(key: str, value: Any) -> Tensor:
    """Flax kernels are (in, out) for Dense and HWIO for Conv; torch wants (out, in) and OIHW."""
    value = torch.as_tensor(value)
    if key.endswith("/kernel"):
        value = value.permute(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value.contiguous()


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Map the official JAX checkpoint (``vit_jax`` ``.npz``, '/'-separated Flax names) onto this module tree.

    Keys without a '/' (ours, which are timm's) pass unchanged. Values may be numpy arrays (``np.load``).

    ===============================================  =====================================  ============
    JAX (``google-research/vision_transformer``)     ours (= timm)                          value
    ===============================================  =====================================  ============
    ``stem/{kernel,bias}``                           ``stem.proj.{weight,bias}``            HWIO -> OIHW
    ``MixerBlock_{i}/LayerNorm_0/{scale,bias}``      ``blocks.{i}.norm1.{weight,bias}``
    ``MixerBlock_{i}/token_mixing/Dense_{0,1}/*``    ``blocks.{i}.mlp_tokens.fc{1,2}.*``    kernel.T
    ``MixerBlock_{i}/LayerNorm_1/{scale,bias}``      ``blocks.{i}.norm2.{weight,bias}``
    ``MixerBlock_{i}/channel_mixing/Dense_{0,1}/*``  ``blocks.{i}.mlp_channels.fc{1,2}.*``  kernel.T
    ``pre_head_layer_norm/{scale,bias}``             ``norm.{weight,bias}``
    ``head/{kernel,bias}``                           ``head.{weight,bias}``                 kernel.T
    ===============================================  =====================================  ============

    The names are Flax's automatic ones for ``vit_jax/models_mixer.py``; no released ``.npz`` was inspected.
    Flax's ``nn.gelu`` is the tanh approximation while this model (like timm's converted weights) uses the
    exact GELU, so outputs differ from JAX's by that approximation only.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if "/" in key:
            out[_jax_key(key)] = _jax_value(key, value)
        else:
            out[key] = value
    return out


#: Every variant tiles the image into 16x16 patches, so every input side must be a multiple of 16.
PATCH_SIZE = 16

FAMILY = Family(
    name="mlp_mixer",
    builder=MlpMixer,
    default="mixer_s16_224",  # what `vmlp-deploy export --model mixer` builds
    aliases=("mixer",),
    tiny=dict(img_size=64, num_blocks=2, embed_dim=32, tokens_mlp_dim=8, channels_mlp_dim=64, num_classes=10),
    fixed_input_size=True,
    input_divisor=PATCH_SIZE,
    min_input_size=PATCH_SIZE,
    checkpoint_filter=checkpoint_filter,
)

_DATA = DataCfg(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875, interpolation="bicubic")

VARIANTS: dict[str, VariantSpec] = {
    "mixer_s16_224": VariantSpec(
        arch=dict(patch_size=PATCH_SIZE, num_blocks=8, embed_dim=512, tokens_mlp_dim=256, channels_mlp_dim=2048),
        paper=Paper(
            params_m=18.53,
            macs_g=3.79,
            top1=None,
            source="timm mixer_s16_224",
            note="Mixer paper table not read; figures are timm's. No ImageNet-1k-only top-1 found.",
        ),
        data=_DATA,
        timm_name="mixer_s16_224",
    ),
    "mixer_b16_224": VariantSpec(
        arch=dict(patch_size=PATCH_SIZE, num_blocks=12, embed_dim=768, tokens_mlp_dim=384, channels_mlp_dim=3072),
        paper=Paper(
            params_m=59,
            macs_g=12.7,
            top1=76.44,
            source="arXiv 2105.08050v2 Tab. 2 (params, MAdds); top-1 as cited in arXiv 2106.07477 §1",
        ),
        data=_DATA,
        timm_name="mixer_b16_224",
    ),
}

register_family(FAMILY, VARIANTS)
