"""The channels-first lowering (``--target openvino|npu``): hand-built graphs, outputs equal in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from vmlp_deploy.onnx_io import cpu_session, op_histogram
from vmlp_deploy.passes import optimize_model
from vmlp_deploy.passes._graph import infer_shapes
from vmlp_deploy.passes.pipeline import channels_first_counts
from vmlp_deploy.passes.rule import apply_phases
from vmlp_deploy.passes.rule_sets import CHANNELS_FIRST, GROUP_VIEWS
from vmlp_deploy.passes.npu import npu_report


def _model(nodes, inits, x_shape, y_shape, opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(a.astype(np.int64 if a.dtype.kind == "i" else np.float32), n) for n, a in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _lower(model: onnx.ModelProto):
    work, report = apply_phases(infer_shapes(model), [CHANNELS_FIRST, GROUP_VIEWS])
    stats = channels_first_counts(report)
    work.graph.sort()
    out = ir.serde.serialize_model(work)
    onnx.checker.check_model(out, full_check=True)
    return out, stats


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, shape, seed: int = 0) -> None:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ref = cpu_session(a).run(None, {"x": x})[0]
    out = cpu_session(b).run(None, {"x": x})[0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


def _block(c: int, h: int, w: int, opset: int = 18) -> onnx.ModelProto:
    """NCHW in -> NHWC -> LN -> MatMul+b -> GELU(erf) -> flattened Gemm -> residual Add -> NHWC out."""
    rng = np.random.default_rng(1)
    inits = {
        "g": rng.standard_normal(c), "beta": rng.standard_normal(c), "w1": rng.standard_normal((c, 2 * c)),
        "b1": rng.standard_normal(2 * c), "w2": rng.standard_normal((c, 2 * c)), "b2": rng.standard_normal(c),
        "half": np.array(0.5), "one": np.array(1.0), "sqrt2": np.array(np.sqrt(2.0)),
        "flat": np.array([h * w, 2 * c]), "back": np.array([1, h, w, c]),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "g", "beta"], ["ln"], axis=-1, epsilon=1e-6),
        helper.make_node("MatMul", ["ln", "w1"], ["mm"]),
        helper.make_node("Add", ["mm", "b1"], ["fc1"]),
        helper.make_node("Div", ["fc1", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["fc1", "e1"], ["g1"]),
        helper.make_node("Mul", ["g1", "half"], ["gelu"]),
        helper.make_node("Reshape", ["gelu", "flat"], ["rows"]),
        helper.make_node("Gemm", ["rows", "w2", "b2"], ["fc2"], transB=1),
        helper.make_node("Reshape", ["fc2", "back"], ["fc2_4d"]),
        helper.make_node("Add", ["t", "fc2_4d"], ["y"]),
    ]
    return _model(nodes, inits, [1, c, h, w], [1, h, w, c], opset)


@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 9), h=st.integers(1, 5), w=st.integers(1, 5), opset=st.sampled_from([17, 18]))
def test_block_runs_channels_first_and_matches(c: int, h: int, w: int, opset: int) -> None:
    model = _block(c, h, w, opset)
    lowered, stats = _lower(model)
    _assert_same(model, lowered, (1, c, h, w))
    ops = op_histogram(lowered)
    assert stats["layernorms"] == 1 and stats["linears_to_conv"] == 2
    assert ops.get("Conv") == 2 and "MatMul" not in ops and "Gemm" not in ops and "LayerNormalization" not in ops
    assert ops.get("Transpose") == 1  # the graph output is channels-last: put back once, at the very end
    assert lowered.graph.node[-1].op_type == "Transpose"


def test_op_it_cannot_take_gets_the_transpose_back_once() -> None:
    inits = {"axes": np.array([3])}
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("Softmax", ["r"], ["s"], axis=-1),  # not rewritten: needs channels-last
        helper.make_node("Concat", ["s", "r"], ["y"], axis=3),
    ]
    model = _model(nodes, inits, [1, 3, 4, 5], [1, 4, 5, 6])
    lowered, stats = _lower(model)
    _assert_same(model, lowered, (1, 3, 4, 5))
    assert op_histogram(lowered).get("Transpose") == 1 and stats["transposes_restored"] == 1


def test_graph_without_channels_last_transposes_is_left_alone() -> None:
    inits = {"w": np.ones((3, 3, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    model = _model(nodes, inits, [1, 3, 4, 4], [1, 3, 4, 4])
    result = optimize_model(model, target="openvino")
    assert not result.changed and result.model is model


def test_target_npu_lists_what_an_npu_may_reject() -> None:
    model = _block(4, 3, 3)
    report = npu_report(model)
    assert report.unsupported == {"Erf": 1, "LayerNormalization": 1} and report.nd_matmuls == 1
    result = optimize_model(model, target="npu")
    assert result.npu.unsupported == {"Erf": 1} and result.npu.nd_matmuls == 0
    assert "Erf x1" in result.npu.summary() and result.to_dict()["npu"]["unsupported"] == {"Erf": 1}


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        optimize_model(_block(2, 2, 2), target="gpu")


def _nodes_model(nodes, inits, inputs: dict, out_shape, out_type=TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, out_shape)], [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _check_equal(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
    lowered, _ = _lower(model)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in inputs.items()}
    np.testing.assert_allclose(cpu_session(lowered).run(None, feeds)[0], cpu_session(model).run(None, feeds)[0],
                               atol=1e-5)
    return lowered


def test_binary_op_keeps_its_attributes() -> None:  # Mod(fmod=1) must not become Mod(fmod=0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Mod", ["t", "c"], ["y"], fmod=1)]
    _check_equal(_nodes_model(nodes, {"c": np.full(4, 0.7, np.float32)}, {"x": [1, 4, 3, 5]}, [1, 3, 5, 4]),
                 {"x": [1, 4, 3, 5]})


def test_integer_matmul_is_not_made_a_conv() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT32),
             helper.make_node("Transpose", ["xi"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "w"], ["m"]), helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)]
    model = _nodes_model(nodes, {"w": np.ones((4, 2), np.int32)}, {"x": [1, 4, 3, 5]}, [1, 3, 5, 2])
    assert "Conv" not in op_histogram(_check_equal(model, {"x": [1, 4, 3, 5]}))


def test_flattened_operands_from_different_shapes_are_not_mixed() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["z"], ["s"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "f"], ["a"]), helper.make_node("Reshape", ["s", "f"], ["c"]),
             helper.make_node("Add", ["a", "c"], ["y"])]
    inputs = {"x": [1, 4, 3, 5], "z": [1, 4, 5, 3]}
    _check_equal(_nodes_model(nodes, {"f": np.array([15, 4])}, inputs, [15, 4]), inputs)


def test_value_read_inside_a_branch_gets_its_transpose_back() -> None:
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 5, 4]) for n in ("o1", "o2")]
    then = helper.make_graph([helper.make_node("Relu", ["t"], ["o1"])], "then", [], [out[0]])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["o2"])], "else", [], [out[1]])
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    model = _nodes_model(nodes, {"zero": np.array(0.0, np.float32)}, {"x": [1, 4, 3, 5]}, [1, 3, 5, 4])
    _check_equal(model, {"x": [1, 4, 3, 5]})
