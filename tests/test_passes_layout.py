"""layout: Transposes move to the narrowest tensor they reach (or cancel); rules are checked numerically.

Each rule runs on a small hand-built graph; the result must equal the original in ONNX Runtime (bit for
bit, or float round-off where a MatMul becomes a 1x1 Conv). Negative cases: a Transpose with nowhere
cheaper to go is left exactly where it is. The last tests run the whole pipeline on S2-MLPv2's mixer.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import helper as h
from vmlp_deploy.models.s2mlpv2 import ShiftSplitMixer

from vmlp_deploy.passes import optimize_model
from vmlp_deploy.onnx_io import cpu_session, op_histogram
from vmlp_deploy.passes.pipeline import layout_counts
from vmlp_deploy.passes.rule import apply_phases
from vmlp_deploy.passes.rule_sets import CPU_LAYOUT

F = onnx.TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, F, s) for n, s in inputs],
                         [h.make_tensor_value_info(n, F, s) for n, s in outputs],
                         initializer=[onnx.numpy_helper.from_array(a, n) for n, a in inits])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def _layout(model):
    work, report = apply_phases(ir.from_proto(model), [CPU_LAYOUT])
    stats = {**layout_counts(report), "total": sum(rule.fired for rule in report.rules.values())}
    work.graph.sort()
    out = ir.serde.serialize_model(work)
    onnx.checker.check_model(out)
    return out, stats


def _outputs(model, feeds):
    return cpu_session(model, threads=1, optimize=False).run(None, feeds)


def _feeds(model):
    return {i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _assert_same(a, b, *, exact=True):
    feeds = _feeds(a)
    for x, y in zip(_outputs(a, feeds), _outputs(b, feeds)):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def _transposes(model):
    return [n for n in model.graph.node if n.op_type == "Transpose"]


def test_sink_through_reductions_and_broadcast_mul_narrows_transpose():
    """S2-MLPv2's split attention in miniature: (1,3,C,H,W) -> NHWC branches -> sum and weighted sum."""
    c, hh, ww = 8, 5, 6
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 4, 2]),  # (1, 3, H, W, C)
        h.make_node("ReduceSum", ["t", "axes123"], ["a"], keepdims=0),  # (1, C): the Transpose vanishes
        h.make_node("Mul", ["t", "w"], ["m"]),  # w: (1, 3, 1, 1, C), not a constant
        h.make_node("ReduceSum", ["m", "axes1"], ["s"], keepdims=0),  # (1, H, W, C)
        h.make_node("MatMul", ["s", "w2"], ["y"]),  # cannot take the Transpose: it stops on the sum
    ], [("x", [1, 3, c, hh, ww]), ("w", [1, 3, 1, 1, c])], [("y", [1, hh, ww, c]), ("a", [1, c])],
        inits=[("axes123", np.array([1, 2, 3], np.int64)), ("axes1", np.array([1], np.int64)),
               ("w2", np.eye(c, dtype=np.float32))])
    out, stats = _layout(model)
    (t,) = _transposes(out)
    assert list(h.get_attribute_value(t.attribute[0])) == [0, 2, 3, 1]  # now on the C-channel sum
    assert stats["sunk"] == 1 and stats["elements_moved_after"] * 3 == stats["elements_moved_before"]
    _assert_same(model, out, exact=False)  # reduction order changes: round-off only


def test_sink_cancels_across_elementwise_and_keepdims_reduction():
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Add", ["t", "bias"], ["a"]),  # per-channel constant, NHWC
        h.make_node("Clip", ["a", "lo", "hi"], ["r"]),  # min/max inputs are scalars, not axes
        h.make_node("ReduceMax", ["r"], ["m"], axes=[1], keepdims=1),  # opset 17: axes attribute
        h.make_node("Transpose", ["m"], ["y"], perm=[0, 3, 1, 2]),
    ], [("x", [1, 4, 5, 6])], [("y", [1, 4, 1, 6])], inits=[("bias", np.arange(4, dtype=np.float32)), ("lo", np.array(0.5, np.float32)),
                                            ("hi", np.array(2, np.float32))])
    out, stats = _layout(model)
    assert not _transposes(out) and stats["sunk"] == 1
    _assert_same(model, out)


@pytest.mark.parametrize("consumer", ["MatMul", "output"])
def test_transpose_with_nowhere_cheaper_to_go_is_left_alone(consumer):
    nodes = [h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), h.make_node("Relu", ["t"], ["r"])]
    inits, out_shape = [], [1, 5, 6, 4]
    if consumer == "MatMul":
        nodes.append(h.make_node("MatMul", ["r", "w"], ["y"]))
        inits, out_shape = [("w", np.ones((4, 3), np.float32))], [1, 5, 6, 3]
    else:
        nodes[-1] = h.make_node("Relu", ["t"], ["y"])
    model = _model(nodes, [("x", [1, 4, 5, 6])], [("y", out_shape)], inits=inits)
    out, stats = _layout(model)
    assert stats["total"] == 0
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]


