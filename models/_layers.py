"""Building blocks shared by several families, named by what they compute and the layout they return."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Two-layer perceptron (fc1 -> act -> fc2), named as in timm so channel-MLP checkpoints load."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbedTokens(nn.Module):
    """Non-overlapping p x p patch projection to a (B, N, C) token sequence, for one fixed image size.

    Shared by Mixer, ResMLP, gMLP and DeiT: their token-mixing Linear (DeiT: position embedding) spans exactly
    ``num_patches`` tokens, so the stem is also where a wrong input size is reported, before it surfaces as an
    opaque matmul or broadcast error.
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
                f"this model was built for {self.img_size[0]}x{self.img_size[1]} inputs (its per-token weights "
                f"span {self.num_patches} tokens) but got {h}x{w}: resize the input, or rebuild with "
                f"img_size=({h}, {w}) (trained token weights do not fit another size)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class PatchEmbedChannelsLast(nn.Module):
    """Non-overlapping patch projection (conv with stride == kernel): (B, C, H, W) -> (B, H/p, W/p, D).

    Shared by S2-MLP and S2-MLPv2, whose shifts need the 2-D map; any side that is a multiple of p works.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class PreNormBlock(nn.Module):
    """Pre-norm residual pair on channels-last tensors: LN -> token mixer (+x), LN -> channel MLP (+x).

    The S2-MLP families differ only in the token mixer, which the caller builds and passes in.
    """

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenSequenceClassifier(nn.Module):
    """The token-sequence families (Mixer, ResMLP, gMLP): patch stem, blocks, norm, mean over tokens, Linear.

    ``block`` builds one block for the stem's token count; ``norm`` builds the final norm for ``embed_dim``.
    Modules are built (and so draw from the RNG) in the order stem, blocks, norm, head, then re-initialised.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        num_classes: int,
        num_blocks: int,
        block: Callable[[int], nn.Module],
        norm: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.num_features = embed_dim
        self.stem = PatchEmbedTokens(img_size, patch_size, in_chans, embed_dim)
        self.blocks = nn.Sequential(*[block(self.stem.num_patches) for _ in range(num_blocks)])
        self.norm = norm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, N, D) normalised tokens."""
        return self.norm(self.blocks(self.stem(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


class TokenMapClassifier(nn.Module):
    """Head and forward of the S2-MLP families: mean over a (B, H, W, C) token map, Linear (no norm before it).

    Subclasses build ``head`` and define ``forward_features`` (image -> channels-last token map).
    """

    head: nn.Linear

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x.mean(dim=(1, 2)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


class ConvMlp(nn.Module):
    """Channel MLP of NCHW maps as two 1x1 convolutions (weights [out, in, 1, 1], as timm, PoolFormer's and AS-MLP's
    official code store them)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group (statistics over C, H and W): every norm of PoolFormer and AS-MLP.

    Kept as ``nn.GroupNorm``: the TorchScript ONNX exporter lowers it to Reshape -> InstanceNormalization ->
    Reshape -> Mul -> Add (it never emits ONNX GroupNormalization, which TensorRT 10.16 computes wrongly for one
    group, NVIDIA/TensorRT#4756).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__(1, num_channels)


class PooledClassifierHead(nn.Module):
    """Global average pool of an NCHW map, LayerNorm over channels (eps 1e-6), Linear.

    The pool-then-norm order of timm's ConvNeXt and PoolFormer heads (the FB ConvNeXt weights' order too).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(F.adaptive_avg_pool2d(x, 1).flatten(1)))


class StagedConvClassifier(nn.Module):
    """Forward of the four-stage NCHW MetaFormers (ConvNeXt, PoolFormer): stem, stages, pooled head.

    Subclasses build ``stem``, ``stages`` and ``head`` (a ``PooledClassifierHead``).
    """

    stem: nn.Module
    stages: nn.Sequential
    head: PooledClassifierHead

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head.fc


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Deterministic-under-seed ViT-style init: truncated normal weights, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
