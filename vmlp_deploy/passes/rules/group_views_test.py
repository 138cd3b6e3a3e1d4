"""flatten-group-views: S2-MLPv2's split attention runs on the 4-D tensor, not a 5-D view of it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from vmlp_deploy.onnx_io import op_histogram
from vmlp_deploy.passes.rules.group_views import FlattenGroupViews
from vmlp_deploy.passes.testing import assert_same_outputs, graph_model, run_rules


def test_split_attention_group_view_runs_on_the_4d_tensor() -> None:
    k, c, h, w = 3, 4, 5, 6
    inits = {"shape5": np.array([1, k, c, h, w]), "axes_bhw": np.array([1, 3, 4]), "axis_k": np.array([1]),
             "w_shape": np.array([1, k, c, 1, 1])}
    nodes = [
        helper.make_node("Reshape", ["x", "shape5"], ["v"]),
        helper.make_node("ReduceSum", ["v", "axes_bhw"], ["a"], keepdims=0),  # (1, C)
        helper.make_node("Concat", ["a", "a", "a"], ["a3"], axis=1),
        helper.make_node("Softmax", ["a3"], ["s"], axis=1),
        helper.make_node("Reshape", ["s", "w_shape"], ["wts"]),
        helper.make_node("Mul", ["v", "wts"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis_k"], ["y"], keepdims=0),
    ]
    model = graph_model(nodes, {"x": [1, k * c, h, w]}, {"y": [1, c, h, w]}, inits, opset=18)
    lowered, report = run_rules(model, FlattenGroupViews, shapes=True)
    assert_same_outputs(model, lowered, exact=False)
    assert report.fired("flatten-group-views") == 1
    ranks = {len(v.type.tensor_type.shape.dim) for v in onnx.shape_inference.infer_shapes(lowered).graph.value_info
             if v.type.tensor_type.shape.dim[-1].dim_value == w}
    assert ranks == {4}  # nothing of size H x W is 5-D any more
    assert op_histogram(lowered)["Split"] == 1 and "Slice" not in op_histogram(lowered)
    again, again_report = run_rules(lowered, FlattenGroupViews, shapes=True)  # a 1x1-position view is left alone
    assert again_report.fired("flatten-group-views") == 0 and op_histogram(again) == op_histogram(lowered)
