"""Rewrite rule: a per-channel spatial shift becomes one Pad and one depthwise Conv with one-hot kernels.

Matcher: :mod:`.regions` finds sub-graphs that only move elements of one tensor ``x`` into a tensor ``y``
(ScatterND chains, Slice + Concat chains, Pad + Slice crops, whatever either PyTorch exporter emits);
:mod:`.probe` measures the exact copy map of each, and :func:`.shift_fit.fit_shift` proves it is a
per-channel translation with one border rule per axis, or says why not. Nothing is guessed.

Replacement: ``x`` is brought to ``(N, C, H, W)`` (Transpose/Reshape only if it is not already), channels
are selected if needed, then one Pad (one per axis when the axes use different border rules) and one
``Conv(group=C)`` whose kernel for channel ``c`` is 1 at tap ``(dy_c, dx_c)`` and 0 elsewhere: every
channel of the region, shifted or not, goes through the same grouped Conv. Channels that are entirely
constant get a zero kernel and a bias. When all channels move alike, Pad + Slice replaces the Conv. The
result is brought back to ``y``'s layout. For finite inputs the rewrite is exact (``1 * x + 0 * ...``).

``Pad(mode=wrap)`` needs opset 19: the model's opset is raised when that cannot change any other node
(:func:`._graph.can_raise_opset`), otherwise circular padding is built from Slice + Concat.

Each replacement is checked against its region on random inputs before it is accepted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from ...onnx_io import cpu_session
from .._graph import FLOAT_DTYPES, Builder, can_raise_opset, static_shape
from ..probe import probe_region
from ..regions import SHIFT_MARKER_OPS, ConstInfo, Region, RegionFinder, analyse_constants, region_model
from ..rule import Decline, GraphRule
from ..shift_fit import ShiftPlan, channel_axis_hint, fit_shift, layout_ops

__all__ = [
    "RewriteRolledBack",
    "ShiftPlan",
    "ShiftSite",
    "SkippedRegion",
    "ShiftToConv",
    "check_site",
    "emit",
    "find_shift_sites",
    "fit_shift",
    "replacement_model",
]

logger = logging.getLogger("vmlp_deploy.passes")

#: Largest region (elements) that is probed; bigger ones are left alone.
MAX_PROBE_ELEMENTS = 1 << 26
#: How edge-replicate borders are written (see :func:`emit`). ``pad`` is the default: on full-size
#: S2-MLPv2 (benchmarks/rewrite_speed.py) ``Pad(edge)`` cost less than the mask's extra Mul + Add in
#: both ONNX Runtime (6 vs 11 ms kernel time) and OpenVINO (0.6 vs 3 ms).
EDGE_MODES = ("mask", "pad")
EDGE_DEFAULT = "pad"
#: Regions tried below a failing one (per maximal region).
_DESCENT_BUDGET = 6


class RewriteRolledBack(UserWarning):
    """A rewrite did not reproduce the original within float round-off and was undone."""


# --------------------------------------------------------------------------------------------------
# Emission: ShiftPlan -> nodes


def _pad(b: Builder, cur: ir.Value, mode: str, pads_hw: tuple[int, int, int, int], fill, opset: int, dtype):
    """Pad (N, C, H, W) by (top, left, bottom, right) with one border rule."""
    top, left, bottom, right = pads_hw
    if not any(pads_hw):
        return cur
    if mode == "wrap" and opset < 19:  # Pad(wrap) needs opset 19: build it from Slices and Concats.
        for axis, before, after in ((2, top, bottom), (3, left, right)):
            if not before and not after:
                continue
            parts = []
            if before:
                parts.append(b.op("Slice", [cur, b.const(np.array([-before]), "starts"),
                                            b.const(np.array([np.iinfo(np.int64).max]), "ends"),
                                            b.const(np.array([axis]), "axes")], "wrap_lo"))
            parts.append(cur)
            if after:
                parts.append(b.op("Slice", [cur, b.const(np.array([0]), "starts"), b.const(np.array([after]), "ends"),
                                            b.const(np.array([axis]), "axes")], "wrap_hi"))
            cur = b.op("Concat", parts, "wrap_pad", axis=axis)
        return cur
    pads = np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
    inputs = [cur, b.const(pads, "pads")]
    if mode == "constant":
        inputs.append(b.const(np.array(fill, dtype=dtype), "pad_value"))
    return b.op("Pad", inputs, "pad", mode=mode)


def _edge_masks(plan: ShiftPlan, dtype) -> list[np.ndarray] | None:
    """0/1 masks (C, H, 1) and (C, 1, W) marking where a channel's source falls off the map, or None.

    Edge replicate equals zero padding plus ``x * mask`` only where the clamped source is the output
    position itself: every active channel moves by at most one pixel along at most one axis.
    """
    if plan.uniform or plan.mode_h not in (None, "edge") or plan.mode_w not in (None, "edge"):
        return None
    act = plan.active
    dy, dx = np.asarray(plan.dy), np.asarray(plan.dx)
    if (np.abs(dy[act]) + np.abs(dx[act]) > 1).any():
        return None
    _, c, h, w = plan.nchw
    c = plan.c_out
    rows, cols = np.arange(h), np.arange(w)
    mask_h = np.zeros((c, h, 1), dtype=dtype)
    mask_w = np.zeros((c, 1, w), dtype=dtype)
    for ch in np.flatnonzero(act):
        mask_h[ch, :, 0] = (rows + dy[ch] < 0) | (rows + dy[ch] >= h)
        mask_w[ch, 0, :] = (cols + dx[ch] < 0) | (cols + dx[ch] >= w)
    return [m for m in (mask_h, mask_w) if m.any()]


def emit(graph: ir.Graph, x: ir.Value, plan: ShiftPlan, *, opset: int, prefix: str,
         taken: set[str] | None = None, edge: str = EDGE_DEFAULT) -> tuple[ir.Value, list[ir.Node]]:
    """Build the replacement of ``y`` from ``x``; returns (new y, nodes to insert, in order).

    ``edge="pad"`` writes edge-replicate borders with ``Pad(mode=edge)``. ``edge="mask"`` writes them as
    ``Conv(pads=...)(x) + x * mask`` when that is exact (see :func:`_edge_masks`), for runtimes whose
    edge-mode Pad is slower than a fused multiply-add (OpenVINO runs it as a reference kernel).
    """
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {EDGE_MODES}, not {edge!r}")
    dtype = x.dtype.numpy() if x.dtype is not None else np.dtype(np.float32)
    b = Builder(graph, prefix, taken if taken is not None else set())
    n, _, h, w = plan.nchw
    cur = x
    if plan.x_perm != tuple(range(len(plan.x_perm))):
        cur = b.op("Transpose", [cur], "to_nchw", perm=list(plan.x_perm))
    if tuple(plan.x_shape[a] for a in plan.x_perm) != plan.nchw:
        cur = b.op("Reshape", [cur, b.const(np.array(plan.nchw, dtype=np.int64), "shape")], "to_nchw_reshape")
    c = plan.c_out
    if plan.channels is not None:
        chans = np.array(plan.channels, dtype=np.int64)
        if (np.diff(chans) == 1).all():
            cur = b.op("Slice", [cur, b.const(chans[:1], "starts"), b.const(chans[-1:] + 1, "ends"),
                                 b.const(np.array([1]), "axes")], "channels")
        else:
            cur = b.op("Gather", [cur, b.const(chans, "channels")], "channels", axis=1)
    lo_h, hi_h, lo_w, hi_w = plan.kernel_range
    if plan.uniform:
        dy, dx = plan.dy[0], plan.dx[0]
        top, left, bottom, right = max(0, -dy), max(0, -dx), max(0, dy), max(0, dx)
    else:
        top, left, bottom, right = -lo_h, -lo_w, hi_h, hi_w
    masks = _edge_masks(plan, dtype) if edge == "mask" else None
    unpadded = cur
    if masks is None and (plan.mode_h == plan.mode_w or plan.mode_h is None or plan.mode_w is None):
        mode = plan.mode_h or plan.mode_w
        if mode is not None:
            cur = _pad(b, cur, mode, (top, left, bottom, right), plan.fill, opset, dtype)
    elif masks is None:
        cur = _pad(b, cur, plan.mode_h, (top, 0, bottom, 0), plan.fill, opset, dtype)
        cur = _pad(b, cur, plan.mode_w, (0, left, 0, right), plan.fill, opset, dtype)
    if plan.uniform:
        if top or bottom or left or right:
            starts = np.array([plan.dy[0] + top, plan.dx[0] + left], dtype=np.int64)
            cur = b.op("Slice", [cur, b.const(starts, "starts"), b.const(starts + (h, w), "ends"),
                                 b.const(np.array([2, 3]), "axes")], "crop")
    else:
        kh, kw = hi_h - lo_h + 1, hi_w - lo_w + 1
        weight = np.zeros((c, 1, kh, kw), dtype=dtype)
        active = plan.active
        for ch in np.flatnonzero(active):
            weight[ch, 0, plan.dy[ch] - lo_h, plan.dx[ch] - lo_w] = 1
        inputs = [cur, b.const(weight, "shift_kernel")]
        if plan.const_channels and any(plan.const_values):
            bias = np.zeros(c, dtype=dtype)
            bias[list(plan.const_channels)] = plan.const_values
            inputs.append(b.const(bias, "shift_bias"))
        if masks is None:
            cur = b.op("Conv", inputs, "shift_conv", group=c, kernel_shape=[kh, kw])
        else:
            cur = b.op("Conv", inputs, "shift_conv", group=c, kernel_shape=[kh, kw],
                       pads=[top, left, bottom, right])
            mask = b.const(masks[0], "edge_mask")
            if len(masks) == 2:  # stored factored; runtimes fold the sum into one (C, H, W) constant
                mask = b.op("Add", [mask, b.const(masks[1], "edge_mask")], "edge_mask_sum")
            cur = b.op("Add", [cur, b.op("Mul", [unpadded, mask], "edge_fix")], "edge_out")
    target = (n, *plan.y_chan_shape, h, w)
    if target != (n, c, h, w):
        cur = b.op("Reshape", [cur, b.const(np.array(target, dtype=np.int64), "shape")], "from_nchw_reshape")
    if plan.y_perm != tuple(range(len(plan.y_perm))):
        cur = b.op("Transpose", [cur], "from_nchw", perm=list(plan.y_perm))
    if plan.y_split_shape != plan.y_shape:
        cur = b.op("Reshape", [cur, b.const(np.array(plan.y_shape, dtype=np.int64), "shape")], "merge_hw")
    return cur, b.nodes


def replacement_model(plan: ShiftPlan, x_name: str, x_dtype: ir.DataType, *, opset_imports: dict[str, int],
                      ir_version: int = 8, edge: str = EDGE_DEFAULT) -> onnx.ModelProto:
    """The replacement alone, as a model with the region's input and output."""
    x = ir.val(x_name, x_dtype, list(plan.x_shape))
    graph = ir.Graph([x], [], nodes=[], opset_imports=dict(opset_imports), name="replacement")
    y, nodes = emit(graph, x, plan, opset=opset_imports.get("", 0), prefix="shift", taken={x_name}, edge=edge)
    if y is x:
        node = ir.node("Identity", [x], name="identity")
        nodes.append(node)
        y = node.outputs[0]
    y.name = y.name or "y"
    graph.extend(nodes)
    graph.outputs.append(y)
    return ir.serde.serialize_model(ir.Model(graph, ir_version=ir_version))