def test_side_operand_that_needs_a_real_transpose_blocks_sinking():
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 4, 2]),
        h.make_node("Mul", ["t", "w"], ["m"]),  # w is full size: it would need a Transpose of its own
        h.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=0),
    ], [("x", [1, 3, 4, 5, 6]), ("w", [1, 3, 5, 6, 4])], [("y", [1, 5, 6, 4])],
        inits=[("axes", np.array([1], np.int64))])
    out, stats = _layout(model)
    assert stats["sunk"] == 0 and len(_transposes(out)) == 1
    _assert_same(model, out)


def _linear_then_transpose(k, n, form):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    b = RNG.standard_normal(n).astype(np.float32)
    if form == "matmul":
        nodes = [h.make_node("MatMul", ["x", "w"], ["mm"]), h.make_node("Add", ["mm", "b"], ["lin"])]
        inits = [("w", w), ("b", b)]
    else:  # the flattened form onnxsim leaves: Reshape -> Gemm(transB) -> Reshape
        nodes = [h.make_node("Reshape", ["x", "flat"], ["x2"]),
                 h.make_node("Gemm", ["x2", "wt", "b"], ["g"], transB=1),
                 h.make_node("Reshape", ["g", "unflat"], ["lin"])]
        inits = [("wt", np.ascontiguousarray(w.T)), ("b", b), ("flat", np.array([30, k], np.int64)),
                 ("unflat", np.array([1, 5, 6, n], np.int64))]
    nodes.append(h.make_node("Transpose", ["lin"], ["y"], perm=[0, 3, 1, 2]))
    return _model(nodes, [("x", [1, 5, 6, k])], [("y", [1, n, 5, 6])], inits=inits)


@pytest.mark.parametrize("form", ["matmul", "gemm"])
def test_widening_linear_becomes_1x1_conv_after_the_transpose(form):
    model = _linear_then_transpose(4, 12, form)
    out, stats = _layout(model)
    assert stats["hoisted_into_conv"] == 1
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Transpose", "Conv"]
    assert stats["elements_moved_after"] * 3 == stats["elements_moved_before"]
    _assert_same(model, out, exact=False)


def test_narrowing_linear_is_not_turned_into_a_conv():
    model = _linear_then_transpose(12, 4, "matmul")
    out, stats = _layout(model)
    assert stats["total"] == 0 and "Conv" not in op_histogram(out)


def test_transpose_of_unit_axes_becomes_reshape():
    model = _model([h.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1, 3])], [("x", [2, 1, 1, 6])],
                   [("y", [2, 1, 1, 6])])
    out, stats = _layout(model)
    assert stats["to_reshape"] == 1 and op_histogram(out) == {"Reshape": 1}
    _assert_same(model, out)


# ------------------------------------------------------------------- whole pipeline on S2-MLPv2's mixer


@pytest.fixture(scope="module")
def mixer_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    module = ShiftSplitMixer(16, 0.25, True).eval()
    buf = io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, 6, 7, 16),), buf, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def _moved(model: onnx.ModelProto) -> int:
    inferred = ir.from_proto(onnx.shape_inference.infer_shapes(model))
    return sum(int(np.prod(n.outputs[0].shape.numpy())) for n in inferred.graph if n.op_type == "Transpose")


def test_s2mlpv2_mixer_transposes_move_to_c_channels(mixer_model):
    plain = optimize_model(mixer_model, layout=False)
    result = optimize_model(mixer_model)
    layout = result.layout_counts()
    assert result.verification.passed and layout["hoisted_into_conv"] == 1 and layout["sunk"] == 1
    assert _moved(result.model) * 3 == _moved(plain.model)  # 2 x 3C*H*W -> 2 x C*H*W
    assert {"ScatterND", "Concat"}.isdisjoint(result.ops_after)
    # one Split picks the three split-attention branches of the 4-D tensor (no 5-D view any more)
    assert result.layout_counts()["group_views"] == 1 and result.ops_after["Split"] == 1 and "Slice" not in result.ops_after
    assert result.ops_after["MatMul"] == 1  # mlp1 became the 1x1 Conv; mlp2 stays


def test_edge_mask_formulation_is_exact_and_pad_free(mixer_model):
    pad = optimize_model(mixer_model, edge="pad")
    mask = optimize_model(mixer_model, edge="mask")
    assert mask.verification.passed and "Pad" not in mask.ops_after and pad.ops_after.get("Pad") == 1
    x = RNG.standard_normal((1, 6, 7, 16)).astype(np.float32)
    name = mixer_model.graph.input[0].name
    a = cpu_session(pad.model, threads=1, optimize=False).run(None, {name: x})[0]
    b = cpu_session(mask.model, threads=1, optimize=False).run(None, {name: x})[0]
    np.testing.assert_array_equal(a, b)


def test_bad_edge_option_is_rejected(mixer_model):
    with pytest.raises(ValueError, match="edge"):
        optimize_model(mixer_model, edge="reflect")
