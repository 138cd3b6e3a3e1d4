"""Real accuracy: tiny S2-MLPv2 and ConvNeXt trained on scikit-learn's digits keep their top-1 within 1 point in INT8.

The models are trained once per module (seeded, 2 threads, seconds) on 32x32 upsampled digits; every backend
then calibrates on the training PNGs and is measured on the held-out test split written as an ImageFolder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlp_deploy.quantize import QuantizeOptions, quantize_run
from vmlp_deploy.quantize import digits as dg

BACKENDS = ("cpu", "openvino", "tensorrt")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dg.DigitsSplit:
    return dg.write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def trained(split: dg.DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """config -> (exported run directory, PyTorch test accuracy)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for config in dg.CONFIGS:
        lm = dg.train(config, split)
        runs[config] = (dg.export(lm, root / config).out_dir, dg.accuracy(lm, split))
    return runs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(dg.CONFIGS))
def test_int8_top1_within_one_point_of_fp32(config: str, backend: str, split: dg.DigitsSplit,
                                            trained: dict[str, tuple[Path, float]], tmp_path: Path) -> None:
    run, torch_accuracy = trained[config]
    assert torch_accuracy > 0.93, "the digits models must actually learn for the check to mean anything"
    result = quantize_run(run, QuantizeOptions(backend=backend, output=tmp_path / "q", calibration_data=split.train_dir,
                                               eval_data=split.test_dir))
    a = result.accuracy
    assert a is not None and a.images == len(split.y_test) and a.classes == 10 and a.skipped == 0
    assert a.top1_fp32 == pytest.approx(torch_accuracy, abs=1 / len(split.y_test) + 1e-9)
    assert abs(a.delta_points) <= 1.0, f"{config}/{backend}: FP32 {a.top1_fp32:.2%} vs INT8 {a.top1_int8:.2%}"
    assert result.calibration.calibration_samples == 300 and result.calibration.held_out_samples == 50
