"""transpose_cleanup: Transposes that meet (directly or across elementwise ops) cancel; others stay put."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper as h

from vmlp_deploy.onnx_io import cpu_session, op_histogram
from vmlp_deploy.passes.pipeline import cleanup_counts
from vmlp_deploy.passes.rule import apply_phases
from vmlp_deploy.passes.rule_sets import CLEANUP


def _model(nodes, inits=(), out_shape=None):
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 6])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)
    graph = h.make_graph(nodes, "g", [x], [y], initializer=[onnx.numpy_helper.from_array(a, n) for n, a in inits])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _clean(model):
    work, report = apply_phases(ir.from_proto(model), [CLEANUP])
    return ir.serde.serialize_model(work), cleanup_counts(report)


def _same_outputs(a, b):
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    out_a = cpu_session(a, threads=1, optimize=False).run(None, {"x": x})[0]
    out_b = cpu_session(b, threads=1, optimize=False).run(None, {"x": x})[0]
    np.testing.assert_array_equal(out_a, out_b)


def test_transposes_cancel_across_elementwise_ops_with_constants():
    bias = np.arange(4, dtype=np.float32)  # per-channel in NHWC: broadcast over the last axis
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Relu", ["t"], ["r"]),
        h.make_node("Add", ["r", "bias"], ["a"]),
        h.make_node("Mul", ["a", "half"], ["m"]),
        h.make_node("Transpose", ["m"], ["y"], perm=[0, 3, 1, 2]),
    ], inits=[("bias", bias), ("half", np.array(0.5, np.float32))], out_shape=[1, 4, 5, 6])
    cleaned, stats = _clean(model)
    assert "Transpose" not in op_histogram(cleaned)
    assert stats["transposes_cancelled"] == 2
    _same_outputs(model, cleaned)


def test_transpose_pair_composes_into_one():
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1, 3]),
    ], out_shape=[1, 6, 5, 4])
    cleaned, stats = _clean(model)
    assert op_histogram(cleaned) == {"Transpose": 1} and stats["transposes_folded"] == 1
    _same_outputs(model, cleaned)


def test_lonely_transpose_is_not_moved():
    w = np.ones((4, 3), np.float32)
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Relu", ["t"], ["r"]),
        h.make_node("MatMul", ["r", "w"], ["y"]),
    ], inits=[("w", w)], out_shape=[1, 5, 6, 3])
    cleaned, stats = _clean(model)
    assert sum(stats.values()) == 0
    assert [n.op_type for n in cleaned.graph.node] == ["Transpose", "Relu", "MatMul"]


def test_branching_value_blocks_sinking():
    model = _model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Relu", ["t"], ["r"]),
        h.make_node("Transpose", ["r"], ["u"], perm=[0, 3, 1, 2]),
        h.make_node("Add", ["u", "x"], ["v"]),
        h.make_node("Transpose", ["r"], ["w"], perm=[0, 3, 1, 2]),
        h.make_node("Add", ["v", "w"], ["y"]),
    ], out_shape=[1, 4, 5, 6])
    cleaned, _ = _clean(model)
    _same_outputs(model, cleaned)


@pytest.mark.parametrize("second", [[1, 4, 30], [1, -1]])
def test_reshape_chain_folds(second):
    model = _model([
        h.make_node("Reshape", ["x", "s1"], ["r"]),
        h.make_node("Reshape", ["r", "s2"], ["y"]),
    ], inits=[("s1", np.array([4, 30], np.int64)), ("s2", np.array(second, np.int64))])
    cleaned, stats = _clean(model)
    assert op_histogram(cleaned) == {"Reshape": 1} and stats["reshapes_folded"] == 1
    _same_outputs(model, cleaned)
