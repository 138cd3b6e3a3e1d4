"""S2-MLP (Yu et al., arXiv 2106.07477): spatial-shift MLP, isotropic, channels-last blocks.

There is no official code or checkpoint (the paper used PaddlePaddle). The most used PyTorch version is
liuruiyang98/Jittor-MLP ``models_pytorch/s2_mlp_v1.py``; ``checkpoint_filter`` maps its keys onto ours.

The spatial shift keeps the reference's idiom (slice assignment on channels-last maps, channel groups cut
at ``c//4``, ``c//2``, ``c*3//4``) but writes into a copy: the reference assigns in place between
overlapping slices, which PyTorch eager on CPU copies row by row and smears (pytorch#144861). The intended
result, the one NumPy, CUDA and the ONNX ScatterND export give, is ``out[i] = in[i-1]`` for ``i >= 1`` with
the border keeping its own value (edge-replicate, not zero padding).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn

from ._layers import PatchEmbedChannelsLast, PreNormBlock, TokenMapClassifier, init_weights
from ._registry import Family, Paper, StateDict, VariantSpec, register_family


def spatial_shift1(x: Tensor) -> Tensor:
    """Shift four channel groups of a (B, H, W, C) map by one pixel: H+1, H-1, W+1, W-1; borders replicate."""
    c = x.shape[-1]
    out = x.clone()
    out[:, 1:, :, : c // 4] = x[:, :-1, :, : c // 4]
    out[:, :-1, :, c // 4 : c // 2] = x[:, 1:, :, c // 4 : c // 2]
    out[:, :, 1:, c // 2 : c * 3 // 4] = x[:, :, :-1, c // 2 : c * 3 // 4]
    out[:, :, :-1, c * 3 // 4 :] = x[:, :, 1:, c * 3 // 4 :]
    return out


def spatial_shift2(x: Tensor) -> Tensor:
    """The transposed pattern of ``spatial_shift1``: W+1, W-1, H+1, H-1 (used by S2-MLPv2's second branch)."""
    c = x.shape[-1]
    out = x.clone()
    out[:, :, 1:, : c // 4] = x[:, :, :-1, : c // 4]
    out[:, :, :-1, c // 4 : c // 2] = x[:, :, 1:, c // 4 : c // 2]
    out[:, 1:, :, c // 2 : c * 3 // 4] = x[:, :-1, :, c // 2 : c * 3 // 4]
    out[:, :-1, :, c * 3 // 4 :] = x[:, 1:, :, c * 3 // 4 :]
    return out


def remap_keys(state_dict: StateDict, renames: Sequence[tuple[str, str]]) -> StateDict:
    """Apply the first matching ``(regex, replacement)`` to each key; keys matching none pass unchanged."""
    out: StateDict = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        out[key] = value
    return out


class SpatialShiftMixer(nn.Module):
    """Token mixing of S2-MLP: FC -> GELU -> spatial shift -> FC, all on (B, H, W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(spatial_shift1(self.act(self.fc1(x))))


class S2MLP(TokenMapClassifier):
    """Patch embedding, ``depth`` pre-norm blocks with the spatial-shift mixer, mean over tokens, linear classifier.

    As in the reference there is no LayerNorm before the head. The shift and the token mean do not tie the
    network to one input size; the side only has to be a multiple of the patch size.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of the patch size {patch_size}")
        self.stem = PatchEmbedChannelsLast(in_chans, embed_dim, patch_size)
        self.blocks = nn.Sequential(
            *[PreNormBlock(embed_dim, SpatialShiftMixer(embed_dim), mlp_ratio) for _ in range(depth)]
        )
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, H/p, W/p, D) channels-last token map."""
        return self.blocks(self.stem(x))


_JITTOR_RENAMES = (
    (r"^stages\.0\.0\.", "stem.proj."),
    (r"^stages\.0\.1\.model\.(\d+)\.0\.norm\.", r"blocks.\1.norm1."),
    (r"^stages\.0\.1\.model\.(\d+)\.0\.fn\.0\.", r"blocks.\1.mixer.fc1."),
    (r"^stages\.0\.1\.model\.(\d+)\.0\.fn\.3\.", r"blocks.\1.mixer.fc2."),
    (r"^stages\.0\.1\.model\.(\d+)\.1\.norm\.", r"blocks.\1.norm2."),
    (r"^stages\.0\.1\.model\.(\d+)\.1\.fn\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^stages\.0\.1\.model\.(\d+)\.1\.fn\.3\.", r"blocks.\1.mlp.fc2."),
    (r"^mlp_head\.1\.", "head."),
)


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Map Jittor-MLP's PyTorch ``S2MLPv1`` keys onto this module tree; our own keys pass unchanged.

    ============================================  ============================
    Jittor-MLP ``models_pytorch/s2_mlp_v1.py``    here
    ============================================  ============================
    ``stages.0.0.*`` (patch conv)                 ``stem.proj.*``
    ``stages.0.1.model.{j}.0.norm.*``             ``blocks.{j}.norm1.*``
    ``stages.0.1.model.{j}.0.fn.0.*``             ``blocks.{j}.mixer.fc1.*``
    ``stages.0.1.model.{j}.0.fn.3.*``             ``blocks.{j}.mixer.fc2.*``
    ``stages.0.1.model.{j}.1.norm.*``             ``blocks.{j}.norm2.*``
    ``stages.0.1.model.{j}.1.fn.0.*``             ``blocks.{j}.mlp.fc1.*``
    ``stages.0.1.model.{j}.1.fn.3.*``             ``blocks.{j}.mlp.fc2.*``
    ``mlp_head.1.*``                              ``head.*``
    ============================================  ============================
    """
    return remap_keys(state_dict, _JITTOR_RENAMES)


FAMILY = Family(
    name="s2mlp",
    builder=S2MLP,
    default="s2mlp_deep",  # what `vmlp-deploy export --model s2mlp` builds
    tiny={"img_size": 64, "embed_dim": 32, "depth": 2, "num_classes": 10},
    input_divisor=16,
    min_input_size=16,
    checkpoint_filter=checkpoint_filter,
)

_DEEP_NOTE = (
    "Paper prints 51M, but its stated hyper-parameters (p16, 36 blocks, c=384, r=4) give 53.5M without the "
    "classifier (36 blocks x ~10c^2 + patch FC) and 10.46 B MACs at 224 (196 tokens), which matches the "
    "paper's own 10.5 B; the hyper-parameters are kept."
)

_SOURCE = "arXiv 2106.07477v2 Tab. 2 & 3"

VARIANTS: dict[str, VariantSpec] = {
    "s2mlp_wide": VariantSpec(
        arch={"patch_size": 16, "embed_dim": 768, "depth": 12, "mlp_ratio": 4.0},
        paper=Paper(71, 14.0, 80.0, _SOURCE, params_exclude_head=True),
    ),
    "s2mlp_deep": VariantSpec(
        arch={"patch_size": 16, "embed_dim": 384, "depth": 36, "mlp_ratio": 4.0},
        paper=Paper(51, 10.5, 80.7, _SOURCE, params_exclude_head=True, note=_DEEP_NOTE),
    ),
}

register_family(FAMILY, VARIANTS)
