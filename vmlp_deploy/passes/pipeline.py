"""The pass pipeline: canonicalise, then the target's rule set (:mod:`.rule_sets`), then verify.

Each rewrite is checked twice: alone (a shift region vs its replacement, on random inputs, when it is planned)
and in the whole model (original vs rewritten, ONNX Runtime, seeded random inputs). When the whole model fails,
the layout phases are dropped first; then the failure is bisected down to the offending shift sites, which
are rolled back with a :class:`RewriteRolledBack` warning. A model in which nothing is rewritten is returned
as it came in (the same object).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable

import onnx
import onnx_ir as ir

from ..onnx_io import op_histogram
from ..targets import DEFAULT_TARGET
from .canonicalize import canonicalize
from .npu import NpuReport, npu_report
from .rule import PassReport, RewriteContext, RuleSet, run_phase
from .rule_sets import RULE_SETS
from .rules.shift_to_conv import (
    EDGE_DEFAULT,
    RewriteRolledBack,
    ShiftSite,
    ShiftToConv,
    SkippedRegion,
    find_shift_sites,
)
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
    report: PassReport = dataclasses.field(default_factory=PassReport)
    seconds: float = 0.0
    target: str = DEFAULT_TARGET
    npu: NpuReport | None = None

    @property
    def layout_changes(self) -> int:
        """Rewrites made by the layout phases (Transposes moved, ops laid out channels-first, views flattened)."""
        return layout_changes(RULE_SETS[self.target], self.report)

    @property
    def changed(self) -> bool:
        rule_set = RULE_SETS[self.target]
        folded = self.report.total(*rule_set.rule_names(rule_set.split(ShiftToConv)[0]))
        return bool(self.patterns) or bool(folded) or bool(rule_set.layout_without_shifts and self.layout_changes)

    def pattern_counts(self) -> dict[str, int]:
        """'kind layout' -> number of sites."""
        counts: dict[str, int] = {}
        for site in self.patterns:
            key = f"{site.plan.kind} {site.plan.layout}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def cleanup_counts(self) -> dict[str, int]:
        return cleanup_counts(self.report)

    def layout_counts(self) -> dict[str, int] | None:
        return layout_counts(self.report)

    def channels_first_counts(self) -> dict[str, int] | None:
        return channels_first_counts(self.report)

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
            "cleanup": self.cleanup_counts(),
            "layout": self.layout_counts(),
            "target": self.target,
            "channels_first": self.channels_first_counts(),
            "npu": self.npu.to_dict() if self.npu else None,
            "rules": self.report.to_dict(),
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
        cleanup = self.cleanup_counts()
        if self.patterns:
            before, after = self.ops_before.get("Transpose", 0), self.ops_after.get("Transpose", 0)
            why = "the grouped Convs are channels-first; " if after > before else ""
            lines.append(f"  Transposes: {before} in the source -> {after} ({why}cleanup folded/cancelled "
                         f"{cleanup['transposes_folded'] + cleanup['transposes_cancelled']})")
        fired = {name: record for name, record in self.report.rules.items() if record.fired and name != "shift-to-conv"}
        plain = [f"{name} {record.fired}" for name, record in fired.items() if not record.kinds]
        if plain:
            lines.append("  rules: " + ", ".join(plain))
        for name, record in fired.items():
            if record.kinds:
                lines.append(f"  {name}: {record.fired} ops rewritten ("
                             + ", ".join(f"{kind} {count}" for kind, count in record.kinds.items()) + ")")
        metrics = self.report.metrics
        if self.layout_changes and metrics.get("transpose_elements_before") is not None:
            lines.append(f"  Transpose elements moved, before -> after the layout rules: "
                         f"{metrics['transpose_elements_before']:,} -> {metrics['transpose_elements_after']:,}")
        if self.npu is not None:
            lines.append("  " + self.npu.summary())
        if self.verification is not None:
            lines.append("  " + self.verification.summary())
        for item in self.rolled_back:
            lines.append(f"  rolled back: {item}")
        for item in self.skipped:
            lines.append(f"  left alone: {item.describe()}")
        return lines

    def explain_lines(self) -> list[str]:
        """Per rule of the target's rule set: how often it fired and why it declined (``optimize --explain``), and
        the rules that did not run because no shift site was found (a rule set without ``layout_without_shifts``
        rewrites and lays out only around shift sites)."""
        lines = self.report.explain_lines()
        missing = [name for name in RULE_SETS[self.target].rule_names() if name not in self.report.rules]
        if missing:
            lines.append(f"  not run: {', '.join(missing)} (no shift site found, and the {self.target} rule set "
                         "rewrites and lays out only around shift sites)")
        return lines


def layout_changes(rule_set: RuleSet, report: PassReport) -> int:
    """How often the rules of ``rule_set``'s layout phases fired."""
    return report.total(*rule_set.rule_names(phase for phase in rule_set.phases if phase.layout))


