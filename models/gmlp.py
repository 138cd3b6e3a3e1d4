"""gMLP (Liu et al., "Pay Attention to MLPs", arXiv 2105.08050): channel MLPs gated by a spatial gating unit.

There is no official code. Module and parameter names follow timm's ``mlp_mixer.py`` (``blocks.{i}.norm``,
``mlp_channels.fc1``, ``mlp_channels.gate.norm``, ``mlp_channels.gate.proj``, ``mlp_channels.fc2``), so timm
state_dicts (e.g. ``gmlp_s16_224.ra3_in1k``) load as they are and no checkpoint filter is needed.
The gate's token Linear spans (H/p)*(W/p) tokens, so a built model accepts one input size only.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import TokenSequenceClassifier
from ._registry import DataCfg, Family, Paper, VariantSpec, register_family


class SpatialGatingUnit(nn.Module):
    """Split channels into (u, v); gate u by a Linear over the token axis of LayerNorm(v).

    The token projection starts at weight ~0 and bias 1, so every block begins as a plain channel MLP.
    LayerNorm eps stays at PyTorch's 1e-5 here (timm's choice, which its trained weights expect).
    """

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim // 2)
        self.proj = nn.Linear(seq_len, seq_len)

    def init_weights(self) -> None:
        nn.init.normal_(self.proj.weight, std=1e-6)
        nn.init.ones_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        u, v = x.chunk(2, dim=-1)
        v = self.proj(self.norm(v).transpose(1, 2)).transpose(1, 2)
        return u * v


class GatedMlp(nn.Module):
    """fc1 (C -> d_ffn), GELU, spatial gating (d_ffn -> d_ffn / 2), fc2 (d_ffn / 2 -> C)."""

    def __init__(self, dim: int, ffn_dim: int, seq_len: int) -> None:
        super().__init__()
        if ffn_dim % 2:
            raise ValueError(f"ffn_dim must be even (the gate splits it in half), got {ffn_dim}")
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act = nn.GELU()
        self.gate = SpatialGatingUnit(ffn_dim, seq_len)
        self.fc2 = nn.Linear(ffn_dim // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.gate(self.act(self.fc1(x))))


class SpatialGatingBlock(nn.Module):
    """Pre-norm residual gated MLP: the only token mixing is inside the gate."""

    def __init__(self, dim: int, ffn_dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = GatedMlp(dim, ffn_dim, seq_len)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp_channels(self.norm(x))


class GMlp(TokenSequenceClassifier):
    """Patch stem, ``num_blocks`` gMLP blocks, LayerNorm, global average over tokens, linear classifier."""

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        num_blocks: int = 30,
        embed_dim: int = 256,
        ffn_dim: int = 1536,
    ) -> None:
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, num_classes, num_blocks,
            block=lambda seq_len: SpatialGatingBlock(embed_dim, ffn_dim, seq_len),
            norm=lambda dim: nn.LayerNorm(dim, eps=1e-6),
        )
        for module in self.modules():
            if isinstance(module, SpatialGatingUnit):
                module.init_weights()


#: Every variant tiles the image into 16x16 patches, so every input side must be a multiple of 16.
PATCH_SIZE = 16

FAMILY = Family(
    name="gmlp",
    builder=GMlp,
    default="gmlp_s16_224",  # what `vmlp-deploy export --model gmlp` builds
    tiny={"img_size": 64, "num_blocks": 2, "embed_dim": 16, "ffn_dim": 48, "num_classes": 10},
    fixed_input_size=True,
    input_divisor=PATCH_SIZE,
    min_input_size=PATCH_SIZE,
)

# timm's default_cfg for gMLP keeps the Mixer default mean/std of 0.5 (what gmlp_s16_224.ra3_in1k expects).
_DATA = DataCfg(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875, interpolation="bicubic")
_SOURCE = "arXiv 2105.08050v2 Tab. 1 & 2 (MACs = MAdds)"

VARIANTS: dict[str, VariantSpec] = {
    "gmlp_ti16_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "num_blocks": 30, "embed_dim": 128, "ffn_dim": 768},
        paper=Paper(params_m=5.9, macs_g=1.4, top1=72.3, source=_SOURCE),
        data=_DATA,
        timm_name="gmlp_ti16_224",
    ),
    "gmlp_s16_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "num_blocks": 30, "embed_dim": 256, "ffn_dim": 1536},
        paper=Paper(params_m=19.5, macs_g=4.5, top1=79.6, source=_SOURCE),
        data=_DATA,
        timm_name="gmlp_s16_224",
    ),
    "gmlp_b16_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "num_blocks": 30, "embed_dim": 512, "ffn_dim": 3072},
        paper=Paper(params_m=73.4, macs_g=15.8, top1=81.6, source=_SOURCE),
        data=_DATA,
        timm_name="gmlp_b16_224",
    ),
}

register_family(FAMILY, VARIANTS)
