"""Real accuracy: tiny S2-MLPv2 and ConvNeXt trained on scikit-learn's digits keep their top-1 within 0.5 point in INT8.

The models are trained once per module (seeded, 2 threads, seconds) on 32x32 upsampled digits; every backend
then calibrates on the training PNGs and is measured on the held-out test split written as an ImageFolder, with
the deployed kernels of this host and the integer scheme chosen for it (on an AVX2-only CPU, 8-bit u8 x s8
weights would saturate: see benchmarks/int8_schemes.py for the same models on emulated AVX2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlp_deploy.quantize import QuantizeOptions, quantize_run
from vmlp_deploy.quantize import digits as dg

BACKENDS = ("cpu", "openvino", "tensorrt")
#: The V-MLP and the CNN; the ViT's digits figures are measured by benchmarks/quantize_digits.py (CI time).
CONFIGS = ("s2mlpv2", "convnext")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dg.DigitsSplit:
    return dg.write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def trained(split: dg.DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """config -> (exported run directory, PyTorch test accuracy)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for config in CONFIGS:
        lm = dg.train(config, split)
        runs[config] = (dg.export(lm, root / config).out_dir, dg.accuracy(lm, split))
    return runs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_int8_top1_within_one_point_of_fp32(config: str, backend: str, split: dg.DigitsSplit,
                                            trained: dict[str, tuple[Path, float]], tmp_path: Path) -> None:
    run, torch_accuracy = trained[config]
    assert torch_accuracy > 0.93, "the digits models must actually learn for the check to mean anything"
    result = quantize_run(run, QuantizeOptions(backend=backend, output=tmp_path / "q", calibration_data=split.train_dir,
                                               eval_data=split.test_dir))
    a = result.accuracy
    assert a is not None and a.images == len(split.y_test) and a.classes == 10 and a.skipped == 0
    assert a.top1_fp32 == pytest.approx(torch_accuracy, abs=1 / len(split.y_test) + 1e-9)
    assert abs(a.delta_points) <= 0.5, f"{config}/{backend}: FP32 {a.top1_fp32:.2%} vs INT8 {a.top1_int8:.2%}"
    assert result.gate is not None and result.gate.passed and result.gate.checked.startswith("eval top-1")
    assert result.calibration.calibration_samples == 300 and result.calibration.held_out_samples == 50


@pytest.mark.parametrize("backend", ["cpu", "openvino"])
@pytest.mark.parametrize("config", CONFIGS)
def test_int8_for_avx2_keeps_accuracy_on_emulated_avx2_kernels(config: str, backend: str, split: dg.DigitsSplit,
                                                                trained: dict[str, tuple[Path, float]],
                                                                tmp_path: Path) -> None:
    """Quantized for --target-cpu avx2 and run by the runtimes' AVX2 kernels (qemu -cpu Haswell: no VNNI), where
    8-bit u8 x s8 pairs would saturate: the chosen 7-bit scheme keeps top-1 within 0.5 point of FP32."""
    from vmlp_deploy.emulate import emulate, emulation_available

    why = emulation_available()
    if why is not None:
        pytest.skip(why)
    run, _ = trained[config]
    result = quantize_run(run, QuantizeOptions(backend=backend, output=tmp_path / "q", calibration_data=split.train_dir,
                                               eval_data=split.test_dir, target_cpu="avx2"))
    assert result.scheme is not None and result.scheme.scheme.name == "u8s8-7bit"
    emulated = emulate(result.model_path, split.x_test, backend, batch=1)
    assert "AVX2" in emulated.cpu_features and not emulated.int8_dot32
    top1 = float((emulated.outputs[0].argmax(1) == split.y_test).mean())
    assert result.accuracy is not None
    assert abs(100 * (top1 - result.accuracy.top1_fp32)) <= 0.5, f"{config}/{backend} on AVX2: {top1:.2%}"
    q = result.manifest["stages"]["quantize"]
    if q.get("stand_in") or q["host_stands_for_target"]:  # quantize measured on AVX2 kernels itself: capped or own
        assert result.accuracy.top1_int8 == pytest.approx(top1, abs=1 / len(split.y_test) + 1e-9)


@pytest.mark.parametrize("config", CONFIGS)
def test_openvino_for_avx2_is_gated_on_avx2_kernels(config: str, split: dg.DigitsSplit,
                                                    trained: dict[str, tuple[Path, float]], tmp_path: Path) -> None:
    """--backend openvino --target-cpu avx2 measures its eval top-1, and gates on it, with AVX2 integer kernels:
    the host's own on an AVX2 CPU, oneDNN capped to AVX2 on a CPU with more (``isa_cap``)."""
    from vmlp_deploy import cpu, isa_cap

    run, _ = trained[config]
    result = quantize_run(run, QuantizeOptions(backend="openvino", output=tmp_path / "q",
                                               calibration_data=split.train_dir, eval_data=split.test_dir,
                                               target_cpu="avx2"))
    q = result.manifest["stages"]["quantize"]
    own = cpu.host_stands_for(cpu.TARGETS["avx2"], integer_only=True)
    capped = isa_cap.plan("openvino", cpu.TARGETS["avx2"])[0] is not None
    assert q["host_stands_for_target"] == own
    assert (q.get("stand_in") is not None) == (capped and not own)
    a = result.accuracy
    assert a is not None and abs(a.delta_points) <= 0.5, f"{config} on AVX2 kernels: {a.top1_int8:.2%}"
    assert result.gate is not None and result.gate.passed and result.gate.checked.startswith("eval top-1")