def cleanup_counts(report: PassReport) -> dict[str, int]:
    """What the cleanup rules removed, in the manifest's ``cleanup`` fields (a cancelled pair counts 2)."""
    cancel = report.rules["cancel-transposes"].kinds if "cancel-transposes" in report.rules else {}
    return {"transposes_folded": report.fired("fold-transpose-pairs"),
            "transposes_cancelled": 2 * cancel.get("cancelled", 0) + cancel.get("composed", 0),
            "reshapes_folded": report.fired("fold-reshape-pairs")}


def layout_counts(report: PassReport) -> dict[str, int] | None:
    """What the ``cpu`` layout rules did, in the manifest's ``layout`` fields (None when they did not run)."""
    if "narrow-transposes" not in report.rules:
        return None
    fired, metrics = report.fired, report.metrics
    return {"sunk": fired("narrow-transposes"), "hoisted_into_conv": fired("linear-to-conv1x1"),
            "to_reshape": fired("unit-transpose-to-reshape"),
            "elements_moved_before": metrics.get("transpose_elements_before", 0),
            "elements_moved_after": metrics.get("transpose_elements_after", 0),
            "group_views": fired("flatten-group-views"), "patch_convs_to_matmul": fired("patch-conv-to-matmul")}


def channels_first_counts(report: PassReport) -> dict[str, int] | None:
    """What the channels-first rule did, in the manifest's ``channels_first`` fields (None when it did not run)."""
    if "channels-first" not in report.rules:
        return None
    kinds = report.rules["channels-first"].kinds
    return {"transposes_propagated": kinds.get("lift", 0), "ops_rewritten": report.fired("channels-first"),
            "layernorms": kinds.get("layernorm", 0), "linears_to_conv": kinds.get("linear", 0),
            "transposes_restored": kinds.get("restore", 0), "group_views": report.fired("flatten-group-views")}


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
    target: str = DEFAULT_TARGET,
) -> OptimizeResult:
    """Replace every shift idiom in ``model`` by Pad + depthwise Conv and lay it out for ``target``, verified.

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
            for one-pixel shifts). See :func:`.rules.shift_to_conv.emit`.
        layout: run the target's layout phases. When the whole model then fails verification they are
            dropped first.
        target: a key of :data:`.rule_sets.RULE_SETS`: ``"cpu"`` (ONNX Runtime: channels-last, Transposes
            narrowed), ``"openvino"`` or ``"npu"`` (channels-first end to end; this runs even where no shift
            is found). ``npu`` adds :func:`.npu.npu_report` to the result.

    Returns:
        :class:`OptimizeResult`. When nothing is rewritten, ``result.model is model``.
    """
    if target not in RULE_SETS:
        raise ValueError(f"unknown target {target!r}: use one of {', '.join(RULE_SETS)}")
    log = (lambda msg: print(f"[passes] {msg}", file=sys.stderr)) if progress else None
    run = _Run(model, RULE_SETS[target], RewriteContext(edge=edge, max_shift=max_shift, seed=seed, progress=log),
               n_samples)
    run.canonicalise_and_find_sites()
    if not run.anything_to_do(layout):
        return run.unchanged()
    run.rewrite(layout)
    if not run.anything_changed():
        return run.unchanged()
    if verify and not run.verify_or_roll_back(layout):
        return run.unchanged()
    return run.result()


