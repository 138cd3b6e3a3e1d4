"""The user's commands as written: family names, a working folder (out/), deploy, runs, and every run directory
accepted by every later stage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vmlp_deploy.models import canonical_name, family_defaults, get_variant, list_models

Cli = Callable[..., tuple[int, str, str]]
QUICK = ("--num-samples", "16", "--holdout", "4", "--layout", "as-given")


def test_every_family_name_stands_for_its_default_variant() -> None:
    defaults = family_defaults()
    families = {get_variant(n).family for n in list_models()}
    assert families <= set(defaults), "every family has a default variant"
    assert canonical_name("s2mlpv2") == "s2mlpv2_small" and canonical_name("mixer") == "mixer_s16_224"
    for alias, variant in defaults.items():
        assert variant in list_models() and get_variant(alias).name == variant


def test_models_table_shows_the_defaults(cli: Cli) -> None:
    code, out, _ = cli("models", "--family", "s2mlpv2")
    assert code == 0 and "s2mlpv2_small ← s2mlpv2" in out
    code, out, _ = cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["mixer_s16_224"]["family_default_for"] == ["mixer", "mlp_mixer"]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_empty_folder_says_what_to_run_first(workdir: Path, cli: Cli) -> None:
    code, _, err = cli("quantize")
    assert code == 2 and "vmlp-deploy export --model s2mlpv2" in err and "Traceback" not in err
    code, out, _ = cli("runs")
    assert code == 0 and "vmlp-deploy export --model s2mlpv2" in out
    (workdir / "empty.onnx").write_bytes(b"")
    code, _, err = cli("optimize", "empty.onnx")
    assert code == 2 and "empty" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["empty.onnx"], "a failed first run leaves no empty out/"


def test_export_quantize_runs_in_a_fresh_folder(workdir: Path, cli: Cli) -> None:
    code, out, err = cli("export", "--model", "s2mlpv2", "--tiny")
    assert code == 0, err
    assert "s2mlpv2 -> s2mlpv2_small" in out and (workdir / "out" / "s2mlpv2_small-tiny" / "model.onnx").is_file()
    code, out, err = cli("quantize", *QUICK)
    assert code == 0, err
    assert "most recent export: out/s2mlpv2_small-tiny" in out
    for backend in ("cpu", "openvino"):
        manifest = json.loads((workdir / "out" / f"s2mlpv2_small-tiny-int8-{backend}" / "manifest.json").read_text())
        assert manifest["stages"]["quantize"]["backend"] == backend
    assert not (workdir / "out" / "s2mlpv2_small-tiny-int8-tensorrt").exists(), "TensorRT Q/DQ only when asked"
    code, _, err = cli("quantize", "--backend", "cpu,openvino", "-o", "x", *QUICK)
    assert code == 2 and "-o names one run directory" in err
    code, out, _ = cli("runs")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "stage", "model"]
    assert any(line.startswith("s2mlpv2_small-tiny-int8-openvino ") and " quantize " in line and " int8 " in line
               and " s2mlpv2_small (tiny) " in line for line in lines)
    code, out, err = cli("profile", "--backend", "openvino", "-n", "3", "--warmup", "1", "--layer-runs", "0",
                         "--peak-size", "64", "--no-charts")
    assert code == 0, err
    assert "most recent export out/s2mlpv2_small-tiny and its INT8 runs out/s2mlpv2_small-tiny-int8-openvino" in out
    prof = next((workdir / "out").glob("profile-*"))
    records = json.loads((prof / "profile.json").read_text())["records"]
    assert sorted((r["model"], r["backend"], r["precision"]) for r in records) == [
        ("s2mlpv2_small-tiny", "openvino", "f32"), ("s2mlpv2_small-tiny-int8-openvino", "openvino", "int8")]
    assert "FP32 vs INT8" in out and "speedup" in out and "| openvino |" in (prof / "summary.md").read_text()
    code, out, _ = cli("ls", "--json")
    assert {r["stage"] for r in json.loads(out)} == {"export", "quantize", "profile"}
    odd = workdir / "out" / "s2mlpv2_small-tiny-int8-cpu" / "manifest.json"
    manifest = json.loads(odd.read_text())
    manifest["stages"]["quantize"]["fidelity"] = 5
    odd.write_text(json.dumps(manifest))
    code, out, err = cli("runs")
    assert code == 0 and "unreadable manifest" in out, "one hand-edited run does not break the listing"
    code, out, err = cli("quantize", "--backend", "cpu", "-o", "again", *QUICK)
    assert code == 0 and "most recent export: out/s2mlpv2_small-tiny" in out, err


def test_deploy_tiny_and_reruns_reuse(workdir: Path, cli: Cli) -> None:
    """(Its wall time, under a minute on 2 cores, is measured in BENCHMARKS.md, not asserted here.)"""
    code, out, err = cli("deploy", "--model", "s2mlpv2", "--tiny", "--num-samples", "16", "-n", "5",
                         "--layer-runs", "1", "--no-charts")
    assert code == 0, err
    assert "FP32 vs INT8" in out and "speedup" in out
    summaries = list((workdir / "out").glob("profile-*/summary.md"))
    assert len(summaries) == 1
    text = summaries[0].read_text()
    assert "| cpu |" in text and "| openvino |" in text and "INT8 openvino" in text
    code, out, err = cli("deploy", "--model", "s2mlpv2", "--tiny", "--num-samples", "16", "-n", "5",
                         "--layer-runs", "0", "--no-charts", "--backend", "openvino")
    assert code == 0, err
    assert "reusing out/s2mlpv2_small-tiny " in out and "quantize openvino: reusing" in out
    code, _, err = cli("deploy", "--model", "s2mlpv2", "--tiny", "--num-samples", "8", "-n", "5", "--layer-runs", "0",
                       "--no-charts", "--backend", "openvino")
    assert code == 2 and "quantized with other settings (num_samples 16 -> 8)" in err and "--overwrite" in err, err
    (workdir / "a_file").write_text("")
    code, _, err = cli("deploy", "--model", "s2mlpv2", "--tiny", "--root", "a_file/runs")
    assert code == 2 and "a_file is a file, not a folder" in err and "-o" not in err


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run directory of every kind the pipeline writes, made by the real stages."""
    from vmlp_deploy.export import ExportOptions, export_model
    from vmlp_deploy.model import load_model
    from vmlp_deploy.optimize import optimize_file
    from vmlp_deploy.quantize import QuantizeOptions, quantize_run

    root = tmp_path_factory.mktemp("matrix")
    runs = {"export": root / "export"}
    export_model(load_model("s2mlpv2_small", tiny=True), runs["export"], ExportOptions())
    runs["optimize"] = optimize_file(runs["export"], root / "optimize", target="openvino").out_dir
    for backend in ("cpu", "openvino", "tensorrt"):
        runs[f"quantize-{backend}"] = quantize_run(runs["export"], QuantizeOptions(
            backend=backend, output=root / f"q-{backend}", num_samples=16, holdout=4, layout="as-given")).out_dir
    return runs


