"""Rule: ``Transpose(Transpose(x, p), q)`` becomes ``Transpose(x, p[q])``, or ``x`` when that is the identity.

onnxscript's own rules (``transpose_transpose_rule``, and ``no_op_transpose_rule`` for an identity permutation)
run through this driver.
"""

from __future__ import annotations

from onnxscript.rewriter.rules.common import no_op_transpose_rule, transpose_transpose_rule

from ..rule import LibraryRule


class FoldTransposePairs(LibraryRule, name="fold-transpose-pairs", anchors={"Transpose"},
                         library=(transpose_transpose_rule, no_op_transpose_rule)):
    """Transpose(Transpose(x, p), q) -> Transpose(x, p[q]) or x (onnxscript's rules)."""