class _Run:
    """One run of the pipeline on one model: the steps of :func:`optimize_model` and what they share."""

    def __init__(self, model: onnx.ModelProto, rule_set: RuleSet, context: RewriteContext, n_samples: int):
        self.start = time.perf_counter()
        self.model, self.rule_set, self.context, self.n_samples = model, rule_set, context, n_samples
        self.ops_before, self.nodes_before = op_histogram(model), len(model.graph.node)
        self.prelude = PassReport(rule_set=rule_set.name)
        self.report = self.prelude
        self.verification: Verification | None = None

    def log(self, message: str) -> None:
        if self.context.progress:
            self.context.progress(message)

    def canonicalise_and_find_sites(self) -> None:
        """Canonical model, the phases before the shift rule on it, then the shift sites (found once)."""
        self.log(f"canonicalising ({self.nodes_before} nodes)")
        work = canonicalize(self.model)
        for phase in self.rule_set.split(ShiftToConv)[0]:
            work = run_phase(work, phase, self.prelude, self.context)
        self.work_proto = ir.serde.serialize_model(work)
        ctx = self.context
        self.sites, self.skipped, self.rolled_back = find_shift_sites(
            work, max_shift=ctx.max_shift, seed=ctx.seed, check=True, progress=ctx.progress, edge=ctx.edge)
        self.folded = sum(record.fired for record in self.prelude.rules.values())

    def anything_to_do(self, layout: bool) -> bool:
        return bool(self.sites or self.folded or (self.rule_set.layout_without_shifts and layout))

    def anything_changed(self) -> bool:
        return bool(self.sites or self.folded or layout_changes(self.rule_set, self.report))

    def rewrite(self, layout: bool, sites: list[ShiftSite] | None = None) -> onnx.ModelProto:
        """The rest of the rule set on a copy of the canonical model (layout phases only when ``layout``)."""
        self.log(f"rewriting {len(self.sites if sites is None else sites)} site(s)")
        context = dataclasses.replace(self.context, sites=list(self.sites if sites is None else sites),
                                      skipped=self.skipped, rolled_back=[])
        model = ir.from_proto(self.work_proto)
        report = copy.deepcopy(self.prelude)
        for phase in self.rule_set.split(ShiftToConv)[1]:
            if layout or not phase.layout:
                model = run_phase(model, phase, report, context)
        model.graph.sort()
        rewritten = ir.serde.serialize_model(model)
        if sites is None:
            self.rewritten, self.report = rewritten, report
        return rewritten

    def _verify(self) -> bool:
        self.verification = compare_models(self.model, self.rewritten, n_samples=self.n_samples, seed=self.context.seed)
        return self.verification.passed

    def _roll_back(self, message: str) -> None:
        warnings.warn(message, RewriteRolledBack, stacklevel=4)
        self.rolled_back.append(message)

    def verify_or_roll_back(self, layout: bool) -> bool:
        """Whole model vs original; on failure drop the layout phases, then bisect the shift sites. False: give up."""
        if not self._verify() and layout_changes(self.rule_set, self.report):
            self._roll_back("rolled back the layout pass: whole-model outputs changed beyond round-off")
            layout = False
            if not self.sites:
                return False
            self.rewrite(layout=False)
            self._verify()
        if not self.verification.passed:
            seed, n = self.context.seed, self.n_samples
            bad = _bisect(self.model, self.sites, seed, n, lambda subset: self.rewrite(False, subset))
            for site in bad:
                self._roll_back(f"rolled back {site.describe()}: whole-model outputs changed beyond round-off")
            self.sites = [s for s in self.sites if s not in bad]
            if not self.sites:
                return False
            self.rewrite(layout)
            if not self._verify():  # should not happen; refuse to write anything unverified
                warnings.warn("rolled back all rewrites: verification still fails after bisection", RewriteRolledBack,
                              stacklevel=3)
                return False
        self.log(self.verification.summary())
        return True

    def unchanged(self) -> OptimizeResult:
        """The model as it came in (the same object), with what was found and tried."""
        return OptimizeResult(self.model, [], self.nodes_before, self.nodes_before, self.ops_before,
                              dict(self.ops_before), self.verification, self.rolled_back, self.skipped,
                              report=self.report, seconds=time.perf_counter() - self.start, target=self.rule_set.name,
                              npu=npu_report(self.model) if self.rule_set.npu_report else None)

    def result(self) -> OptimizeResult:
        return OptimizeResult(
            model=self.rewritten, patterns=list(self.sites), nodes_before=self.nodes_before,
            nodes_after=len(self.rewritten.graph.node), ops_before=self.ops_before,
            ops_after=op_histogram(self.rewritten), verification=self.verification, rolled_back=self.rolled_back,
            skipped=self.skipped, report=self.report, seconds=time.perf_counter() - self.start,
            target=self.rule_set.name, npu=npu_report(self.rewritten) if self.rule_set.npu_report else None)


def _bisect(original: onnx.ModelProto, sites: list[ShiftSite], seed: int, n_samples: int,
            rewrite: Callable[[list[ShiftSite]], onnx.ModelProto]) -> list[ShiftSite]:
    """Sites that make the whole model differ (assuming sites fail independently)."""

    def ok(subset: list[ShiftSite]) -> bool:
        return compare_models(original, rewrite(subset), n_samples=n_samples, seed=seed).passed

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
