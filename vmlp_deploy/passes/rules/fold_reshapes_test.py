"""fold-reshape-pairs (onnxscript's rule): two Reshapes in a row become the second."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

from vmlp_deploy.passes.rules.fold_reshapes import FoldReshapePairs
from vmlp_deploy.passes.testing import assert_same_outputs, graph_model, ops, run_rules


@pytest.mark.parametrize("second", [[1, 4, 30], [1, -1]])
def test_reshape_chain_folds(second: list[int]) -> None:
    model = graph_model([
        h.make_node("Reshape", ["x", "s1"], ["r"]),
        h.make_node("Reshape", ["r", "s2"], ["y"]),
    ], {"x": [1, 4, 5, 6]}, {"y": None}, {"s1": np.array([4, 30], np.int64), "s2": np.array(second, np.int64)})
    out, report = run_rules(model, FoldReshapePairs)
    assert ops(out) == ["Reshape"] and report.fired("fold-reshape-pairs") == 1
    assert_same_outputs(model, out)
