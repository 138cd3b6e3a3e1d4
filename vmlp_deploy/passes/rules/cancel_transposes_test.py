"""cancel-transposes: Transposes that meet across elementwise ops cancel; a lonely one stays where it is."""

from __future__ import annotations

import numpy as np
from onnx import helper as h

from vmlp_deploy.passes.pipeline import cleanup_counts
from vmlp_deploy.passes.rules.cancel_transposes import CancelTransposes
from vmlp_deploy.passes.testing import assert_same_outputs, graph_model, ops, run_rules

X = {"x": [1, 4, 5, 6]}


def test_transposes_cancel_across_elementwise_ops_with_constants() -> None:
    bias = np.arange(4, dtype=np.float32)  # per-channel in NHWC: broadcast over the last axis
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Relu", ["t"], ["r"]),
        h.make_node("Add", ["r", "bias"], ["a"]),
        h.make_node("Mul", ["a", "half"], ["m"]),
        h.make_node("Transpose", ["m"], ["y"], perm=[0, 3, 1, 2]),
    ], X, {"y": [1, 4, 5, 6]}, {"bias": bias, "half": np.array(0.5, np.float32)})
    out, report = run_rules(model, CancelTransposes)
    assert "Transpose" not in ops(out)
    assert cleanup_counts(report)["transposes_cancelled"] == 2
    assert_same_outputs(model, out)


def test_lonely_transpose_is_not_moved() -> None:
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Relu", ["t"], ["r"]),
        h.make_node("MatMul", ["r", "w"], ["y"]),
    ], X, {"y": [1, 5, 6, 3]}, {"w": np.ones((4, 3), np.float32)})
    out, report = run_rules(model, CancelTransposes)
    assert report.fired("cancel-transposes") == 0 and report.rules["cancel-transposes"].declined
    assert ops(out) == ["Transpose", "Relu", "MatMul"]


def test_branching_value_keeps_the_outputs() -> None:
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Relu", ["t"], ["r"]),
        h.make_node("Transpose", ["r"], ["u"], perm=[0, 3, 1, 2]),
        h.make_node("Add", ["u", "x"], ["v"]),
        h.make_node("Transpose", ["r"], ["w"], perm=[0, 3, 1, 2]),
        h.make_node("Add", ["v", "w"], ["y"]),
    ], X, {"y": [1, 4, 5, 6]})
    out, _ = run_rules(model, CancelTransposes)
    assert_same_outputs(model, out)
