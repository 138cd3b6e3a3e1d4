"""Region finding, probing and canonicalisation: the exporter-agnostic matcher underneath the rewrites."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as h

from vmlp_deploy.passes._graph import infer_shapes, static_shape
from vmlp_deploy.passes.canonicalize import canonicalize, shapes_follow_from_input_shapes
from vmlp_deploy.passes.probe import probe_region
from vmlp_deploy.passes.regions import RegionFinder


def _model(nodes, inits=None, shape=(1, 2, 3, 4), opset=17, dtype=onnx.TensorProto.FLOAT):
    inits = inits or {}
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", dtype, list(shape))],
        [h.make_tensor_value_info("y", dtype, None)],
        initializer=[onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def test_probe_decodes_copies_and_fill():
    model = _model([h.make_node("Pad", ["x", "pads", "v"], ["p"], mode="constant"),
                    h.make_node("Slice", ["p", "st", "en", "ax"], ["y"])],
                   {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 0], np.int64), "v": np.array(2.5, np.float32),
                    "st": np.array([0], np.int64), "en": np.array([3], np.int64), "ax": np.array([2], np.int64)})
    cmap = probe_region(model, (1, 2, 3, 4), np.float32)
    x = np.arange(24).reshape(1, 2, 3, 4)
    expected = np.concatenate([np.full((1, 2, 1, 4), -1), x[:, :, :2]], axis=2)  # one row down, fill on top
    np.testing.assert_array_equal(cmap.src, expected)
    assert cmap.n_const == 8 and np.all(cmap.fill[:, :, 0] == 2.5)


def test_probe_refuses_arithmetic():
    model = _model([h.make_node("Add", ["x", "x"], ["y"])])
    assert probe_region(model, (1, 2, 3, 4), np.float32) is None


def test_probe_handles_more_elements_than_one_digit_holds():
    model = _model([h.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], shape=(1, 40, 40, 40),
                   dtype=onnx.TensorProto.FLOAT16)
    cmap = probe_region(model, (1, 40, 40, 40), np.float16)  # fp16: 1024 per digit, 3 digits
    np.testing.assert_array_equal(cmap.src, np.arange(64000).reshape(1, 40, 40, 40).transpose(0, 2, 3, 1))


def test_region_finder_stops_at_arithmetic_and_second_inputs():
    model = _model([
        h.make_node("Slice", ["x", "st", "en", "ax"], ["a"]),
        h.make_node("Slice", ["x", "en", "big", "ax"], ["b"]),
        h.make_node("Concat", ["b", "a"], ["r"], axis=3),  # a roll: one region from x
        h.make_node("Relu", ["r"], ["s"]),
        h.make_node("Concat", ["s", "x"], ["y"], axis=1),  # two sources: not a region
    ], {"st": np.array([0], np.int64), "en": np.array([1], np.int64), "big": np.array([9], np.int64),
        "ax": np.array([3], np.int64)})
    finder = RegionFinder(infer_shapes(model).graph)
    (region,) = finder.candidates()
    assert region.x.name == "x" and region.y.name == "r" and region.ops == {"Slice": 2, "Concat": 1}


def test_canonicalize_proves_shapes_behind_shape_arithmetic():
    """Pads computed by Shape -> Gather -> Mul -> Concat -> Cast: shape inference alone gives up."""
    i64 = lambda *v: np.array(v, np.int64)
    model = _model([
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Gather", ["s", "two"], ["hh"], axis=0),
        h.make_node("Div", ["hh", "three"], ["k"]),
        h.make_node("Concat", ["z", "z", "k", "z", "z", "z", "k", "z"], ["pads64"], axis=0),
        h.make_node("Cast", ["pads64"], ["pads_f"], to=onnx.TensorProto.FLOAT),
        h.make_node("Cast", ["pads_f"], ["pads"], to=onnx.TensorProto.INT64),
        h.make_node("Pad", ["x", "pads"], ["y"], mode="edge"),
    ], {"two": i64(2), "three": i64(3), "z": i64(0)})
    assert static_shape(next(n for n in infer_shapes(model).graph if n.op_type == "Pad").outputs[0]) is None
    work = canonicalize(model)
    pad = next(n for n in work.graph if n.op_type == "Pad")
    assert static_shape(pad.outputs[0]) == (1, 2, 5, 4)
    assert pad.inputs[1].const_value is not None


def _pad_chain(blocks: int, data_dependent: bool = False) -> onnx.ModelProto:
    """Blocks whose pads come from the previous block's Shape through a Cast (opaque to shape inference)."""
    nodes, prev = [], "x"
    for i in range(blocks):
        nodes += [
            h.make_node("Shape", [prev], [f"s{i}"]),
            h.make_node("Slice", [f"s{i}", "two", "three"], [f"hw{i}"]),
            h.make_node("Div", [f"hw{i}", "hw"], [f"k{i}"]),
            h.make_node("Concat", ["z", "z", f"k{i}", "z", "z", "z", f"k{i}", "z"], [f"pi{i}"], axis=0),
            h.make_node("Cast", [f"pi{i}"], [f"pf{i}"], to=onnx.TensorProto.FLOAT),
            h.make_node("Cast", [f"pf{i}"], [f"p{i}"], to=onnx.TensorProto.INT64),
            h.make_node("Pad", [prev, f"p{i}"], [f"y{i}" if i < blocks - 1 else "y"], mode="edge"),
        ]
        prev = f"y{i}"
    if data_dependent:
        nodes.insert(0, h.make_node("NonZero", ["x"], ["nz"]))
    i64 = lambda *v: np.array(v, np.int64)
    return _model(nodes, {"two": i64(2), "three": i64(3), "z": i64(0), "hw": i64(3)}, shape=(1, 1, 3, 3))


def test_canonicalize_measures_shapes_in_one_go_when_they_follow_from_input_shapes():
    work = canonicalize(_pad_chain(6), max_rounds=1)
    pads = [n for n in work.graph if n.op_type == "Pad"]
    assert len(pads) == 6 and all(static_shape(p.outputs[0]) is not None for p in pads)
    assert static_shape(pads[-1].outputs[0]) == (1, 1, 45, 3)  # H += 2 * (H // 3): 3, 5, 7, 11, 17, 27, 45


def test_shapes_are_not_measured_when_data_can_decide_them():
    model = _pad_chain(3, data_dependent=True)
    graph = infer_shapes(model).graph
    assert not shapes_follow_from_input_shapes(graph)
    work = canonicalize(model, max_rounds=1)
    assert static_shape(next(n for n in work.graph if n.op_type == "Pad" and n.outputs[0].name == "y").outputs[0]) \
        is None
