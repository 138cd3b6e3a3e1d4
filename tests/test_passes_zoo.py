"""Every zoo model through the passes: outputs equal with and without the rewrite, op histograms as expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from vmlp_deploy import models as zoo
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.onnx_io import cpu_session, op_histogram
from vmlp_deploy.passes import optimize_model

#: Families whose token mixing is a shift: S2-MLP's exports as ScatterND, AS-MLP's as Pad + Slice + Concat.
SHIFT_FAMILIES = {"s2mlp", "s2mlpv2", "asmlp"}
SCATTER_SHIFT_FAMILIES = {"s2mlp", "s2mlpv2"}
#: Families whose every block runs channels-first after ``target="openvino"`` (gMLP's spatial gating keeps
#: a token-axis MatMul; PoolFormer has no channels-last tensor to begin with).
CHANNELS_FIRST_FAMILIES = {"s2mlp", "s2mlpv2", "convnext", "mlp_mixer", "resmlp"}


@pytest.mark.parametrize("name", zoo.list_models())
def test_zoo_model_rewrite_keeps_outputs(name: str, tmp_path: Path) -> None:
    lm = load_model(name, tiny=True)
    naive_path = export_model(lm, tmp_path / "naive", ExportOptions(rewrite=False)).onnx_path
    naive = onnx.load(str(naive_path))
    result = optimize_model(naive)
    before, after = op_histogram(naive), op_histogram(result.model)
    x = np.random.default_rng(0).standard_normal((1, 3, *lm.input_size), dtype=np.float32)
    ref = cpu_session(naive_path).run(None, {"pixel_values": x})[0]
    out = cpu_session(result.model).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    if lm.family in SCATTER_SHIFT_FAMILIES:
        assert before.get("ScatterND", 0) > 0 and "ScatterND" not in after
        assert after.get("Pad", 0) == len(result.patterns) > 0
    if lm.family in SHIFT_FAMILIES:
        assert result.patterns and after.get("Slice", 0) < before.get("Slice", 0)
        bound = 0.75 if lm.family == "s2mlpv2" else 1.0  # the node target is set for S2-MLPv2
        assert len(result.model.graph.node) < bound * len(naive.graph.node)
    else:
        assert not result.changed and result.model is naive and after == before

    lowered = optimize_model(naive, target="openvino")
    out = cpu_session(lowered.model).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    transposes = op_histogram(lowered.model).get("Transpose", 0)
    if lm.family in CHANNELS_FIRST_FAMILIES:  # every channels-last token map is carried channels-first
        assert transposes == 0
        assert lowered.channels_first_counts()["linears_to_conv"] > 0 and lowered.verification.passed
    assert transposes <= before.get("Transpose", 0)
