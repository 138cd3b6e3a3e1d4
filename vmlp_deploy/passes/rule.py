"""The rule protocol and the one driver that runs rule sets to a fixed point.

A rule is one file in :mod:`.rules` (with its test beside it) in the spirit of onnxscript's ``RewriteRule``:

* ``match`` says whether the rule applies at an anchor node and returns what the rewrite needs, or a
  :class:`Decline` naming the reason it does not;
* ``rewrite`` edits the graph for one match, through the toolkit's :class:`._graph.Builder`;
* ``check`` (optional) verifies a match's replacement numerically before it is kept; a rewrite that finds
  out only while building that it cannot be done returns a :class:`Decline` instead of editing the graph.

Rules that must see the whole graph at once (the probe-based shift rule, the channels-first propagation)
implement :class:`GraphRule`'s ``find`` instead of ``match``; the driver treats both alike. Each rule set
(:mod:`.rule_sets`) is a list of phases; a phase is rules swept in order until none fires. What fired and
why each rule declined where it looked is collected in one :class:`PassReport` (``optimize --explain``).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ._graph import Builder, infer_shapes


@dataclasses.dataclass(frozen=True)
class Decline:
    """Why a rule does not apply where it looked (collected per rule, shown by ``optimize --explain``)."""

    reason: str


@dataclasses.dataclass
class RewriteContext:
    """What a run of the rules is configured with, and what the probe-based shift rule found."""

    edge: str = "pad"
    max_shift: int = 3
    seed: int = 0
    check: bool = True
    progress: Callable[[str], None] | None = None
    #: The shift sites to apply (None: find them); regions left alone; replacements rolled back by their check.
    sites: list[Any] | None = None
    skipped: list[Any] = dataclasses.field(default_factory=list)
    rolled_back: list[str] = dataclasses.field(default_factory=list)


class Rule:
    """Base of every rule: a name, a one-line summary, and ``find`` (matches, lazily) + ``rewrite``.

    ``find`` is a generator: the driver rewrites each match as soon as it is yielded, so a rule sees its own
    earlier rewrites in the same sweep. A rule instance lives for one run of its phase and may keep state.
    """

    def __init__(self, context: RewriteContext | None = None) -> None:
        self.context = context or RewriteContext()

    name: ClassVar[str]
    #: The first line of the rule's docstring: what it does, in one line.
    summary: ClassVar[str]
    #: Kinds of match that only keep the rule's own books (recorded under ``kinds``, not counted as fired).
    bookkeeping: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        """``class MyRule(NodeRule, name="my-rule", anchors={"Op"})``: a rule declares itself in one line."""
        super().__init_subclass__(**kwargs)
        if name:
            cls.name = name
            cls.summary = (cls.__doc__ or name).strip().splitlines()[0]

    def find(self, model: ir.Model) -> Iterator[Any | Decline]:
        raise NotImplementedError

    def rewrite(self, model: ir.Model, match: Any) -> Decline | None:
        raise NotImplementedError


class NodeRule(Rule):
    """A rule anchored at nodes of the types in ``anchors``: ``match(node)`` then ``apply(builder, match)``."""

    anchors: ClassVar[frozenset[str]]
    #: Prefix of the names of the nodes and initializers the rule creates.
    prefix: ClassVar[str] = ""

    def __init_subclass__(cls, anchors: Iterable[str] = (), prefix: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if anchors:
            cls.anchors, cls.prefix = frozenset(anchors), prefix

    def find(self, model: ir.Model) -> Iterator[Any | Decline]:
        self.builder = Builder(model.graph, self.prefix)
        for node in list(model.graph):
            if node.graph is None or node.op_type not in self.anchors or node.domain not in ("", "ai.onnx"):
                continue
            yield self.match(node)

    def rewrite(self, model: ir.Model, match: Any) -> Decline | None:
        return self.apply(self.builder, match)

    def match(self, node: ir.Node) -> Any | Decline:
        raise NotImplementedError

    def apply(self, b: Builder, match: Any) -> Decline | None:
        raise NotImplementedError


class GraphRule(Rule):
    """A rule that finds its matches over the whole graph (``find``) and rewrites each (``rewrite``)."""


class LibraryRule(NodeRule):
    """A rule of onnxscript's rewriter (pattern, check, replacement) run by this driver and reported like ours.

    ``library`` holds the onnxscript rules, tried in order at every node whose type is in ``anchors``; an
    Identity a replacement ends in is bypassed (onnxscript writes ``Identity(x)`` where a pattern vanishes).
    """

    library: ClassVar[tuple[Any, ...]]

    def __init_subclass__(cls, library: tuple[Any, ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if library:
            cls.library = library

    def find(self, model: ir.Model) -> Iterator[Any | Decline]:
        self.model = model  # onnxscript matches against the model (its opset imports)
        return super().find(model)

    def match(self, node: ir.Node) -> Any | Decline:
        reasons = []
        for rule in self.library:
            found = rule.match(self.model, self.model.graph, node, check_nodes_are_removable=rule.remove_nodes)
            delta = rule.try_rewrite(self.model, self.model.graph, node) if found else None
            if delta is not None:
                return node, delta
            why = "pattern does not match" if found is None else found.reason or "matched, but the replacement failed"
            reasons.append(f"{rule.name or 'onnxscript rule'}: {why}")
        return Decline("; ".join(reasons))

    def apply(self, b: Builder, match: Any) -> None:
        node, delta = match
        for initializer in delta.new_initializers:
            b.graph.register_initializer(initializer)
        ir.convenience.replace_nodes_and_values(b.graph, node, delta.match.nodes, delta.new_nodes,
                                                delta.match.outputs, delta.new_outputs)
        for new in delta.new_nodes:
            if new.op_type == "Identity" and not new.outputs[0].is_graph_output():
                ir.convenience.replace_all_uses_with(new.outputs[0], new.inputs[0])


@dataclasses.dataclass
class RuleReport:
    """One rule's record: how often it fired, and why it declined where it looked (at the fixed point)."""

    fired: int = 0
    declined: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Fires per kind, for rules whose matches name one (``match.kind``: what a propagation rewrote).
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"fired": self.fired, "declined": dict(self.declined), "kinds": dict(self.kinds)}


