"""The working folder: every run directory the pipeline wrote under ``out/``, read back from its manifest.

Later stages called without an input take the most recent float run here (``quantize``), or it and the INT8
runs made from it (``profile``); ``vmlp-deploy runs`` lists them. A run's stage is the last stage its manifest
records (export -> optimize -> quantize; profile runs have their own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UserError
from .rundir import MANIFEST

#: Where runs go when no ``-o`` is given.
DEFAULT_ROOT = Path("out")
STAGE_ORDER = ("export", "optimize", "quantize", "profile")


@dataclass(frozen=True)
class RunInfo:
    """One run directory as the `runs` listing shows it."""

    path: Path
    stage: str
    model: str
    backend: str
    precision: str
    target_cpu: str
    figure: str
    created: datetime
    manifest: dict[str, Any]

    @property
    def float_model(self) -> bool:
        return self.stage in ("export", "optimize")

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "stage": self.stage, "model": self.model, "backend": self.backend,
                "precision": self.precision, "target_cpu": self.target_cpu, "figure": self.figure,
                "created": self.created.isoformat(timespec="seconds")}


def _created(manifest: dict[str, Any], path: Path) -> datetime:
    try:
        return datetime.fromisoformat(manifest["created"])
    except (KeyError, TypeError, ValueError):
        return datetime.fromtimestamp((path / MANIFEST).stat().st_mtime, timezone.utc)


def _info(path: Path, manifest: dict[str, Any]) -> RunInfo:
    stages = manifest.get("stages") or {}
    stage = max((s for s in stages if s in STAGE_ORDER), key=STAGE_ORDER.index, default="export")
    model = str((manifest.get("model") or {}).get("name") or path.name)
    backend, precision, target, figure = "-", "f32", "-", ""
    if stage == "export":
        v = (stages["export"].get("validation") or {})
        outs = v.get("outputs") or []
        if outs:
            figure = f"max |diff| {max(o.get('max_abs_diff', 0) for o in outs):.1e}"
    elif stage == "optimize":
        figure = f"{stages['optimize'].get('nodes_before')} -> {stages['optimize'].get('nodes_after')} nodes"
    elif stage == "quantize":
        q = stages["quantize"]
        backend, precision = str(q.get("backend", "-")), "int8"
        target = str((q.get("target_cpu") or {}).get("name", "-"))
        f = q.get("fidelity") or {}
        acc = q.get("accuracy")
        figure = (f"top-1 {acc['top1_delta_points']:+.2f} pts" if acc else
                  f"agreement {f.get('top1_agreement', 0):.0%}, SQNR {f.get('sqnr_db', 0):.1f} dB" if f else "")
    elif stage == "profile":
        p = stages["profile"]
        options = p.get("options") or {}
        names = list(dict.fromkeys(str(i.get("model_name") or i.get("label")) for i in manifest.get("inputs") or []))
        model = ", ".join(names) or model
        backend = ",".join(options.get("backends") or []) or "-"
        precision = ",".join(options.get("precisions") or []) or "-"
        target = str((p.get("target_cpu") or {}).get("name", "-"))
        figure = _profile_figure(path) or f"{p.get('records', 0)} records"
    return RunInfo(path, stage, model, backend, precision, target, figure, _created(manifest, path), manifest)


def _profile_figure(path: Path) -> str:
    """The first few medians of a profile run: ``label backend precision 12.3 ms; ...``."""
    try:
        records = json.loads((path / "profile.json").read_text())["records"]
    except (OSError, KeyError, json.JSONDecodeError):
        return ""
    parts = [f"{r['model']} {r['backend']} {r['precision']} {r['latency_ms']['median']:.1f} ms"
             for r in records[:3] if r.get("latency_ms")]
    return "; ".join(parts) + ("; ..." if len(records) > 3 else "")


def read_run(path: Path) -> RunInfo | None:
    """One run directory, or None when it has no readable manifest (a staging dir, a foreign folder)."""
    if path.name.startswith(".") or not (path / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return _info(path, manifest) if isinstance(manifest, dict) else None


def list_runs(root: Path = DEFAULT_ROOT) -> list[RunInfo]:
    """Run directories directly under ``root`` with a readable manifest, oldest first (staging dirs skipped)."""
    if not root.is_dir():
        return []
    runs = [r for r in map(read_run, sorted(root.iterdir())) if r is not None]
    return sorted(runs, key=lambda r: r.created.timestamp())


def latest_float_run(root: Path = DEFAULT_ROOT) -> RunInfo:
    """The most recent export (or optimize) run, or one clear line saying what to run first."""
    floats = [r for r in list_runs(root) if r.float_model]
    if not floats:
        raise UserError(f"no exported model under {root}/: run `vmlp-deploy export --model s2mlpv2` first "
                        "(or pass a run directory)")
    return floats[-1]


def int8_runs_of(run: RunInfo, root: Path = DEFAULT_ROOT) -> list[RunInfo]:
    """Quantize runs made from ``run``'s model file, most recent per backend."""
    model_file = (run.path / str((run.manifest.get("artifacts") or {}).get("onnx") or "model.onnx")).resolve()
    latest: dict[str, RunInfo] = {}
    for r in list_runs(root):
        if r.stage != "quantize":
            continue
        source = ((r.manifest["stages"]["quantize"].get("source") or {}).get("onnx")) or ""
        if Path(source).resolve() == model_file:
            latest[r.backend] = r
    return list(latest.values())


def age(created: datetime, now: datetime | None = None) -> str:
    """'12 s', '5 min', '3 h', '2 d' ago."""
    now = now or datetime.now(timezone.utc)
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    s = max(0.0, (now - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit}"
    return f"{int(s)} s"