# --------------------------------------------------------------------------------------------------
# Driver: find, prove, check, apply


@dataclasses.dataclass
class ShiftSite:
    """One region proven to be a shift, with its plan and the check of its replacement."""

    x_name: str
    y_name: str
    plan: ShiftPlan
    region_ops: dict[str, int]
    check_max_abs_diff: float = 0.0

    @property
    def region_nodes(self) -> int:
        return sum(self.region_ops.values())

    def describe(self) -> str:
        p = self.plan
        return (f"{p.kind} {p.layout} C={p.c_out} max|shift|={p.max_shift} "
                f"({self.x_name} -> {self.y_name}, {self.region_nodes} nodes)")

    def to_dict(self) -> dict:
        p = self.plan
        lo_h, hi_h, lo_w, hi_w = p.kernel_range
        return {
            "kind": p.kind,
            "layout": p.layout,
            "channels": p.c_out,
            "max_shift": p.max_shift,
            "shifts": p.shift_histogram(),
            "border": {"h": p.mode_h, "w": p.mode_w, "fill": p.fill},
            "kernel": None if p.uniform else [hi_h - lo_h + 1, hi_w - lo_w + 1],
            "input": self.x_name,
            "output": self.y_name,
            "input_shape": list(p.x_shape),
            "output_shape": list(p.y_shape),
            "region_nodes": self.region_nodes,
            "region_ops": self.region_ops,
            "check_max_abs_diff": self.check_max_abs_diff,
        }


