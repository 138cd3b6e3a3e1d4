"""PoolFormer v1 and ConvNeXt: shapes, timm and official checkpoint layouts, pooling borders, ONNX export."""

from __future__ import annotations

import io
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from vmlp_deploy.models import create_model, get_variant, list_models
from vmlp_deploy.models.convnext import LayerNorm2d
from vmlp_deploy.models.poolformer import Pooling

POOLFORMERS = ["poolformer_s12", "poolformer_s24", "poolformer_s36", "poolformer_m36", "poolformer_m48"]
CONVNEXTS = ["convnext_tiny", "convnext_small", "convnext_base"]


def _tiny(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, tiny=True)


def _input(model: nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    h, w = model.vmlp_cfg.input_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _random_like(shapes: dict[str, tuple[int, ...]], seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}


def test_all_variants_registered() -> None:
    assert list_models("poolformer") == sorted(POOLFORMERS)
    assert list_models("convnext") == sorted(CONVNEXTS)


@pytest.mark.parametrize("name", POOLFORMERS + CONVNEXTS)
def test_tiny_forward_shapes(name: str) -> None:
    model = _tiny(name)
    x = _input(model)
    dims = model.vmlp_cfg.arch["dims"]
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (2, dims[-1], 1, 1)  # 32 px input, total stride 32
    assert logits.shape == (2, 10)
    assert model.get_classifier() is model.head.fc
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "crop_pct"),
    [("poolformer_s12", 0.9), ("poolformer_s36", 0.9), ("poolformer_m36", 0.95), ("poolformer_m48", 0.95)]
    + [(n, 0.875) for n in CONVNEXTS],
)
def test_data_recipe_matches_timm_default_cfg(name: str, crop_pct: float) -> None:
    data = get_variant(name).data
    assert data.crop_pct == crop_pct
    assert data.interpolation == "bicubic"
    assert data.input_size == (224, 224)
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)


# --- timm layout: the module tree as timm's metaformer.py / convnext.py build it, written out independently ----


def _timm_poolformer_shapes(depths, dims, num_classes, mlp_ratio=4) -> dict[str, tuple[int, ...]]:
    shapes = {"stem.conv.weight": (dims[0], 3, 7, 7), "stem.conv.bias": (dims[0],)}
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i > 0:
            shapes[f"stages.{i}.downsample.conv.weight"] = (dim, dims[i - 1], 3, 3)
            shapes[f"stages.{i}.downsample.conv.bias"] = (dim,)
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}."
            hidden = dim * mlp_ratio
            shapes |= {
                p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "layer_scale1.scale": (dim,),
                p + "norm2.weight": (dim,), p + "norm2.bias": (dim,), p + "layer_scale2.scale": (dim,),
                p + "mlp.fc1.weight": (hidden, dim, 1, 1), p + "mlp.fc1.bias": (hidden,),
                p + "mlp.fc2.weight": (dim, hidden, 1, 1), p + "mlp.fc2.bias": (dim,),
            }  # fmt: skip
    shapes |= {"head.norm.weight": (dims[-1],), "head.norm.bias": (dims[-1],)}
    shapes |= {"head.fc.weight": (num_classes, dims[-1]), "head.fc.bias": (num_classes,)}
    return shapes


def _timm_convnext_shapes(depths, dims, num_classes, mlp_ratio=4) -> dict[str, tuple[int, ...]]:
    shapes = {"stem.0.weight": (dims[0], 3, 4, 4), "stem.0.bias": (dims[0],)}
    shapes |= {"stem.1.weight": (dims[0],), "stem.1.bias": (dims[0],)}
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i > 0:
            d = f"stages.{i}.downsample."
            shapes |= {d + "0.weight": (dims[i - 1],), d + "0.bias": (dims[i - 1],)}
            shapes |= {d + "1.weight": (dim, dims[i - 1], 2, 2), d + "1.bias": (dim,)}
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}."
            hidden = dim * mlp_ratio
            shapes |= {
                p + "conv_dw.weight": (dim, 1, 7, 7), p + "conv_dw.bias": (dim,), p + "gamma": (dim,),
                p + "norm.weight": (dim,), p + "norm.bias": (dim,),
                p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,),
            }  # fmt: skip
    shapes |= {"head.norm.weight": (dims[-1],), "head.norm.bias": (dims[-1],)}
    shapes |= {"head.fc.weight": (num_classes, dims[-1]), "head.fc.bias": (num_classes,)}
    return shapes


_TIMM_SHAPES = {"poolformer": _timm_poolformer_shapes, "convnext": _timm_convnext_shapes}


