"""verify + rollback: a rewrite that changes outputs is undone with a warning, never written."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper as h

from vmlp_deploy.passes import RewriteRolledBack, compare_models, optimize_model
from vmlp_deploy.passes.rules import shift_to_conv
from vmlp_deploy.passes._graph import can_raise_opset


def _two_rolls(extra_nodes=(), extra_inits=()) -> onnx.ModelProto:
    """x -> Conv -> roll along H (circular) -> Conv -> zero-shift along W (Pad + Slice) -> Conv."""
    i64 = lambda *v: np.array(v, np.int64)
    inits = {"w": np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1), "m1": i64(-1), "zero": i64(0), "big": i64(2**62),
             "ax2": i64(2), "ax3": i64(3), "pads": i64(0, 0, 0, 0, 0, 0, 0, 1), "one": i64(1), "end": i64(7)}
    inits.update(dict(extra_inits))
    nodes = [
        h.make_node("Conv", ["x", "w"], ["a"]),
        h.make_node("Slice", ["a", "m1", "big", "ax2"], ["p"]),
        h.make_node("Slice", ["a", "zero", "m1", "ax2"], ["q"]),
        h.make_node("Concat", ["p", "q"], ["r"], axis=2),
        h.make_node("Conv", ["r", "w"], ["b"]),
        h.make_node("Pad", ["b", "pads"], ["bp"], mode="constant"),
        h.make_node("Slice", ["bp", "one", "end", "ax3"], ["s"]),
        h.make_node("Conv", ["s", "w"], ["y0"]),
        *extra_nodes,
    ]
    out = "y" if extra_nodes else "y0"
    graph = h.make_graph(nodes, "rolls", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 6])],
                         [h.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
                         initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_two_sites_found_and_verified():
    result = optimize_model(_two_rolls())
    assert sorted(p.plan.kind for p in result.patterns) == ["shift/circular", "shift/zero"]
    assert result.verification.passed and result.verification.max_abs_diff == 0
    assert result.verification.cosine == pytest.approx(1.0)
    assert result.model.opset_import[0].version == 19  # raised for Pad(mode=wrap): safe for these ops
    report = json.loads(json.dumps(result.to_dict()))
    assert report["pattern_counts"] == {"shift/circular NCHW": 1, "shift/zero NCHW": 1}
    assert report["verification"]["max_abs_diff"] == 0


def _corrupting_emit(real_emit, when):
    def emit(graph, x, plan, **kw):
        if when(plan):
            plan = dataclasses.replace(plan, dy=tuple(-d for d in plan.dy), dx=tuple(-d for d in plan.dx))
        return real_emit(graph, x, plan, **kw)

    return emit


def test_site_check_rolls_back_a_wrong_replacement(monkeypatch):
    monkeypatch.setattr(shift_to_conv, "emit", _corrupting_emit(shift_to_conv.emit, lambda p: p.mode_h == "wrap"))
    with pytest.warns(RewriteRolledBack, match="shift/circular"):
        result = optimize_model(_two_rolls())
    assert [p.plan.kind for p in result.patterns] == ["shift/zero"]
    assert len(result.rolled_back) == 1 and result.verification.passed


def test_whole_model_verification_bisects_and_rolls_back(monkeypatch):
    monkeypatch.setattr(shift_to_conv, "check_site", lambda *a, **k: (True, 0.0))
    monkeypatch.setattr(shift_to_conv, "emit", _corrupting_emit(shift_to_conv.emit, lambda p: p.mode_w == "constant"))
    with pytest.warns(RewriteRolledBack, match="whole-model"):
        result = optimize_model(_two_rolls())
    assert [p.plan.kind for p in result.patterns] == ["shift/circular"]
    assert result.verification.passed and len(result.rolled_back) == 1


def test_every_site_wrong_returns_the_original(monkeypatch):
    monkeypatch.setattr(shift_to_conv, "check_site", lambda *a, **k: (True, 0.0))
    monkeypatch.setattr(shift_to_conv, "emit", _corrupting_emit(shift_to_conv.emit, lambda p: True))
    original = _two_rolls()
    with pytest.warns(RewriteRolledBack):
        result = optimize_model(original)
    assert result.model is original and not result.patterns and len(result.rolled_back) == 2


def test_opset_is_not_raised_over_an_incompatible_op():
    """ReduceMean's axes moved from attribute to input in opset 18: keep 17, build wrap from Slice + Concat."""
    extra = [h.make_node("ReduceMean", ["y0"], ["y"], axes=[1], keepdims=1)]
    model = _two_rolls(extra)
    assert not can_raise_opset(ir.from_proto(model), 19)
    result = optimize_model(model)
    assert result.model.opset_import[0].version == 17
    assert "shift/circular" in {p.plan.kind for p in result.patterns} and result.verification.passed
    modes = [a.s for n in result.model.graph.node if n.op_type == "Pad" for a in n.attribute if a.name == "mode"]
    assert b"wrap" not in modes  # circular padding built from Slice + Concat instead


def test_compare_models_reports_differences():
    a = _two_rolls()
    b = onnx.ModelProto()
    b.CopyFrom(a)
    b.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(2 * np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1), "w"))
    result = compare_models(a, b, n_samples=2)
    assert not result.passed and result.max_abs_diff > 0.1 and result.n_samples == 2
    assert compare_models(a, a).passed


def test_a_rewritten_model_onnx_runtime_refuses_fails_verification_instead_of_raising() -> None:
    from onnx import TensorProto, helper

    from vmlp_deploy.passes import compare_models

    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    good = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:]),
                             opset_imports=[helper.make_opsetid("", 18)])
    broken = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "x"], ["y"])], "g", io[:1], io[1:]),
                               opset_imports=[helper.make_opsetid("", 18)])
    result = compare_models(good, broken)
    assert not result.passed and result.max_abs_diff == float("inf")
