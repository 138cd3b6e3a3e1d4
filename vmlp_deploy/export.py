"""Stage 2: PyTorch -> ONNX, simplified, checked, and numerically validated as a hard gate.

The run directory receives ``model.onnx`` and ``manifest.json`` only when the ONNX model agrees with
PyTorch on random inputs and on the embedded photographs; otherwise nothing is left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from . import __version__
from .embedded_images import embedded_batch
from .errors import UserError, ValidationError, first_line
from .model import LoadedModel
from .onnx_io import cpu_session, op_histogram, save
from .passes import optimize_model
from .targets import DEFAULT_TARGET, TARGETS
from .progress import Progress, Quiet, TimedSteps
from .records import MANIFEST_FORMAT, Artifacts, ExportStage, ModelInfo, RunManifest, environment
from .rundir import WRITE_ERRORS, peak_rss_mb, sha256_file, staged_dir, write_manifest
from .validate import Tolerance, ValidationReport, compare

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
EXPORTERS = ("torchscript", "dynamo")
MIN_OPSET = {"torchscript": 17, "dynamo": 18}
MAX_OPSET = 23


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 18
    exporter: str = "torchscript"
    batch: int = 1
    dynamic_batch: bool = False
    simplify: bool = True
    rewrite: bool = True
    target: str = "cpu"
    tolerance: Tolerance = field(default_factory=Tolerance)
    n_random: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.exporter not in EXPORTERS:
            raise UserError(f"unknown exporter {self.exporter!r}: use one of {', '.join(EXPORTERS)}")
        low = MIN_OPSET[self.exporter]
        if not low <= self.opset <= MAX_OPSET:
            raise UserError(
                f"--opset {self.opset} is not supported with the {self.exporter} exporter: use {low}..{MAX_OPSET} "
                "(opset >= 17 keeps LayerNorm as one LayerNormalization node)"
            )
        if self.target not in TARGETS:
            raise UserError(f"unknown --target {self.target!r}: use one of {', '.join(TARGETS)}")
        if self.dynamic_batch and self.target != DEFAULT_TARGET:
            raise UserError(f"--target {self.target} lays out the rewritten graph, which needs static shapes, and "
                            "--dynamic-batch leaves the batch symbolic: drop one of them (--batch N fixes a batch)")
        if not self.rewrite and self.target != DEFAULT_TARGET:
            raise UserError(f"--target {self.target} lays out the rewritten graph, and --no-rewrite keeps the naive "
                            "one: drop one of them")
        if self.batch < 1:
            raise UserError(f"--batch must be at least 1, got {self.batch}")
        if self.tolerance.atol < 0 or self.tolerance.rtol < 0:
            raise UserError("--atol and --rtol must be non-negative")


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    record: RunManifest
    validation: ValidationReport
    nodes: dict[str, int]

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as written to ``manifest.json``."""
        return self.record.to_json()


def _torch_export(lm: LoadedModel, path: Path, opt: ExportOptions) -> list[str]:
    """Run the chosen PyTorch exporter; returns the warnings it raised (kept for the manifest, not printed)."""
    h, w = lm.input_size
    batch = 2 if opt.dynamic_batch else opt.batch  # a batch of 1 would be specialised away by torch.export
    dummy = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(opt.seed))
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if opt.dynamic_batch else None
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opt.opset)
    if opt.exporter == "dynamo":
        kwargs.update(dynamo=True, external_data=True, verbose=False)
        if opt.dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    else:
        kwargs.update(dynamo=False, dynamic_axes=dynamic, do_constant_folding=True)
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        torch.onnx.export(lm.module, (dummy,), str(path), **kwargs)
    return sorted({str(c.message).splitlines()[0][:200] for c in caught})


