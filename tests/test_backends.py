"""The backend interface on real ONNX Runtime and OpenVINO runs, precision pinned and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    """No precision asked means f32 pinned: OpenVINO would otherwise pick bf16 on this CPU by itself."""
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
