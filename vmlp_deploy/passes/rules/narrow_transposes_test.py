"""narrow-transposes (``cpu``): a Transpose moves to the narrowest tensor it reaches, or cancels; never sideways.

Each case runs the ``cpu`` layout rules on a small hand-built graph; the result must equal the original in
ONNX Runtime (bit for bit, or to float round-off where a reduction sums in another order).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

from vmlp_deploy.passes.rule_sets import CPU_LAYOUT
from vmlp_deploy.passes.testing import assert_same_outputs, elements_moved, graph_model, ops, run_rules


def test_sink_through_reductions_and_broadcast_mul_narrows_transpose() -> None:
    """S2-MLPv2's split attention in miniature: (1,3,C,H,W) -> NHWC branches -> sum and weighted sum."""
    c, hh, ww = 8, 5, 6
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 4, 2]),  # (1, 3, H, W, C)
        h.make_node("ReduceSum", ["t", "axes123"], ["a"], keepdims=0),  # (1, C): the Transpose vanishes
        h.make_node("Mul", ["t", "w"], ["m"]),  # w: (1, 3, 1, 1, C), not a constant
        h.make_node("ReduceSum", ["m", "axes1"], ["s"], keepdims=0),  # (1, H, W, C)
        h.make_node("MatMul", ["s", "w2"], ["y"]),  # cannot take the Transpose: it stops on the sum
    ], {"x": [1, 3, c, hh, ww], "w": [1, 3, 1, 1, c]}, {"y": [1, hh, ww, c], "a": [1, c]},
        {"axes123": np.array([1, 2, 3], np.int64), "axes1": np.array([1], np.int64), "w2": np.eye(c, dtype=np.float32)})
    out, report = run_rules(model, *CPU_LAYOUT.rules)
    (t,) = [n for n in out.graph.node if n.op_type == "Transpose"]
    assert list(h.get_attribute_value(t.attribute[0])) == [0, 2, 3, 1]  # now on the C-channel sum
    assert report.fired("narrow-transposes") == 1 and elements_moved(out) * 3 == elements_moved(model)
    assert_same_outputs(model, out, exact=False)  # reduction order changes: round-off only


def test_sink_cancels_across_elementwise_and_keepdims_reduction() -> None:
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        h.make_node("Add", ["t", "bias"], ["a"]),  # per-channel constant, NHWC
        h.make_node("Clip", ["a", "lo", "hi"], ["r"]),  # min/max inputs are scalars, not axes
        h.make_node("ReduceMax", ["r"], ["m"], axes=[1], keepdims=1),  # opset 17: axes attribute
        h.make_node("Transpose", ["m"], ["y"], perm=[0, 3, 1, 2]),
    ], {"x": [1, 4, 5, 6]}, {"y": [1, 4, 1, 6]},
        {"bias": np.arange(4, dtype=np.float32), "lo": np.array(0.5, np.float32), "hi": np.array(2, np.float32)})
    out, report = run_rules(model, *CPU_LAYOUT.rules)
    assert "Transpose" not in ops(out) and report.fired("narrow-transposes") == 1
    assert_same_outputs(model, out)


@pytest.mark.parametrize("consumer", ["MatMul", "output"])
def test_transpose_with_nowhere_cheaper_to_go_is_left_alone(consumer: str) -> None:
    nodes = [h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), h.make_node("Relu", ["t"], ["r"])]
    inits, out_shape = {}, [1, 5, 6, 4]
    if consumer == "MatMul":
        nodes.append(h.make_node("MatMul", ["r", "w"], ["y"]))
        inits, out_shape = {"w": np.ones((4, 3), np.float32)}, [1, 5, 6, 3]
    else:
        nodes[-1] = h.make_node("Relu", ["t"], ["y"])
    model = graph_model(nodes, {"x": [1, 4, 5, 6]}, {"y": out_shape}, inits)
    out, report = run_rules(model, *CPU_LAYOUT.rules)
    assert sum(rule.fired for rule in report.rules.values()) == 0
    assert ops(out) == ops(model)


def test_side_operand_that_needs_a_real_transpose_blocks_sinking() -> None:
    model = graph_model([
        h.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 4, 2]),
        h.make_node("Mul", ["t", "w"], ["m"]),  # w is full size: it would need a Transpose of its own
        h.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=0),
    ], {"x": [1, 3, 4, 5, 6], "w": [1, 3, 5, 6, 4]}, {"y": [1, 5, 6, 4]}, {"axes": np.array([1], np.int64)})
    out, report = run_rules(model, *CPU_LAYOUT.rules)
    assert report.fired("narrow-transposes") == 0 and ops(out).count("Transpose") == 1
    assert_same_outputs(model, out)