@pytest.mark.parametrize("name", ["poolformer_s12", "poolformer_m48", "convnext_tiny", "convnext_base"])
def test_timm_state_dict_loads_strict(name: str) -> None:
    model = _tiny(name)
    arch = model.vmlp_cfg.arch
    shapes = _TIMM_SHAPES[model.vmlp_cfg.variant.family](arch["depths"], arch["dims"], arch["num_classes"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    timm_sd = _random_like(shapes)
    filtered = get_variant(name).checkpoint_filter(timm_sd)
    assert list(filtered) == list(timm_sd)  # timm keys are ours: returned unchanged
    model.load_state_dict(filtered, strict=True)
    with torch.no_grad():
        assert torch.isfinite(model(_input(model))).all()


# --- official layouts -----------------------------------------------------------------------------------------

# sail-sg/poolformer names (models/poolformer.py: patch_embed, network = [stage, PatchEmbed, stage, ...], norm, head)
POOLFORMER_OFFICIAL = [
    ("patch_embed.proj.weight", "stem.conv.weight"),
    ("patch_embed.proj.bias", "stem.conv.bias"),
    ("network.0.0.norm1.weight", "stages.0.blocks.0.norm1.weight"),
    ("network.0.1.norm1.bias", "stages.0.blocks.1.norm1.bias"),
    ("network.0.1.layer_scale_1", "stages.0.blocks.1.layer_scale1.scale"),
    ("network.1.proj.weight", "stages.1.downsample.conv.weight"),
    ("network.2.0.mlp.fc1.weight", "stages.1.blocks.0.mlp.fc1.weight"),
    ("network.3.proj.bias", "stages.2.downsample.conv.bias"),
    ("network.4.1.layer_scale_2", "stages.2.blocks.1.layer_scale2.scale"),
    ("network.4.1.mlp.fc2.bias", "stages.2.blocks.1.mlp.fc2.bias"),
    ("network.5.proj.weight", "stages.3.downsample.conv.weight"),
    ("network.6.0.norm2.bias", "stages.3.blocks.0.norm2.bias"),
    ("norm.weight", "head.norm.weight"),
    ("norm.bias", "head.norm.bias"),
    ("head.weight", "head.fc.weight"),
    ("head.bias", "head.fc.bias"),
]

# facebookresearch/ConvNeXt names (models/convnext.py: downsample_layers, stages.{i}.{j}, norm, head)
CONVNEXT_OFFICIAL = [
    ("downsample_layers.0.0.weight", "stem.0.weight"),
    ("downsample_layers.0.1.bias", "stem.1.bias"),
    ("downsample_layers.1.0.weight", "stages.1.downsample.0.weight"),
    ("downsample_layers.3.1.weight", "stages.3.downsample.1.weight"),
    ("stages.0.0.dwconv.weight", "stages.0.blocks.0.conv_dw.weight"),
    ("stages.0.1.gamma", "stages.0.blocks.1.gamma"),
    ("stages.2.1.norm.weight", "stages.2.blocks.1.norm.weight"),
    ("stages.2.1.pwconv1.weight", "stages.2.blocks.1.mlp.fc1.weight"),
    ("stages.3.0.pwconv2.bias", "stages.3.blocks.0.mlp.fc2.bias"),
    ("norm.weight", "head.norm.weight"),
    ("head.weight", "head.fc.weight"),
    ("head.bias", "head.fc.bias"),
]


@pytest.mark.parametrize(
    ("name", "official", "ours"),
    [("poolformer_s12", o, k) for o, k in POOLFORMER_OFFICIAL]
    + [("convnext_tiny", o, k) for o, k in CONVNEXT_OFFICIAL],
)
def test_checkpoint_filter_renames_official_keys(name: str, official: str, ours: str) -> None:
    t = torch.zeros(1)
    assert get_variant(name).checkpoint_filter({official: t}) == {ours: t}
    assert get_variant(name).checkpoint_filter({ours: t}) == {ours: t}


def _poolformer_to_official(key: str) -> str:
    """Inverse of the official -> timm mapping, written directly from sail-sg/poolformer's module tree."""
    fixed = {"stem.conv.weight": "patch_embed.proj.weight", "stem.conv.bias": "patch_embed.proj.bias",
             "head.fc.weight": "head.weight", "head.fc.bias": "head.bias"}  # fmt: skip
    if key in fixed:
        return fixed[key]
    if key.startswith("head.norm."):
        return key[len("head.") :]
    if m := re.fullmatch(r"stages\.(\d)\.downsample\.conv\.(\w+)", key):
        return f"network.{2 * int(m[1]) - 1}.proj.{m[2]}"
    m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)", key)
    rest = {"layer_scale1.scale": "layer_scale_1", "layer_scale2.scale": "layer_scale_2"}.get(m[3], m[3])
    return f"network.{2 * int(m[1])}.{m[2]}.{rest}"


def _convnext_to_official(key: str) -> str:
    """Inverse of the official -> timm mapping, written directly from facebookresearch/ConvNeXt's module tree."""
    if key.startswith("stem."):
        return "downsample_layers.0." + key[len("stem.") :]
    if key.startswith("head."):
        return {"head.fc.weight": "head.weight", "head.fc.bias": "head.bias"}.get(key, key[len("head.") :])
    if m := re.fullmatch(r"stages\.(\d)\.downsample\.(\d)\.(\w+)", key):
        return f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"
    m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)", key)
    rest = m[3].replace("conv_dw.", "dwconv.").replace("mlp.fc1.", "pwconv1.").replace("mlp.fc2.", "pwconv2.")
    return f"stages.{m[1]}.{m[2]}.{rest}"