@dataclasses.dataclass
class SkippedRegion:
    """A region that looked like a shift (it has Scatter/Concat/Pad/...) but was left alone."""

    y_name: str
    reason: str
    region_ops: dict[str, int]

    def describe(self) -> str:
        ops = ", ".join(f"{k}x{v}" for k, v in self.region_ops.items())
        return f"{self.y_name}: {self.reason} [{ops}]"


def _outputs_close(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
    if a.shape != b.shape:
        return False, math.inf
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
    return diff <= 1e-6 * scale, diff


def check_site(region_proto: onnx.ModelProto, plan: ShiftPlan, x_name: str, x_dtype: ir.DataType, *,
               opset_imports: dict[str, int], ir_version: int, seed: int,
               edge: str = EDGE_DEFAULT) -> tuple[bool, float]:
    """Run region and replacement on random inputs; (equal within round-off, max abs diff)."""
    replacement = replacement_model(plan, x_name, x_dtype, opset_imports=opset_imports, ir_version=ir_version,
                                    edge=edge)
    sess_a = cpu_session(region_proto, threads=1, optimize=False)
    sess_b = cpu_session(replacement, threads=1, optimize=False)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(2):
        feed = {x_name: rng.standard_normal(plan.x_shape).astype(x_dtype.numpy())}
        ok, diff = _outputs_close(sess_a.run(None, feed)[0], sess_b.run(None, feed)[0])
        worst = max(worst, diff)
        if not ok:
            return False, worst
    return True, worst


def find_shift_sites(model: ir.Model, *, max_shift: int = 3, seed: int = 0, check: bool = True,
                     progress=None, edge: str = EDGE_DEFAULT) -> tuple[list[ShiftSite], list[SkippedRegion], list[str]]:
    """Find and prove every shift region of ``model`` (which must carry inferred shapes).

    Returns (sites, skipped near-misses, rolled-back site descriptions). Nothing is modified.
    """
    graph = model.graph
    graph.sort()
    opset = emission_opset(model)
    consts: ConstInfo = analyse_constants(graph)
    finder = RegionFinder(graph, consts)
    sites: list[ShiftSite] = []
    skipped: list[SkippedRegion] = []
    rolled_back: list[str] = []
    if opset < 11:
        return sites, skipped, rolled_back
    roots = finder.candidates()
    done: set[tuple[str, str]] = set()
    for i, root in enumerate(roots):
        if progress:
            progress(f"region {i + 1}/{len(roots)}: {root.describe()}")
        if not SHIFT_MARKER_OPS & set(root.ops):  # only Reshape/Transpose/Slice/...: cannot be a shift
            continue
        queue = [root]
        budget = _DESCENT_BUDGET
        root_reason = None
        while queue and budget > 0:
            region = queue.pop(0)
            budget -= 1
            key = (region.x.name, region.y.name)
            if key in done:
                continue
            done.add(key)
            result = _try_region(region, consts, model, opset, max_shift, seed, check, edge)
            if isinstance(result, ShiftSite):
                sites.append(result)
                break
            if isinstance(result, _CheckFailed):
                rolled_back.append(result.message)
                warnings.warn(result.message, RewriteRolledBack, stacklevel=2)
                break
            root_reason = root_reason or result
            trimmed = finder.without_input_reshape(region)
            queue.extend(([trimmed] if trimmed is not None else []) + finder.narrower(region))
        else:
            if root_reason:
                skipped.append(SkippedRegion(root.y.name, root_reason, root.ops))
    return sites, skipped, rolled_back


@dataclasses.dataclass
class _CheckFailed:
    message: str


def _try_region(region: Region, consts: ConstInfo, model: ir.Model, opset: int, max_shift: int, seed: int,
                check: bool, edge: str) -> ShiftSite | _CheckFailed | str:
    """A proven and checked site, a site whose replacement failed its check, or why it is no site."""
    x_shape = static_shape(region.x)
    if x_shape is None:
        return "input shape is not static"
    if region.x.dtype not in FLOAT_DTYPES or region.y.dtype not in (None, region.x.dtype):
        return f"element type {region.x.dtype} is not float16/32/64"
    if int(np.prod(x_shape)) > MAX_PROBE_ELEMENTS:
        return "region too large to probe"
    opsets = dict(model.opset_imports)
    proto = region_model(region, consts, x_shape, opsets, model.ir_version)
    emit_opsets = {**opsets, "": opset}
    try:
        cmap = probe_region(proto, x_shape, region.x.dtype.numpy(), seed=seed)
    except Exception as exc:  # noqa: BLE001 - a region ORT cannot run is simply not rewritten
        return f"probe failed: {type(exc).__name__}: {str(exc)[:200]}"
    if cmap is None:
        return "not a pure copy of its input"
    plan = fit_shift(cmap, max_shift=max_shift, channels=channel_axis_hint(region.x))
    if isinstance(plan, str):
        return plan
    if plan.is_layout_only and (plan.channels is not None or layout_ops(plan) >= len(region.nodes)):
        return "pure layout change (nothing to gain)"
    site = ShiftSite(region.x.name, region.y.name, plan, region.ops)
    if check:
        ok, diff = check_site(proto, plan, region.x.name, region.x.dtype, opset_imports=emit_opsets,
                              ir_version=max(model.ir_version, 9 if opset >= 19 else 0), seed=seed, edge=edge)
        site.check_max_abs_diff = diff
        if not ok:
            return _CheckFailed(f"rolled back {site.describe()}: replacement differs from the original by {diff:g}")
    return site


def emission_opset(model: ir.Model) -> int:
    """Opset the replacements are written for: 19 (Pad mode=wrap) when the model can be raised to it safely."""
    opset = model.opset_imports.get("", 0)
    return 19 if opset < 19 and can_raise_opset(model, 19) else opset


class ShiftToConv(GraphRule, name="shift-to-conv"):
    """A region that only shifts channels -> Pad + depthwise Conv (probed, fitted, checked).

    The probe-based rule: ``find`` proves regions to be shifts (:func:`find_shift_sites`, each replacement
    checked alone), ``rewrite`` replaces one site. When the context already holds sites (the pipeline found
    them once and bisects over subsets), those are applied."""

    def find(self, model: ir.Model) -> Iterator[tuple[int, ShiftSite] | Decline]:
        ctx = self.context
        if ctx.sites is None:
            ctx.sites, ctx.skipped, rolled_back = find_shift_sites(
                model, max_shift=ctx.max_shift, seed=ctx.seed, check=ctx.check, progress=ctx.progress, edge=ctx.edge)
            ctx.rolled_back.extend(rolled_back)
        for skipped in ctx.skipped:
            yield Decline(skipped.reason)
        sites = list(ctx.sites)
        self._raise_opset(model, sites)
        graph = model.graph
        self.values: dict[str, ir.Value] = {v.name: v for v in graph.inputs}
        self.values.update({v.name: v for v in graph.initializers.values()})
        for node in graph:
            self.values.update({v.name: v for v in node.outputs if v.name})
        self.builder = Builder(graph)
        yield from enumerate(sites)

    @staticmethod
    def _raise_opset(model: ir.Model, sites: Sequence[ShiftSite]) -> None:
        """Opset 19 when a circular site needs ``Pad(mode=wrap)`` and raising is safe (:func:`can_raise_opset`);
        otherwise circular padding is built from Slice + Concat."""
        opset = model.opset_imports.get("", 0)
        if opset < 19 and any("wrap" in (s.plan.mode_h, s.plan.mode_w) for s in sites):
            target = emission_opset(model)
            if target > opset:
                model.opset_imports[""] = target
                model.ir_version = max(model.ir_version or 0, 9)

    def rewrite(self, model: ir.Model, match: tuple[int, ShiftSite]) -> Decline | None:
        """Replace the ``k``-th site's output (found by value name); dead nodes are left for the driver to remove."""
        graph, (k, site) = model.graph, match
        x, y = self.values.get(site.x_name), self.values.get(site.y_name)
        if x is None or y is None or y.producer() is None:
            return Decline("site no longer in the graph")
        new_y, nodes = emit(graph, x, site.plan, opset=model.opset_imports.get("", 0), prefix=f"shift{k}",
                            taken=self.builder.taken, edge=self.context.edge)
        if y.is_graph_output() and (new_y is x or new_y.is_graph_output() or new_y.is_graph_input()):
            node = ir.node("Identity", [new_y], name=f"shift{k}/identity")
            nodes.append(node)
            new_y = node.outputs[0]
        graph.insert_before(y.producer(), nodes)
        if y.is_graph_output():
            name = y.name
            y.name = f"{name}__replaced"
            new_y.name = name
            new_y.type, new_y.shape = y.type, y.shape
        ir.convenience.replace_all_uses_with(y, new_y, replace_graph_outputs=True)
        return None
