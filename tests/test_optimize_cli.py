"""`vmlp-deploy optimize` and the rewrite inside `export`: run directories, reports, unchanged graphs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from vmlp_deploy.onnx_io import cpu_session, op_histogram


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return cpu_session(path).run(None, {"pixel_values": x})[0]


@pytest.fixture(scope="module")
def naive_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vmlp_deploy.cli import main

    out = tmp_path_factory.mktemp("naive") / "run"
    assert main(["export", "--model", "s2mlpv2_small", "--tiny", "--no-rewrite", "-o", str(out)]) == 0
    return out


def test_export_rewrites_by_default_and_keeps_the_naive_graph_on_request(cli, naive_run: Path, tmp_path: Path) -> None:
    naive = json.loads((naive_run / "manifest.json").read_text())["stages"]["export"]
    assert naive["rewrite"] is None and naive["op_histogram"].get("ScatterND", 0) > 0
    code, out, _ = cli("export", "--model", "s2mlpv2_small", "--tiny", "-o", tmp_path / "r")
    assert code == 0 and "shift/edge NHWC" in out
    export = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["export"]
    # float round-off only: the grouped-view lowering sums the split-attention branches in another order
    assert "shift-to-conv" in export["passes"] and export["rewrite"]["verification"]["max_abs_diff"] < 1e-6
    assert "ScatterND" not in export["op_histogram"] and export["op_histogram"]["Conv"] >= 3
    assert export["nodes"]["final"] <= 0.75 * naive["nodes"]["final"]
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 56), dtype=np.float32)
    np.testing.assert_allclose(_run(tmp_path / "r" / "model.onnx", x), _run(naive_run / "model.onnx", x), atol=1e-6)


def test_optimize_a_run_directory(cli, naive_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "opt"
    code, stdout, _ = cli("optimize", naive_run, "-o", out)
    assert code == 0 and "shift sites rewritten" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "s2mlpv2_small" and manifest["preprocessing"]["input_size"] == [56, 56]
    report = manifest["stages"]["optimize"]
    assert report["changed"] and report["pattern_counts"] and report["nodes_after"] < report["nodes_before"]
    assert "export" in manifest["stages"]
    ops = op_histogram(onnx.load(str(out / "model.onnx")))
    assert "ScatterND" not in ops


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_explain_names_every_rule_of_the_target_with_its_fires_and_reasons(cli, naive_run: Path, tmp_path: Path,
                                                                          target: str) -> None:
    from vmlp_deploy.passes import RULE_SETS

    code, stdout, _ = cli("optimize", naive_run, "-o", tmp_path / "o", "--target", target, "--explain")
    assert code == 0 and f"rule set {target}:" in stdout
    rules = json.loads((tmp_path / "o" / "manifest.json").read_text())["stages"]["optimize"]["rules"]["rules"]
    expected = set(RULE_SETS[target].rule_names())
    assert set(rules) == expected
    for name, record in rules.items():
        assert f"  {name}: fired {record['fired']}" in stdout
    report = json.loads((tmp_path / "o" / "manifest.json").read_text())["stages"]["optimize"]
    assert rules["shift-to-conv"]["fired"] == sum(report["pattern_counts"].values()) > 0
    declined = {name: record["declined"] for name, record in rules.items() if record["declined"]}
    assert declined  # and why the others did not apply where they looked
    for name, reasons in declined.items():
        reason, count = min(reasons.items(), key=lambda kv: (-kv[1], kv[0]))  # listed first
        assert f"declined {count} x {reason}" in stdout


def test_optimize_a_bare_onnx_without_idioms_changes_nothing(cli, tmp_path: Path) -> None:
    code, _, _ = cli("export", "--model", "convnext_tiny", "--tiny", "--no-rewrite", "-o", tmp_path / "c")
    assert code == 0
    bare = tmp_path / "elsewhere.onnx"
    bare.write_bytes((tmp_path / "c" / "model.onnx").read_bytes())
    code, stdout, _ = cli("optimize", bare, "-o", tmp_path / "o")
    assert code == 0 and "no shift idiom found" in stdout
    a, b = onnx.load(str(bare)), onnx.load(str(tmp_path / "o" / "model.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["stages"]["optimize"]["changed"] is False
    assert manifest["model"]["name"] == "convnext_tiny" and manifest["model"]["random_weights"] is True, "metadata"
    assert manifest["preprocessing"]["input_size"] == [32, 32] and "export" not in manifest["stages"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.onnx", "does not exist"),
        (lambda d: (d / "x.txt").write_text("hi") and d / "x.txt", "is not an .onnx file"),
        (lambda d: (d / "junk.onnx").write_bytes(b"\x00garbage") and d / "junk.onnx", "not a readable ONNX model"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "has no manifest.json"),
    ],
)
def test_optimize_bad_input(cli, tmp_path: Path, make, message: str) -> None:
    code, out, err = cli("optimize", make(tmp_path), "-o", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


def test_optimize_for_openvino_runs_channels_first_and_records_the_target(cli, naive_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    code, stdout, _ = cli("optimize", naive_run, "-o", out, "--target", "npu")
    assert code == 0 and "channels-first:" in stdout and "npu: outside the core NPU op set: Erf" in stdout
    report = json.loads((out / "manifest.json").read_text())["stages"]["optimize"]
    assert report["target"] == "npu" and report["channels_first"]["linears_to_conv"] > 0
    assert report["npu"]["unsupported"] == {"Erf": 4}  # two GELUs per block, two blocks and report["verification"]["passed"]
    ops = op_histogram(onnx.load(str(out / "model.onnx")))
    assert "Transpose" not in ops and "MatMul" not in ops and "ScatterND" not in ops
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 56), dtype=np.float32)
    np.testing.assert_allclose(_run(out / "model.onnx", x), _run(naive_run / "model.onnx", x), atol=1e-5)


def test_export_target_is_checked_and_stored(cli, tmp_path: Path) -> None:
    from vmlp_deploy.errors import UserError
    from vmlp_deploy.export import ExportOptions

    with pytest.raises(UserError, match="unknown --target 'gpu': use one of cpu, openvino, npu"):
        ExportOptions(target="gpu").check()
    code, _, _ = cli("export", "--model", "s2mlpv2_small", "--tiny", "--target", "openvino", "-o", tmp_path / "ov")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "ov" / "model.onnx")).metadata_props}
    assert code == 0 and meta["vmlp.target"] == "openvino" and "channels-first" in json.loads(meta["vmlp.passes"])


def test_optimize_says_a_dynamic_batch_is_why_nothing_was_rewritten(cli, tmp_path: Path) -> None:
    code, _, _ = cli("export", "--model", "s2mlpv2", "--tiny", "--dynamic-batch", "-o", tmp_path / "dyn")
    assert code == 0
    code, stdout, _ = cli("optimize", tmp_path / "dyn", "-o", tmp_path / "o")
    assert code == 0 and "no shift idiom found" in stdout
    assert "symbolic dimensions" in stdout and "--batch N" in stdout


def test_explain_on_a_graph_without_shifts_names_the_rules_that_did_not_run(cli, naive_run: Path,
                                                                            tmp_path: Path) -> None:
    """An already rewritten graph has no shift site: the cpu rule set stops after its first phase, and says so."""
    from vmlp_deploy.passes import RULE_SETS

    code, _, _ = cli("optimize", naive_run, "-o", tmp_path / "once")
    assert code == 0
    code, stdout, _ = cli("optimize", tmp_path / "once", "-o", tmp_path / "twice", "--explain")
    assert code == 0 and "  fold-rolls: fired 0" in stdout
    line = next(line for line in stdout.splitlines() if line.startswith("  not run: "))
    assert "shift-to-conv" in line and "no shift site found" in line
    assert all(name in line for name in RULE_SETS["cpu"].rule_names() if name != "fold-rolls")
