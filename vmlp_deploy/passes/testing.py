"""What the rules' tests (``rules/<rule>_test.py``) share: build a small graph, run rules on it, compare outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from ..onnx_io import cpu_session
from .rule import PassReport, Phase, Rule, apply_phases
from .rule_sets import transpose_elements

FLOAT = onnx.TensorProto.FLOAT


def graph_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, Sequence[int]],
                outputs: Mapping[str, Sequence[int] | None], inits: Mapping[str, np.ndarray] | None = None,
                opset: int = 17) -> onnx.ModelProto:
    """A float model of ``nodes`` with the given input and output shapes, shapes inferred."""
    graph = helper.make_graph(
        list(nodes), "g", [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in outputs.items()],
        initializer=[onnx.numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def run_rules(model: onnx.ModelProto, *rules: type[Rule], shapes: bool = False) -> tuple[onnx.ModelProto, PassReport]:
    """``rules`` swept to a fixed point on a copy of ``model`` (as one phase); the checked result and the report."""
    work, report = apply_phases(ir.from_proto(model), [Phase("test", rules, needs_shapes=shapes)])
    work.graph.sort()
    out = ir.serde.serialize_model(work)
    onnx.checker.check_model(out)
    return out, report


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def elements_moved(model: onnx.ModelProto) -> int:
    """Elements every Transpose of ``model`` moves."""
    return transpose_elements(ir.from_proto(model).graph)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, *, exact: bool = True, seed: int = 0) -> None:
    """``a`` and ``b`` compute the same outputs on seeded random inputs (bit for bit, or to float round-off)."""
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in a.graph.input}
    out_a = cpu_session(a, threads=1, optimize=False).run(None, feeds)
    out_b = cpu_session(b, threads=1, optimize=False).run(None, feeds)
    for x, y in zip(out_a, out_b):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
