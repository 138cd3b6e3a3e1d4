"""unit-transpose-to-reshape: a Transpose that only moves size-1 axes becomes a Reshape."""

from __future__ import annotations

from onnx import helper as h

from vmlp_deploy.passes.rules.unit_transpose_to_reshape import UnitTransposeToReshape
from vmlp_deploy.passes.testing import assert_same_outputs, graph_model, ops, run_rules


def test_transpose_of_unit_axes_becomes_reshape() -> None:
    model = graph_model([h.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1, 3])], {"x": [2, 1, 1, 6]},
                        {"y": [2, 1, 1, 6]})
    out, report = run_rules(model, UnitTransposeToReshape)
    assert report.fired("unit-transpose-to-reshape") == 1 and ops(out) == ["Reshape"]
    assert_same_outputs(model, out)


def test_transpose_that_moves_data_is_left_alone() -> None:
    model = graph_model([h.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1, 3])], {"x": [2, 3, 4, 6]},
                        {"y": [2, 4, 3, 6]})
    out, report = run_rules(model, UnitTransposeToReshape)
    assert ops(out) == ["Transpose"] and report.rules["unit-transpose-to-reshape"].declined
