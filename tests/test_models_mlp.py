"""MLP-Mixer, ResMLP and gMLP: tiny forwards, timm / deit / JAX key layouts, the fixed input size, ONNX export."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from vmlp_deploy.models import create_model, get_variant, list_models
from vmlp_deploy.models._registry import IMAGENET_MEAN, IMAGENET_STD
from vmlp_deploy.models.gmlp import SpatialGatingUnit
from vmlp_deploy.models.mlp_mixer import checkpoint_filter as mixer_filter
from vmlp_deploy.models.resmlp import checkpoint_filter as resmlp_filter

FAMILIES = {
    "mlp_mixer": ["mixer_b16_224", "mixer_s16_224"],
    "resmlp": ["resmlp_12_224", "resmlp_24_224", "resmlp_b24_224"],
    "gmlp": ["gmlp_b16_224", "gmlp_s16_224", "gmlp_ti16_224"],
}
VARIANTS = [name for names in FAMILIES.values() for name in names]
ONE_PER_FAMILY = ["mixer_s16_224", "resmlp_12_224", "gmlp_s16_224"]

# The tiny configurations: 64x64 input, 16x16 patches -> N = 16 tokens, depth 2, 10 classes.
DEPTH, TOKENS, CLASSES = 2, 16, 10


def _tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, tiny=True)


def _image(batch: int = 2, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(123))


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (Affine, LayerScale and norms too) so that a swapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def test_registered_variants() -> None:
    for family, names in FAMILIES.items():
        assert list_models(family) == names


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_forward(name: str) -> None:
    model = _tiny(name)
    x = _image()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, TOKENS, model.num_features)
    assert logits.shape == (2, CLASSES)
    assert torch.isfinite(logits).all()
    assert torch.equal(model.forward_head(features), logits)
    assert model.get_classifier() is model.head


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_init_is_deterministic(name: str) -> None:
    a, b = _tiny(name).state_dict(), _tiny(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("mixer_b16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("resmlp_24_224", IMAGENET_MEAN, IMAGENET_STD),
        ("gmlp_s16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ],
)
def test_data_recipe_and_input_size_rules_match_timm(name: str, mean: tuple, std: tuple) -> None:
    variant = get_variant(name)
    data = variant.data
    assert data.mean == mean and data.std == std
    assert (data.input_size, data.crop_pct, data.interpolation) == ((224, 224), 0.875, "bicubic")
    assert variant.fixed_input_size and variant.input_divisor == 16 and variant.min_input_size == 16


# ---------------------------------------------------------------------------------------------------------------
# timm state_dicts load as they are: the key names and shapes below are written from timm's mlp_mixer.py.


def _timm_mixer(c: int = 32, tokens_dim: int = 8, channels_dim: int = 64) -> dict[str, tuple[int, ...]]:
    keys = {
        "stem.proj.weight": (c, 3, 16, 16),
        "stem.proj.bias": (c,),
        "norm.weight": (c,),
        "norm.bias": (c,),
        "head.weight": (CLASSES, c),
        "head.bias": (CLASSES,),
    }
    for i in range(DEPTH):
        keys |= {
            f"blocks.{i}.norm1.weight": (c,),
            f"blocks.{i}.norm1.bias": (c,),
            f"blocks.{i}.mlp_tokens.fc1.weight": (tokens_dim, TOKENS),
            f"blocks.{i}.mlp_tokens.fc1.bias": (tokens_dim,),
            f"blocks.{i}.mlp_tokens.fc2.weight": (TOKENS, tokens_dim),
            f"blocks.{i}.mlp_tokens.fc2.bias": (TOKENS,),
            f"blocks.{i}.norm2.weight": (c,),
            f"blocks.{i}.norm2.bias": (c,),
            f"blocks.{i}.mlp_channels.fc1.weight": (channels_dim, c),
            f"blocks.{i}.mlp_channels.fc1.bias": (channels_dim,),
            f"blocks.{i}.mlp_channels.fc2.weight": (c, channels_dim),
            f"blocks.{i}.mlp_channels.fc2.bias": (c,),
        }
    return keys


def _timm_resmlp(c: int = 24) -> dict[str, tuple[int, ...]]:
    keys = {
        "stem.proj.weight": (c, 3, 16, 16),
        "stem.proj.bias": (c,),
        "norm.alpha": (1, 1, c),
        "norm.beta": (1, 1, c),
        "head.weight": (CLASSES, c),
        "head.bias": (CLASSES,),
    }
    for i in range(DEPTH):
        keys |= {
            f"blocks.{i}.norm1.alpha": (1, 1, c),
            f"blocks.{i}.norm1.beta": (1, 1, c),
            f"blocks.{i}.linear_tokens.weight": (TOKENS, TOKENS),
            f"blocks.{i}.linear_tokens.bias": (TOKENS,),
            f"blocks.{i}.norm2.alpha": (1, 1, c),
            f"blocks.{i}.norm2.beta": (1, 1, c),
            f"blocks.{i}.mlp_channels.fc1.weight": (4 * c, c),
            f"blocks.{i}.mlp_channels.fc1.bias": (4 * c,),
            f"blocks.{i}.mlp_channels.fc2.weight": (c, 4 * c),
            f"blocks.{i}.mlp_channels.fc2.bias": (c,),
            f"blocks.{i}.ls1": (c,),
            f"blocks.{i}.ls2": (c,),
        }
    return keys


def _timm_gmlp(c: int = 16, ffn: int = 48) -> dict[str, tuple[int, ...]]:
    keys = {
        "stem.proj.weight": (c, 3, 16, 16),
        "stem.proj.bias": (c,),
        "norm.weight": (c,),
        "norm.bias": (c,),
        "head.weight": (CLASSES, c),
        "head.bias": (CLASSES,),
    }
    for i in range(DEPTH):
        keys |= {
            f"blocks.{i}.norm.weight": (c,),
            f"blocks.{i}.norm.bias": (c,),
            f"blocks.{i}.mlp_channels.fc1.weight": (ffn, c),
            f"blocks.{i}.mlp_channels.fc1.bias": (ffn,),
            f"blocks.{i}.mlp_channels.gate.norm.weight": (ffn // 2,),
            f"blocks.{i}.mlp_channels.gate.norm.bias": (ffn // 2,),
            f"blocks.{i}.mlp_channels.gate.proj.weight": (TOKENS, TOKENS),
            f"blocks.{i}.mlp_channels.gate.proj.bias": (TOKENS,),
            f"blocks.{i}.mlp_channels.fc2.weight": (c, ffn // 2),
            f"blocks.{i}.mlp_channels.fc2.bias": (c,),
        }
    return keys


@pytest.mark.parametrize(
    ("name", "timm_keys"),
    [("mixer_s16_224", _timm_mixer()), ("resmlp_12_224", _timm_resmlp()), ("gmlp_s16_224", _timm_gmlp())],
)
def test_timm_state_dict_loads_strict(name: str, timm_keys: dict[str, tuple[int, ...]]) -> None:
    gen = torch.Generator().manual_seed(7)
    timm_sd = {k: 0.5 * torch.randn(shape, generator=gen) for k, shape in timm_keys.items()}
    model = _tiny(name)
    model.load_state_dict(timm_sd, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in timm_sd.items())
    with torch.no_grad():
        assert torch.isfinite(model(_image())).all()
    ckpt_filter = get_variant(name).checkpoint_filter
    if ckpt_filter is not None:
        filtered = ckpt_filter(timm_sd)
        assert filtered.keys() == timm_sd.keys()
        assert all(filtered[k] is v or torch.equal(filtered[k], v) for k, v in timm_sd.items())


# ---------------------------------------------------------------------------------------------------------------
# ResMLP: the official facebookresearch/deit layout (resmlp_models.py) maps onto ours.


def test_resmlp_deit_checkpoint_gives_identical_outputs() -> None:
    reference = _randomised(_tiny("resmlp_24_224", seed=0), seed=1)
    ours = reference.state_dict()
    deit = {
        "patch_embed.proj.weight": ours["stem.proj.weight"],
        "patch_embed.proj.bias": ours["stem.proj.bias"],
        "norm.alpha": ours["norm.alpha"].flatten(),
        "norm.beta": ours["norm.beta"].flatten(),
        "head.weight": ours["head.weight"],
        "head.bias": ours["head.bias"],
    }
    for i in range(DEPTH):
        deit |= {
            f"blocks.{i}.norm1.alpha": ours[f"blocks.{i}.norm1.alpha"].flatten(),
            f"blocks.{i}.norm1.beta": ours[f"blocks.{i}.norm1.beta"].flatten(),
            f"blocks.{i}.attn.weight": ours[f"blocks.{i}.linear_tokens.weight"],
            f"blocks.{i}.attn.bias": ours[f"blocks.{i}.linear_tokens.bias"],
            f"blocks.{i}.norm2.alpha": ours[f"blocks.{i}.norm2.alpha"].flatten(),
            f"blocks.{i}.norm2.beta": ours[f"blocks.{i}.norm2.beta"].flatten(),
            f"blocks.{i}.mlp.fc1.weight": ours[f"blocks.{i}.mlp_channels.fc1.weight"],
            f"blocks.{i}.mlp.fc1.bias": ours[f"blocks.{i}.mlp_channels.fc1.bias"],
            f"blocks.{i}.mlp.fc2.weight": ours[f"blocks.{i}.mlp_channels.fc2.weight"],
            f"blocks.{i}.mlp.fc2.bias": ours[f"blocks.{i}.mlp_channels.fc2.bias"],
            f"blocks.{i}.gamma_1": ours[f"blocks.{i}.ls1"],
            f"blocks.{i}.gamma_2": ours[f"blocks.{i}.ls2"],
        }
    assert len(deit) == len(ours)

    loaded = _tiny("resmlp_24_224", seed=5)
    loaded.load_state_dict(resmlp_filter(deit), strict=True)
    x = _image()
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


@pytest.mark.parametrize(
    ("name", "init_values"), [("resmlp_12_224", 0.1), ("resmlp_24_224", 1e-5), ("resmlp_b24_224", 1e-6)]
)
def test_resmlp_layerscale_init(name: str, init_values: float) -> None:
    block = _tiny(name).blocks[0]
    assert torch.all(block.ls1 == torch.tensor(init_values)) and torch.all(block.ls2 == torch.tensor(init_values))
    assert torch.all(block.norm1.alpha == 1) and torch.all(block.norm1.beta == 0)


def test_resmlp_b24_patch8_override_is_the_released_b24_8() -> None:
    with torch.device("meta"):
        model = create_model("resmlp_b24_224", patch_size=8)
    assert model.stem.num_patches == 28 * 28
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 129.1


# ---------------------------------------------------------------------------------------------------------------
# MLP-Mixer: the official JAX checkpoint layout, checked against a NumPy forward written with Flax's conventions.


def _jax_mixer_params(c: int = 32, tokens_dim: int = 8, channels_dim: int = 64) -> dict[str, np.ndarray]:
    shapes = {
        "stem/kernel": (16, 16, 3, c),  # HWIO
        "stem/bias": (c,),
        "pre_head_layer_norm/scale": (c,),
        "pre_head_layer_norm/bias": (c,),
        "head/kernel": (c, CLASSES),  # Dense kernels are (in, out)
        "head/bias": (CLASSES,),
    }
    for i in range(DEPTH):
        shapes |= {
            f"MixerBlock_{i}/LayerNorm_0/scale": (c,),
            f"MixerBlock_{i}/LayerNorm_0/bias": (c,),
            f"MixerBlock_{i}/token_mixing/Dense_0/kernel": (TOKENS, tokens_dim),
            f"MixerBlock_{i}/token_mixing/Dense_0/bias": (tokens_dim,),
            f"MixerBlock_{i}/token_mixing/Dense_1/kernel": (tokens_dim, TOKENS),
            f"MixerBlock_{i}/token_mixing/Dense_1/bias": (TOKENS,),
            f"MixerBlock_{i}/LayerNorm_1/scale": (c,),
            f"MixerBlock_{i}/LayerNorm_1/bias": (c,),
            f"MixerBlock_{i}/channel_mixing/Dense_0/kernel": (c, channels_dim),
            f"MixerBlock_{i}/channel_mixing/Dense_0/bias": (channels_dim,),
            f"MixerBlock_{i}/channel_mixing/Dense_1/kernel": (channels_dim, c),
            f"MixerBlock_{i}/channel_mixing/Dense_1/bias": (c,),
        }
    rng = np.random.default_rng(0)
    return {k: (0.2 * rng.standard_normal(shape)).astype(np.float32) for k, shape in shapes.items()}


def _jax_mixer_forward(params: dict[str, np.ndarray], image_nchw: np.ndarray) -> np.ndarray:
    """vit_jax/models_mixer.py in NumPy: NHWC conv stem, 'n h w c -> n (h w) c', x @ kernel + bias."""

    def dense(y: np.ndarray, name: str) -> np.ndarray:
        return y @ params[f"{name}/kernel"] + params[f"{name}/bias"]

    def layer_norm(y: np.ndarray, name: str) -> np.ndarray:
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6)
        return y * params[f"{name}/scale"] + params[f"{name}/bias"]

    def mlp(y: np.ndarray, name: str) -> np.ndarray:
        hidden = F.gelu(torch.from_numpy(dense(y, f"{name}/Dense_0"))).numpy()
        return dense(hidden, f"{name}/Dense_1")

    x = image_nchw.transpose(0, 2, 3, 1)
    n, h, w, cin = x.shape
    patches = x.reshape(n, h // 16, 16, w // 16, 16, cin).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("nabijc,ijcd->nabd", patches, params["stem/kernel"]) + params["stem/bias"]
    x = x.reshape(n, -1, x.shape[-1])
    for i in range(DEPTH):
        block = f"MixerBlock_{i}"
        x = x + mlp(layer_norm(x, f"{block}/LayerNorm_0").swapaxes(1, 2), f"{block}/token_mixing").swapaxes(1, 2)
        x = x + mlp(layer_norm(x, f"{block}/LayerNorm_1"), f"{block}/channel_mixing")
    return dense(layer_norm(x, "pre_head_layer_norm").mean(axis=1), "head")


def test_mixer_jax_checkpoint_matches_flax_semantics() -> None:
    params = _jax_mixer_params()
    model = _tiny("mixer_s16_224")
    model.load_state_dict(mixer_filter(params), strict=True)
    x = _image()
    with torch.no_grad():
        ours = model(x).numpy()
    np.testing.assert_allclose(ours, _jax_mixer_forward(params, x.numpy()), atol=1e-4, rtol=1e-4)


def test_mixer_filter_rejects_unknown_jax_keys() -> None:
    with pytest.raises(ValueError, match="MixerBlock_0/Dense_9/kernel"):
        mixer_filter({"MixerBlock_0/Dense_9/kernel": np.zeros((2, 2), np.float32)})


# ---------------------------------------------------------------------------------------------------------------
# gMLP: the spatial gating unit.


def test_gmlp_gate_starts_as_identity_gate() -> None:
    gate = _tiny("gmlp_ti16_224").blocks[0].mlp_channels.gate
    assert torch.all(gate.proj.bias == 1)
    assert gate.proj.weight.abs().max() < 1e-4


def test_spatial_gating_unit_semantics() -> None:
    torch.manual_seed(0)
    sgu = _randomised(SpatialGatingUnit(dim=12, seq_len=5), seed=3)
    x = torch.randn(2, 5, 12)
    u, v = x[..., :6], x[..., 6:]
    v = F.layer_norm(v, (6,), sgu.norm.weight, sgu.norm.bias, eps=1e-5)
    gate = torch.einsum("mn,bnc->bmc", sgu.proj.weight, v) + sgu.proj.bias[:, None]
    with torch.no_grad():
        torch.testing.assert_close(sgu(x), u * gate)


# ---------------------------------------------------------------------------------------------------------------
# Fixed input size: a clear error, not a matmul shape error deep inside a block.


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_fixed_input_size(name: str) -> None:
    model = _tiny(name)
    with pytest.raises(ValueError, match=r"built for 64x64 inputs .* 16 tokens\) but got 48x64"):
        model(_image(size=(48, 64)))
    with pytest.raises(ValueError, match="not divisible by patch_size 16"):
        create_model(name, tiny=True, img_size=72)
    rebuilt = create_model(name, tiny=True, img_size=(48, 64))
    with torch.no_grad():
        assert rebuilt(_image(size=(48, 64))).shape == (2, CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# ONNX: the legacy exporter at opset 17 reproduces PyTorch in onnxruntime.


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_onnx_export_matches_pytorch(name: str, tmp_path) -> None:
    model = _randomised(_tiny(name), seed=2)
    x = _image()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=1e-5, rtol=0)