RUN_KINDS = ("export", "optimize", "quantize-cpu", "quantize-openvino", "quantize-tensorrt")


@pytest.mark.parametrize("backend", ["cpu", "openvino"])
@pytest.mark.parametrize("kind", RUN_KINDS)
def test_profile_reads_every_run_directory(kind: str, backend: str, pipeline_runs: dict[str, Path], cli: Cli,
                                           tmp_path: Path) -> None:
    run = pipeline_runs[kind]
    code, out, err = cli("profile", run, "--backend", backend, "-n", "3", "--warmup", "1", "--no-peak",
                         "--layer-runs", "0", "--no-charts", "-o", tmp_path / "p")
    if kind == "quantize-openvino" and backend == "cpu":
        assert code == 2 and "does not read .xml" in err, "an OpenVINO IR cannot run on ONNX Runtime: said so"
        return
    assert code == 0, err
    records = json.loads((tmp_path / "p" / "profile.json").read_text())["records"]
    assert [r["backend"] for r in records] == [backend]
    assert records[0]["quantized"] == kind.startswith("quantize")


@pytest.mark.parametrize("kind", RUN_KINDS)
def test_quantize_reads_float_runs_and_refuses_quantized_ones(kind: str, pipeline_runs: dict[str, Path],
                                                              cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("quantize", pipeline_runs[kind], "--backend", "cpu", "-o", tmp_path / "q", *QUICK)
    if kind.startswith("quantize"):
        assert code == 2 and "already quantized" in err and not (tmp_path / "q").exists()
    else:
        assert code == 0, err
