"""Typed run records read the manifests the pipeline wrote before they existed, and write them back unchanged.

The files under ``tests/data/manifests/`` were written by the dict-based stages (export, optimize of a run and of
a bare ONNX, quantize for cpu/openvino and of bare models, profile) on tiny models, before ``records.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vmlp_deploy.errors import UserError
from vmlp_deploy.progress import Quiet, TimedSteps
from vmlp_deploy.records import (
    Artifacts,
    ExportStage,
    ManifestError,
    ModelInfo,
    ProfileRecord,
    RunManifest,
    StageRecord,
    environment,
)
from vmlp_deploy.rundir import MANIFEST, load_manifest, write_manifest

DATA = Path(__file__).parent / "data" / "manifests"
MANIFESTS = sorted(p.stem for p in DATA.glob("*.json") if p.stem != "profile_records")


def _read(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_written_before_round_trip_unchanged(name: str) -> None:
    original = _read(name)
    manifest = RunManifest.from_json(original)
    assert manifest.to_json() == original
    assert json.dumps(manifest.to_json(), indent=2) == json.dumps(original, indent=2)  # key order kept too


def _fresh(manifest: RunManifest) -> RunManifest:
    """The same record as a stage builds it (no keys read from a file)."""
    return dataclasses.replace(
        manifest, keys=None,
        model=manifest.model and dataclasses.replace(manifest.model, keys=None),
        artifacts=manifest.artifacts and dataclasses.replace(manifest.artifacts, keys=None),
        stages={k: dataclasses.replace(s, keys=None) for k, s in (manifest.stages or {}).items()})


@pytest.mark.parametrize("name", ["export", "optimize", "quantize_cpu", "quantize_openvino", "profile"])
def test_records_built_fresh_write_the_same_keys_and_nulls(name: str) -> None:
    original = _read(name)
    assert _fresh(RunManifest.from_json(original)).to_json() == original


def test_export_manifest_reads_as_attributes() -> None:
    m = RunManifest.from_json(_read("export"))
    assert m.model is not None and m.model.name == "s2mlpv2_small" and m.model.family == "s2mlpv2"
    assert m.model.tiny is True and m.model.input_size == [56, 56] and m.model.checkpoint is None
    assert m.artifacts == Artifacts(onnx="model.onnx", external_data=None)
    assert isinstance(m.export, ExportStage) and m.export.opset == 18 and m.export.exporter == "torchscript"
    assert set(m.export.timings_s or {}) == {"export", "simplify", "rewrite", "check", "validate"}
    assert m.export.validation is not None and m.export.validation["passed"] is True
    assert m.optimize is None and m.quantize is None and m.profile is None
    assert set(m.environment or {}) == set(environment())


def test_later_stage_manifests_read_as_attributes() -> None:
    opt = RunManifest.from_json(_read("optimize"))
    assert opt.export is not None and opt.optimize is not None
    assert isinstance(opt.optimize.nodes_before, int) and opt.optimize.source.endswith("model.onnx")
    bare = RunManifest.from_json(_read("optimize_bare"))
    assert bare.model == ModelInfo(name="model", source=bare.model.source) and bare.preprocessing is None
    assert "preprocessing" in bare.to_json()
    q = RunManifest.from_json(_read("quantize_cpu"))
    assert q.quantize is not None and q.quantize.backend == "cpu" and q.quantize.precision == "int8"
    assert q.quantize.source is not None and q.quantize.source["had_manifest"] is True
    assert {"openvino", "nncf"} <= set(q.environment or {})
    ov = RunManifest.from_json(_read("quantize_openvino"))
    assert ov.artifacts is not None and ov.artifacts.onnx is None and ov.artifacts.openvino_xml == "model.xml"
    onnx_file = RunManifest.from_json(_read("quantize_onnx_file"))
    assert onnx_file.model is not None and onnx_file.model.source_onnx and onnx_file.model.family is None
    profile = RunManifest.from_json(_read("profile"))
    assert profile.model is None and profile.profile is not None and profile.profile.records == 2
    assert profile.artifacts == Artifacts(json="profile.json", markdown="profile.md")
    assert profile.inputs and profile.environment and "cpu_model" in profile.environment


def test_unknown_keys_and_stages_survive() -> None:
    data = {"format": "vmlp-deploy/1", "note": "hand-written", "stages": {"later": {"x": 1}},
            "model": {"name": "m", "origin": "elsewhere"}}
    m = RunManifest.from_json(data)
    assert type(m.stages["later"]) is StageRecord and m.model.extra == {"origin": "elsewhere"}
    assert m.to_json() == data


@pytest.mark.parametrize("bad, problem", [
    ([1, 2], "a JSON list"), ({"model": "x"}, "'model' is a str"), ({"artifacts": "model.onnx"}, "'artifacts'"),
    ({"stages": ["export"]}, "'stages' is a list"), ({"preprocessing": "imagenet"}, "'preprocessing'"),
    ({"stages": {"export": 5}}, "stages.export is a int"),
])
def test_unreadable_manifests_name_the_problem(bad: object, problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        RunManifest.from_json(bad)


def test_one_writer_is_atomic_and_the_reader_checks_file_names(tmp_path: Path) -> None:
    manifest = RunManifest.from_json(_read("quantize_cpu"))
    write_manifest(tmp_path, manifest)
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]
    assert json.loads((tmp_path / MANIFEST).read_text()) == _read("quantize_cpu")
    assert load_manifest(tmp_path).to_json() == _read("quantize_cpu")
    manifest.artifacts = Artifacts(onnx="../model.onnx", external_data=None)
    write_manifest(tmp_path, manifest)
    with pytest.raises(UserError, match=r"artifacts.onnx is '../model.onnx', not a file name"):
        load_manifest(tmp_path)


def test_profile_records_round_trip() -> None:
    records = json.loads((DATA / "profile_records.json").read_text())["records"]
    typed = [ProfileRecord.from_dict(r) for r in records]
    assert [r.to_dict() for r in typed] == records
    assert [list(r.to_dict()) for r in typed] == [list(r) for r in records]
    assert typed[0].backend == "cpu" and typed[0].latency_ms is not None and typed[0].batch == 1


def test_timed_steps_keep_the_seconds_of_named_steps_that_finished() -> None:
    steps = TimedSteps(Quiet())
    with steps.step("shown and timed", "first"):
        pass
    with steps.step("shown only"):
        pass
    with pytest.raises(RuntimeError), steps.step("failed", "second"):
        raise RuntimeError
    with steps.timed("shows its own bar"):
        pass
    assert list(steps.seconds) == ["first", "shows its own bar"] and steps.seconds["first"] >= 0
