"""`vmlp-deploy deploy`: the whole job in one command - export, INT8 for each backend, profile, one summary.

Each stage is the same function its own verb calls, writing the same run directories under ``out/``: a later
``quantize`` or ``profile`` reads them like any other. A finished run that matches what is asked (same model,
size and weights for the export; same source model, backend and target CPU for an INT8 run) is reused and
said so, so re-running ``deploy`` only measures again; ``--overwrite`` rebuilds everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .errors import UserError
from .export import ExportOptions, ExportResult, export_model
from .model import load_model
from .models import get_variant
from .profile.run import ProfileOptions, ProfileResult, default_output_dir, profile_models, require_backends
from .progress import Progress, Quiet
from .records import ModelInfo
from .quantize import QUANTIZERS, QuantizeOptions, quantize_run
from .quantize.registry import default_quantizers
from .quantize.stage import default_output
from .rundir import blocking_file, sha256_file, write_text
from .runs import RunInfo, read_run
from .summary import SpeedupRow, markdown, speedup_rows


@dataclass(frozen=True)
class DeployOptions:
    """What to deploy, for which backends and CPU, and how long to measure."""

    model: str | None = None
    checkpoint: Path | None = None
    tiny: bool = False
    input_size: tuple[int, int] | None = None
    seed: int = 0
    backends: tuple[str, ...] = field(default_factory=default_quantizers)
    root: Path = Path("out")
    overwrite: bool = False
    export: ExportOptions = field(default_factory=ExportOptions)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    profile: ProfileOptions = field(default_factory=ProfileOptions)


@dataclass
class DeployResult:
    export_dir: Path
    int8_dirs: dict[str, Path]
    profile: ProfileResult
    rows: list[SpeedupRow]
    reused: list[str]
    summary_path: Path


def _same_export(run_dir: Path, name: str, tiny: bool, checkpoint: Path | None) -> bool:
    run = read_run(run_dir)
    if run is None or run.stage != "export" or set(run.record.stages or {}) != {"export"}:
        return False
    model = run.record.model or ModelInfo()
    ckpt = model.checkpoint
    same_weights = (ckpt is None and checkpoint is None and model.random_weights) or (
        ckpt is not None and checkpoint is not None and checkpoint.is_file()
        and ckpt.get("sha256") == sha256_file(checkpoint))
    return model.name == name and bool(model.tiny) == tiny and bool(same_weights)


def _export(opt: DeployOptions, progress: Progress, reused: list[str]) -> Path:
    name = get_variant(opt.model).name if opt.model else None
    lm_name = name or (opt.checkpoint.stem if opt.checkpoint else None)
    if lm_name is None:
        raise UserError("nothing to deploy: pass --model NAME (e.g. s2mlpv2) or --checkpoint PATH")
    out = opt.root / (lm_name + ("-tiny" if opt.tiny else ""))
    if (out.is_dir() and not opt.overwrite and name and opt.input_size is None and opt.seed == 0
            and _same_export(out, name, opt.tiny, opt.checkpoint)):
        reused.append(f"export: reusing {out} (same model, size and weights; --overwrite rebuilds it)")
        return out
    if out.exists() and not opt.overwrite:
        raise UserError(f"{out} exists and is not this export (another model, checkpoint, --seed or --input-size): "
                        "pass --overwrite to rebuild it, or --root DIR to keep both")
    lm = load_model(name, checkpoint=opt.checkpoint, tiny=opt.tiny, input_size=opt.input_size, seed=opt.seed)
    result: ExportResult = export_model(lm, out, opt.export, overwrite=opt.overwrite, progress=progress)
    return result.out_dir


#: The quantize settings deploy passes on (its own flags and their defaults), which a run is reused only for; a
#: quantizer records others resolved (``model_type`` auto -> transformer), so those cannot be compared as given.
_COMPARED = ("calibration_data", "num_samples", "holdout", "seed", "eval_data", "allow_upscale", "target_cpu",
             "int8_scheme", "max_drop", "gate", "gate_agreement", "threads", "layout", "keep_float")


def _changed_settings(recorded: dict[str, Any], wanted: QuantizeOptions) -> list[str]:
    """The quantize settings of ``wanted`` that differ from those a run directory recorded, as ``name a -> b``."""
    now = json.loads(json.dumps(wanted.to_dict(), default=str))
    return [f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in _COMPARED if recorded.get(k) != now.get(k)]


def _int8_run(export_dir: Path, backend: str, opt: DeployOptions, progress: Progress, reused: list[str]) -> RunInfo:
    wanted = replace(opt.quantize, backend=backend)
    out = default_output(export_dir, backend, wanted.target_cpu)
    model_file = (export_dir / "model.onnx").resolve()
    run = None if opt.overwrite else read_run(out)
    q = run.record.quantize if run is not None and run.stage == "quantize" else None
    if run is not None and q is not None:
        source = q.source or {}
        if Path(source.get("onnx", "")).resolve() != model_file or source.get("sha256") != sha256_file(model_file):
            raise UserError(f"{out} was quantized from another model than {export_dir}: pass --overwrite to redo "
                            "it, or --root DIR to deploy elsewhere")
        changed = _changed_settings(q.settings or {}, wanted)
        if changed:
            raise UserError(f"{out} was quantized with other settings ({'; '.join(changed[:4])}): pass --overwrite "
                            "to redo it with these, or --root DIR to keep both")
        reused.append(f"quantize {backend}: reusing {out} (made from this export with the same settings; "
                      "--overwrite redoes it)")
        return run
    if out.exists() and not opt.overwrite:
        raise UserError(f"{out} exists and is not a quantize run of {export_dir}: pass --overwrite to replace it, or "
                        "--root DIR to deploy elsewhere")
    quantize_run(export_dir, replace(wanted, output=out, overwrite=opt.overwrite), progress=progress)
    made = read_run(out)
    assert made is not None, "quantize_run writes a manifest"
    return made


def _profile_backends(backends: tuple[str, ...]) -> tuple[str, ...]:
    """The backends the models are profiled on: each INT8 run's deploy backend, less the accelerator ones (a
    TensorRT engine needs a GPU this host may lack; its Q/DQ model is still profiled on the others), unless
    nothing else was asked for."""
    runtimes = tuple(QUANTIZERS[b].backend for b in backends)
    return tuple(r for r in runtimes if not BACKENDS[r].accelerator) or runtimes


def deploy(opt: DeployOptions, progress: Progress | None = None) -> DeployResult:
    """Export -> quantize for each backend -> profile FP32 and INT8 side by side -> summary.md."""
    progress = progress or Quiet()
    if not opt.backends:
        *most, last = QUANTIZERS
        raise UserError(f"--backend names no backend: use {', '.join(most)} and/or {last}")
    blocker = blocking_file(opt.root)
    if blocker is not None:
        raise UserError(f"--root {opt.root}: {blocker} is a file, not a folder: pass a folder for the runs")
    opt.profile.check()
    for backend in opt.backends:  # every refusal before the export is spent (data folders too)
        replace(opt.quantize, backend=backend).check()
    profile_backends = _profile_backends(opt.backends)
    require_backends(profile_backends)
    reused: list[str] = []
    with progress.step("Stage 1/3: export"):
        export_dir = _export(opt, progress, reused)
    for line in reused:
        progress.note(line)
    int8_runs: list[RunInfo] = []
    for backend in opt.backends:
        shown = len(reused)
        with progress.step(f"Stage 2/3: INT8 for {backend}"):
            int8_runs.append(_int8_run(export_dir, backend, opt, progress, reused))
        for line in reused[shown:]:
            progress.note(line)
    int8_dirs = {r.backend: r.path for r in int8_runs}
    profile_opt = replace(opt.profile, backends=profile_backends, target_cpu=opt.quantize.target_cpu)
    with progress.step("Stage 3/3: profile FP32 and INT8 side by side"):
        result = profile_models([str(export_dir), *(str(d) for d in int8_dirs.values())], profile_opt,
                                default_output_dir(opt.root), progress=progress)
    for backend in opt.backends:
        runtime = QUANTIZERS[backend].backend
        if runtime not in profile_backends:
            why = BACKENDS[runtime].unavailable_reason() or f"{runtime} was left out so the others are compared alike"
            result.warnings.append(f"{backend}: its INT8 model {int8_dirs[backend]} is not timed on {runtime} here "
                                   f"({why.rstrip('.')}); its row shows fidelity only, and `vmlp-deploy profile "
                                   f"{int8_dirs[backend]} --backend {runtime}` times it where {runtime} runs")
    rows = speedup_rows(result.records, export_dir.name, int8_runs)
    files = {"export": str(export_dir), **{f"INT8 {b}": str(d) for b, d in int8_dirs.items()},
             "profile": str(result.out_dir)}
    summary = result.out_dir / "summary.md"
    write_text(summary, markdown(rows, f"Deployment summary: {int8_runs[0].model}", files, [*reused, *result.warnings]))
    return DeployResult(export_dir, int8_dirs, result, rows, reused, summary)
