"""The host standing in for a lesser x86 CPU: OpenVINO capped with ONEDNN_MAX_CPU_ISA runs the target's integer
kernels natively (a model whose u8 x s8 pairs overflow int16 saturates exactly as an AVX2 CPU computes it), the
cap is planned only where it can work, and a session in a child process behaves like one in this process.
Expectations come from the detected CPU, never a constant."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_emulate import K, N, _codes, _qdq_matmul

from vmlp_deploy import cpu, isa_cap
from vmlp_deploy.backends import BACKENDS, RunOptions
from vmlp_deploy.backends.isolated import IsolatedSession, IsolatedSessionError
from vmlp_deploy.errors import UserError
from vmlp_deploy.quantize.saturation import saturating_matmul

LEVELS = {"avx2": "AVX2", "avx-vnni": "AVX2_VNNI", "avx512": "AVX512_CORE", "avx512-vnni": "AVX512_CORE_VNNI",
          "avx512-bf16": "AVX512_CORE_BF16", "amx": "AVX512_CORE_AMX"}


@pytest.mark.parametrize("name", [n for n, t in cpu.TARGETS.items() if t.isa.x86])
def test_onednn_level_of_every_x86_target(name: str) -> None:
    level = isa_cap.onednn_isa(cpu.TARGETS[name].isa)
    assert level == LEVELS[name]
    assert not any(isa_cap.above(k, level) for k in (f"jit_{level.lower()}_I8", "jit_gemm_I8", "ref_I8"))


def test_kernels_above_a_level() -> None:
    assert isa_cap.above("brgemm_avx512_I8", "AVX2") and isa_cap.above("brgemm_avx512_amx_I8", "AVX512_CORE_VNNI")
    assert isa_cap.above("brgconv_avx2_vnni_1x1_I8", "AVX2") and not isa_cap.above("brgconv_avx2_vnni_I8", "AVX2_VNNI")
    assert not isa_cap.above("jit_avx2_1x1_I8", "AVX2") and not isa_cap.above("brgemm_avx512_I8", "AVX512_CORE_BF16")


def test_dot_products_above_the_cap_are_refused_other_kernels_counted() -> None:
    cap = isa_cap.IsaCap("openvino", "avx2", "ONEDNN_MAX_CPU_ISA", "AVX2")
    check = isa_cap.check_kernels(cap, {"a": ("Convolution", "jit_avx2_1x1_I8"), "b": ("Subgraph", "jit_avx512_f32"),
                                        "c": ("FullyConnected", "jit_gemm_I8"), "d": ("Reduce", "jit_avx512_i8"),
                                        "e": ("Convolution", "brgconv_avx2_f32")})
    assert check.integer_kernels == {"jit_avx2_1x1_I8": 1, "jit_gemm_I8": 1}
    assert check.kernels_above_cap == {"jit_avx512_f32": 1, "jit_avx512_i8": 1}
    for layer in ("FullyConnected", "GroupConvolution", "MatMul"):
        with pytest.raises(UserError, match="did not cap openvino's integer kernels .*brgemm_avx512_I8"):
            isa_cap.check_kernels(cap, {"a": (layer, "brgemm_avx512_I8")})
    with pytest.raises(UserError, match="had not chosen the kernels .*undef_I8"):
        isa_cap.check_kernels(cap, {"a": ("FullyConnected", "undef_I8")})
    assert check.to_dict()["integer_kernels_naming_no_isa"] == ["jit_gemm_I8"]


def test_plan_only_where_a_cap_can_work() -> None:
    avx2 = cpu.TARGETS["avx2"]
    assert isa_cap.plan("cpu", avx2) == (None, "cpu dispatches on the CPU's own flags and cannot be capped")
    assert isa_cap.plan("tensorrt", avx2)[0] is None
    host = cpu.host().isa
    if not host.x86:
        assert isa_cap.plan("openvino", avx2)[0] is None
        return
    assert isa_cap.plan("openvino", cpu.TARGETS["arm64"]) == (None, "capping runs x86 targets on x86 hosts only")
    for target in (t for t in cpu.TARGETS.values() if t.isa.x86):
        cap, why = isa_cap.plan("openvino", target)
        missing = target.isa.features - host.features
        assert (cap is None) == bool(missing)
        if missing:
            assert all(f in why for f in missing)
        else:
            assert cap is not None and cap.env == {"ONEDNN_MAX_CPU_ISA": LEVELS[target.name]}


@pytest.mark.parametrize("name", [n for n, t in cpu.TARGETS.items() if t.isa.x86])
def test_capped_openvino_computes_as_the_target_cpu_does(name: str, tmp_path: Path) -> None:
    """Capped to each x86 target this host contains, int16 pairs clip exactly where the target's ISA has no 32-bit
    int8 dot product (avx2, avx512) and nowhere else (VNNI, AMX); this process's own run clips only where the
    host itself saturates."""
    target = cpu.TARGETS[name]
    cap, why = isa_cap.plan("openvino", target)
    if cap is None:
        pytest.skip(f"cannot cap OpenVINO to {name} here: {why}")
    x, w, scale = _qdq_matmul(tmp_path / "mm.onnx")
    exact, sat, clipped, _ = saturating_matmul(_codes(x), w)
    assert clipped > 0
    options = RunOptions(threads=1, precision="f32")
    session, check = isa_cap.load(cap, tmp_path / "mm.onnx", options)  # a dynamic batch: kernels read after a run
    with session:
        capped = session.run(x)[0]
        assert session.describe()["environment"] == {"ONEDNN_MAX_CPU_ISA": cap.level}
    assert list(check.integer_kernels) and not any(k.lower().startswith("undef") for k in check.integer_kernels)
    expected = sat if target.isa.u8s8_saturates else exact
    np.testing.assert_allclose(capped, expected * (scale / 255), rtol=1e-4, atol=1e-3)
    native = BACKENDS["openvino"].load(tmp_path / "mm.onnx", options)
    own = sat if cpu.host().isa.u8s8_saturates else exact
    np.testing.assert_allclose(native.run(x)[0], own * (scale / 255), rtol=1e-4, atol=1e-3)
    ran = [k for layer, k in native.kernels().values() if isa_cap.dot_product(layer, k)]
    if any(isa_cap.above(k, cap.level) for k in ran):  # the host ran wider kernels: the cap changed them
        assert set(ran) != set(check.integer_kernels)


def test_isolated_session_times_in_the_child_and_reports_errors(tmp_path: Path) -> None:
    x, _, _ = _qdq_matmul(tmp_path / "mm.onnx")
    session = IsolatedSession("openvino", tmp_path / "mm.onnx", RunOptions(threads=1, precision="f32"), {})
    assert session.input_shape == ["?", K] and session.precision == "f32" and session.quantized
    assert 0 < session.load_s < 30, "the backend's own load time, measured inside the child"
    timer = session.timer(x)
    assert all(0 < timer() < 1 for _ in range(3))
    wall, latencies = session.concurrent(x)(4)
    assert wall > 0 and len(latencies) == 4
    with pytest.raises(IsolatedSessionError, match="per-layer times need"):
        session.layer_times(x, 1)
    assert session.run(x)[0].shape == (len(x), N), "an error inside the child leaves the session usable"
    other = session.timer(x[:1])
    assert 0 < timer() < 1 and 0 < other() < 1, "each bound timer keeps its own input"
    session.close()
    session.close()
    dead = IsolatedSession("openvino", tmp_path / "mm.onnx", RunOptions(threads=1, precision="f32"), {})
    os.kill(dead.pid, signal.SIGKILL)
    with pytest.raises(IsolatedSessionError, match="child process serving the session ended"):
        dead.run(x)
    with pytest.raises(UserError, match="OpenVINO cannot read missing.xml"):
        IsolatedSession("openvino", tmp_path / "missing.xml", RunOptions(), {})
