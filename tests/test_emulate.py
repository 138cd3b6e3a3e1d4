"""AVX2 emulation under QEMU: the child really runs the AVX2 kernels (a u8 x s8 model that overflows int16 pairs
gives the saturating result there), errors are clear, and expectations for the native run come from the host ISA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vmlp_deploy.cpu import host
from vmlp_deploy.emulate import EmulationError, emulate, emulation_available, run_emulated
from vmlp_deploy.quantize.saturation import find_layers, saturating_matmul

needs_qemu = pytest.mark.skipif(emulation_available() is not None, reason=f"no AVX2 emulation: {emulation_available()}")

K, N = 64, 8


def _qdq_matmul(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x -> Q/DQ (u8, scale 1/255) -> MatMul with DQ(s8 per-channel weights) -> float y. Large same-sign weights
    next to each other overflow int16 pairs when x is near 1. Returns (x, weight codes, per-channel scale)."""
    rng = np.random.default_rng(0)
    w = rng.integers(90, 128, (K, N)).astype(np.int8)
    w[:, 1::2] *= -1
    w[::4, 2] = -w[::4, 2]
    scale = np.linspace(0.01, 0.02, N).astype(np.float32)
    x = rng.uniform(0, 1, (5, K)).astype(np.float32)
    x[0] = 1.0
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "xs": np.array(1 / 255, np.float32), "xz": np.array(0, np.uint8),
        "w": w, "ws": scale, "wz": np.zeros(N, np.int8)}.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return x, w, scale


def _codes(x: np.ndarray) -> np.ndarray:
    """QuantizeLinear with scale 1/255 and zero point 0, as ONNX defines it (round half to even)."""
    return np.clip(np.rint(x * np.float32(255)), 0, 255).astype(np.uint8)


def _native(model: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_emulation_unavailable_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    emulation_available.cache_clear()
    try:
        reason = emulation_available()
        assert reason is not None and "qemu-x86_64 not found: apt-get install qemu-user" in reason
        with pytest.raises(EmulationError, match="apt-get install qemu-user"):
            run_emulated(tmp_path / "m.onnx", np.zeros(1, np.float32))
    finally:
        emulation_available.cache_clear()


@needs_qemu
def test_float_model_runs_on_an_avx2_cpu_without_vnni(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    w = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "f",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "f.onnx"))
    run = emulate(tmp_path / "f.onnx", x)
    np.testing.assert_allclose(run.outputs[0], x @ w, rtol=1e-5, atol=1e-6)
    assert run.names == ["y"] and run.backend == "cpu" and run.cpu_model == "Haswell"
    assert {"AVX2", "FMA3"} <= set(run.cpu_features) and "AVX512F" not in run.cpu_features and not run.int8_dot32
    assert run.seconds > 0


@needs_qemu
def test_onnxruntime_avx2_kernels_saturate_where_the_host_may_not(tmp_path: Path) -> None:
    x, w, scale = _qdq_matmul(tmp_path / "mm.onnx")
    (layer,) = find_layers(tmp_path / "mm.onnx", tmp_path)
    assert layer.fused_op in ("MatMulIntegerToFloat", "QLinearMatMul"), layer.kernel
    exact, sat, clipped, _ = saturating_matmul(_codes(x), w)
    assert clipped > 0
    y_exact, y_sat = exact * (scale / 255), sat * (scale / 255)
    emulated = run_emulated(tmp_path / "mm.onnx", x, batch=2)  # 2 + 2 + 1 padded: a fixed-batch model's way
    assert emulated.shape == (len(x), N)
    np.testing.assert_allclose(emulated, y_sat, rtol=1e-5, atol=1e-4)
    assert np.abs(emulated - y_exact).max() > 1.0
    native = _native(tmp_path / "mm.onnx", x)
    np.testing.assert_allclose(native, y_sat if host().isa.u8s8_saturates else y_exact, rtol=1e-5, atol=1e-4)
    if host().isa.int8_dot32:
        assert np.abs(native - emulated).max() > 1.0


@needs_qemu
def test_openvino_runs_its_avx2_int8_kernels_and_saturates(tmp_path: Path) -> None:
    x, w, scale = _qdq_matmul(tmp_path / "mm.onnx")
    exact, sat, _, _ = saturating_matmul(_codes(x), w)
    run = emulate(tmp_path / "mm.onnx", x, backend="openvino")
    kernels = " ".join(run.kernels.values()).lower()
    assert "avx2" in kernels and "avx512" not in kernels and "amx" not in kernels, run.kernels
    np.testing.assert_allclose(run.outputs[0], sat * (scale / 255), rtol=1e-4, atol=1e-3)


@needs_qemu
def test_errors_are_clear(tmp_path: Path) -> None:
    _qdq_matmul(tmp_path / "mm.onnx")
    x = np.zeros((1, K), np.float32)
    with pytest.raises(EmulationError, match="no CPU model 'NotACpu'"):
        run_emulated(tmp_path / "mm.onnx", x, cpu_model="NotACpu")
    with pytest.raises(EmulationError, match="does not exist"):
        run_emulated(tmp_path / "missing.onnx", x)
    with pytest.raises(EmulationError, match="unknown backend"):
        run_emulated(tmp_path / "mm.onnx", x, backend="tensorrt")
    with pytest.raises(EmulationError, match="failed .*exit"):
        run_emulated(tmp_path / "mm.onnx", np.zeros((1, K + 1), np.float32))
    with pytest.raises(EmulationError, match="took over"):
        run_emulated(tmp_path / "mm.onnx", x, timeout_s=0.01)