@dataclasses.dataclass
class PassReport:
    """Every rule that ran, in order, with its record; the rule set's name."""

    rule_set: str = ""
    rules: dict[str, RuleReport] = dataclasses.field(default_factory=dict)
    #: Whole-graph measures a phase records (e.g. Transpose elements moved before and after the layout rules).
    metrics: dict[str, int] = dataclasses.field(default_factory=dict)

    def fired(self, name: str) -> int:
        return self.rules[name].fired if name in self.rules else 0

    def total(self, *names: str) -> int:
        return sum(self.fired(name) for name in names)

    def to_dict(self) -> dict[str, Any]:
        return {"rule_set": self.rule_set, "rules": {name: r.to_dict() for name, r in self.rules.items()},
                "metrics": dict(self.metrics)}

    def explain_lines(self, most: int = 3) -> list[str]:
        """Per rule: fired N times, and its most frequent reasons for declining."""
        lines = [f"rule set {self.rule_set}:"]
        for name, record in self.rules.items():
            lines.append(f"  {name}: fired {record.fired}")
            ranked = sorted(record.declined.items(), key=lambda kv: (-kv[1], kv[0]))
            for reason, count in ranked[:most]:
                lines.append(f"      declined {count} x {reason}")
            if len(ranked) > most:
                lines.append(f"      ({sum(c for _, c in ranked[most:])} more declines, {len(ranked) - most} other reasons)")
        return lines


@dataclasses.dataclass(frozen=True)
class Phase:
    """Rules swept in order, again and again until none fires (at most ``max_rounds`` sweeps).

    ``needs_shapes``: run ONNX shape inference first (rules that test static shapes of values an earlier
    phase created).
    """

    name: str
    rules: tuple[type[Rule], ...]
    max_rounds: int = 8
    needs_shapes: bool = False
    #: A layout phase: dropped first when the whole model fails verification.
    layout: bool = False
    #: A whole-graph measure recorded before and after the phase (``PassReport.metrics``): (name, function).
    metric: tuple[str, Callable[[ir.Graph], int]] | None = None


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """A target's phases, in order, and what the pipeline does for that target beyond running them."""

    name: str
    phases: tuple[Phase, ...]
    #: Run the layout phases even where no shift is found (the layout itself is the point: channels-first).
    layout_without_shifts: bool = False
    #: Add the report of what an edge NPU compiler may reject.
    npu_report: bool = False

    def split(self, first: type[Rule]) -> tuple[tuple[Phase, ...], tuple[Phase, ...]]:
        """The phases before the one holding ``first``, and the rest (all of them when none holds it)."""
        start = next((i for i, phase in enumerate(self.phases) if first in phase.rules), 0)
        return self.phases[:start], self.phases[start:]

    def rule_names(self, phases: Iterable[Phase] | None = None) -> list[str]:
        """Names of the rules of ``phases`` (default: every phase), in order, each once."""
        names = [rule.name for phase in (self.phases if phases is None else phases) for rule in phase.rules]
        return list(dict.fromkeys(names))


def run_phase(model: ir.Model, phase: Phase, report: PassReport, context: RewriteContext | None = None) -> ir.Model:
    """Run ``phase`` on ``model`` in place (a new model object when shapes are inferred); returns the model."""
    if phase.needs_shapes:
        model = infer_shapes(ir.serde.serialize_model(model))
    context = context or RewriteContext()
    rules = [rule(context) for rule in phase.rules]
    for rule in rules:
        report.rules.setdefault(rule.name, RuleReport())
    if phase.metric is not None:
        report.metrics[f"{phase.metric[0]}_before"] = phase.metric[1](model.graph)
    for _ in range(phase.max_rounds):
        fired = 0
        for rule in rules:
            record = report.rules[rule.name]
            declined: collections.Counter[str] = collections.Counter()
            for match in rule.find(model):
                if not isinstance(match, Decline):
                    match = rule.rewrite(model, match) or match
                if isinstance(match, Decline):
                    declined[match.reason] += 1
                    continue
                kind = getattr(match, "kind", None)
                if isinstance(kind, str):
                    record.kinds[kind] = record.kinds.get(kind, 0) + 1
                if kind not in rule.bookkeeping:
                    record.fired += 1
                    fired += 1
            record.declined = dict(declined)
            common_passes.RemoveUnusedNodesPass()(model)
        if not fired:
            break
    if phase.metric is not None:
        report.metrics[f"{phase.metric[0]}_after"] = phase.metric[1](model.graph)
    return model


def apply_phases(model: ir.Model, phases: Iterable[Phase],
                 context: RewriteContext | None = None) -> tuple[ir.Model, PassReport]:
    """Run ``phases`` in order on ``model`` (in place where no shapes are inferred); the model and one report."""
    report = PassReport()
    for phase in phases:
        model = run_phase(model, phase, report, context)
    return model, report
