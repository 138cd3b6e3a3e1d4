"""Reruns are idempotent: the same command on the same inputs writes the same files (only the manifest's
timestamps, timings and memory figures differ), and an existing run is replaced only with --overwrite."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., tuple[int, str, str]]
#: Manifest fields that describe the run rather than its result.
VOLATILE = {"created", "timings_s", "peak_rss_mb", "seconds", "environment", "layout_int8_median_ms", "timings",
            "simplifier_log", "exporter_warnings", "command"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ir_text(path: Path) -> str:
    """OpenVINO names unnamed nodes from a process-wide counter (``Constant_68228``), so a second run in the same
    process numbers them differently; separate CLI runs write byte-identical IR. Compare without those numbers."""
    return re.sub(r'(name="[^"]*?)_\d+"', r'\1"', path.read_text())


def _stable(value: object) -> object:
    """The manifest without the fields that record when and how fast, recursively."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


@pytest.mark.parametrize("backend", ["cpu", "openvino", "tensorrt"])
def test_export_and_quantize_twice_write_the_same_files(backend: str, cli: Cli, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert cli("export", "--model", "s2mlpv2", "--tiny", "-o", out / "e")[0] == 0
        code, _, err = cli("quantize", out / "e", "--backend", backend, "-o", out / "q", "--num-samples", "16",
                           "--holdout", "4", "--layout", "as-given")
        assert code == 0, err
        runs.append(out)
    a, b = runs
    assert _digest(a / "e" / "model.onnx") == _digest(b / "e" / "model.onnx")
    if backend == "openvino":
        assert _digest(a / "q" / "model.bin") == _digest(b / "q" / "model.bin")
        assert _ir_text(a / "q" / "model.xml") == _ir_text(b / "q" / "model.xml")
    else:
        assert _digest(a / "q" / "model.onnx") == _digest(b / "q" / "model.onnx")
    ma, mb = (json.loads((r / "q" / "manifest.json").read_text()) for r in runs)
    ma["stages"]["quantize"]["source"].pop("onnx"), mb["stages"]["quantize"]["source"].pop("onnx")
    assert json.dumps(_stable(ma["stages"]["quantize"]["fidelity"])) == json.dumps(
        _stable(mb["stages"]["quantize"]["fidelity"]))
    assert ma["stages"]["quantize"]["source"]["sha256"] == mb["stages"]["quantize"]["source"]["sha256"]


def test_an_existing_run_is_replaced_only_with_overwrite(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "e"
    assert cli("export", "--model", "s2mlpv2", "--tiny", "-o", out)[0] == 0
    before = _digest(out / "manifest.json")
    code, _, err = cli("export", "--model", "s2mlpv2", "--tiny", "-o", out)
    assert code == 2 and "--overwrite" in err and _digest(out / "manifest.json") == before
    assert cli("export", "--model", "s2mlpv2", "--tiny", "-o", out, "--overwrite")[0] == 0
    assert _digest(out / "manifest.json") != before, "replaced (a new manifest, with its own timestamp)"
