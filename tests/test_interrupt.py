"""SIGINT and SIGTERM in the middle of a stage: the CLI exits 130 (SIGINT) or 143 (SIGTERM), deletes its
staging directory and leaves the previous good run exactly as it was.

The signal is sent once the stage has started writing (its hidden ``.<name>.tmp-*`` staging directory exists),
to a real ``vmlp-deploy`` process: signals cannot be faked in-process.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model


def _as_from_a_terminal() -> None:
    """SIGINT at its default in the CLI, as a terminal starts it: a CI job run in the background (``cmd &`` in a
    non-interactive shell) has SIGINT ignored, which every child inherits and Python then leaves ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _digest(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir())}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("interrupt") / "source"
    export_model(load_model("s2mlpv2_small", tiny=True), run, ExportOptions())
    return run


STAGES = {
    "export": ["export", "--model", "s2mlpv2_small", "--tiny"],
    "optimize": ["optimize", "{source}"],
    "quantize": ["quantize", "{source}", "--backend", "openvino", "--num-samples", "8", "--holdout", "2"],
}


@pytest.mark.parametrize(("stage", "signum"), [
    ("export", signal.SIGINT), ("export", signal.SIGTERM), ("optimize", signal.SIGTERM),
    ("quantize", signal.SIGINT),
], ids=["export-SIGINT", "export-SIGTERM", "optimize-SIGTERM", "quantize-SIGINT"])
def test_interrupt_keeps_previous_run(stage: str, signum: signal.Signals, source: Path, tmp_path: Path) -> None:
    previous = tmp_path / "run"
    previous.mkdir()
    (previous / "manifest.json").write_text('{"format": "vmlp-deploy/1", "note": "the previous good run"}\n')
    (previous / "model.onnx").write_bytes(b"previous model bytes")
    before = _digest(previous)
    argv = [a.replace("{source}", str(source)) for a in STAGES[stage]]
    proc = subprocess.Popen(["vmlp-deploy", *argv, "-o", str(previous), "--overwrite"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".run.tmp-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the stage never started writing"
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (proc.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "interrupted" in err
    assert _digest(previous) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reaped process has no /proc entry)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_sigint_with_capped_children_is_clean(source: Path, tmp_path: Path) -> None:
    """SIGINT while children serve capped sessions (``isa_cap``; they run in sessions of their own, so a
    terminal's Ctrl-C reaches only the CLI): it exits 130 with one line, and no child outlives it."""
    from vmlp_deploy import cpu, isa_cap

    cap, why = isa_cap.plan("openvino", cpu.TARGETS["avx2"])
    if cap is None or cpu.host_stands_for(cpu.TARGETS["avx2"], integer_only=True):
        pytest.skip(f"no capped OpenVINO session on this host ({cpu.host().isa.summary()}): {why or 'it is AVX2'}")
    argv = ["quantize", str(source), "--backend", "openvino", "--num-samples", "8", "--holdout", "2",
            "--target-cpu", "avx2", "-o", str(tmp_path / "run")]
    proc = subprocess.Popen(["vmlp-deploy", *argv], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 120
    children: list[int] = []
    while not children:
        listed = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(proc.pid)], capture_output=True, text=True)
        children = [int(line.split()[0]) for line in listed.stdout.splitlines() if "backends.isolated" in line]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no capped session was started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "interrupted" in err
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in children):
        assert time.monotonic() < deadline, "a capped session's child outlived the CLI"
        time.sleep(0.05)
    assert not (tmp_path / "run").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
