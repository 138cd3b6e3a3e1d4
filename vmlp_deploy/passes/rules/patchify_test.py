"""Patch-embedding Conv read back channels-last -> space-to-depth + MatMul: outputs equal, no Conv left."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from vmlp_deploy.onnx_io import cpu_session, op_histogram
from vmlp_deploy.passes._graph import infer_shapes
from vmlp_deploy.passes.rule import apply_phases
from vmlp_deploy.passes.rule_sets import PATCHIFY


def _graph(c: int, k: int, stride: int, h: int, w: int, from_channels_last: bool, bias: bool = True):
    rng = np.random.default_rng(0)
    cout = 5
    inits = [numpy_helper.from_array(rng.standard_normal((cout, c, k, k)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
    conv_in = "x"
    nodes = []
    if from_channels_last:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        conv_in = "x_nchw"
    nodes += [
        helper.make_node("Conv", [conv_in, "w", *(["b"] if bias else [])], ["c"], kernel_shape=[k, k],
                         strides=[stride, stride]),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
    ]
    x_shape = [2, h, w, c] if from_channels_last else [2, c, h, w]
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, ho, wo, cout])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), x_shape


def _apply(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    work, report = apply_phases(infer_shapes(model), [PATCHIFY])
    done = report.fired("patch-conv-to-matmul")
    out = ir.serde.serialize_model(work)
    onnx.checker.check_model(out, full_check=True)
    return out, done


@pytest.mark.parametrize("from_channels_last", [False, True])
@pytest.mark.parametrize(("c", "k", "h", "w", "bias"), [(3, 4, 8, 12, True), (2, 2, 6, 4, False), (1, 3, 3, 9, True)])
def test_patch_conv_becomes_matmul_with_equal_outputs(from_channels_last, c, k, h, w, bias) -> None:
    model, x_shape = _graph(c, k, k, h, w, from_channels_last, bias)
    out, done = _apply(model)
    assert done == 1
    ops = op_histogram(out)
    assert "Conv" not in ops and ops["MatMul"] == 1 and ops["Transpose"] == 1  # the one that gathers patch pixels
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    np.testing.assert_allclose(cpu_session(out).run(None, {"x": x})[0], cpu_session(model).run(None, {"x": x})[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("k", "stride", "h"), [(3, 2, 7), (4, 4, 10)])  # overlapping patches; a ragged edge
def test_other_convs_are_left_alone(k: int, stride: int, h: int) -> None:
    model, _ = _graph(3, k, stride, h, h, False)
    out, done = _apply(model)
    assert done == 0 and op_histogram(out) == op_histogram(model)
