"""Graph passes: turn exporter-specific token-mixing idioms into Pad + depthwise Conv, verified.

Usage::

    from vmlp_deploy.passes import optimize_model
    result = optimize_model(onnx.load("model.onnx"))
    print("\\n".join(result.summary_lines()))
    onnx.save(result.model, "model.opt.onnx")

Layout: :mod:`.pipeline` (canonicalise -> the target's rule set -> verify), :mod:`.rule` (the rule
protocol, the driver, the pass report), :mod:`.rule_sets` (which rules run for which target), :mod:`.rules`
(one file per rule, its test beside it), :mod:`._graph` (the toolkit every rule builds with),
:mod:`.propagate` (what an op becomes when a Transpose is lifted off its input), and the analyses the shift
rule stands on: :mod:`.canonicalize` (prove static shapes), :mod:`.regions` (sub-graphs that only move data),
:mod:`.probe` (their exact copy map), :mod:`.shift_fit` (is it a shift?); :mod:`.verify` (ONNX Runtime
comparison), :mod:`.npu` (what an NPU may reject).
"""

from ..targets import TARGETS
from .pipeline import OptimizeResult, optimize_model
from .rule import PassReport
from .rule_sets import RULE_SETS
from .rules.shift_to_conv import RewriteRolledBack, ShiftPlan, ShiftSite, SkippedRegion
from .verify import Verification, compare_models

__all__ = [
    "TARGETS",
    "OptimizeResult",
    "PassReport",
    "RULE_SETS",
    "RewriteRolledBack",
    "ShiftPlan",
    "ShiftSite",
    "SkippedRegion",
    "Verification",
    "compare_models",
    "optimize_model",
]
