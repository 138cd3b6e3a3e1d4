"""What is a shift: explain a measured copy map as a per-channel 2-D translation (the proof).

:func:`fit_shift` decides whether a :class:`~.probe.CopyMap` is a translation of the input per channel with
one border rule per spatial axis:

* ``constant`` (``zero`` when the fill is 0): out-of-range reads give a constant (AS-MLP, CycleMLP);
* ``edge``: out-of-range reads are clamped to the border (S2-MLP, S2-MLPv2 slice assignment);
* ``wrap``: out-of-range reads wrap around (``torch.roll``: MS-MLP, Hire-MLP).

Input and output may be laid out differently (NCHW, NHWC, a stack of channel groups, H and W merged into
one axis), as long as one is a reshape/transpose of the other up to the shift; channels may be selected
or reordered. Every element of the map is checked, so a returned :class:`ShiftPlan` is exact for these
shapes. Anything else (another axis, a border that keeps its own value, a mix of rules within one axis, a
shift beyond ``max_shift``, elements moving across the batch axis) gets a reason string instead.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from ._graph import static_shape
from .probe import CopyMap

#: Border rules, in ONNX Pad's spelling.
MODES = ("edge", "wrap", "constant")
_NO = np.iinfo(np.int64).min


@dataclasses.dataclass(frozen=True)
class ShiftPlan:
    """How to compute ``y`` from ``x`` with Pad + depthwise Conv. Built by :func:`fit_shift`."""

    x_shape: tuple[int, ...]
    x_perm: tuple[int, ...]  # x -> (N, *channel axes, H, W)
    nchw: tuple[int, int, int, int]  # (N, C_in, H, W) canonical input
    channels: tuple[int, ...] | None  # canonical input channel per output channel; None = all, in order
    dy: tuple[int, ...]  # per output channel: out[h] reads in[h + dy]
    dx: tuple[int, ...]
    const_channels: tuple[int, ...]  # output channels that are entirely constant ...
    const_values: tuple[float, ...]  # ... and their value
    mode_h: str | None  # border rule on H (None: no padding needed on H)
    mode_w: str | None
    fill: float  # Pad value for the constant rule
    y_chan_shape: tuple[int, ...]  # y's channel axes (canonical channel = row-major over these)
    y_perm: tuple[int, ...]  # (N, *y_chan_shape, H, W) -> y_split_shape
    y_split_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    layout: str

    @property
    def c_out(self) -> int:
        return len(self.dy)

    @property
    def active(self) -> np.ndarray:
        mask = np.ones(self.c_out, dtype=bool)
        mask[list(self.const_channels)] = False
        return mask

    @property
    def kernel_range(self) -> tuple[int, int, int, int]:
        """(lo_h, hi_h, lo_w, hi_w): tap offsets the kernel covers (always including 0)."""
        act = self.active
        dy = np.asarray(self.dy)[act] if act.any() else np.zeros(1, int)
        dx = np.asarray(self.dx)[act] if act.any() else np.zeros(1, int)
        return min(0, int(dy.min())), max(0, int(dy.max())), min(0, int(dx.min())), max(0, int(dx.max()))

    @property
    def uniform(self) -> bool:
        """All channels move by the same amount (no Conv needed)."""
        return not self.const_channels and len(set(zip(self.dy, self.dx))) == 1

    @property
    def is_layout_only(self) -> bool:
        return self.uniform and self.dy[0] == 0 and self.dx[0] == 0

    @property
    def max_shift(self) -> int:
        act = self.active
        if not act.any():
            return 0
        return int(max(np.abs(np.asarray(self.dy)[act]).max(), np.abs(np.asarray(self.dx)[act]).max()))

    @property
    def kind(self) -> str:
        """'shift/<border>' ('edge', 'circular', 'zero', 'constant', joined by '+'), or 'layout/identity'."""
        lo_h, hi_h, lo_w, hi_w = self.kernel_range
        if self.uniform:
            moves_h, moves_w = self.dy[0] != 0, self.dx[0] != 0
        else:
            moves_h, moves_w = lo_h != hi_h, lo_w != hi_w
        names = {_mode_name(m, self.fill) for m, moves in ((self.mode_h, moves_h), (self.mode_w, moves_w))
                 if m and moves}
        if self.const_channels:
            names.add("zero" if all(v == 0 for v in self.const_values) else "constant")
        return "shift/" + "+".join(sorted(names)) if names else "layout/identity"

    def shift_histogram(self) -> dict[str, int]:
        """'dy,dx' -> number of channels ('const' for constant channels)."""
        hist: dict[str, int] = {}
        act = self.active
        for c in range(self.c_out):
            key = f"{self.dy[c]:+d},{self.dx[c]:+d}" if act[c] else "const"
            hist[key] = hist.get(key, 0) + 1
        return dict(sorted(hist.items()))


def _mode_name(mode: str, fill: float) -> str:
    return {"edge": "edge", "wrap": "circular"}.get(mode, "zero" if fill == 0 else "constant")


def _x_layouts(sx: tuple[int, ...]) -> Iterator[tuple[int, list[int]]]:
    """Candidate (H axis, channel axes) of x: H, W adjacent, never the batch axis 0."""
    for xh in range(1, len(sx) - 1):
        yield xh, [a for a in range(1, len(sx)) if a not in (xh, xh + 1)]


def _y_layouts(sy: tuple[int, ...], h: int, w: int) -> Iterator[tuple[tuple[int, ...], int]]:
    """Candidate (shape with H, W as separate axes, H axis) of y."""
    for k in range(1, len(sy) - 1):
        if sy[k] == h and sy[k + 1] == w:
            yield sy, k
    for k in range(1, len(sy)):
        if sy[k] == h * w and h > 1 and w > 1:
            yield sy[:k] + (h, w) + sy[k + 1 :], k


def _fit_axis(f: np.ndarray, dom: np.ndarray, active: np.ndarray, max_shift: int) -> dict[str, np.ndarray]:
    """Per border rule, the smallest shift per channel that explains source coordinates ``f`` (C, L)."""
    length = f.shape[1]
    pos0 = np.arange(length)
    shifts = sorted(range(-max_shift, max_shift + 1), key=lambda d: (abs(d), d))
    fits = {}
    for mode in MODES:
        best = np.full(f.shape[0], _NO, dtype=np.int64)
        for d in shifts:
            pos = pos0 + d
            if mode == "constant":
                expect_dom = (pos >= 0) & (pos < length)
                expect = pos
            elif mode == "edge":
                expect_dom = np.ones(length, dtype=bool)
                expect = np.clip(pos, 0, length - 1)
            else:
                expect_dom = np.ones(length, dtype=bool)
                expect = pos % length
            ok = (dom == expect_dom).all(axis=1) & ((f == expect) | ~expect_dom).all(axis=1)
            best[ok & (best == _NO)] = d
        if (best[active] != _NO).all():
            fits[mode] = np.where(active, best, 0)
    return fits


def _fit_config(
    src: np.ndarray, fill: np.ndarray, xpos: np.ndarray, nchw: tuple[int, int, int, int], max_shift: int
) -> dict | str:
    """Fit one layout hypothesis. ``src``/``fill`` are in canonical output layout (N, Cy, H, W)."""
    n, cx, h, w = nchw
    valid = src >= 0
    p = xpos[np.where(valid, src, 0)]
    n_src = p // (cx * h * w)
    c_src = (p // (h * w)) % cx
    h_src = (p // w) % h
    w_src = p % w
    if not ((n_src == np.arange(n)[:, None, None, None]) | ~valid).all():
        return "elements move across the batch axis"
    has = valid.any(axis=(0, 2, 3))  # channels that copy anything (the others are constant)
    big = np.iinfo(np.int64).max
    cmin = np.where(valid, c_src, big).min(axis=(0, 2, 3))
    cmax = np.where(valid, c_src, -1).max(axis=(0, 2, 3))
    if not (cmin == cmax)[has].all():
        return "an output channel mixes input channels"
    used = cmin[has]
    if len(np.unique(used)) != len(used):
        return "an input channel is copied twice"
    rowdom = valid.any(axis=(0, 3))  # (Cy, H)
    coldom = valid.any(axis=(0, 2))  # (Cy, W)
    if not (valid == (rowdom[None, :, :, None] & coldom[None, :, None, :])).all():
        return "constant elements do not form border rows/columns"
    hmin = np.where(valid, h_src, big).min(axis=(0, 3))
    hmax = np.where(valid, h_src, -1).max(axis=(0, 3))
    wmin = np.where(valid, w_src, big).min(axis=(0, 2))
    wmax = np.where(valid, w_src, -1).max(axis=(0, 2))
    if not ((hmin == hmax) | ~rowdom).all() or not ((wmin == wmax) | ~coldom).all():
        return "not a translation (source row/column depends on the other axis)"
    fits_h = _fit_axis(np.where(rowdom, hmin, -1), rowdom, has, max_shift)
    fits_w = _fit_axis(np.where(coldom, wmin, -1), coldom, has, max_shift)
    if not fits_h or not fits_w:
        return f"not a translation by at most {max_shift} with one border rule per axis"
    # Constant elements: one fill value inside partly copied channels, one value per constant channel.
    partial = ~valid & has[None, :, None, None]
    fill_values = np.unique(fill[partial])
    if len(fill_values) > 1:
        return "more than one fill value"
    const_ch = np.flatnonzero(~has)
    const_vals = []
    for c in const_ch:
        vals = np.unique(fill[:, c])
        if len(vals) != 1:
            return "a constant channel is not uniform"
        const_vals.append(float(vals[0]))
    fill_value = float(fill_values[0]) if len(fill_values) else 0.0

    best = None
    for mode_h, dy in fits_h.items():
        for mode_w, dx in fits_w.items():
            if partial.any() and "constant" not in (mode_h, mode_w):
                continue
            need_h = bool(dy[has].any())
            need_w = bool(dx[has].any())
            modes = {m for m, need in ((mode_h, need_h), (mode_w, need_w)) if need}
            dya, dxa = np.append(dy[has], 0), np.append(dx[has], 0)
            kh = int(dya.max()) - int(dya.min()) + 1
            kw = int(dxa.max()) - int(dxa.min()) + 1
            key = (kh * kw, len(modes), MODES.index(mode_h) + MODES.index(mode_w))
            if best is None or key < best[0]:
                best = (key, mode_h if need_h else None, mode_w if need_w else None, dy, dx)
    if best is None:
        return "constant elements without a constant border rule"
    _, mode_h, mode_w, dy, dx = best
    # Output channel -> input channel; constant channels take unused inputs (their kernel is zero).
    chan = np.where(has, cmin, -1)
    used_set = set(used.tolist())
    free = [c for c in range(cx) if c not in used_set]
    for c in const_ch:
        chan[c] = c if c in free else free[0]
        free.remove(int(chan[c]))
    return {
        "channels": chan,
        "dy": dy,
        "dx": dx,
        "const_channels": tuple(int(c) for c in const_ch),
        "const_values": tuple(const_vals),
        "mode_h": mode_h,
        "mode_w": mode_w,
        "fill": fill_value,
    }


def fit_shift(cmap: CopyMap, *, max_shift: int = 3, channels: str | None = None) -> ShiftPlan | str:
    """Explain ``cmap`` as a per-channel translation; return the plan, or why it is not one.

    ``channels`` restricts which input axes may be spatial: ``"first"`` (axis 1 is channels, as after a
    Conv: H, W are the last two axes), ``"last"`` (the last axis is channels, as after a MatMul), or None.
    """
    sx, sy = cmap.in_shape, cmap.out_shape
    if len(sx) < 4:
        return f"input rank {len(sx)} < 4 (no two spatial axes besides batch and channels)"
    if len(sy) < 3 or sy[0] != sx[0]:
        return "output does not keep the batch axis"
    numel_x = int(np.prod(sx))
    reasons: list[str] = []
    best: tuple[tuple, ShiftPlan] | None = None
    for xh, x_chan in _x_layouts(sx):
        if channels == "first" and xh != len(sx) - 2 or channels == "last" and xh + 1 == len(sx) - 1:
            continue
        h, w = sx[xh], sx[xh + 1]
        n, cx = sx[0], int(np.prod([sx[a] for a in x_chan], dtype=np.int64))
        x_perm = (0, *x_chan, xh, xh + 1)
        order = np.arange(numel_x, dtype=np.int64).reshape(sx).transpose(x_perm).reshape(-1)
        xpos = np.empty(numel_x, dtype=np.int64)
        xpos[order] = np.arange(numel_x, dtype=np.int64)
        for y_split, yh in _y_layouts(sy, h, w):
            y_chan_axes = [a for a in range(1, len(y_split)) if a not in (yh, yh + 1)]
            cy = int(np.prod([y_split[a] for a in y_chan_axes], dtype=np.int64))
            if cy > cx:
                continue
            perms = list(itertools.permutations(y_chan_axes))[:24]
            for y_chan in perms:
                canon = (0, *y_chan, yh, yh + 1)
                src = cmap.src.reshape(y_split).transpose(canon).reshape(n, cy, h, w)
                fill = cmap.fill.reshape(y_split).transpose(canon).reshape(n, cy, h, w)
                fit = _fit_config(src, fill, xpos, (n, cx, h, w), max_shift)
                if isinstance(fit, str):
                    reasons.append(fit)
                    continue
                chan = fit["channels"]
                identity_channels = cy == cx and (chan == np.arange(cy)).all()
                y_perm = tuple(int(i) for i in np.argsort(canon))
                plan = ShiftPlan(
                    x_shape=sx,
                    x_perm=x_perm,
                    nchw=(n, cx, h, w),
                    channels=None if identity_channels else tuple(int(c) for c in chan),
                    dy=tuple(int(d) for d in fit["dy"]),
                    dx=tuple(int(d) for d in fit["dx"]),
                    const_channels=fit["const_channels"],
                    const_values=fit["const_values"],
                    mode_h=fit["mode_h"],
                    mode_w=fit["mode_w"],
                    fill=fit["fill"],
                    y_chan_shape=tuple(y_split[a] for a in y_chan),
                    y_perm=y_perm,
                    y_split_shape=y_split,
                    y_shape=sy,
                    layout=_layout_name(len(sx), xh),
                )
                cost = (layout_ops(plan), plan.kernel_range[1] - plan.kernel_range[0], len(reasons))
                if best is None or cost < best[0]:
                    best = (cost, plan)
                if cost[0] == 0:
                    return plan
    if best is None:
        if reasons:
            return _most_specific(reasons)
        if channels:
            return f"no layout with channels {channels} (as the producer of the input implies) fits"
        return "no two spatial axes of the same size in input and output"
    return best[1]


#: Producers whose output has channels on axis 1 (NCHW) ...
_CHANNELS_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "BatchNormalization", "InstanceNormalization",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "LRN", "MaxUnpool", "DeformConv",
})
#: ... and on the last axis.
_CHANNELS_LAST_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul"})
#: Ops that keep the layout of their first input.
_LAYOUT_KEEPING_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSwish",
    "HardSigmoid", "Identity", "Cast", "Softplus", "Elu", "Selu", "Neg", "Abs", "Sqrt", "Pow", "PRelu", "Where",
    "Max", "Min", "Mish", "Dropout",
})


def channel_axis_hint(x: ir.Value, max_depth: int = 16) -> str | None:
    """Where ``x`` keeps its channels, judged from the op that made it: "first", "last" or None.

    Walks up through elementwise ops (and, for "last", Reshapes that keep the last dimension) to the
    nearest Conv-like or MatMul-like producer. Only used to rule out layouts, never to accept one.
    """
    value = x
    keeps_last = True
    for _ in range(max_depth):
        node = value.producer()
        if node is None:
            return None
        if node.op_type in _CHANNELS_FIRST_OPS:
            return "first" if value is x else None
        if node.op_type in _CHANNELS_LAST_OPS:
            return "last" if keeps_last else None
        if node.op_type in _LAYOUT_KEEPING_OPS:
            data = [v for v in node.inputs if v is not None and v.const_value is None]
            big = [v for v in data if v.shape is not None and value.shape is not None
                   and len(v.shape) == len(value.shape)]
            if len(big) < 1:
                return None
            value = big[0]
            continue
        if node.op_type == "Reshape" and node.inputs[0] is not None:
            src, dst = static_shape(node.inputs[0]), static_shape(value)
            if src and dst and src[-1] == dst[-1]:
                value = node.inputs[0]
                continue
        return None
    return None


def _most_specific(reasons: list[str]) -> str:
    generic = ("an output channel mixes input channels", "elements move across the batch axis")
    for reason in reasons:
        if reason not in generic:
            return reason
    return reasons[0]


def _layout_name(rank: int, xh: int) -> str:
    if rank == 4:
        return {1: "NHWC", 2: "NCHW"}[xh]
    return f"rank{rank}(H,W=axes {xh},{xh + 1})"


def layout_ops(plan: ShiftPlan) -> int:
    """Transposes/Reshapes/Gathers the replacement needs around the Pad and Conv."""
    ops = 0
    if plan.x_perm != tuple(range(len(plan.x_perm))):
        ops += 1
    if tuple(plan.x_shape[a] for a in plan.x_perm) != plan.nchw:
        ops += 1
    ops += plan.channels is not None
    n, _, h, w = plan.nchw
    if (n, *plan.y_chan_shape, h, w) != (n, plan.c_out, h, w):
        ops += 1
    ops += plan.y_perm != tuple(range(len(plan.y_perm)))
    ops += plan.y_split_shape != plan.y_shape
    return ops
