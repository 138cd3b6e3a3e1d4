"""DeiT, the transformer baseline: attention semantics, the official checkpoint layout, and a clean export."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.models import canonical_name, create_model, list_models
from vmlp_deploy.models.deit import Attention
from vmlp_deploy.quantize import QuantizeOptions, quantize_run

DEITS = ["deit_base_patch16_224", "deit_small_patch16_224", "deit_tiny_patch16_224"]


def test_variants_and_family_names() -> None:
    assert list_models("deit") == DEITS
    assert canonical_name("deit") == canonical_name("vit") == "deit_small_patch16_224"


@pytest.mark.parametrize(("dim", "heads"), [(24, 2), (64, 4)])
def test_attention_is_pytorch_multi_head_attention(dim: int, heads: int) -> None:
    """The fused qkv Linear's rows are (q | k | v), each split into contiguous heads, as in nn.MultiheadAttention's
    in_proj: the same weights must give the same outputs, scale 1/sqrt(head dim) included."""
    torch.manual_seed(0)
    ours = Attention(dim, heads)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.3)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)
        mha.in_proj_bias.copy_(ours.qkv.bias)
        mha.out_proj.weight.copy_(ours.proj.weight)
        mha.out_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(2, 17, dim)
        torch.testing.assert_close(ours(x), mha(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def _official_keys(dim: int, depth: int, num_classes: int, tokens: int) -> dict[str, tuple[int, ...]]:
    """The state_dict of facebookresearch/deit's ``deit_*_patch16_224`` (timm's VisionTransformer), written from
    its module tree."""
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim), "pos_embed": (1, tokens + 1, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        keys |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                 b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                 b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                 b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                 b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                 b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)}
    return keys | {"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (num_classes, dim),
                   "head.bias": (num_classes,)}


@pytest.mark.parametrize(("name", "dim"), [("deit_tiny_patch16_224", 192), ("deit_small_patch16_224", 384)])
def test_official_checkpoint_layout_loads_as_is(name: str, dim: int) -> None:
    model = create_model(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _official_keys(dim, 12, 1000, 14 * 14)


def test_export_has_nothing_to_rewrite_and_quantize_times_no_layouts(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No shift to rewrite and no token map to carry channels-first: the channels-first re-export is the same
    graph, so `quantize --layout auto` keeps the source without timing two copies of it."""
    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path / "cache"))
    lm = load_model("deit", tiny=True)
    result = export_model(lm, tmp_path / "run", ExportOptions())
    assert result.record.export.validation["passed"]
    assert not result.record.export.rewrite["patterns"]
    ops = [n.op_type for n in onnx.load(str(result.onnx_path)).graph.node]
    depth = lm.cfg.arch["depth"]
    assert ops.count("Softmax") == depth and ops.count("LayerNormalization") == 2 * depth + 1
    assert "ScatterND" not in ops
    quantized = quantize_run(tmp_path / "run", QuantizeOptions(backend="cpu", output=tmp_path / "q", num_samples=8,
                                                               holdout=4))
    layout = quantized.manifest["stages"]["quantize"]["layout"]
    assert layout["layout"] == "as-given" and layout["how"] == "rule" and not layout["int8_median_ms"]
    assert "same graph" in layout["reason"] and Path(layout["candidates"]["openvino"]).is_file()


def test_another_input_size_is_one_clear_error() -> None:
    model = create_model("deit", tiny=True)
    with pytest.raises(ValueError, match=r"built for 32x32 inputs .* per-token weights span 16 tokens.*48x48"):
        model(torch.randn(1, 3, 48, 48))