@contextlib.contextmanager
def _captured_native_output() -> Iterator[list[str]]:
    """Capture what native libraries (onnxsim's C++ core) print on fds 1/2, so the terminal stays readable."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """onnxsim with its own ORT check on; its native log lines are returned for the manifest."""
    import onnxsim

    with _captured_native_output() as log:
        simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise UserError("onnxsim could not verify its simplified graph: re-run with --no-simplify")
    return simplified, log


def _validation_inputs(lm: LoadedModel, opt: ExportOptions) -> tuple[np.ndarray, int, list[str]]:
    """Random normal inputs plus the embedded photographs, padded to a whole number of fixed batches."""
    images, names = embedded_batch(lm.recipe)
    n_random = opt.n_random
    if not opt.dynamic_batch:
        n_random += (-(n_random + len(images))) % opt.batch
    h, w = lm.input_size
    rng = np.random.default_rng(opt.seed)
    rand = rng.standard_normal((n_random, 3, h, w), dtype=np.float32)
    return np.concatenate([rand, images]).astype(np.float32), n_random, names


def _metadata(lm: LoadedModel, opt: ExportOptions, passes: list[str], report: ValidationReport) -> dict[str, str]:
    worst = max(report.outputs, key=lambda o: o.max_abs_diff)
    validation = {
        "passed": report.passed,
        "max_abs_diff": worst.max_abs_diff,
        "min_cosine": min(o.min_cosine for o in report.outputs),
        "top1_agreement": worst.top1_agreement,
        "samples": report.n_random + report.n_images,
        "real_images": report.n_images,
    }
    return {
        "vmlp.version": __version__,
        "vmlp.family": lm.family,
        "vmlp.variant": lm.name,
        "vmlp.tiny": str(lm.cfg.tiny).lower(),
        "vmlp.input_size": json.dumps(list(lm.input_size)),
        "vmlp.num_classes": str(lm.module.get_classifier().out_features),
        "vmlp.preprocessing": json.dumps(lm.recipe.to_dict()),
        "vmlp.opset": str(opt.opset),
        "vmlp.exporter": f"torch.onnx ({opt.exporter}) torch {torch.__version__}",
        "vmlp.passes": json.dumps(passes),
        "vmlp.target": opt.target,
        "vmlp.validation": json.dumps(validation),
        "vmlp.random_weights": str(lm.random_weights).lower(),
        "vmlp.checkpoint": lm.checkpoint.name if lm.checkpoint else "",
    }


@dataclass
class _Graph:
    """The model as it moves through the export steps, with what each step did to it (for the manifest)."""

    model: onnx.ModelProto
    nodes: dict[str, int]
    passes: list[str] = field(default_factory=list)
    simplifier_log: list[str] = field(default_factory=list)
    rewrite: dict[str, Any] | None = None

    def count(self, after: str) -> None:
        self.nodes[after] = len(self.model.graph.node)


def export_model(
    lm: LoadedModel,
    out_dir: Path,
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export, simplify, check and validate ``lm`` into ``out_dir`` (model.onnx + manifest.json)."""
    opt = options or ExportOptions()
    opt.check()
    steps = TimedSteps(progress or Quiet())
    with staged_dir(out_dir, overwrite) as tmp:
        with steps.step(f"Exporting {lm.name} with the {opt.exporter} exporter (opset {opt.opset})", "export"):
            graph, export_warnings = _export(lm, tmp, opt)
        if opt.simplify:
            with steps.step("Simplifying with onnxsim", "simplify"):
                _simplify_step(graph)
        if opt.rewrite:
            with steps.step("Rewriting token-mixing shifts into Pad + grouped Conv (verified)", "rewrite"):
                summary = _rewrite(graph, opt)
            if opt.dynamic_batch and not graph.rewrite.get("patterns"):
                summary = ["no shift rewritten: the rewrite needs static shapes and --dynamic-batch leaves the batch "
                           "symbolic (export with --batch N to rewrite)"]
            for line in summary:
                steps.note(line)
        with steps.step("Checking the graph (onnx checker, shape inference)", "check"):
            onnx_path = _check(graph, tmp)
        with steps.step("Validating ONNX Runtime against PyTorch (random inputs + embedded photographs)", "validate"):
            report = _validate(lm, onnx_path, opt)
        for line in _report_lines(report):
            steps.note(line)
        if not report.passed:
            raise ValidationError(f"validation failed, no model written: {report.failure_line()}")
        external = _save_final(lm, opt, graph, report, onnx_path)
        stage = ExportStage(
            exporter=opt.exporter, opset=opt.opset, batch="dynamic" if opt.dynamic_batch else opt.batch,
            seed=opt.seed, target=opt.target, input_name=INPUT_NAME, output_name=OUTPUT_NAME, passes=graph.passes,
            nodes=graph.nodes, rewrite=graph.rewrite, op_histogram=op_histogram(graph.model),
            validation=report.to_dict(), exporter_warnings=export_warnings, simplifier_log=graph.simplifier_log[:50],
            timings_s=steps.seconds, peak_rss_mb=peak_rss_mb())
        manifest = _manifest(lm, Artifacts(onnx=onnx_path.name, external_data=external), stage)
        write_manifest(tmp, manifest)
    return ExportResult(out_dir, out_dir / onnx_path.name, manifest, report, graph.nodes)


