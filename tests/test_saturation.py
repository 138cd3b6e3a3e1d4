"""u8 x s8 pair saturation: the numpy simulation, the per-layer prediction on real ONNX Runtime QDQ models, and
the check against ONNX Runtime's own AVX2 kernels run under QEMU (every expectation derived from the host's ISA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from vmlp_deploy.cpu import host
from vmlp_deploy.emulate import emulate, emulation_available
from vmlp_deploy.quantize.saturation import find_layers, predict, saturating_matmul, summarize


def _reference(a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """vpmaddubsw + vpmaddwd written out one pair at a time."""
    m, k = a.shape
    n = w.shape[1]
    exact = np.zeros((m, n), np.int64)
    sat = np.zeros((m, n), np.int64)
    clipped = 0
    for i in range(m):
        for j in range(n):
            for p in range(0, k, 2):
                pair = int(a[i, p]) * int(w[p, j]) + (int(a[i, p + 1]) * int(w[p + 1, j]) if p + 1 < k else 0)
                exact[i, j] += pair
                sat[i, j] += min(max(pair, -32768), 32767)
                clipped += not -32768 <= pair <= 32767
    return exact, sat, clipped


def test_saturating_matmul_matches_pairwise_reference() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 13), dtype=np.uint8)
    w = rng.integers(-128, 128, (13, 5), dtype=np.int8)
    a[0] = 255
    a[1, :2] = 0
    w[:, 0] = 127
    w[:, 1] = -128
    w[::2, 2], w[1::2, 2] = 127, -128
    exact, sat, clipped, pairs = saturating_matmul(a, w)
    ref_exact, ref_sat, ref_clipped = _reference(a, w)
    np.testing.assert_array_equal(exact, ref_exact)
    np.testing.assert_array_equal(sat, ref_sat)
    assert clipped == ref_clipped > 0
    assert pairs == 7 * 5 * 7
    assert exact.dtype == sat.dtype == np.int32


def test_extreme_pair_clips_to_int16_max() -> None:
    exact, sat, clipped, pairs = saturating_matmul(np.full((1, 2), 255, np.uint8), np.full((2, 1), 127, np.int8))
    assert (int(exact[0, 0]), int(sat[0, 0]), clipped, pairs) == (64770, 32767, 1, 1)
    _, sat, clipped, _ = saturating_matmul(np.full((1, 2), 255, np.uint8), np.full((2, 1), -128, np.int8))
    assert (int(sat[0, 0]), clipped) == (-32768, 1)


def test_seven_bit_weights_never_saturate() -> None:
    """2 * 255 * 64 = 32640 <= 32767: why ONNX Runtime's reduce_range (7-bit weights) is the fix."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 65), dtype=np.uint8)
    a[:4] = 255
    w = rng.integers(-64, 65, (65, 9), dtype=np.int8)
    w[:, 0], w[:, 1] = 64, -64
    exact, sat, clipped, _ = saturating_matmul(a, w)
    assert clipped == 0
    np.testing.assert_array_equal(exact, sat)


