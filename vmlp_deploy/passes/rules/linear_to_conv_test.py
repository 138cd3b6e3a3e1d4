"""linear-to-conv1x1 (``cpu``): a widening Linear read channels-first becomes Transpose + 1x1 Conv."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h

from vmlp_deploy.passes.rule_sets import CPU_LAYOUT
from vmlp_deploy.passes.testing import assert_same_outputs, elements_moved, graph_model, ops, run_rules


def _linear_then_transpose(k: int, n: int, form: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    if form == "matmul":
        nodes = [h.make_node("MatMul", ["x", "w"], ["mm"]), h.make_node("Add", ["mm", "b"], ["lin"])]
        inits = {"w": w, "b": b}
    else:  # the flattened form onnxsim leaves: Reshape -> Gemm(transB) -> Reshape
        nodes = [h.make_node("Reshape", ["x", "flat"], ["x2"]),
                 h.make_node("Gemm", ["x2", "wt", "b"], ["g"], transB=1),
                 h.make_node("Reshape", ["g", "unflat"], ["lin"])]
        inits = {"wt": np.ascontiguousarray(w.T), "b": b, "flat": np.array([30, k], np.int64),
                 "unflat": np.array([1, 5, 6, n], np.int64)}
    nodes.append(h.make_node("Transpose", ["lin"], ["y"], perm=[0, 3, 1, 2]))
    return graph_model(nodes, {"x": [1, 5, 6, k]}, {"y": [1, n, 5, 6]}, inits)


@pytest.mark.parametrize("form", ["matmul", "gemm"])
def test_widening_linear_becomes_1x1_conv_after_the_transpose(form: str) -> None:
    model = _linear_then_transpose(4, 12, form)
    out, report = run_rules(model, *CPU_LAYOUT.rules)
    assert report.fired("linear-to-conv1x1") == 1
    assert ops(out) == ["Transpose", "Conv"]
    assert elements_moved(out) * 3 == elements_moved(model)
    assert_same_outputs(model, out, exact=False)


def test_narrowing_linear_is_not_turned_into_a_conv() -> None:
    model = _linear_then_transpose(12, 4, "matmul")
    out, report = run_rules(model, *CPU_LAYOUT.rules)
    assert sum(rule.fired for rule in report.rules.values()) == 0 and "Conv" not in ops(out)
    assert "the Linear's input is not narrower than its output" in report.rules["linear-to-conv1x1"].declined
