"""Graph passes: turn exporter-specific token-mixing idioms into Pad + depthwise Conv, verified.

Usage::

    from vmlp_deploy.passes import optimize_model
    result = optimize_model(onnx.load("model.onnx"))
    print("\\n".join(result.summary_lines()))
    onnx.save(result.model, "model.opt.onnx")

Modules, one idea each: :mod:`.canonicalize` (prove static shapes), :mod:`.regions` (find sub-graphs that
only move data), :mod:`.probe` (measure their exact copy map), :mod:`.shift_to_conv` (the shift rewrite),
:mod:`.transpose_cleanup` (cancel layout changes), :mod:`.layout` (move the remaining Transposes to the
narrowest tensors: MatMul -> 1x1 Conv, sinking through elementwise ops and reductions), :mod:`.channels_first`
(``--target openvino|npu``: token maps channels-first end to end), :mod:`.npu` (what an NPU may reject),
:mod:`.verify` (ONNX Runtime comparison) and :mod:`.optimize` (the pipeline).
"""

from ..targets import TARGETS
from .optimize import OptimizeResult, optimize_model
from .shift_to_conv import RewriteRolledBack, ShiftPlan, ShiftSite, SkippedRegion
from .verify import Verification, compare_models

__all__ = [
    "TARGETS",
    "OptimizeResult",
    "RewriteRolledBack",
    "ShiftPlan",
    "ShiftSite",
    "SkippedRegion",
    "Verification",
    "compare_models",
    "optimize_model",
]
