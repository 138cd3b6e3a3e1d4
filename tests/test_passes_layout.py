"""The ``cpu`` layout rules together, through the whole pipeline, on S2-MLPv2's mixer.

Each rule's own cases sit beside it (``vmlp_deploy/passes/rules/<rule>_test.py``).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from vmlp_deploy.models.s2mlpv2 import ShiftSplitMixer

from vmlp_deploy.onnx_io import cpu_session
from vmlp_deploy.passes import optimize_model

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def mixer_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    module = ShiftSplitMixer(16, 0.25, True).eval()
    buf = io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, 6, 7, 16),), buf, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def _moved(model: onnx.ModelProto) -> int:
    inferred = ir.from_proto(onnx.shape_inference.infer_shapes(model))
    return sum(int(np.prod(n.outputs[0].shape.numpy())) for n in inferred.graph if n.op_type == "Transpose")


def test_s2mlpv2_mixer_transposes_move_to_c_channels(mixer_model):
    plain = optimize_model(mixer_model, layout=False)
    result = optimize_model(mixer_model)
    layout = result.layout_counts()
    assert result.verification.passed and layout["hoisted_into_conv"] == 1 and layout["sunk"] == 1
    assert _moved(result.model) * 3 == _moved(plain.model)  # 2 x 3C*H*W -> 2 x C*H*W
    assert {"ScatterND", "Concat"}.isdisjoint(result.ops_after)
    # one Split picks the three split-attention branches of the 4-D tensor (no 5-D view any more)
    assert result.layout_counts()["group_views"] == 1 and result.ops_after["Split"] == 1 and "Slice" not in result.ops_after
    assert result.ops_after["MatMul"] == 1  # mlp1 became the 1x1 Conv; mlp2 stays


def test_edge_mask_formulation_is_exact_and_pad_free(mixer_model):
    pad = optimize_model(mixer_model, edge="pad")
    mask = optimize_model(mixer_model, edge="mask")
    assert mask.verification.passed and "Pad" not in mask.ops_after and pad.ops_after.get("Pad") == 1
    x = RNG.standard_normal((1, 6, 7, 16)).astype(np.float32)
    name = mixer_model.graph.input[0].name
    a = cpu_session(pad.model, threads=1, optimize=False).run(None, {name: x})[0]
    b = cpu_session(mask.model, threads=1, optimize=False).run(None, {name: x})[0]
    np.testing.assert_array_equal(a, b)


def test_bad_edge_option_is_rejected(mixer_model):
    with pytest.raises(ValueError, match="edge"):
        optimize_model(mixer_model, edge="reflect")
