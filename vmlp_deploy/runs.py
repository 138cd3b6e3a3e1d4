"""The working folder: every run directory the pipeline wrote under ``out/``, read back from its manifest.

Later stages called without an input take the most recent float run here (``quantize``), or it and the INT8
runs made from it (``profile``); ``vmlp-deploy runs`` lists them. A run's stage is the last stage its manifest
records (export -> optimize -> quantize; profile runs have their own).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UserError
from .records import ManifestError, ProfileRecord, RunManifest, format_db
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
    record: RunManifest

    @property
    def float_model(self) -> bool:
        return self.stage in ("export", "optimize")

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "stage": self.stage, "model": self.model, "backend": self.backend,
                "precision": self.precision, "target_cpu": self.target_cpu, "figure": self.figure,
                "created": self.created.isoformat(timespec="seconds")}


def _created(manifest: RunManifest, path: Path) -> datetime:
    """When the manifest says the run was made, else (hand-edited) when the manifest file was written."""
    if isinstance(manifest.created, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(manifest.created)
    return datetime.fromtimestamp((path / MANIFEST).stat().st_mtime, timezone.utc)


def _info(path: Path, manifest: RunManifest) -> RunInfo:
    stages = manifest.stages or {}
    stage = max((s for s in stages if s in STAGE_ORDER), key=STAGE_ORDER.index, default="export")
    model = str((manifest.model.name if manifest.model else None) or path.name)
    if manifest.model and manifest.model.tiny:
        model += " (tiny)"
    backend, precision, target, figure = "-", "f32", "-", ""
    if stage == "export" and manifest.export:
        outs = (manifest.export.validation or {}).get("outputs") or []
        if outs:
            figure = f"max |diff| {max(o.get('max_abs_diff', 0) for o in outs):.1e}"
    elif stage == "optimize" and manifest.optimize:
        figure = f"{manifest.optimize.nodes_before} -> {manifest.optimize.nodes_after} nodes"
    elif stage == "quantize" and manifest.quantize:
        q = manifest.quantize
        backend, precision = str(q.backend or "-"), "int8"
        target = str((q.target_cpu or {}).get("name", "-"))
        f = q.fidelity or {}
        acc = q.accuracy
        figure = (f"top-1 {acc['top1_delta_points']:+.2f} pts" if acc else
                  f"agreement {f.get('top1_agreement', 0):.0%}, SQNR {format_db(f.get('sqnr_db'))} dB" if f else "")
    elif stage == "profile" and manifest.profile:
        p = manifest.profile
        options = p.options or {}
        names = list(dict.fromkeys(str(i.get("model_name") or i.get("label")) for i in manifest.inputs or []))
        model = ", ".join(names) or model
        backend = ",".join(options.get("backends") or []) or "-"
        records = _profile_records(path)
        # The precisions measured: an INT8 model's records are int8 whatever float precisions were asked for.
        measured = list(dict.fromkeys(r.precision for r in records))
        precision = ",".join(measured or options.get("precisions") or []) or "-"
        target = str((p.target_cpu or {}).get("name", "-"))
        figure = _profile_figure(records) or f"{p.records or 0} records"
    return RunInfo(path, stage, model, backend, precision, target, figure, _created(manifest, path), manifest)


def _profile_records(path: Path) -> list[ProfileRecord]:
    """A profile run's records, or none where ``profile.json`` is missing or unreadable."""
    try:
        return [ProfileRecord.from_dict(r) for r in json.loads((path / "profile.json").read_text())["records"]]
    except (OSError, KeyError, TypeError, AttributeError, ValueError):  # JSONDecodeError is a ValueError
        return []


def _profile_figure(records: list[ProfileRecord]) -> str:
    """The first few medians of a profile run: ``label backend precision 12.3 ms; ...``."""
    parts = [f"{r.model} {r.backend} {r.precision} {r.latency_ms['median']:.1f} ms" for r in records[:3]
             if r.latency_ms]
    return "; ".join(parts) + ("; ..." if len(records) > 3 else "")


def read_run(path: Path) -> RunInfo | None:
    """One run directory, or None when it has no readable manifest (a staging dir, a foreign folder)."""
    if path.name.startswith(".") or not (path / MANIFEST).is_file():
        return None
    try:
        manifest = RunManifest.from_json(json.loads((path / MANIFEST).read_text()))
    except (OSError, json.JSONDecodeError, ManifestError):
        return None
    try:
        return _info(path, manifest)
    except (AttributeError, TypeError, ValueError, KeyError) as e:  # a hand-edited value deeper in a stage
        return RunInfo(path, "?", path.name, "-", "-", "-", f"unreadable manifest ({type(e).__name__}: hand-edited?)",
                       datetime.fromtimestamp((path / MANIFEST).stat().st_mtime, timezone.utc), manifest)


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
    artifacts = run.record.artifacts
    model_file = (run.path / str((artifacts.onnx if artifacts else None) or "model.onnx")).resolve()
    latest: dict[str, RunInfo] = {}
    for r in list_runs(root):
        if r.stage != "quantize" or r.record.quantize is None:
            continue
        source = (r.record.quantize.source or {}).get("onnx") or ""
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