def _float_model(path: Path) -> None:
    """Every integer path ONNX Runtime has: an odd-cin Conv (im2col + QGEMM), a cin % 4 == 0 Conv (ConvSym), a
    grouped Conv (QGEMM per group), a depthwise Conv (exact kernel), a Gemm with transB and a MatMul. Positive
    weights and activations make adjacent products add up, so full 8-bit codes overflow int16 pairs."""
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)

    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w1": w(16, 3, 3, 3), "w2": w(16, 16, 3, 3), "w3": w(16, 4, 3, 3), "w4": w(16, 1, 3, 3),
        "w5": w(12, 16 * 36), "b5": np.zeros(12, np.float32), "w6": w(12, 8),
        "shape": np.array([-1, 16 * 36], np.int64)}.items()]
    conv = dict(pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv_rgb", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv_sym", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv_grouped", group=4, **conv),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], name="conv_depthwise", group=16, **conv),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("Reshape", ["r4", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w5", "b5"], ["g"], name="gemm", transB=1),
        helper.make_node("Relu", ["g"], ["r5"], name="relu5"),
        helper.make_node("MatMul", ["r5", "w6"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self.batches = iter([{"x": x[i : i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.fixture(scope="module")
def qdq(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The model quantized as ``--backend cpu`` does (QDQ, u8 activations, per-channel symmetric s8 weights),
    with 8-bit and with reduce_range (7-bit) weights; calibrated on the samples it is then run on."""
    d = tmp_path_factory.mktemp("sat")
    _float_model(d / "float.onnx")
    x = np.random.default_rng(3).uniform(0, 1, (6, 3, 6, 6)).astype(np.float32)
    out = []
    for reduce_range in (False, True):
        path = d / f"int8-rr{int(reduce_range)}.onnx"
        quantize_static(str(d / "float.onnx"), str(path), _Reader(x), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True})
        out.append(path)
    return out[0], out[1], x


def test_predict_finds_every_integer_layer_and_its_kernel(qdq: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    eight_bit, _, x = qdq
    layers = {layer.node: layer for layer in predict(eight_bit, x, "x", None, tmp_path)}
    assert list(layers) == ["conv_rgb", "conv_sym", "conv_grouped", "conv_depthwise", "gemm", "fc"]
    assert layers["conv_rgb"].kernel.startswith("QLinearConv") and layers["conv_rgb"].reduction == 27
    assert layers["conv_grouped"].reduction == 36
    assert layers["gemm"].kernel.startswith("QGemm") and layers["gemm"].reduction == 576
    assert layers["fc"].kernel.startswith("QLinearMatMul")
    dw = layers["conv_depthwise"]
    assert "cannot saturate" in dw.kernel and dw.pairs == dw.saturated_pairs == 0 and dw.sqnr_db == float("inf")
    assert layers["conv_sym"].pairs == 6 * 36 * 16 * 72  # samples x positions x channels x ceil(144 / 2)


def test_predict_saturates_with_8_bit_weights_not_with_reduce_range(
        qdq: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    eight_bit, seven_bit, x = qdq
    full = predict(eight_bit, x, "x", None, tmp_path)
    summary = summarize(full)
    assert summary.saturated_pairs > 0 and summary.worst is not None and np.isfinite(summary.worst.sqnr_db)
    assert all(layer.saturated_pairs > 0 and layer.sqnr_db < 60 for layer in full if layer.pairs)
    reduced = predict(seven_bit, x, "x", None, tmp_path)
    assert summarize(reduced).pairs == summary.pairs
    assert all(layer.saturated_pairs == 0 and layer.sqnr_db == float("inf") for layer in reduced)
    d = summary.to_dict()
    assert d["saturated_pairs"] == summary.saturated_pairs and 0 < d["rate"] < 1
    assert summarize(reduced).to_dict()["worst"] is None


def test_predict_with_fixed_batch_counts_real_samples_only(qdq: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    eight_bit, _, x = qdq
    one_by_one = {layer.node: layer.pairs for layer in predict(eight_bit, x, "x", None, tmp_path, max_samples=5)}
    batched = {layer.node: layer.pairs for layer in predict(eight_bit, x, "x", 4, tmp_path, max_samples=5)}
    assert batched == one_by_one and one_by_one["fc"] == 5 * 8 * 6


def _probe(qdq_model: Path, out: Path) -> tuple[Path, dict[str, tuple[str, str, float, int]]]:
    """The QDQ model with each integer layer's u8 input and u8 output codes exposed (fusion is unaffected)."""
    model = onnx.load(str(qdq_model))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    by_name = {n.name: n for n in model.graph.node}
    tensors = {}
    for layer in find_layers(qdq_model, out.parent):
        q = next(r for r in readers[by_name[layer.node].output[0]] if r.op_type == "QuantizeLinear")
        tensors[layer.node] = (layer.activation, q.output[0], float(inits[q.input[1]]), int(inits[q.input[2]]))
        for name in tensors[layer.node][:2]:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    onnx.save(model, str(out))
    return out, tensors


def _native(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}), strict=True))


@pytest.mark.skipif(emulation_available() is not None, reason=f"no AVX2 emulation: {emulation_available()}")
def test_prediction_matches_onnxruntime_avx2_kernels(qdq: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    """Each layer's deployed u8 output codes, fed its own deployed input codes, equal the requantised simulation:
    saturating under QEMU's AVX2 CPU, and natively whatever this host's ISA says (exact with a 32-bit int8 dot
    product, saturating without). The pairing (K order) is what the comparison tests: any other order clips
    other pairs and moves codes by tens."""
    eight_bit, _, x = qdq
    probe, tensors = _probe(eight_bit, tmp_path / "probe.onnx")
    emulated = emulate(probe, x)
    assert "AVX2" in emulated.cpu_features and "AVX512F" not in emulated.cpu_features and not emulated.int8_dot32
    runs = {"emulated": (dict(zip(emulated.names, emulated.outputs, strict=True)), True),
            "native": (_native(probe, x), host().isa.u8s8_saturates)}
    assert host().isa.int8_dot32 or host().isa.u8s8_saturates, "an x86 host either has VNNI/AMX or saturates"
    for layer in find_layers(eight_bit, tmp_path):
        act, out, out_scale, out_zero = tensors[layer.node]
        for tag, (outputs, saturates) in runs.items():
            exact, sat, clipped, _ = layer.simulate(outputs[act])
            got = layer.output_rows(outputs[out]).astype(np.int64)
            want = np.clip(np.rint((sat if saturates else exact) / out_scale) + out_zero, 0, 255)
            other = np.clip(np.rint((exact if saturates else sat) / out_scale) + out_zero, 0, 255)
            assert np.abs(got - want).max() <= 1, (layer.node, tag)
            assert np.mean(got == want) > 0.99, (layer.node, tag)
            if clipped and not layer.depthwise:
                assert np.abs(got - other).max() > 1, (layer.node, tag, "saturation made no visible difference")


@pytest.mark.parametrize("attrs", [dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1], group=2),
                                   dict(strides=[2, 2], auto_pad="SAME_UPPER"),
                                   dict(strides=[2, 2], auto_pad="SAME_LOWER", group=4)])
def test_conv_im2col_reproduces_onnx_conv(attrs: dict, tmp_path: Path) -> None:
    """The exact simulated output equals ONNX Runtime's own (unfused, float) Conv on the same codes, for strides,
    dilations, explicit and SAME padding (odd totals on the 8-high input) and groups: the im2col that the K order
    is built on is the real one."""
    rng = np.random.default_rng(4)
    groups = attrs.get("group", 1)
    w = rng.integers(-127, 128, (8, 8 // groups, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "xs": np.array(0.02, np.float32), "xz": np.array(37, np.uint8), "w": w,
        "ws": rng.uniform(0.01, 0.02, 8).astype(np.float32), "wz": np.zeros(8, np.int8),
        "b": rng.normal(size=8).astype(np.float32)}.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv", kernel_shape=[3, 3], **attrs)]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 8, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("xq", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "c.onnx"))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "c.onnx"), so, providers=["CPUExecutionProvider"])
    y, codes = session.run(None, {"x": rng.uniform(-0.7, 4.3, (2, 8, 8, 9)).astype(np.float32)})
    (layer,) = find_layers(tmp_path / "c.onnx", tmp_path)
    exact, _, _, _ = layer.simulate(codes)
    np.testing.assert_allclose(exact, layer.output_rows(y), rtol=1e-4, atol=1e-3)
