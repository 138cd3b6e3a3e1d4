"""The passes' output graphs, pinned: node count, op histogram and rewrites per zoo model and target.

The numbers in ``data/passes_golden.json`` were written by the passes before they were reorganised into
rule sets (issue 12); a refactor of the passes must reproduce them exactly. A deliberate change of what a
rule produces rewrites the file (``python tests/test_passes_golden.py --write``) in the same commit, so
the diff shows what moved.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import onnx
import pytest

from vmlp_deploy import models as zoo
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.onnx_io import op_histogram
from vmlp_deploy.passes import optimize_model

GOLDEN = Path(__file__).parent / "data" / "passes_golden.json"
TARGETS_PINNED = ("cpu", "openvino", "npu")
#: One full-size model: the tiny variants have fewer blocks, and the issue's numbers are quoted at full size.
FULL_SIZE = ("s2mlpv2_small",)


def _cases() -> list[tuple[str, bool]]:
    """Each family's default variant, tiny (a family's tiny variants share one architecture), and FULL_SIZE."""
    return [(name, True) for name in sorted(set(zoo.family_defaults().values()))] + [(n, False) for n in FULL_SIZE]


def _snapshot(name: str, tiny: bool, folder: Path) -> dict[str, dict]:
    naive_path = export_model(load_model(name, tiny=tiny), folder, ExportOptions(rewrite=False)).onnx_path
    naive = onnx.load(str(naive_path))
    out = {}
    for target, edge in [(t, "pad") for t in TARGETS_PINNED] + [("cpu", "mask")]:
        result = optimize_model(naive, target=target, edge=edge, verify=False)
        out[target if edge == "pad" else f"{target} edge={edge}"] = {"nodes": len(result.model.graph.node), "ops": op_histogram(result.model),
                       "patterns": result.pattern_counts()}
    return out


def test_every_target_the_cli_offers_has_a_rule_set() -> None:
    from vmlp_deploy.passes import RULE_SETS, TARGETS

    assert set(RULE_SETS) == set(TARGETS) and set(TARGETS) == set(TARGETS_PINNED)


def _key(name: str, tiny: bool) -> str:
    return f"{name}{' tiny' if tiny else ''}"


@pytest.mark.parametrize(("name", "tiny"), _cases(), ids=[_key(*c) for c in _cases()])
def test_rewritten_graph_matches_the_pinned_one(name: str, tiny: bool, tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text())[_key(name, tiny)]
    assert _snapshot(name, tiny, tmp_path / "naive") == expected


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    snapshot = {}
    for case in _cases():
        with tempfile.TemporaryDirectory() as tmp:
            snapshot[_key(*case)] = _snapshot(*case, Path(tmp) / "naive")
        print(_key(*case), {t: v["nodes"] for t, v in snapshot[_key(*case)].items()}, flush=True)
    GOLDEN.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
