"""Rule: ``Reshape(Reshape(x, s1), s2)`` becomes ``Reshape(x, s2)`` when ``s2`` is a constant.

onnxscript's ``reshape_reshape_rule`` runs through this driver (it resolves a ``0`` in ``s2`` from the known
output shape, and refuses what it cannot resolve).
"""

from __future__ import annotations

from onnxscript.rewriter.rules.common import reshape_reshape_rule

from ..rule import LibraryRule


class FoldReshapePairs(LibraryRule, name="fold-reshape-pairs", anchors={"Reshape"}, library=(reshape_reshape_rule,)):
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) (onnxscript's rule)."""
