"""fold-transpose-pairs (onnxscript's rules): two Transposes in a row compose into one, or vanish."""

from __future__ import annotations

from onnx import helper as h

from vmlp_deploy.passes.rules.fold_transposes import FoldTransposePairs
from vmlp_deploy.passes.testing import assert_same_outputs, graph_model, ops, run_rules


def test_transpose_pair_composes_into_one() -> None:
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1, 3]),
    ], {"x": [1, 4, 5, 6]}, {"y": [1, 6, 5, 4]})
    out, report = run_rules(model, FoldTransposePairs)
    assert ops(out) == ["Transpose"] and report.fired("fold-transpose-pairs") == 1
    assert_same_outputs(model, out)


def test_inverse_pair_vanishes() -> None:
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
        h.make_node("Relu", ["u"], ["y"]),
    ], {"x": [1, 4, 5, 6]}, {"y": [1, 4, 5, 6]})
    out, report = run_rules(model, FoldTransposePairs)
    assert ops(out) == ["Relu"] and report.fired("fold-transpose-pairs") == 1
    assert_same_outputs(model, out)
