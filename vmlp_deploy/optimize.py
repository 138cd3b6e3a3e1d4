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
from .onnx_io import load_checked, save
from .passes import OptimizeResult, optimize_model
from .progress import Progress, Quiet
from .records import MANIFEST_FORMAT, Artifacts, OptimizeStage, RunManifest, environment
from .rundir import (MANIFEST, load_model_manifest, manifest_beside, metadata_model, peak_rss_mb, staged_dir,
                     write_manifest)


@dataclass
class OptimizeRun:
    out_dir: Path
    onnx_path: Path
    result: OptimizeResult
    record: RunManifest

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as written to ``manifest.json``."""
        return self.record.to_json()


def resolve_onnx(source: Path) -> tuple[Path, RunManifest | None]:
    """A run directory (its manifest names the model) or a bare ``.onnx`` file."""
    if source.is_dir():
        manifest = load_model_manifest(source)
        name = manifest.artifacts.onnx if manifest.artifacts else None
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
    return source, manifest_beside(source)


def optimize_file(
    source: Path, out_dir: Path, *, overwrite: bool = False, verify: bool = True, seed: int = 0,
    target: str = "cpu", progress: Progress | None = None,
) -> OptimizeRun:
    """Run the graph passes on ``source`` into ``out_dir``: the model and its manifest, extended or new."""
    progress = progress or Quiet()
    path, manifest = resolve_onnx(source)
    with staged_dir(out_dir, overwrite) as tmp:
        with progress.step(f"Loading {path}"):
            model = load_checked(path)
        with progress.step("Rewriting token-mixing shifts into Pad + grouped Conv (verified)"):
            result = optimize_model(model, verify=verify, seed=seed, target=target)
        for line in result.summary_lines():
            progress.note(line)
        dynamic = _dynamic_inputs(model)
        if not result.patterns and dynamic:
            progress.note(f"the input has symbolic dimensions ({dynamic}) and the rewrite needs static shapes: "
                          "re-export with a fixed batch (`vmlp-deploy export --batch N`, the default is 1)")
        external = save(result.model, tmp / "model.onnx")
        record = _manifest(manifest or _bare_manifest(path, model), path, result, external)
        write_manifest(tmp, record)
    return OptimizeRun(out_dir, out_dir / "model.onnx", result, record)


def _dynamic_inputs(model: onnx.ModelProto) -> str:
    """``input: [batch, 3, 224, 224]`` for every graph input with a symbolic dimension, or ''."""
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        dims = [d.dim_param or "?" if not d.HasField("dim_value") else d.dim_value
                for d in value.type.tensor_type.shape.dim]
        if value.name not in initializers and any(isinstance(d, str) for d in dims):
            found.append(f"{value.name}: {dims}")
    return "; ".join(found)


def _bare_manifest(path: Path, model: onnx.ModelProto) -> RunManifest:
    """The manifest an ONNX model without a run directory starts with: its name and origin, and what its
    ``vmlp.*`` metadata says (model, random weights, preprocessing) when `export` wrote it."""
    info, preprocessing = metadata_model(path, model)
    return RunManifest.from_json({"format": MANIFEST_FORMAT, "model": {**info, "source": str(path.resolve())},
                                  "preprocessing": preprocessing, "stages": {}})


def _manifest(base: RunManifest, path: Path, result: OptimizeResult, external: str | None) -> RunManifest:
    """``base`` (the source run's manifest, which keeps its history) with this run and its pass report."""
    base.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base.command = " ".join(sys.argv)
    base.artifacts = Artifacts(onnx="model.onnx", external_data=external)
    base.add_stage(OptimizeStage.from_json({**result.to_dict(), "source": str(path.resolve()),
                                            "peak_rss_mb": peak_rss_mb()}))
    base.environment = environment()
    return base
