"""S2-MLP and S2-MLPv2: shift semantics against NumPy, the in-place bug they avoid, ONNX export, Jittor keys."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vmlp_deploy.models import create_model, get_variant
from vmlp_deploy.models.s2mlp import spatial_shift1, spatial_shift2

VARIANTS = ["s2mlp_wide", "s2mlp_deep", "s2mlpv2_small", "s2mlpv2_medium"]

# (axis, step) per channel group of a (B, H, W, C) map; step +1 means out[i] = in[i-1].
SHIFT1 = ((1, +1), (1, -1), (2, +1), (2, -1))
SHIFT2 = ((2, +1), (2, -1), (1, +1), (1, -1))


def np_spatial_shift(x: np.ndarray, directions: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Independent reference: gather with clipped indices (edge-replicate), groups cut at c//4, c//2, 3c//4."""
    c = x.shape[-1]
    bounds = (0, c // 4, c // 2, 3 * c // 4, c)
    groups = []
    for g, (axis, step) in enumerate(directions):
        n = x.shape[axis]
        index = np.clip(np.arange(n) - step, 0, n - 1)
        groups.append(np.take(x[..., bounds[g] : bounds[g + 1]], index, axis=axis))
    return np.concatenate(groups, axis=-1)


def distinct_input(shape: tuple[int, ...]) -> Tensor:
    """Every element different, so any misplaced copy shows."""
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


SHAPES = [
    (1, 4, 4, 4),
    (2, 3, 5, 8),
    (1, 5, 4, 5),
    (1, 4, 6, 6),
    (2, 3, 3, 7),
    (1, 6, 2, 9),
    (2, 7, 3, 12),
    (1, 4, 4, 3),
    (1, 3, 2, 2),
    (1, 2, 3, 1),
    (1, 1, 5, 8),
    (1, 5, 1, 8),
    (1, 1, 6, 5),
    (1, 6, 1, 7),
    (1, 1, 1, 6),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    ("shift", "directions"), [(spatial_shift1, SHIFT1), (spatial_shift2, SHIFT2)], ids=["ss1", "ss2"]
)
def test_shift_matches_numpy(shape, shift, directions) -> None:
    x = distinct_input(shape)
    before = x.clone()
    out = shift(x)
    np.testing.assert_array_equal(out.numpy(), np_spatial_shift(x.numpy(), directions))
    assert torch.equal(x, before), "the shift must not modify its input"


@settings(max_examples=60, deadline=None)
@given(st.tuples(st.integers(1, 2), st.integers(1, 7), st.integers(1, 7), st.integers(1, 13)), st.booleans())
def test_shift_matches_numpy_random_shapes(shape, second) -> None:
    shift, directions = (spatial_shift2, SHIFT2) if second else (spatial_shift1, SHIFT1)
    x = distinct_input(shape)
    np.testing.assert_array_equal(shift(x).numpy(), np_spatial_shift(x.numpy(), directions))


def inplace_reference_shift1(x: Tensor) -> Tensor:
    """Jittor-MLP's spatial_shift1 as written there: overlapping slice assignment in place."""
    _, h, w, c = x.shape
    x[:, 1:, :, : c // 4] = x[:, : h - 1, :, : c // 4]
    x[:, : h - 1, :, c // 4 : c // 2] = x[:, 1:, :, c // 4 : c // 2]
    x[:, :, 1:, c // 2 : c * 3 // 4] = x[:, :, : w - 1, c // 2 : c * 3 // 4]
    x[:, :, : w - 1, 3 * c // 4 :] = x[:, :, 1:, 3 * c // 4 :]
    return x


@pytest.mark.parametrize("shape", [(1, 4, 4, 4), (2, 8, 8, 12)], ids=str)
def test_pytorch_144861_inplace_reference_shift_smears_on_cpu(shape) -> None:
    """Why the zoo shift writes into a copy (pytorch/pytorch#144861).

    In eager PyTorch on CPU, ``x[:, 1:] = x[:, :-1]`` on a non-contiguous slice copies row by row forwards,
    so every row becomes row 0 in the "+1" groups (0 and 2); the "-1" groups read ahead and come out right.
    """
    x = distinct_input(shape)
    expected = np_spatial_shift(x.numpy(), SHIFT1)
    np.testing.assert_array_equal(spatial_shift1(x).numpy(), expected)
    naive = inplace_reference_shift1(x.clone()).numpy()
    if np.array_equal(naive, expected):
        pytest.skip("pytorch#144861 does not reproduce on this torch build: the in-place form happens to be right")
    c = shape[-1]
    wrong = (naive != expected).any(axis=(0, 1, 2))
    assert wrong[: c // 4].all() and wrong[c // 2 : 3 * c // 4].all()
    assert not wrong[c // 4 : c // 2].any() and not wrong[3 * c // 4 :].any()
    smeared_rows = np.broadcast_to(x.numpy()[:, :1, :, : c // 4], naive[..., : c // 4].shape)
    np.testing.assert_array_equal(naive[..., : c // 4], smeared_rows)


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, tiny=True)
    h, w = model.vmlp_cfg.input_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_non_square_input(name: str) -> None:
    """No fixed token count: any side that is a multiple of the total patch stride works."""
    variant = get_variant(name)
    d = variant.input_divisor
    model = create_model(name, tiny=True, img_size=(2 * d, 3 * d))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 2 * d, 3 * d)).shape == (1, 10)
    with pytest.raises(ValueError):
        create_model(name, tiny=True, img_size=(d + 1, d))


def test_seeded_build_is_deterministic() -> None:
    torch.manual_seed(3)
    a = create_model("s2mlpv2_small", tiny=True).state_dict()
    torch.manual_seed(3)
    b = create_model("s2mlpv2_small", tiny=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy TorchScript exporter is asked for on purpose
@pytest.mark.parametrize("name", ["s2mlpv2_small", "s2mlp_wide"])
def test_onnx_scatternd_export_keeps_intended_shift(name: str) -> None:
    """The legacy exporter turns the copy-then-assign shift into ScatterND; ORT must agree with eager."""
    torch.manual_seed(0)
    model = create_model(name, tiny=True)
    h, w = model.vmlp_cfg.input_size
    x = torch.randn(2, 3, h, w)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"])
    graph = onnx.load_from_string(buf.getvalue()).graph
    assert "ScatterND" in {node.op_type for node in graph.node}
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=0, atol=1e-5)


# A stand-in for Jittor-MLP's models_pytorch/s2_mlp_v{1,2}.py with the same module tree (so the same state-dict
# keys), the NumPy shift instead of the in-place one, and a plain mean instead of einops' Reduce.


class NumpyShift(nn.Module):
    def __init__(self, directions: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.directions = directions

    def forward(self, x: Tensor) -> Tensor:
        return torch.from_numpy(np_spatial_shift(x.numpy(), self.directions))


class PreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x)) + x


class JittorSplitAttention(nn.Module):
    def __init__(self, c: int, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.mlp1 = nn.Linear(c, c, bias=False)
        self.gelu = nn.GELU()
        self.mlp2 = nn.Linear(c, c * k, bias=False)

    def forward(self, x_all: Tensor) -> Tensor:
        b, k, h, w, c = x_all.shape
        x_all = x_all.reshape(b, k, -1, c)
        a = x_all.sum(1).sum(1)
        bar_a = self.mlp2(self.gelu(self.mlp1(a))).reshape(b, self.k, c).softmax(1)
        return (bar_a.unsqueeze(-2) * x_all).sum(1).reshape(b, h, w, c)


class JittorS2Attention(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.mlp1 = nn.Linear(c, c * 3)
        self.mlp2 = nn.Linear(c, c)
        self.split_attention = JittorSplitAttention(c)
        self.shift1, self.shift2 = NumpyShift(SHIFT1), NumpyShift(SHIFT2)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[-1]
        x = self.mlp1(x)
        x_all = torch.stack([self.shift1(x[..., :c]), self.shift2(x[..., c : 2 * c]), x[..., 2 * c :]], 1)
        return self.mlp2(self.split_attention(x_all))


class JittorS2Block(nn.Module):
    def __init__(self, c: int, depth: int, ratio: int, v2: bool) -> None:
        super().__init__()

        def mixer() -> nn.Module:
            if v2:
                return JittorS2Attention(c)
            return nn.Sequential(nn.Linear(c, c), nn.GELU(), NumpyShift(SHIFT1), nn.Linear(c, c))

        def mlp() -> nn.Module:
            hidden = c * ratio
            return nn.Sequential(
                nn.Linear(c, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, c), nn.Dropout(0.0)
            )

        self.model = nn.Sequential(
            *[nn.Sequential(PreNormResidual(c, mixer()), PreNormResidual(c, mlp())) for _ in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MeanHW(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class JittorS2MLP(nn.Module):
    def __init__(self, patches: list[int], dims: list[int], depths: list[int], ratio: int, v2: bool) -> None:
        super().__init__()
        in_dims = [3, *dims[:-1]]
        self.stages = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(i, d, kernel_size=p, stride=p), JittorS2Block(d, n, ratio, v2))
                for i, d, p, n in zip(in_dims, dims, patches, depths)
            ]
        )
        self.mlp_head = nn.Sequential(MeanHW(), nn.Linear(dims[-1], 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp_head(self.stages(x))


def randomize(module: nn.Module) -> None:
    """Random values everywhere (norms included) so that any swapped key changes the output."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2)


JITTOR_V1_KEYS = [
    "stages.0.0.weight",
    "stages.0.0.bias",
    "stages.0.1.model.0.0.norm.weight",
    "stages.0.1.model.0.0.fn.0.weight",
    "stages.0.1.model.0.0.fn.3.bias",
    "stages.0.1.model.1.1.norm.bias",
    "stages.0.1.model.1.1.fn.0.weight",
    "stages.0.1.model.1.1.fn.3.weight",
    "mlp_head.1.weight",
    "mlp_head.1.bias",
]

JITTOR_V2_KEYS = [
    "stages.0.0.weight",
    "stages.1.0.bias",
    "stages.0.1.model.0.0.norm.weight",
    "stages.0.1.model.0.0.fn.mlp1.weight",
    "stages.1.1.model.0.0.fn.mlp2.bias",
    "stages.1.1.model.0.0.fn.split_attention.mlp1.weight",
    "stages.1.1.model.0.0.fn.split_attention.mlp2.weight",
    "stages.0.1.model.0.1.norm.bias",
    "stages.1.1.model.0.1.fn.0.weight",
    "stages.1.1.model.0.1.fn.3.bias",
    "mlp_head.1.weight",
]


@pytest.mark.parametrize(
    ("name", "reference", "overrides", "keys"),
    [
        ("s2mlp_wide", lambda: JittorS2MLP([16], [32], [2], 4, v2=False), {}, JITTOR_V1_KEYS),
        (
            "s2mlpv2_small",
            lambda: JittorS2MLP([7, 2], [16, 32], [1, 1], 3, v2=True),
            {"sa_hidden_ratio": 1.0, "sa_bias": False},
            JITTOR_V2_KEYS,
        ),
    ],
    ids=["v1", "v2"],
)
def test_jittor_checkpoint_loads(name, reference, overrides, keys) -> None:
    torch.manual_seed(0)
    ref = reference().eval()
    randomize(ref)
    foreign = ref.state_dict()
    assert set(keys) <= set(foreign), "the stand-in must carry Jittor-MLP's key names"

    model = create_model(name, tiny=True, **overrides)
    checkpoint_filter = get_variant(name).checkpoint_filter
    model.load_state_dict(checkpoint_filter(foreign), strict=True)
    own = model.state_dict()
    assert list(checkpoint_filter(own)) == list(own), "our own keys must pass unchanged"

    h, w = model.vmlp_cfg.input_size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_default_split_attention_is_vip_style() -> None:
    """Default reweight MLP is C -> C/4 -> 3C with biases (the paper's parameter counts need it)."""
    reweight = create_model("s2mlpv2_small", tiny=True).stages[1].blocks[0].mixer.split_attn.reweight
    assert (reweight.fc1.in_features, reweight.fc1.out_features, reweight.fc2.out_features) == (32, 8, 96)
    assert reweight.fc1.bias is not None and reweight.fc2.bias is not None


@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_params_and_macs_vs_paper(name: str) -> None:
    """Counted on the meta device: params within 2% + half a unit (or a note), MACs within 2% of the paper."""
    variant = get_variant(name)
    with torch.device("meta"):
        model = create_model(name)
        x = torch.empty(1, 3, *variant.data.input_size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    params = sum(p.numel() for p in model.parameters())
    if variant.paper.params_exclude_head:
        params -= sum(p.numel() for p in model.get_classifier().parameters())
    paper = variant.paper
    within = abs(params / 1e6 - paper.params_m) <= 0.02 * paper.params_m + 0.5
    assert within or paper.note, f"{name}: {params / 1e6:.2f}M vs paper {paper.params_m}M and no note"
    assert counter.get_total_flops() / 2e9 == pytest.approx(paper.macs_g, rel=0.02)
