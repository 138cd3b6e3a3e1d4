"""The backend interface on real ONNX Runtime and OpenVINO runs, precision pinned and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmlp_deploy import cpu
from vmlp_deploy.backends import BACKENDS, RunOptions
from vmlp_deploy.errors import UserError
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lm = load_model("poolformer_s12", tiny=True)
    return export_model(lm, tmp_path_factory.mktemp("b") / "run", ExportOptions(dynamic_batch=True)).onnx_path


@pytest.mark.parametrize(("precision", "reported"), [(None, "f32"), ("f32", "f32"), ("bf16", "bf16")])
def test_openvino_precision_is_pinned_and_reported(onnx_path: Path, precision: str | None, reported: str) -> None:
    """No precision asked means f32 pinned: OpenVINO would otherwise pick bf16 by itself on a CPU with bf16.
    Where the CPU has none, a bf16 hint runs (and reads back) f32."""
    if reported == "bf16" and not cpu.host().isa.bf16:
        reported = "f32"
    session = BACKENDS["openvino"].load(onnx_path, RunOptions(threads=1, precision=precision))
    assert session.precision == reported and session.describe()["precision"] == reported


def test_backends_agree_in_fp32(onnx_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    ort_out = BACKENDS["cpu"].load(onnx_path, RunOptions(threads=1)).run(x)[0]
    ov_out = BACKENDS["openvino"].load(onnx_path, RunOptions(threads=1, precision="f32")).run(x)[0]
    np.testing.assert_allclose(ov_out, ort_out, atol=1e-4, rtol=1e-4)


def test_bad_backend_settings_are_user_errors(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not available here"):
        BACKENDS["openvino"].load(onnx_path, RunOptions(device="NPU"))
    with pytest.raises(UserError, match="unknown precision"):
        BACKENDS["openvino"].load(onnx_path, RunOptions(precision="int4"))
    with pytest.raises(UserError, match="CPU only"):
        BACKENDS["cpu"].load(onnx_path, RunOptions(device="GPU"))
    with pytest.raises(UserError, match="reads .onnx"):
        BACKENDS["cpu"].load(tmp_path / "model.xml", RunOptions())


@pytest.fixture(scope="module")
def qdq_path(onnx_path: Path) -> Path:
    """A statically quantized (QDQ) copy of the tiny model, made with ONNX Runtime's own quantizer."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"pixel_values": rng.standard_normal((1, 3, 32, 32), dtype=np.float32)}
                                 for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = onnx_path.parent.parent / "qdq.onnx"
    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ)
    return out


@pytest.mark.parametrize("backend", ["cpu", "openvino"])
def test_timer_concurrent_and_layers_are_real_runs(onnx_path: Path, backend: str) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    session = BACKENDS[backend].load(onnx_path, RunOptions(threads=2, streams=2, input_shape=(2, 3, 32, 32)))
    assert session.input_shape == [2, 3, 32, 32]
    one = session.timer(x)
    assert all(0 < one() < 5 for _ in range(3))
    wall, latencies = session.concurrent(x)(6)
    assert len(latencies) == 6 and wall > 0 and all(lat > 0 for lat in latencies)
    assert session.describe()["streams"] == 2

    profiled = BACKENDS[backend].load(onnx_path, RunOptions(threads=1, profiling=True, input_shape=(2, 3, 32, 32)))
    profiled.run(x)
    layers = profiled.layer_times(x, 3)
    assert layers and all(layer.time_ms >= 0 for layer in layers)
    assert {"Conv", "Convolution"} & {layer.op_type for layer in layers}


def test_layer_times_need_profiling(onnx_path: Path) -> None:
    session = BACKENDS["cpu"].load(onnx_path, RunOptions(threads=1))
    with pytest.raises(UserError, match="profiling=True"):
        session.layer_times(np.zeros((1, 3, 32, 32), np.float32), 1)


def test_ort_profile_parser_keeps_only_the_last_runs() -> None:
    from vmlp_deploy.backends.onnxruntime import parse_profile

    events = []
    for run, ts in enumerate((0, 100, 200)):
        events.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": 50})
        events.append({"cat": "Node", "name": "conv_kernel_time", "ts": ts + 1, "dur": 10 * (run + 1),
                       "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}})
        events.append({"cat": "Node", "name": "conv_fence_before", "ts": ts + 1, "dur": 99, "args": {}})
    (layer,) = parse_profile(events, runs=2)
    assert (layer.name, layer.op_type, layer.time_ms) == ("conv", "Conv", pytest.approx((20 + 30) / 2 / 1000))
    with pytest.raises(ValueError, match="fewer"):
        parse_profile(events, runs=4)


def test_quantized_model_reports_int8(onnx_path: Path, qdq_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32), dtype=np.float32)
    ort_session = BACKENDS["cpu"].load(qdq_path, RunOptions(threads=1, precision="int8"))
    assert ort_session.quantized and ort_session.precision == "int8"
    ov_session = BACKENDS["openvino"].load(qdq_path, RunOptions(threads=1, precision="int8", profiling=True))
    assert ov_session.quantized and ov_session.precision == "f32"  # the float parts stay pinned to f32
    kernels = {layer.precision for layer in ov_session.layer_times(x, 1)}
    assert kernels & {"i8", "u8"}, kernels
    with pytest.raises(UserError, match="no Q/DQ"):
        BACKENDS["cpu"].load(onnx_path, RunOptions(precision="int8"))
    with pytest.raises(UserError, match="no Q/DQ"):
        BACKENDS["openvino"].load(onnx_path, RunOptions(precision="int8"))


def test_fixed_shapes_are_checked(onnx_path: Path) -> None:
    from vmlp_deploy.backends.base import fixed_shape

    assert fixed_shape(["batch", 3, 32, 32], (4, 3, 32, 32), "m") == (4, 3, 32, 32)
    with pytest.raises(UserError, match="fixed batch of 1"):
        fixed_shape([1, 3, 32, 32], (2, 3, 32, 32), "m")
    with pytest.raises(UserError, match="dynamic input dimensions"):
        fixed_shape(["batch", 3, "h", "w"], None, "m")
    with pytest.raises(UserError, match="rank-4"):
        fixed_shape(["batch", 3, 32, 32], (3, 32, 32), "m")
    with pytest.raises(UserError, match="dimension 2"):
        BACKENDS["openvino"].load(onnx_path, RunOptions(input_shape=(1, 3, 64, 32)))


_SIGNAL_AFTER_RELEASE = """
import gc, os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, where CI started us with it ignored
import numpy as np
from vmlp_deploy.backends import BACKENDS, RunOptions
for _ in range(2):
    sessions = [BACKENDS["openvino"].load(Path(sys.argv[1]), RunOptions(precision="f32")) for _ in range(2)]
    for s in sessions:
        s.run(np.zeros([d if isinstance(d, int) else 1 for d in s.input_shape], np.float32))
    del sessions, s
    gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
except KeyboardInterrupt:
    sys.exit(0)
sys.exit(3)
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux only: the plugin's signal stack is Linux's")
def test_ctrl_c_after_openvino_models_were_released(onnx_path: Path) -> None:
    """Found by a user: the CPU plugin leaves the thread's alternate signal stack pointing at memory it freed, so
    SIGINT after models were loaded and released crashed (SIGSEGV, staging left behind) instead of unwinding."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_RELEASE, str(onnx_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
