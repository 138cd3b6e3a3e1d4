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

from ._layers import Mlp, init_weights
from ._registry import DataCfg, Paper, StateDict, Variant, register, register_family


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


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (conv with stride == kernel): (B, C, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SpatialShiftMixer(nn.Module):
    """Token mixing of S2-MLP: FC -> GELU -> spatial shift -> FC, all on (B, H, W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(spatial_shift1(self.act(self.fc1(x))))


class S2MLPBlock(nn.Module):
    """Pre-norm residual pair: LN -> shift mixer (+x), LN -> channel MLP (+x)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = SpatialShiftMixer(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class S2MLP(nn.Module):
    """Patch embedding, ``depth`` S2-MLP blocks, mean over tokens, linear classifier.

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
        self.stem = PatchEmbed(in_chans, embed_dim, patch_size)
        self.blocks = nn.Sequential(*[S2MLPBlock(embed_dim, mlp_ratio) for _ in range(depth)])
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, H/p, W/p, D) channels-last token map."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x.mean(dim=(1, 2)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


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


_DEEP_NOTE = (
    "Paper prints 51M, but its stated hyper-parameters (p16, 36 blocks, c=384, r=4) give 53.5M without the "
    "classifier (36 blocks x ~10c^2 + patch FC) and 10.46 B MACs at 224 (196 tokens), which matches the "
    "paper's own 10.5 B; the hyper-parameters are kept."
)

_ARCHS = {
    "s2mlp_wide": dict(patch_size=16, embed_dim=768, depth=12, mlp_ratio=4.0),
    "s2mlp_deep": dict(patch_size=16, embed_dim=384, depth=36, mlp_ratio=4.0),
}

_PAPERS = {
    "s2mlp_wide": Paper(71, 14.0, 80.0, "arXiv 2106.07477v2 Tab. 2 & 3", params_exclude_head=True),
    "s2mlp_deep": Paper(51, 10.5, 80.7, "arXiv 2106.07477v2 Tab. 2 & 3", params_exclude_head=True, note=_DEEP_NOTE),
}

_TINY = dict(img_size=64, embed_dim=32, depth=2, num_classes=10)

for _name, _arch in _ARCHS.items():
    register(
        Variant(
            name=_name,
            family="s2mlp",
            builder=S2MLP,
            arch=_arch,
            paper=_PAPERS[_name],
            data=DataCfg(crop_pct=0.875, interpolation="bicubic"),
            input_divisor=16,
            min_input_size=16,
            tiny=_TINY,
            checkpoint_filter=checkpoint_filter,
        )
    )

#: `vmlp-deploy export --model s2mlp` builds this variant.
register_family("s2mlp", "s2mlp_deep")
