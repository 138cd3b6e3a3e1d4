"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through attention", arXiv
2012.12877): the plain ViT (Dosovitskiy et al., arXiv 2010.11929) at ImageNet-1k scale, the transformer baseline
the vision-MLP papers compare against.

Module and parameter names are those of facebookresearch/deit's models (timm's ``VisionTransformer``:
``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``/``fc2``, ``norm``, ``head``), so the official ``deit_*_patch16_224-*.pth`` files (a
``{"model": state_dict}``) and timm's ``deit_*_patch16_224.fb_in1k`` load as they are. The distilled variants
(a second token and head) are not in the zoo. The learned position embedding spans one token grid, so a built
model accepts one input size only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._layers import Mlp, PatchEmbedTokens, init_weights
from ._registry import DataCfg, Family, Paper, VariantSpec, register_family


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear, written as MatMul -> Softmax -> MatMul.

    Not ``F.scaled_dot_product_attention``: the explicit form exports to the same few ONNX ops on every exporter
    and opset, which is what the runtimes fuse and the quantizers recognise."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: LN -> attention (+x), LN -> MLP (+x); LayerNorm eps 1e-6 as DeiT trained."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch stem, class token, learned position embedding, ``depth`` blocks, LayerNorm, the class token's
    Linear classifier."""

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.num_features = embed_dim
        self.patch_embed = PatchEmbedTokens(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, 1 + N, D) normalised tokens, the class token first."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


#: Every variant tiles the image into 16x16 patches, so every input side must be a multiple of 16.
PATCH_SIZE = 16

FAMILY = Family(
    name="deit",
    builder=VisionTransformer,
    default="deit_small_patch16_224",  # what `vmlp-deploy export --model deit` builds: S2-MLPv2-Small's size class
    aliases=("vit",),
    tiny={"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 24, "num_heads": 2, "num_classes": 10},
    fixed_input_size=True,
    input_divisor=PATCH_SIZE,
    min_input_size=PATCH_SIZE,
)

_DATA = DataCfg(crop_pct=0.875, interpolation="bicubic")
# The README prints params rounded to 5M / 22M / 86M; the exact counts are those of the released weights.
_SOURCE = ("facebookresearch/deit README (top-1, arXiv 2012.12877 Tab. 1 sizes); params and GMACs of the released "
           "weights as timm's deit_*_patch16_224.fb_in1k model cards print them")

VARIANTS: dict[str, VariantSpec] = {
    "deit_tiny_patch16_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "embed_dim": 192, "depth": 12, "num_heads": 3},
        paper=Paper(params_m=5.7, macs_g=1.3, top1=72.2, source=_SOURCE),
        data=_DATA,
        timm_name="deit_tiny_patch16_224.fb_in1k",
    ),
    "deit_small_patch16_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "embed_dim": 384, "depth": 12, "num_heads": 6},
        paper=Paper(params_m=22.1, macs_g=4.6, top1=79.9, source=_SOURCE),
        data=_DATA,
        timm_name="deit_small_patch16_224.fb_in1k",
    ),
    "deit_base_patch16_224": VariantSpec(
        arch={"patch_size": PATCH_SIZE, "embed_dim": 768, "depth": 12, "num_heads": 12},
        paper=Paper(params_m=86.6, macs_g=17.6, top1=81.8, source=_SOURCE),
        data=_DATA,
        timm_name="deit_base_patch16_224.fb_in1k",
    ),
}

register_family(FAMILY, VARIANTS)