@pytest.mark.parametrize(
    ("name", "to_official", "pairs"),
    [
        ("poolformer_s12", _poolformer_to_official, POOLFORMER_OFFICIAL),
        ("poolformer_m36", _poolformer_to_official, POOLFORMER_OFFICIAL),
        ("convnext_tiny", _convnext_to_official, CONVNEXT_OFFICIAL),
        ("convnext_small", _convnext_to_official, CONVNEXT_OFFICIAL),
    ],
)
def test_official_checkpoint_loads_with_identical_outputs(name, to_official, pairs) -> None:
    source = _tiny(name, seed=0)
    for p in source.parameters():  # make LayerScale/gamma and norms non-trivial so a misplaced tensor shows
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    official_sd = {to_official(k): v.clone() for k, v in source.state_dict().items()}
    for official, _ in pairs:
        assert official in official_sd
    assert not any(k.startswith(("stem.", "head.fc.", "head.norm.")) for k in official_sd)

    target = _tiny(name, seed=1)
    target.load_state_dict(get_variant(name).checkpoint_filter(official_sd), strict=True)
    x = _input(source)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


# --- family-specific semantics -------------------------------------------------------------------------------


def _numpy_pool_minus_identity(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the in-bounds neighbours only (count_include_pad=False), minus the centre."""
    _, _, h, w = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            window = x[:, :, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            out[:, :, i, j] = window.sum(axis=(2, 3)) / (window.shape[2] * window.shape[3]) - x[:, :, i, j]
    return out


def test_poolformer_pooling_excludes_padding() -> None:
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = Pooling(3)(x).numpy()
    np.testing.assert_allclose(got, _numpy_pool_minus_identity(x.numpy()), rtol=0, atol=1e-12)

    xn = x.numpy()
    corner = xn[:, :, :2, :2].sum(axis=(2, 3)) / 4 - xn[:, :, 0, 0]  # 4 in-bounds pixels, not 9
    edge = xn[:, :, :2, 1:4].sum(axis=(2, 3)) / 6 - xn[:, :, 0, 2]  # 6 in-bounds pixels on the top edge
    np.testing.assert_allclose(got[:, :, 0, 0], corner, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[:, :, 0, 2], edge, rtol=0, atol=1e-12)
    ones = torch.ones(1, 1, 4, 4)
    assert torch.equal(Pooling(3)(ones), torch.zeros_like(ones))  # a constant map is a fixed point of the mean


def test_convnext_layernorm2d_normalises_channels() -> None:
    norm = LayerNorm2d(8)
    with torch.no_grad():
        norm.weight.normal_(generator=torch.Generator().manual_seed(0))
        norm.bias.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 8, 3, 5, generator=torch.Generator().manual_seed(2))
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(-1, 1, 1) + norm.bias.view(-1, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


# --- ONNX export -----------------------------------------------------------------------------------------------


def _export(model: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"]
    )
    return onnx.load_from_string(buffer.getvalue())


def _run_ort(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _ops(proto: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type == op_type]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", ["poolformer_s12", "poolformer_m36"])
def test_poolformer_onnx_export_matches(name: str) -> None:
    model = _tiny(name)
    x = _input(model, batch=1)
    proto = _export(model, x)
    with torch.no_grad():
        np.testing.assert_allclose(_run_ort(proto, x), model(x).numpy(), rtol=0, atol=1e-5)

    n_blocks = sum(model.vmlp_cfg.arch["depths"])
    pools = _ops(proto, "AveragePool")
    assert len(pools) == n_blocks
    for node in pools:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("count_include_pad", 0) == 0  # ONNX default is 0 too; an explicit 1 would be wrong
        assert attrs["kernel_shape"] == [3, 3] and attrs["pads"] == [1, 1, 1, 1]
    # GroupNorm(1, C) lowers to InstanceNormalization on a reshaped map, never ONNX GroupNormalization
    assert not _ops(proto, "GroupNormalization")
    assert len(_ops(proto, "InstanceNormalization")) == 2 * n_blocks
    assert len(_ops(proto, "LayerNormalization")) == 1  # the head norm
    assert len(_ops(proto, "GlobalAveragePool")) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_base"])
def test_convnext_onnx_export_matches(name: str) -> None:
    model = _tiny(name)
    x = _input(model, batch=1)
    proto = _export(model, x)
    with torch.no_grad():
        np.testing.assert_allclose(_run_ort(proto, x), model(x).numpy(), rtol=0, atol=1e-5)

    # every LayerNorm (stem, 3 downsamples, one per block, head) is one LayerNormalization node
    n_norms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert n_norms == 1 + 3 + sum(model.vmlp_cfg.arch["depths"]) + 1
    assert len(_ops(proto, "LayerNormalization")) == n_norms
    assert not _ops(proto, "ReduceMean")  # no decomposed LayerNorm
    assert len(_ops(proto, "GlobalAveragePool")) == 1
