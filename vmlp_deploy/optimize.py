"""Stage 3 as a command: run the graph passes on any ONNX model (a bare file or an export run directory).

The result is a new run directory with ``model.onnx`` and a ``manifest.json`` holding the pass report; a model
exported elsewhere gets a fresh manifest, one of ours keeps its history and gains a ``stages.optimize`` entry.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from .errors import UserError
from .export import environment
from .onnx_io import load_checked, save
from .passes import OptimizeResult, optimize_model
from .progress import Progress, Quiet
from .rundir import MANIFEST, peak_rss_mb, read_manifest, staged_dir, write_json


@dataclass
class OptimizeRun:
    out_dir: Path
    onnx_path: Path
    result: OptimizeResult
    manifest: dict[str, Any]


def resolve_onnx(source: Path) -> tuple[Path, dict[str, Any] | None]:
    """A run directory (its manifest names the model) or a bare ``.onnx`` file."""
    if source.is_dir():
        manifest = read_manifest(source)
        name = manifest.get("artifacts", {}).get("onnx")
        if not name:
            raise UserError(f"{source / MANIFEST} names no ONNX model (artifacts.onnx): pass the .onnx file itself "
                            "or re-run `vmlp-deploy export`")
        if not (source / name).is_file():
            raise UserError(f"{source / MANIFEST} names {name}, which is missing: re-run `vmlp-deploy export`")
        return source / name, manifest
    if not source.exists():
        raise UserError(f"{source} does not exist: pass an .onnx file or a run directory from `vmlp-deploy export`")
    if source.suffix != ".onnx":
        raise UserError(f"{source} is not an .onnx file: pass an ONNX model or a run directory")
    return source, None


def optimize_file(
    source: Path, out_dir: Path, *, overwrite: bool = False, verify: bool = True, seed: int = 0,
    target: str = "cpu", progress: Progress | None = None,
) -> OptimizeRun:
    progress = progress or Quiet()
    path, manifest = resolve_onnx(source)
    with staged_dir(out_dir, overwrite) as tmp:
        with progress.step(f"Loading {path}"):
            model = load_checked(path)
        with progress.step("Rewriting token-mixing shifts into Pad + grouped Conv (verified)"):
            result = optimize_model(model, verify=verify, seed=seed, target=target)
        for line in result.summary_lines():
            progress.note(line)
        onnx_path = tmp / "model.onnx"
        external = save(result.model, onnx_path)
        base = dict(manifest) if manifest else {
            "format": "vmlp-deploy/1",
            "model": {"name": path.stem, "source": str(path.resolve())},
            "preprocessing": None,
            "stages": {},
        }
        base["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        base["command"] = " ".join(sys.argv)
        base["artifacts"] = {"onnx": onnx_path.name, "external_data": external}
        base.setdefault("stages", {})["optimize"] = {
            **result.to_dict(),
            "source": str(path.resolve()),
            "peak_rss_mb": peak_rss_mb(),
        }
        base["environment"] = environment()
        write_json(tmp / MANIFEST, base)
    return OptimizeRun(out_dir, out_dir / "model.onnx", result, base)
