"""fit_shift and the Pad + depthwise Conv emission, on synthetic copy maps (no exporter involved).

A copy map is built in numpy for a known per-channel shift with a border rule per axis, in NCHW or
NHWC on either side; fit_shift must explain it, and the emitted replacement, run in ONNX Runtime, must
reproduce it exactly. Maps that are not such a shift must be refused.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmlp_deploy.onnx_io import cpu_session
from vmlp_deploy.passes.probe import CopyMap
from vmlp_deploy.passes.shift_fit import ShiftPlan, fit_shift
from vmlp_deploy.passes.rules.shift_to_conv import replacement_model

MODES = ("edge", "wrap", "constant")


def _source(pos: np.ndarray, length: int, mode: str) -> np.ndarray:
    """Source coordinate for each target coordinate; -1 where the constant rule gives the fill."""
    if mode == "edge":
        return np.clip(pos, 0, length - 1)
    if mode == "wrap":
        return pos % length
    return np.where((pos >= 0) & (pos < length), pos, -1)


def make_map(n, c, h, w, dy, dx, mode_h, mode_w, fill=0.0, x_layout="NCHW", y_layout="NCHW") -> CopyMap:
    """out[n, c, y, x] = in[n, c, src_y, src_x] in the given layouts."""
    nn_, cc, yy, xx = np.meshgrid(np.arange(n), np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    sy = _source(yy + np.asarray(dy)[None, :, None, None], h, mode_h)
    sx = _source(xx + np.asarray(dx)[None, :, None, None], w, mode_w)
    const = (sy < 0) | (sx < 0)
    sy, sx = np.maximum(sy, 0), np.maximum(sx, 0)
    if x_layout == "NCHW":
        flat = ((nn_ * c + cc) * h + sy) * w + sx
        in_shape = (n, c, h, w)
    else:
        flat = ((nn_ * h + sy) * w + sx) * c + cc
        in_shape = (n, h, w, c)
    src = np.where(const, -1, flat)
    fills = np.where(const, fill, np.nan)
    if y_layout == "NHWC":
        src, fills = src.transpose(0, 2, 3, 1), fills.transpose(0, 2, 3, 1)
    return CopyMap(in_shape, tuple(src.shape), np.ascontiguousarray(src), np.ascontiguousarray(fills))


def run_plan(plan: ShiftPlan, x: np.ndarray, opset: int = 19) -> np.ndarray:
    model = replacement_model(plan, "x", ir.DataType.FLOAT, opset_imports={"": opset}, ir_version=10)
    return cpu_session(model, threads=1, optimize=False).run(None, {"x": x})[0]


def apply_map(cmap: CopyMap, x: np.ndarray) -> np.ndarray:
    out = x.reshape(-1)[np.maximum(cmap.src, 0)]
    return np.where(cmap.src >= 0, out, cmap.fill).astype(np.float32)


@st.composite
def shift_maps(draw):
    n = draw(st.sampled_from([1, 2]))
    c = draw(st.integers(1, 9))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    shifts = st.integers(-3, 3)
    dy = draw(st.lists(shifts, min_size=c, max_size=c))
    dx = draw(st.lists(shifts, min_size=c, max_size=c))
    mode_h, mode_w = draw(st.sampled_from(MODES)), draw(st.sampled_from(MODES))
    fill = draw(st.sampled_from([0.0, 1.5]))
    x_layout, y_layout = draw(st.sampled_from(["NCHW", "NHWC"])), draw(st.sampled_from(["NCHW", "NHWC"]))
    return make_map(n, c, h, w, dy, dx, mode_h, mode_w, fill, x_layout, y_layout)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(cmap=shift_maps(), opset=st.sampled_from([17, 19]))
def test_every_shift_map_is_fitted_and_reproduced(cmap, opset):
    plan = fit_shift(cmap, max_shift=3)
    assert isinstance(plan, ShiftPlan), plan
    x = np.random.default_rng(0).standard_normal(cmap.in_shape).astype(np.float32)
    np.testing.assert_array_equal(run_plan(plan, x, opset), apply_map(cmap, x))


def test_s2_shift_nhwc_plan_is_one_grouped_conv():
    c = 8
    dy = [1, 1, -1, -1, 0, 0, 0, 0]
    dx = [0, 0, 0, 0, 1, 1, -1, -1]
    plan = fit_shift(make_map(1, c, 5, 6, dy, dx, "edge", "edge", x_layout="NHWC", y_layout="NHWC"))
    assert isinstance(plan, ShiftPlan)
    assert plan.kind == "shift/edge" and plan.layout == "NHWC"
    assert plan.c_out == c and not plan.uniform and plan.channels is None
    assert plan.kernel_range == (-1, 1, -1, 1)
    assert plan.shift_histogram() == {"+0,+1": 2, "+0,-1": 2, "+1,+0": 2, "-1,+0": 2}


def test_unshifted_channels_join_the_conv_with_the_centre_tap():
    plan = fit_shift(make_map(1, 6, 4, 4, [0, 0, 0, 2, 0, 0], [0, 0, 0, 0, 0, 0], "constant", "constant"))
    assert isinstance(plan, ShiftPlan) and plan.kind == "shift/zero"
    assert plan.kernel_range == (0, 2, 0, 0)  # a 3x1 kernel: taps 0..2 along H only
    assert plan.mode_w is None


def test_uniform_shift_needs_no_conv():
    plan = fit_shift(make_map(1, 3, 5, 5, [2, 2, 2], [-1, -1, -1], "wrap", "wrap"))
    assert isinstance(plan, ShiftPlan) and plan.uniform and plan.kind == "shift/circular"


def test_mixed_border_rules_per_axis():
    plan = fit_shift(make_map(1, 4, 5, 6, [1, -1, 0, 0], [0, 0, 2, -2], "wrap", "constant", fill=0.0))
    assert isinstance(plan, ShiftPlan)
    assert plan.kind == "shift/circular+zero"
    assert (plan.mode_h, plan.mode_w) == ("wrap", "constant")


def test_fully_constant_channel_gets_bias():
    cmap = make_map(1, 3, 2, 2, [0, 3, 0], [0, 0, 1], "constant", "constant", fill=0.5)
    plan = fit_shift(cmap)
    assert isinstance(plan, ShiftPlan) and plan.const_channels == (1,)
    x = np.random.default_rng(1).standard_normal(cmap.in_shape).astype(np.float32)
    np.testing.assert_array_equal(run_plan(plan, x), apply_map(cmap, x))


# ---------------------------------------------------------------------------------------------- refused


def test_border_keeping_its_own_value_is_not_a_shift():
    """``x[:, 2:] = x[:, :-2]``: rows 0 and 1 keep their own values; no single border rule explains it."""
    cmap = make_map(1, 2, 6, 4, [0, 0], [0, 0], "edge", "edge")
    src = cmap.src.copy()
    rows = np.arange(6)
    for r in range(2, 6):
        src[:, :, r, :] = cmap.src[:, :, rows[r - 2], :]
    plan = fit_shift(CopyMap(cmap.in_shape, cmap.out_shape, src, cmap.fill))
    assert isinstance(plan, str)


def test_shift_beyond_max_shift_is_refused():
    cmap = make_map(1, 2, 9, 9, [4, 0], [0, 0], "constant", "constant")
    assert isinstance(fit_shift(cmap, max_shift=3), str)
    assert isinstance(fit_shift(cmap, max_shift=4), ShiftPlan)


def test_channel_mixing_is_refused():
    cmap = make_map(1, 2, 3, 3, [0, 0], [0, 0], "edge", "edge")
    src = cmap.src.copy()
    src[0, 0, 0, 0] = cmap.src[0, 1, 0, 0]  # one element read from the other channel
    assert isinstance(fit_shift(CopyMap(cmap.in_shape, cmap.out_shape, src, cmap.fill)), str)


def test_row_dependent_shift_is_refused():
    cmap = make_map(1, 1, 4, 4, [0], [0], "wrap", "wrap")
    src = cmap.src.copy()
    src[0, 0, 1, :] = np.roll(cmap.src[0, 0, 1, :], 1)  # row 1 shifted, the others not
    assert isinstance(fit_shift(CopyMap(cmap.in_shape, cmap.out_shape, src, cmap.fill)), str)


def test_move_across_batch_is_refused():
    cmap = make_map(2, 2, 3, 3, [0, 0], [0, 0], "edge", "edge")
    src = cmap.src[::-1].copy()  # batch entries swapped
    assert isinstance(fit_shift(CopyMap(cmap.in_shape, cmap.out_shape, src, cmap.fill)), str)


@pytest.mark.parametrize("hint, ok", [("first", True), ("last", False), (None, True)])
def test_channel_hint_only_rules_layouts_out(hint, ok):
    cmap = make_map(1, 3, 4, 5, [1, 0, -1], [0, 1, 0], "edge", "edge", x_layout="NCHW", y_layout="NCHW")
    assert isinstance(fit_shift(cmap, channels=hint), ShiftPlan) == ok
