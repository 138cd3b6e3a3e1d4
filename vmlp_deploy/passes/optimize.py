"""The pass pipeline: canonicalise -> find and prove shift regions -> rewrite -> clean up -> layout -> verify.

The layout step depends on the target runtime (``TARGETS``): ``cpu`` (ONNX Runtime) keeps token maps
channels-last, narrows the Transposes the rewrite left (:mod:`.layout`) and starts the token map from a
MatMul (:mod:`.patchify`); ``openvino`` and ``npu``
run them channels-first end to end (:mod:`.channels_first`), which Conv-centred runtimes need; ``npu``
also reports the ops outside the core set edge NPU compilers accept (:mod:`.npu`).

Each rewrite is checked twice: alone (region vs replacement, on random inputs, when it is planned) and in
the whole model (original vs rewritten, ONNX Runtime, seeded random inputs). A whole-model failure is
bisected down to the offending sites, which are rolled back with a :class:`RewriteRolledBack` warning.
A model in which nothing is rewritten is returned as it came in (the same object).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ..targets import TARGETS
from ._graph import infer_shapes, model_histogram
from .canonicalize import canonicalize
from .channels_first import ChannelsFirstStats, lower_group_views, to_channels_first
from .layout import LayoutStats, optimize_layout
from .npu import NpuReport, npu_report
from .patchify import patchify
from .shift_to_conv import (
    EDGE_DEFAULT,
    RewriteRolledBack,
    ShiftSite,
    SkippedRegion,
    apply_shift_sites,
    find_shift_sites,
)
from .transpose_cleanup import CleanupStats, cleanup_layout
from .verify import Verification, compare_models


@dataclasses.dataclass
class OptimizeResult:
    """The optimised model and a report of what was done to it."""

    model: onnx.ModelProto
    patterns: list[ShiftSite]
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    verification: Verification | None
    rolled_back: list[str]
    skipped: list[SkippedRegion] = dataclasses.field(default_factory=list)
    cleanup: CleanupStats = dataclasses.field(default_factory=CleanupStats)
    layout: LayoutStats | None = None
    seconds: float = 0.0
    target: str = "cpu"
    channels_first: ChannelsFirstStats | None = None
    npu: NpuReport | None = None

    @property
    def changed(self) -> bool:
        return bool(self.patterns) or bool(self.channels_first and self.channels_first.total)

    def pattern_counts(self) -> dict[str, int]:
        """'kind layout' -> number of sites."""
        counts: dict[str, int] = {}
        for site in self.patterns:
            key = f"{site.plan.kind} {site.plan.layout}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        """JSON-ready report (the model itself is not included)."""
        return {
            "changed": self.changed,
            "pattern_counts": self.pattern_counts(),
            "patterns": [site.to_dict() for site in self.patterns],
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "verification": self.verification.to_dict() if self.verification else None,
            "rolled_back": list(self.rolled_back),
            "skipped": [{"output": s.y_name, "reason": s.reason, "ops": s.region_ops} for s in self.skipped],
            "cleanup": dataclasses.asdict(self.cleanup),
            "layout": dataclasses.asdict(self.layout) if self.layout else None,
            "target": self.target,
            "channels_first": dataclasses.asdict(self.channels_first) if self.channels_first else None,
            "npu": self.npu.to_dict() if self.npu else None,
            "seconds": round(self.seconds, 3),
        }

    def summary_lines(self) -> list[str]:
        """A short human-readable report for the terminal."""
        lines = [f"nodes: {self.nodes_before} -> {self.nodes_after} (target {self.target})"]
        if not self.patterns:
            lines.append("no shift idiom found" + ("" if self.changed else "; model unchanged"))
        for key, count in self.pattern_counts().items():
            lines.append(f"  {count} x {key}")
        removed = {k: v - self.ops_after.get(k, 0) for k, v in self.ops_before.items() if v > self.ops_after.get(k, 0)}
        added = {k: v - self.ops_before.get(k, 0) for k, v in self.ops_after.items() if v > self.ops_before.get(k, 0)}
        if removed:
            lines.append("  removed: " + ", ".join(f"{k} {v}" for k, v in sorted(removed.items(), key=lambda kv: -kv[1])))
        if added:
            lines.append("  added:   " + ", ".join(f"{k} {v}" for k, v in sorted(added.items(), key=lambda kv: -kv[1])))
        if self.patterns:
            lines.append(f"  Transposes left: {self.ops_after.get('Transpose', 0)} "
                         f"(before: {self.ops_before.get('Transpose', 0)}; cleanup folded/cancelled "
                         f"{self.cleanup.transposes_folded + self.cleanup.transposes_cancelled})")
        if self.layout is not None and self.layout.total:
            lines.append(f"  layout: {self.layout.hoisted_into_conv} MatMul->1x1 Conv, {self.layout.sunk} sunk, "
                         f"{self.layout.to_reshape} -> Reshape, {self.layout.group_views} grouped views flattened, "
                         f"{self.layout.patch_convs_to_matmul} patch Convs -> MatMul; "
                         f"Transpose elements moved {self.layout.elements_moved_before} -> "
                         f"{self.layout.elements_moved_after}")
        cf = self.channels_first
        if cf is not None and cf.total:
            lines.append(f"  channels-first: {cf.transposes_propagated} Transposes carried through "
                         f"{cf.ops_rewritten} ops ({cf.layernorms} LayerNorm, {cf.linears_to_conv} Linear->1x1 Conv), "
                         f"{cf.transposes_restored} put back; {cf.group_views} grouped views flattened")
        if self.npu is not None:
            lines.append("  " + self.npu.summary())
        if self.verification is not None:
            lines.append("  " + self.verification.summary())
        for item in self.rolled_back:
            lines.append(f"  rolled back: {item}")
        for item in self.skipped:
            lines.append(f"  left alone: {item.describe()}")
        return lines


def _rewrite(work_proto: onnx.ModelProto, sites: Sequence[ShiftSite], *, edge: str, layout: bool,
             target: str = "cpu") -> tuple[onnx.ModelProto, CleanupStats, LayoutStats | ChannelsFirstStats | None]:
    model = ir.from_proto(work_proto)
    apply_shift_sites(model, sites, edge=edge)
    common_passes.RemoveUnusedNodesPass()(model)
    stats = cleanup_layout(model)
    layout_stats: LayoutStats | ChannelsFirstStats | None = None
    if layout:  # the layout rules need the shapes of the values the rewrite just created
        model = infer_shapes(ir.serde.serialize_model(model))
        layout_stats = optimize_layout(model) if target == "cpu" else to_channels_first(model)
        model = infer_shapes(ir.serde.serialize_model(model))
        layout_stats.group_views = lower_group_views(model)
        if isinstance(layout_stats, LayoutStats):
            layout_stats.patch_convs_to_matmul = patchify(model)
        cleanup_layout(model)
    model.graph.sort()
    return ir.serde.serialize_model(model), stats, layout_stats


def optimize_model(
    model: onnx.ModelProto,
    *,
    verify: bool = True,
    seed: int = 0,
    progress: bool = False,
    max_shift: int = 3,
    n_samples: int = 3,
    edge: str = EDGE_DEFAULT,
    layout: bool = True,
    target: str = "cpu",
) -> OptimizeResult:
    """Replace every shift idiom in ``model`` by Pad + depthwise Conv, verified against the original.

    Args:
        model: any ONNX model; the shapes around a rewrite must be static (export with fixed input size).
        verify: run original and rewritten model in ONNX Runtime on ``n_samples`` seeded random inputs and
            roll back rewrites that change the outputs beyond float round-off (recommended; each site is
            also checked on its own either way).
        seed: seed for probes and random inputs.
        progress: print progress to stderr.
        max_shift: largest shift (in pixels) turned into a kernel tap; larger shifts are left alone.
        n_samples: random inputs for the whole-model verification.
        edge: how edge-replicate borders are written: ``"pad"`` (``Pad(mode=edge)``, the default: measured
            faster in both ONNX Runtime and OpenVINO) or ``"mask"`` (zero-padded Conv + ``x * mask``, exact
            for one-pixel shifts). See :func:`.shift_to_conv.emit`.
        layout: run the layout step after the rewrite (see ``target``). When the whole model then fails
            verification the layout step alone is dropped first.
        target: ``"cpu"`` (ONNX Runtime: channels-last, Transposes narrowed by :mod:`.layout`),
            ``"openvino"`` or ``"npu"`` (channels-first end to end, :mod:`.channels_first`; this runs even
            where no shift is found). ``npu`` adds :func:`.npu.npu_report` to the result.

    Returns:
        :class:`OptimizeResult`. When nothing is rewritten, ``result.model is model``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    start = time.perf_counter()
    log: Callable[[str], None] | None = (lambda msg: print(f"[passes] {msg}", file=sys.stderr)) if progress else None
    ops_before = model_histogram(model)
    nodes_before = len(model.graph.node)
    if log:
        log(f"canonicalising ({nodes_before} nodes)")
    work = canonicalize(model)
    work_proto = ir.serde.serialize_model(work)
    sites, skipped, rolled_back = find_shift_sites(work, max_shift=max_shift, seed=seed, check=True, progress=log,
                                                   edge=edge)

    def unchanged(verification: Verification | None = None) -> OptimizeResult:
        return OptimizeResult(model, [], nodes_before, nodes_before, ops_before, dict(ops_before), verification,
                              rolled_back, skipped, seconds=time.perf_counter() - start, target=target,
                              npu=npu_report(model) if target == "npu" else None)

    if not sites and (target == "cpu" or not layout):
        return unchanged()
    if log:
        log(f"rewriting {len(sites)} site(s)")
    rewritten, stats, layout_stats = _rewrite(work_proto, sites, edge=edge, layout=layout, target=target)
    if not sites and not (layout_stats and layout_stats.total):
        return unchanged()
    verification = None
    if verify:
        verification = compare_models(model, rewritten, n_samples=n_samples, seed=seed)
        if not verification.passed and layout_stats is not None and layout_stats.total:
            message = "rolled back the layout pass: whole-model outputs changed beyond round-off"
            warnings.warn(message, RewriteRolledBack, stacklevel=2)
            rolled_back.append(message)
            layout = False
            if not sites:
                return unchanged(verification)
            rewritten, stats, layout_stats = _rewrite(work_proto, sites, edge=edge, layout=False)
            verification = compare_models(model, rewritten, n_samples=n_samples, seed=seed)
        if not verification.passed:
            bad = _bisect(model, work_proto, sites, seed, n_samples, edge)
            for site in bad:
                message = f"rolled back {site.describe()}: whole-model outputs changed beyond round-off"
                warnings.warn(message, RewriteRolledBack, stacklevel=2)
                rolled_back.append(message)
            sites = [s for s in sites if s not in bad]
            if not sites:
                return unchanged(verification)
            rewritten, stats, layout_stats = _rewrite(work_proto, sites, edge=edge, layout=layout, target=target)
            verification = compare_models(model, rewritten, n_samples=n_samples, seed=seed)
            if not verification.passed:  # should not happen; refuse to write anything unverified
                message = "rolled back all rewrites: verification still fails after bisection"
                warnings.warn(message, RewriteRolledBack, stacklevel=2)
                return unchanged(verification)
        if log:
            log(verification.summary())
    return OptimizeResult(
        model=rewritten,
        patterns=list(sites),
        nodes_before=nodes_before,
        nodes_after=len(rewritten.graph.node),
        ops_before=ops_before,
        ops_after=model_histogram(rewritten),
        verification=verification,
        rolled_back=rolled_back,
        skipped=skipped,
        cleanup=stats,
        layout=layout_stats if isinstance(layout_stats, LayoutStats) else None,
        seconds=time.perf_counter() - start,
        target=target,
        channels_first=layout_stats if isinstance(layout_stats, ChannelsFirstStats) else None,
        npu=npu_report(rewritten) if target == "npu" else None,
    )


def _bisect(original: onnx.ModelProto, work_proto: onnx.ModelProto, sites: list[ShiftSite], seed: int,
            n_samples: int, edge: str) -> list[ShiftSite]:
    """Sites that make the whole model differ (assuming sites fail independently)."""

    def ok(subset: list[ShiftSite]) -> bool:
        rewritten, _, _ = _rewrite(work_proto, subset, edge=edge, layout=False)
        return compare_models(original, rewritten, n_samples=n_samples, seed=seed).passed

    bad: list[ShiftSite] = []
    stack = [list(sites)]
    while stack:
        group = stack.pop()
        if ok(group):
            continue
        if len(group) == 1:
            bad.extend(group)
            continue
        mid = len(group) // 2
        stack.extend([group[:mid], group[mid:]])
    return bad
