"""Which rules run for which target, in which order: one list of phases per target, run by one driver.

``cpu`` (ONNX Runtime) keeps token maps channels-last, narrows the Transposes the shift rewrite left and
starts the token map from a MatMul; ``openvino`` and ``npu`` run them channels-first end to end, which
Conv-centred runtimes need. The phases before the one holding the shift rule run once, on the canonical
model, before shift sites are sought. To add a rule: write its file in :mod:`.rules` and name it in a phase.
"""

from __future__ import annotations

import onnx_ir as ir

from ._graph import numel, static_shape
from .rule import Phase, RuleSet
from .rules.cancel_transposes import CancelTransposes
from .rules.channels_first import ChannelsFirst
from .rules.fold_reshapes import FoldReshapePairs
from .rules.fold_rolls import FoldRolls
from .rules.fold_transposes import FoldTransposePairs
from .rules.group_views import FlattenGroupViews
from .rules.linear_to_conv import LinearToConv1x1
from .rules.narrow_transposes import NarrowTransposes
from .rules.patchify import PatchConvToMatMul
from .rules.shift_to_conv import ShiftToConv
from .rules.unit_transpose_to_reshape import UnitTransposeToReshape


def transpose_elements(graph: ir.Graph) -> int:
    """Elements every Transpose of ``graph`` moves (what the ``cpu`` layout rules lower)."""
    total = 0
    for node in graph:
        if node.op_type == "Transpose":
            shape = static_shape(node.outputs[0]) or static_shape(node.inputs[0])
            total += numel(shape) if shape is not None else 0
    return total


#: Runs on the canonical model before shift sites are sought (what it removes is no site).
FOLD_ROLLS = Phase("fold-rolls", (FoldRolls,))
SHIFT = Phase("shift", (ShiftToConv,), max_rounds=1)
CLEANUP = Phase("cleanup", (FoldTransposePairs, CancelTransposes, FoldReshapePairs))
CPU_LAYOUT = Phase("layout", (LinearToConv1x1, NarrowTransposes, UnitTransposeToReshape), needs_shapes=True,
                   layout=True, metric=("transpose_elements", transpose_elements))
CHANNELS_FIRST = Phase("channels-first", (ChannelsFirst,), max_rounds=1, needs_shapes=True, layout=True)
GROUP_VIEWS = Phase("group-views", (FlattenGroupViews,), needs_shapes=True, layout=True)
PATCHIFY = Phase("patchify", (PatchConvToMatMul,), layout=True)

_CHANNELS_FIRST_PHASES = (FOLD_ROLLS, SHIFT, CLEANUP, CHANNELS_FIRST, GROUP_VIEWS, CLEANUP)

RULE_SETS: dict[str, RuleSet] = {rule_set.name: rule_set for rule_set in (
    RuleSet("cpu", (FOLD_ROLLS, SHIFT, CLEANUP, CPU_LAYOUT, GROUP_VIEWS, PATCHIFY, CLEANUP)),
    RuleSet("openvino", _CHANNELS_FIRST_PHASES, layout_without_shifts=True),
    RuleSet("npu", _CHANNELS_FIRST_PHASES, layout_without_shifts=True, npu_report=True),
)}