def _export(lm: LoadedModel, tmp: Path, opt: ExportOptions) -> tuple[_Graph, list[str]]:
    """Run the exporter into ``tmp`` and load its graph back; the exporter's files are removed again."""
    raw_path = tmp / "raw.onnx"
    try:
        export_warnings = _torch_export(lm, raw_path, opt)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            where = f" {e.filename}" if e.filename else ""
            raise UserError(f"torch.onnx export failed (OSError: {e.strerror}{where})") from None
        raise OSError(e.errno, e.strerror, e.filename or str(raw_path)) from None  # the disk's (staged_dir says so)
    except Exception as e:  # the exporters raise many unrelated types; name the failure in one line
        raise UserError(f"torch.onnx export failed ({type(e).__name__}: {first_line(e)}): try --exporter "
                        f"{'dynamo' if opt.exporter == 'torchscript' else 'torchscript'}") from None
    model = onnx.load(str(raw_path))
    raw_path.unlink()
    for extra in tmp.iterdir():
        extra.unlink()
    return _Graph(model, {"exported": len(model.graph.node)}), export_warnings


def _simplify_step(graph: _Graph) -> None:
    graph.model, graph.simplifier_log = _simplify(graph.model)
    graph.passes.append("onnxsim")
    graph.count("simplified")


def _rewrite(graph: _Graph, opt: ExportOptions) -> list[str]:
    """The verified graph passes for ``opt.target``; returns their summary for the terminal."""
    rewrite = optimize_model(graph.model, seed=opt.seed, target=opt.target)
    graph.model = rewrite.model
    graph.rewrite = rewrite.to_dict()
    if rewrite.patterns:
        graph.passes.append("shift-to-conv")
    if rewrite.channels_first_counts() is not None and rewrite.layout_changes:
        graph.passes.append("channels-first")
    graph.count("rewritten")
    return rewrite.summary_lines()


def _check(graph: _Graph, tmp: Path) -> Path:
    """Strict shape inference, then the full onnx checker on the saved file."""
    graph.model = onnx.shape_inference.infer_shapes(graph.model, strict_mode=True)
    onnx_path = tmp / "model.onnx"
    save(graph.model, onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    return onnx_path


def _validate(lm: LoadedModel, onnx_path: Path, opt: ExportOptions) -> ValidationReport:
    inputs, n_random, names = _validation_inputs(lm, opt)
    session = cpu_session(onnx_path)
    return compare(lm.module, session, inputs, None if opt.dynamic_batch else opt.batch, opt.tolerance, n_random,
                   names)


def _save_final(lm: LoadedModel, opt: ExportOptions, graph: _Graph, report: ValidationReport,
                onnx_path: Path) -> str | None:
    """Save the validated model with its metadata; returns the external data file's name, if any."""
    onnx.helper.set_model_props(graph.model, _metadata(lm, opt, graph.passes, report))
    graph.model.doc_string = f"{lm.name} exported by vmlp-deploy {__version__}"
    external = save(graph.model, onnx_path)
    graph.count("final")
    return external


def _manifest(lm: LoadedModel, artifacts: Artifacts, stage: ExportStage) -> RunManifest:
    checkpoint = None if lm.checkpoint is None else {
        "path": str(lm.checkpoint.resolve()), "sha256": sha256_file(lm.checkpoint)}
    model = ModelInfo(
        name=lm.name, family=lm.family, tiny=lm.cfg.tiny, input_size=list(lm.input_size),
        num_classes=lm.module.get_classifier().out_features, params=sum(p.numel() for p in lm.module.parameters()),
        random_weights=lm.random_weights, checkpoint=checkpoint)
    return RunManifest(format=MANIFEST_FORMAT, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       command=" ".join(sys.argv), model=model, preprocessing=lm.recipe.to_dict(),
                       artifacts=artifacts, stages={stage.NAME: stage}, environment=environment())


def _report_lines(report: ValidationReport) -> list[str]:
    """Optimum-style checklist, with the figures a user needs to trust the export."""
    lines = []
    for o in report.outputs:
        mark = "[green]✓[/green]" if o.passed else "[red]✗[/red]"
        top1 = "" if o.top1_agreement is None else f", top-1 agreement {o.top1_agreement:.0%}"
        lines.append(
            f"{mark} {o.name} {list(o.shape)}: max abs diff {o.max_abs_diff:.2e} (limit {o.limit:.1e}), "
            f"mean {o.mean_abs_diff:.1e}, min cosine {o.min_cosine:.7f}{top1}"
        )
    lines.append(f"  on {report.n_random} random inputs + {report.n_images} embedded photographs")
    return lines


def human_size(n: float) -> str:
    """Bytes in binary units, named as such (1 MiB = 1024 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


