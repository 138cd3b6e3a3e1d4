"""fold-rolls: a roll, ops that act on each position alone, and the inverse roll fold into the ops alone."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch

from vmlp_deploy.onnx_io import cpu_session, op_histogram
from vmlp_deploy.passes import optimize_model
from vmlp_deploy.passes.canonicalize import canonicalize
from vmlp_deploy.passes.rule import apply_phases
from vmlp_deploy.passes.rule_sets import FOLD_ROLLS

SHAPE = (1, 7, 9, 8)  # (B, H, W, C), channels-last like a token-mixing block


class _Block(torch.nn.Module):
    def __init__(self, body: Callable[[torch.Tensor], torch.Tensor], shifts: tuple[int, ...],
                 back: tuple[int, ...], dims: tuple[int, ...] = (1, 2), back_dims: tuple[int, ...] | None = None):
        super().__init__()
        self.norm, self.fc = torch.nn.LayerNorm(SHAPE[-1]), torch.nn.Linear(SHAPE[-1], SHAPE[-1])
        self.mix = torch.nn.Linear(SHAPE[1], SHAPE[1])  # across rows
        self.body, self.shifts, self.back, self.dims, self.back_dims = body, shifts, back, dims, back_dims or dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(x, shifts=self.shifts, dims=self.dims)
        y = self.body(self, y)
        return torch.roll(y, shifts=self.back, dims=self.back_dims) + x


def _export(block: torch.nn.Module, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    if dynamo:
        return torch.onnx.export(block.eval(), (torch.randn(*SHAPE),), dynamo=True, opset_version=18).model_proto
    buf = io.BytesIO()
    torch.onnx.export(block.eval(), (torch.randn(*SHAPE),), buf, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return cpu_session(model, threads=1, optimize=False).run(None, {model.graph.input[0].name: x})[0]


def _fold(model: onnx.ModelProto):
    return apply_phases(canonicalize(model), [FOLD_ROLLS])[1].rules["fold-rolls"]


def _token_mlp(m: _Block, y: torch.Tensor) -> torch.Tensor:
    return m.fc(torch.nn.functional.gelu(m.norm(y))) * 0.5


@pytest.mark.parametrize(("shifts", "back", "dims", "back_dims"), [
    ((2, 3), (-2, -3), (1, 2), None),  # both axes, inverse in the same order
    ((2, 3), (-3, -2), (1, 2), (2, 1)),  # inverse over the axes in the other order
    ((3,), (4,), (1,), None),  # 3 + 4 = 7 = H: a full turn
])
def test_roll_position_wise_ops_and_inverse_roll_become_the_ops_alone(shifts, back, dims, back_dims) -> None:
    model = _export(_Block(_token_mlp, shifts, back, dims, back_dims))
    record = _fold(model)
    assert record.fired == 1 and not record.declined
    result = optimize_model(model)
    ops = op_histogram(result.model)
    assert not {"Slice", "Concat", "Pad", "Transpose", "Gather"} & set(ops) and result.verification.passed
    assert not result.patterns and result.changed
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    np.testing.assert_array_equal(_run(result.model, x), _run(model, x))  # only where it reads from changes


def test_the_dynamo_exporters_rolls_fold_too() -> None:
    model = _export(_Block(_token_mlp, (2, 3), (-2, -3)), dynamo=True)
    result = optimize_model(model)
    assert result.report.fired("fold-rolls") == 1 and result.verification.passed
    assert not {"Slice", "Concat", "Pad", "Transpose", "Gather"} & set(op_histogram(result.model))


def test_rolls_that_meet_directly_vanish() -> None:
    model = _export(_Block(lambda m, y: y, (2, 3), (-2, -3)))
    assert _fold(model).fired == 1
    result = optimize_model(model)
    assert op_histogram(result.model) == {"Add": 1}


@pytest.mark.parametrize(("body", "shifts", "back", "reason"), [
    (lambda m, y: y.mean(dim=1, keepdim=True) * y, (2,), (-2,), "computed operand"),  # mixes rows
    (lambda m, y: torch.relu(y), (2,), (-1,), "do not cancel"),
    (lambda m, y: m.mix(y.transpose(1, 3)).transpose(1, 3), (2,), (-2,), "mixes positions"),  # a Linear across H
])
def test_what_mixes_positions_or_does_not_cancel_is_left_alone(body, shifts, back, reason: str) -> None:
    model = _export(_Block(body, shifts, back, (1,)))
    record = _fold(model)
    assert record.fired == 0 and any(reason in r for r in record.declined)


def test_a_rolled_value_read_elsewhere_is_left_alone() -> None:
    class Leaky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(torch.roll(x, 2, 1))
            return torch.roll(y, -2, 1) + y  # y is needed rolled too

    record = _fold(_export(Leaky()))
    assert record.fired == 0 and any("other readers" in r for r in record.declined)
