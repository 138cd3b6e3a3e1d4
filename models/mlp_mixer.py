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

from ._layers import Mlp, init_weights
from ._registry import DataCfg, Paper, StateDict, Variant, register, register_family


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patch projection to a (B, N, C) token sequence, for one fixed image size.

    Shared by Mixer, ResMLP and gMLP: their token-mixing Linear spans exactly ``num_patches`` tokens, so
    the stem is also where a wrong input size is reported, before it surfaces as an opaque matmul error.
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size[0]}x{img_size[1]} is not divisible by patch_size {patch_size}")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.num_patches = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        # A trace is specialised to its example's size anyway; checking there would only warn about it.
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.img_size:
            h, w = x.shape[-2:]
            raise ValueError(
                f"this model was built for {self.img_size[0]}x{self.img_size[1]} inputs (its token-mixing Linear "
                f"spans {self.num_patches} tokens) but got {h}x{w}: resize the input, or rebuild with "
                f"img_size=({h}, {w}) (trained token weights do not fit another size)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


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


class MlpMixer(nn.Module):
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
        super().__init__()
        self.num_features = embed_dim
        self.stem = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        seq_len = self.stem.num_patches
        self.blocks = nn.Sequential(
            *[MixerBlock(embed_dim, seq_len, tokens_mlp_dim, channels_mlp_dim) for _ in range(num_blocks)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.stem(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


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


_MIXER_DATA = DataCfg(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875, interpolation="bicubic")
_TINY = {
    "img_size": 64,
    "num_blocks": 2,
    "embed_dim": 32,
    "tokens_mlp_dim": 8,
    "channels_mlp_dim": 64,
    "num_classes": 10,
}

_VARIANTS: dict[str, tuple[dict[str, Any], Paper]] = {
    "mixer_s16_224": (
        {"patch_size": 16, "num_blocks": 8, "embed_dim": 512, "tokens_mlp_dim": 256, "channels_mlp_dim": 2048},
        Paper(
            params_m=18.53,
            macs_g=3.79,
            top1=None,
            source="timm mixer_s16_224",
            note="Mixer paper table not read; figures are timm's. No ImageNet-1k-only top-1 found.",
        ),
    ),
    "mixer_b16_224": (
        {"patch_size": 16, "num_blocks": 12, "embed_dim": 768, "tokens_mlp_dim": 384, "channels_mlp_dim": 3072},
        Paper(
            params_m=59,
            macs_g=12.7,
            top1=76.44,
            source="arXiv 2105.08050v2 Tab. 2 (params, MAdds); top-1 as cited in arXiv 2106.07477 §1",
        ),
    ),
}

for _name, (_arch, _paper) in _VARIANTS.items():
    register(
        Variant(
            name=_name,
            family="mlp_mixer",
            builder=MlpMixer,
            arch=_arch,
            paper=_paper,
            data=_MIXER_DATA,
            fixed_input_size=True,
            input_divisor=_arch["patch_size"],
            min_input_size=_arch["patch_size"],
            tiny=_TINY,
            checkpoint_filter=checkpoint_filter,
            timm_name=_name,
        )
    )

#: `vmlp-deploy export --model mixer` builds this variant.
register_family("mlp_mixer", "mixer_s16_224", "mixer")
