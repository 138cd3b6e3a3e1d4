"""Fuzz ``vmlp-deploy optimize`` with random small graphs from outside (hypothesis, bounded budget).

Graphs are chains of Slice/Concat/Pad/Transpose/Reshape/Gather/ScatterND/Conv/MatMul, rolls (the Slice+Concat idiom the
passes rewrite) on a static NCHW tensor, at opsets 13-21. Properties: the command ends in success or a clean
``error:`` (exit 2), never a traceback or an internal error; whenever it succeeds, ONNX Runtime computes the
same outputs from the optimized model as from the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from vmlp_deploy import cli


class _Builder:
    """Appends ops to a chain, tracking the current tensor's static shape."""

    def __init__(self, shape: list[int], rng: np.random.Generator) -> None:
        self.shape = shape
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.cur = "x"

    def _name(self, stem: str) -> str:
        return f"{stem}{len(self.nodes)}_{len(self.inits)}"

    def const(self, values: np.ndarray) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def add(self, op: str, inputs: list[str], shape: list[int], **attrs: object) -> None:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.cur, self.shape = out, shape

    def slice_(self, axis: int, start: int, end: int, src: str | None = None) -> str:
        out = self._name("slice")
        self.nodes.append(helper.make_node("Slice", [src or self.cur, self.const(np.array([start])),
                                                     self.const(np.array([end])), self.const(np.array([axis]))],
                                           [out]))
        return out


def _apply(b: _Builder, op: str, data: st.DataObject) -> None:
    rank = len(b.shape)
    rollable = [a for a in (2, 3) if rank == 4 and b.shape[a] > 1]
    if op == "roll" and rollable:
        axis = data.draw(st.sampled_from(rollable))
        k = data.draw(st.integers(1, b.shape[axis] - 1))
        src = b.cur
        tail, head = b.slice_(axis, b.shape[axis] - k, b.shape[axis], src), b.slice_(axis, 0, b.shape[axis] - k, src)
        b.add("Concat", [tail, head], list(b.shape), axis=axis)
    elif op == "slice_concat":
        axis = data.draw(st.integers(1, rank - 1))
        n = b.shape[axis]
        start = data.draw(st.integers(0, n - 1))
        part = b.slice_(axis, start, n)
        shape = list(b.shape)
        shape[axis] = n + (n - start)
        b.add("Concat", [b.cur, part], shape, axis=axis)
    elif op == "pad" and rank == 4:
        # reflect needs two elements on a padded axis: ONNX Runtime refuses the model itself otherwise
        modes = ["constant", "edge"] + (["reflect"] if min(b.shape[2:]) >= 2 else [])
        mode = data.draw(st.sampled_from(modes))
        p = [0, 0, data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1))] * 2
        shape = [b.shape[0], b.shape[1], b.shape[2] + 2 * p[2], b.shape[3] + 2 * p[3]]
        b.add("Pad", [b.cur, b.const(np.array(p, np.int64))], shape, mode=mode)
    elif op == "transpose":
        perm = [0, *data.draw(st.permutations(list(range(1, rank))))]
        b.add("Transpose", [b.cur], [b.shape[i] for i in perm], perm=perm)
    elif op == "reshape" and rank == 4:
        shape = [b.shape[0], b.shape[1], b.shape[2] * b.shape[3]]
        b.add("Reshape", [b.cur, b.const(np.array(shape, np.int64))], shape)
    elif op == "reshape" and rank == 3:
        shape = [b.shape[0], b.shape[1], 1, b.shape[2]]
        b.add("Reshape", [b.cur, b.const(np.array(shape, np.int64))], shape)
    elif op == "conv" and rank == 4:
        c_out = data.draw(st.integers(1, 4))
        k = data.draw(st.sampled_from([1, 3]))
        w = b.rng.standard_normal((c_out, b.shape[1], k, k)).astype(np.float32)
        b.add("Conv", [b.cur, b.const(w)], [b.shape[0], c_out, b.shape[2], b.shape[3]], pads=[k // 2] * 4)
    elif op == "gather":
        axis = data.draw(st.integers(1, rank - 1))
        perm = np.array(data.draw(st.permutations(list(range(b.shape[axis])))), np.int64)
        b.add("Gather", [b.cur, b.const(perm)], list(b.shape), axis=axis)
    elif op == "scatter_shift" and rank == 4 and b.shape[2] > 1:
        # The S2-MLP shift as exported naively: out = x; out[:, c0:c1, 1:, :] = x[:, c0:c1, :-1, :] (ScatterND)
        n, c, h, w = b.shape
        c0 = data.draw(st.integers(0, c - 1))
        c1 = data.draw(st.integers(c0 + 1, c))
        idx = np.array([[i, ci, hi] for i in range(n) for ci in range(c0, c1) for hi in range(1, h)], np.int64)
        src = b.cur
        moved = b._name("moved")
        b.nodes.append(helper.make_node("Slice", [src, b.const(np.array([c0, 0])), b.const(np.array([c1, h - 1])),
                                                  b.const(np.array([1, 2]))], [moved]))
        flat = b._name("flat")
        b.nodes.append(helper.make_node("Reshape", [moved, b.const(np.array([len(idx), w], np.int64))], [flat]))
        b.add("ScatterND", [src, b.const(idx), flat], list(b.shape))
    elif op == "matmul":
        n = data.draw(st.integers(1, 6))
        w = b.rng.standard_normal((b.shape[-1], n)).astype(np.float32)
        b.add("MatMul", [b.cur, b.const(w)], [*b.shape[:-1], n])


OPS = ["roll", "slice_concat", "pad", "transpose", "reshape", "conv", "matmul", "gather", "scatter_shift"]


@st.composite
def graphs(draw: st.DrawFn) -> onnx.ModelProto:
    data = draw(st.data())
    shape = [1, draw(st.integers(1, 4)), draw(st.integers(2, 8)), draw(st.integers(2, 8))]
    b = _Builder(list(shape), np.random.default_rng(draw(st.integers(0, 2**16))))
    for op in draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=5)):
        _apply(b, op, data)
    if not b.nodes:
        b.add("Transpose", [b.cur], [b.shape[0], *b.shape[1:][::-1]], perm=[0, *range(len(b.shape) - 1, 0, -1)])
    graph = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(b.cur, TensorProto.FLOAT, b.shape)], b.inits)
    opset = draw(st.integers(13, 21))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@settings(max_examples=30, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(model=graphs())
def test_optimize_random_graphs(model: onnx.ModelProto, tmp_path_factory: pytest.TempPathFactory,
                                capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path_factory.mktemp("fuzz")
    source = work / "random.onnx"
    onnx.save(model, str(source))
    try:
        code = cli.main(["optimize", str(source), "-o", str(work / "out")])
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err
    event(f"exit {code}")  # shown by --hypothesis-show-statistics: how many graphs were optimized vs refused
    assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert err.startswith("error:") and not (work / "out").exists()
        return
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    for a, b in zip(_outputs(source, x), _outputs(work / "out" / "model.onnx", x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
