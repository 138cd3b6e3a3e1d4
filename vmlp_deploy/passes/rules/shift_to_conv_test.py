"""End to end: token-mixing idioms exported by both PyTorch exporters become Pad + one depthwise Conv.

Each idiom is a tiny torch module with a Linear/Conv before and after it, so it looks like a real block.
It is exported with the TorchScript exporter (``dynamo=False``, opset 17) and the dynamo exporter
(``dynamo=True``, opset 18), optimised, and checked: the rewritten model equals the original in ONNX
Runtime, no shift op (ScatterND, Slice, Concat, Split, ...) survives and the node count drops. Graphs
without the idiom, and near misses, must come back untouched.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from vmlp_deploy.passes import OptimizeResult, optimize_model
from vmlp_deploy.onnx_io import cpu_session

EXPORTERS = ("torchscript", "dynamo")
#: Ops that only implement the shift idioms in these test models; none may survive the rewrite.
SHIFT_OPS = {"ScatterND", "ScatterElements", "Slice", "Concat", "Split", "SplitToSequence", "SequenceAt",
             "Where", "Expand", "GatherElements", "GatherND", "Unsqueeze", "Squeeze"}
HYPOTHESIS = settings(max_examples=15, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------- idioms


class Block(nn.Module):
    """``post(mix(pre(x)))`` with a Linear (NHWC) or 1x1 Conv (NCHW) around the token mixer."""

    def __init__(self, c: int, layout: str):
        super().__init__()
        self.layout = layout
        make = (lambda: nn.Linear(c, c)) if layout == "NHWC" else (lambda: nn.Conv2d(c, c, 1))
        self.pre, self.post = make(), make()

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        return self.post(self.mix(self.pre(x)))


class S2SliceAssign(Block):
    """S2-MLP shift: four channel groups (c // 4 each) moved by one pixel with slice assignment.

    Border rows keep their own value (edge replicate). Empty slices are skipped (same result); the
    TorchScript exporter crashes the process (SIGFPE) on an empty slice assignment.
    """

    def __init__(self, c: int, layout: str = "NHWC", inplace: bool = False):
        super().__init__(c, layout)
        self.inplace = inplace

    def mix(self, x):
        c, hax, wax = (x.shape[1], 2, 3) if self.layout == "NCHW" else (x.shape[3], 1, 2)
        out = x if self.inplace else x.clone()
        groups = [(0, c // 4, hax, 1), (c // 4, c // 2, hax, -1), (c // 2, c * 3 // 4, wax, 1), (c * 3 // 4, c, wax, -1)]
        for lo, hi, axis, step in groups:
            size = x.shape[axis]
            if hi <= lo or size < 2:
                continue
            dst = [slice(None)] * 4
            src = [slice(None)] * 4
            cax = 1 if self.layout == "NCHW" else 3
            dst[cax] = src[cax] = slice(lo, hi)
            dst[axis], src[axis] = (slice(1, None), slice(0, size - 1)) if step > 0 else (slice(0, size - 1), slice(1, None))
            out[tuple(dst)] = (x if not self.inplace else out)[tuple(src)]
        return out


class RollChunks(Block):
    """MS-MLP / Hire-MLP style: torch.chunk (unequal chunks for c % n != 0), torch.roll per chunk, cat."""

    def __init__(self, c: int, shift: int = 1, n: int = 3, layout: str = "NCHW"):
        super().__init__(c, layout)
        self.shifts = [shift * (i - n // 2) for i in range(n)]
        self.cax, self.dims = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))

    def mix(self, x):
        chunks = torch.chunk(x, len(self.shifts), self.cax)
        return torch.cat([torch.roll(t, (s, -s), self.dims) for t, s in zip(chunks, self.shifts)], self.cax)


class PadRollNarrow(Block):
    """AS-MLP axial shift: zero pad, channel groups rolled by -p..p, cat, narrow back (zero border)."""

    def __init__(self, c: int, shift: int = 1, dim: int = 2):
        super().__init__(c, "NCHW")
        self.pad, self.dim = shift, dim

    def mix(self, x):
        _, _, h, w = x.shape
        p = self.pad
        x = F.pad(x, (p, p, p, p), "constant", 0)
        groups = torch.tensor_split(x, 2 * p + 1, 1)
        x = torch.cat([torch.roll(g, s, self.dim) for g, s in zip(groups, range(-p, p + 1))], 1)
        return torch.narrow(torch.narrow(x, 2, p, h), 3, p, w)


class ReplicateCrop(Block):
    """Edge-replicate pad, then a differently offset crop per channel group, then cat."""

    def __init__(self, c: int, shift: int = 1):
        super().__init__(c, "NCHW")
        self.s = shift

    def mix(self, x):
        h, w = x.shape[2:]
        s = self.s
        xp = F.pad(x, (s, s, s, s), mode="replicate")
        offsets = [(0, 0), (2 * s, 0), (s, 2 * s), (s, 0), (s, s)]
        groups = torch.tensor_split(xp, len(offsets), 1)
        return torch.cat([g[:, :, oy:oy + h, ox:ox + w] for g, (oy, ox) in zip(groups, offsets)], 1)


class S2v2Mixer(nn.Module):
    """S2-MLPv2 token mixer (NHWC): mlp1 to 3c, two shifted thirds and one plain third, stack, fuse."""

    def __init__(self, c: int):
        super().__init__()
        self.mlp1 = nn.Linear(c, 3 * c)
        self.mlp2 = nn.Linear(c, c)
        self.att = nn.Linear(c, 3 * c, bias=False)

    @staticmethod
    def shift(x, order):
        c = x.shape[3]
        q = c // 4
        ax = (1, 2) if order == 1 else (2, 1)
        for (lo, hi), axis, step in zip([(0, q), (q, 2 * q), (2 * q, 3 * q), (3 * q, c)], (ax[0], ax[0], ax[1], ax[1]),
                                        (1, -1, 1, -1)):
            n = x.shape[axis]
            if hi <= lo or n < 2:
                continue
            dst, src = [slice(None)] * 4, [slice(None)] * 4
            dst[3] = src[3] = slice(lo, hi)
            dst[axis], src[axis] = (slice(1, None), slice(0, n - 1)) if step > 0 else (slice(0, n - 1), slice(1, None))
            x[tuple(dst)] = x[tuple(src)]
        return x

    def forward(self, x):
        b, h, w, c = x.shape
        x = self.mlp1(x)
        x1 = self.shift(x[:, :, :, :c], 1)
        x2 = self.shift(x[:, :, :, c:2 * c], 2)
        x3 = x[:, :, :, 2 * c:]
        x_all = torch.stack([x1, x2, x3], 1).reshape(b, 3, -1, c)
        a = self.att(x_all.sum(1).sum(1)).reshape(b, 3, 1, c).softmax(1)
        return self.mlp2((a * x_all).sum(1).reshape(b, h, w, c))


# ------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=256)
def export(factory, args: tuple, shape: tuple, exporter: str, *, seed: int = 0) -> bytes:
    """Serialized ONNX of ``factory(*args)`` for an input of ``shape`` (cached: dynamo export is slow)."""
    torch.manual_seed(seed)
    module = factory(*args).eval()
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            return torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False).model_proto \
                .SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17)
        return buf.getvalue()


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = cpu_session(model, threads=1, optimize=False)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def check_rewritten(result: OptimizeResult, original: onnx.ModelProto, shape: tuple, *, kinds: set[str]):
    """The common contract: equal outputs, no shift op left, fewer nodes; or, with nothing to find, no change.

    Degenerate parameters (1x1 maps, empty channel groups) can leave a model without any shift op at all;
    then nothing may change. A uniform shift (every channel moved alike) is Pad + Slice, not a Conv.
    """
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    try:
        expected = run(original, x)
    except Exception:  # noqa: BLE001 - TorchScript exports torch.chunk(c < chunks) into an invalid Split
        assert result.model is original and not result.patterns
        return
    if not result.patterns:
        assert not SHIFT_OPS & set(result.ops_before), f"idiom not recognised: {result.ops_before}"
        assert result.model is original
        return
    assert {p.plan.kind for p in result.patterns} <= kinds | {"layout/identity"}
    assert not result.rolled_back
    assert result.verification is not None and result.verification.passed
    assert result.verification.max_abs_diff <= 1e-6
    np.testing.assert_allclose(run(result.model, x), expected, rtol=0, atol=1e-6)
    uniform = sum(p.plan.uniform and not p.plan.is_layout_only for p in result.patterns)
    survivors = {op: n for op, n in result.ops_after.items() if op in SHIFT_OPS}
    assert survivors in ({}, {"Slice": uniform}), f"shift ops survived: {survivors} in {result.ops_after}"
    assert result.nodes_after < result.nodes_before
    onnx.checker.check_model(result.model, full_check=True)


def optimize(factory, args, shape, exporter) -> tuple[OptimizeResult, onnx.ModelProto]:
    original = onnx.load_from_string(export(factory, args, shape, exporter))
    return optimize_model(original), original


# ------------------------------------------------------------------------------------------- idioms, fixed


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("layout, inplace", [("NHWC", False), ("NHWC", True), ("NCHW", False)])
def test_s2_slice_assign_becomes_edge_pad_and_one_conv(exporter, layout, inplace):
    shape = (1, 5, 6, 8) if layout == "NHWC" else (1, 8, 5, 6)
    result, original = optimize(S2SliceAssign, (8, layout, inplace), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/edge"})
    (site,) = result.patterns
    assert site.plan.layout == layout and site.plan.c_out == 8 and site.plan.max_shift == 1
    assert site.plan.shift_histogram() == {"+0,+1": 2, "+0,-1": 2, "+1,+0": 2, "-1,+0": 2}
    assert result.ops_after.get("Conv", 0) - result.ops_before.get("Conv", 0) == 1
    assert result.ops_after.get("Pad") == 1
    # NHWC needs the Conv in NCHW: exactly one Transpose in and one out, nothing else.
    assert result.ops_after.get("Transpose", 0) == (2 if layout == "NHWC" else 0)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_roll_with_unequal_chunks_becomes_wrap_pad_and_one_conv(exporter):
    shape = (1, 7, 5, 6)  # torch.chunk(7, 3) -> 3, 3, 1 channels
    result, original = optimize(RollChunks, (7, 1), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/circular"})
    (site,) = result.patterns
    assert site.plan.shift_histogram() == {"+0,+0": 3, "+1,-1": 3, "-1,+1": 1}  # out[h] = in[h - roll]
    assert result.ops_after.get("Pad") == 1 and result.model.opset_import[0].version >= 19


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("dim", [2, 3])
def test_as_mlp_pad_roll_narrow_becomes_zero_pad_and_one_conv(exporter, dim):
    shape = (1, 9, 5, 6)
    result, original = optimize(PadRollNarrow, (9, 2, dim), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/zero"})
    (site,) = result.patterns
    lo_h, hi_h, lo_w, hi_w = site.plan.kernel_range
    assert (hi_h - lo_h, hi_w - lo_w) == ((4, 0) if dim == 2 else (0, 4))  # a 5x1 or 1x5 kernel


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_s2v2_mixer_merges_shifted_and_plain_branches_into_one_conv(exporter):
    c, shape = 8, (1, 4, 5, 8)
    result, original = optimize(S2v2Mixer, (c,), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/edge"})
    (site,) = result.patterns
    assert site.plan.c_out == 3 * c  # both shifted thirds and the plain third in one grouped Conv
    assert site.plan.shift_histogram()["+0,+0"] == c
    grouped = [n for n in result.model.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) == 1  # (the Linear before it may have become a 1x1 Conv: see test_passes_layout)


def test_stacked_blocks_each_rewritten_and_report_is_complete():
    layers = nn.Sequential(S2SliceAssign(8, "NCHW"), RollChunks(8, 1), PadRollNarrow(8, 1, 3))
    shape = (1, 8, 6, 6)
    result, original = optimize(lambda: layers, (), shape, "torchscript")
    check_rewritten(result, original, shape, kinds={"shift/edge", "shift/circular", "shift/zero"})
    assert result.pattern_counts() == {"shift/circular NCHW": 1, "shift/edge NCHW": 1, "shift/zero NCHW": 1}
    report = result.to_dict()
    assert report["nodes_before"] > report["nodes_after"] and report["verification"]["passed"]
    assert {"kind", "layout", "channels", "max_shift", "region_ops", "shifts"} <= set(report["patterns"][0])
    assert any("shift/edge" in line for line in result.summary_lines())


# ------------------------------------------------------------------------------------------- hypothesis

channels = st.integers(1, 11)
sizes = st.sampled_from([1, 2, 3, 5])
exporters = st.sampled_from(EXPORTERS)


@HYPOTHESIS
@given(c=channels, h=sizes, w=sizes, layout=st.sampled_from(["NHWC", "NCHW"]), exporter=exporters)
def test_property_s2_edge(c, h, w, layout, exporter):
    shape = (1, h, w, c) if layout == "NHWC" else (1, c, h, w)
    result, original = optimize(S2SliceAssign, (c, layout, False), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/edge"})


@HYPOTHESIS
@given(c=channels, h=sizes, w=sizes, shift=st.integers(1, 3), layout=st.sampled_from(["NHWC", "NCHW"]),
       exporter=exporters)
def test_property_roll_circular(c, h, w, shift, layout, exporter):
    shape = (1, h, w, c) if layout == "NHWC" else (1, c, h, w)
    result, original = optimize(RollChunks, (c, shift, 3, layout), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/circular"})


@HYPOTHESIS
@given(c=st.integers(3, 11), h=sizes, w=sizes, shift=st.integers(1, 3), dim=st.sampled_from([2, 3]),
       exporter=exporters)
def test_property_pad_roll_narrow_zero(c, h, w, shift, dim, exporter):
    shape = (1, c, h, w)
    result, original = optimize(PadRollNarrow, (c, shift, dim), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/zero"})


@HYPOTHESIS
@given(c=st.integers(5, 11), h=sizes, w=sizes, shift=st.integers(1, 3), exporter=exporters)
def test_property_replicate_crop_edge(c, h, w, shift, exporter):
    shape = (1, c, h, w)
    result, original = optimize(ReplicateCrop, (c, shift), shape, exporter)
    check_rewritten(result, original, shape, kinds={"shift/edge"})


# ------------------------------------------------------------------------------------------- left alone


class NoIdiom(nn.Module):
    """Conv, ReLU, a Mixer-style token MLP (transpose + Linear over tokens), Conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.tokens = nn.Linear(12, 12)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        b, c, h, w = x.shape
        t = self.tokens(x.reshape(b, c, h * w)).reshape(b, c, h, w)
        return self.conv2(t.permute(0, 1, 3, 2).reshape(b, c, h, w))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_graph_without_idiom_is_returned_unchanged(exporter):
    original = onnx.load_from_string(export(NoIdiom, (), (1, 4, 3, 4), exporter))
    before = original.SerializeToString()
    result = optimize_model(original)
    assert result.model is original and result.model.SerializeToString() == before
    assert not result.patterns and result.nodes_after == result.nodes_before


def _near_miss_graph(kind: str) -> onnx.ModelProto:
    """Hand-built graphs that look like a roll but are not a provable spatial shift."""
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 5, 6])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4, 5, 6])
    inits = [onnx.numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in [("zero", 0), ("one", 1), ("big", 2**62), ("ax0", 0), ("ax2", 2), ("m1", -1)]]
    inits.append(onnx.numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"))
    inputs = [x]
    nodes = [h.make_node("Conv", ["x", "w"], ["a"]), h.make_node("Conv", ["a", "w"], ["b"])]
    if kind == "runtime_shift":  # roll whose split point is a graph input
        inputs.append(h.make_tensor_value_info("k", onnx.TensorProto.INT64, [1]))
        nodes += [h.make_node("Slice", ["a", "k", "big", "ax2"], ["p"]),
                  h.make_node("Slice", ["a", "zero", "k", "ax2"], ["q"])]
    elif kind == "batch_axis":  # roll along the batch axis
        nodes += [h.make_node("Slice", ["a", "one", "big", "ax0"], ["p"]),
                  h.make_node("Slice", ["a", "zero", "one", "ax0"], ["q"])]
    elif kind == "two_tensors":  # looks like a roll, but the halves come from different tensors
        nodes += [h.make_node("Slice", ["a", "m1", "big", "ax2"], ["p"]),
                  h.make_node("Slice", ["b", "zero", "m1", "ax2"], ["q"])]
    axis = 0 if kind == "batch_axis" else 2
    nodes.append(h.make_node("Concat", ["p", "q"], ["c"], axis=axis))
    nodes.append(h.make_node("Conv", ["c", "w"], ["y"]))
    graph = h.make_graph(nodes, kind, inputs, [y], initializer=inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["runtime_shift", "batch_axis", "two_tensors"])
def test_near_misses_are_left_alone(kind):
    original = _near_miss_graph(kind)
    onnx.checker.check_model(original, full_check=True)
    result = optimize_model(original)
    assert result.model is original and not result.patterns


def test_control_roll_is_rewritten():
    """The near-miss graphs minus the flaw: a real roll along H is found."""
    original = _near_miss_graph("two_tensors")
    original.graph.node[3].input[0] = "a"
    result = optimize_model(original)
    assert [p.plan.kind for p in result.patterns] == ["shift/circular"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_s2_shift_by_two_keeps_its_border_and_is_left_alone(exporter):
    """``x[:, 2:] = x[:, :-2]`` keeps rows 0 and 1: no border rule explains it, so it is not guessed."""

    class ShiftTwo(Block):
        def __init__(self):
            super().__init__(4, "NCHW")

        def mix(self, x):
            out = x.clone()
            out[:, :2, 2:, :] = x[:, :2, :-2, :]
            return out

    original = onnx.load_from_string(export(ShiftTwo, (), (1, 4, 6, 5), exporter))
    result = optimize_model(original)
    assert result.model is original and not result.patterns
    assert result.skipped and "translation" in result.skipped[0].reason


def test_dynamic_spatial_size_is_left_alone():
    module = RollChunks(6, 1).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 6, 5, 5),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}})
    original = onnx.load_from_string(buf.getvalue())
    result = optimize_model(original)
    assert result.model is original and not result.patterns
