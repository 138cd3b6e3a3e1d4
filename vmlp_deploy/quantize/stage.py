"""Stage 4: INT8 post-training quantization of an exported model for one backend, with fidelity always measured.

``quantize_run`` reads a run directory (or a bare ONNX), loads calibration data with the model's own
preprocessing, quantizes for ``cpu`` (ONNX Runtime QDQ), ``openvino`` (NNCF, OpenVINO IR) or ``tensorrt``
(explicit Q/DQ ONNX), optionally keeps the most sensitive layers in float, measures the INT8 model against
FP32 on held-out samples (and real accuracy on ``--eval-data``), and writes a new run directory atomically:
the model, ``manifest.json`` (the source manifest plus ``stages.quantize``) and ``quantize.md``.
"""

from __future__ import annotations

import copy
import fnmatch
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import cpu, isa_cap
from ..backends import BACKENDS, Loader, RunOptions, Session, release
from ..backends.isolated import ChildMemory, child_memory
from ..errors import FidelityGateError, UserError, first_line
from ..onnx_io import cpu_session
from ..preprocess import Recipe
from ..progress import Progress, Quiet, TimedSteps
from ..records import Artifacts, QuantizeStage, RunManifest, environment
from ..rundir import check_output_dir, peak_rss_mb, sha256_file, staged_dir, write_manifest
from ._bar import bar
from .base import Quantizer, require_modules
from .data import DataStats, ImageFolder, SampleSet, load_directory, load_embedded, whole_batches
from .fidelity import WORST_LAYERS, FidelityReport, LogitsReport, compare_logits, layer_sqnr, run_all
from .layout import WARMUP, LayoutChoice, QuickQuantize, choose_layout, interleaved_medians
from .options import QuantizeOptions
from .registry import QUANTIZERS, quantizer_modules
from .report import ms, write_report
from .saturation import DEFAULT_SAMPLES as SATURATION_SAMPLES
from .saturation import predict as predict_saturation
from .saturation import summarize as summarize_saturation
from .scheme import IntegerScheme, SchemeChoice, choose_scheme
from .sensitivity import SearchResult, rank_layers, search
from .source import SourceModel, open_source, resolve_recipe

#: Calibration samples on which ``--keep-float auto`` measures agreement (held-out samples stay unseen).
SEARCH_SAMPLES = 100
#: Samples for the per-layer probes (every quantized layer's output is kept for one batch at a time).
LAYER_SAMPLES = 16
#: Samples for the sensitivity ranking (two float passes).
RANK_SAMPLES = 16
#: Interleaved rounds of FP32 and INT8 for the speed check (after warm-up): an indication; `profile` measures.
SPEED_ROUNDS = 15
#: INT8 at more than this share of FP32's latency is worth a warning: it buys a smaller model, not speed.
SLOW_INT8_RATIO = 0.9
#: INT8 at more than this share is slower than FP32 beyond the speed check's noise: keep FP32 for this CPU.
SLOWER_INT8_RATIO = 1.15
EMBEDDED_WARNING = ("no --calibration-data: calibrating on crops of the 8 embedded photographs; a few hundred "
                    "images drawn from your own data calibrate better (--calibration-data DIR)")


@dataclass(frozen=True)
class AccuracyReport:
    """Real top-1/top-5 accuracy on an ImageFolder, FP32 and INT8 on the same backend."""

    root: str
    images: int
    classes: int
    skipped: int
    top1_fp32: float
    top1_int8: float
    top5_fp32: float
    top5_int8: float
    #: Images smaller than the model's crop, left out (``--allow-upscale`` enlarges them instead).
    too_small: int = 0

    @property
    def delta_points(self) -> float:
        return 100.0 * (self.top1_int8 - self.top1_fp32)

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "images": self.images, "classes": self.classes, "skipped": self.skipped,
                "too_small": self.too_small,
                "top1_fp32": self.top1_fp32, "top1_int8": self.top1_int8, "top5_fp32": self.top5_fp32,
                "top5_int8": self.top5_int8, "top1_delta_points": round(self.delta_points, 3)}


@dataclass(frozen=True)
class GateResult:
    """The fidelity gate's verdict: what was checked, against which bound, and whether it held."""

    checked: str
    value: float | None
    bound: float | None
    passed: bool
    enforced: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fidelity_gate(opt: QuantizeOptions, logits: Any, accuracy: AccuracyReport | None, random_weights: bool,
                  kept: int) -> GateResult:
    """Top-1 drop on ``--eval-data`` (at most ``--max-drop`` points), else top-1 agreement with FP32 for trained
    weights (at least ``--gate-agreement``); random weights have near-tied logits, so agreement says nothing."""
    enforced = opt.gate
    tried = f" with {kept} layer(s) kept in float by --keep-float auto" if opt.keep_float_auto else ""
    hint = ("" if opt.keep_float_auto else "try --keep-float auto, ") + \
        "calibrate on more of your own images (--calibration-data), or pass --no-gate to write it anyway"
    if accuracy is not None:
        drop = -accuracy.delta_points
        ok = drop <= opt.max_drop
        note = (f"INT8 top-1 {accuracy.top1_int8:.2%} vs FP32 {accuracy.top1_fp32:.2%} on {accuracy.images} "
                f"--eval-data images: a drop of {drop:.2f} points{tried}, "
                + ("within" if ok else "above") + f" --max-drop {opt.max_drop:g}")
        return GateResult("eval top-1 drop (points)", round(drop, 3), opt.max_drop, ok, enforced,
                          note if ok else f"{note}: {hint}")
    if random_weights:
        return GateResult("none", None, None, True, enforced,
                          "random weights: logits are near-tied, so top-1 agreement is not gated; pass --eval-data "
                          "(an ImageFolder) with a trained checkpoint for a real accuracy gate")
    agreement = logits.top1_agreement
    ok = agreement >= opt.gate_agreement
    note = (f"top-1 agreement with FP32 {agreement:.1%} on {logits.samples} held-out samples{tried}, "
            + ("at or above" if ok else "below") + f" --gate-agreement {opt.gate_agreement:.0%}")
    return GateResult("held-out top-1 agreement", agreement, opt.gate_agreement, ok, enforced,
                      note if ok else f"{note}: {hint}")


@dataclass(frozen=True)
class SpeedCheck:
    """Median FP32 (the source graph) and INT8 latency on this host's own kernels, measured side by side."""

    fp32_ms: float
    int8_ms: float
    batch: int
    rounds: int
    runtime: str

    @property
    def ratio(self) -> float:
        return self.int8_ms / self.fp32_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3),
                "method": f"{self.rounds} interleaved rounds of one inference each after {WARMUP} warm-up runs, medians, "
                          "float parts pinned to f32, ONNX Runtime spinning off; an indication, not a benchmark "
                          "(`vmlp-deploy profile` measures at length)"}


@dataclass
class QuantizeResult:
    """Where the quantized model went, how it was made and how close it stays to FP32."""

    out_dir: Path
    model_path: Path
    backend: str
    source: Path
    record: RunManifest
    settings: dict[str, Any]
    calibration: DataStats
    fidelity: FidelityReport
    accuracy: AccuracyReport | None
    keep_float: list[str]
    sensitivity: SearchResult | None
    graph_check: dict[str, Any] | None
    timings: dict[str, float]
    peak_rss_mb: float
    warnings: list[str] = field(default_factory=list)
    target: cpu.CpuTarget | None = None
    scheme: SchemeChoice | None = None
    gate: GateResult | None = None
    #: The largest peak of a child process (a capped session of ``isa_cap``, NNCF's quantize), besides this one's.
    child_peak_rss_mb: float | None = None
    #: INT8 vs FP32 latency on this host, where its kernels are the target's (None elsewhere).
    speed: SpeedCheck | None = None

    @property
    def memory(self) -> str:
        """``1733 MB``, or ``1733 MB + 412 MB (largest child)`` when a child process held a model too (a capped
        session, NNCF's quantize)."""
        extra = f" + {self.child_peak_rss_mb:.0f} MB (largest child)" if self.child_peak_rss_mb else ""
        return f"{self.peak_rss_mb:.0f} MB{extra}"

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as written to ``manifest.json``."""
        return self.record.to_json()


def default_output(path: Path, backend: str, target_cpu: str = "host") -> Path:
    """``<run_dir>-int8-<backend>`` beside the source run directory (or ONNX file), ``-<target>`` added for a
    named ``--target-cpu``, so the model for another CPU does not take (or meet) the host's run directory."""
    base = path.with_suffix("") if path.is_file() else path
    return base.with_name(f"{base.name}-int8-{backend}" + ("" if target_cpu == "host" else f"-{target_cpu}"))


def _quick_quantizer(kind: type[Quantizer], opt: QuantizeOptions, scheme: IntegerScheme,
                     architecture: Path) -> QuickQuantize:
    """Quantize a layout candidate on a few samples, nothing kept in float: only its speed is wanted."""

    def run(candidate: SourceModel, samples: np.ndarray, folder: Path) -> Path:
        quantizer = kind.create(candidate, replace(opt, keep_float=()), scheme, folder, architecture)
        quantizer.prepare(samples, Quiet())
        return quantizer.quantize([], folder)

    return run


def resolve_keep_float(patterns: tuple[str, ...], float_model: Path) -> list[str]:
    """Node names matching each pattern (a node name, a glob on names, or an op type); each must match."""
    nodes = onnx.load(str(float_model), load_external_data=False).graph.node
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n.name for n in nodes if n.op_type == pattern or fnmatch.fnmatchcase(n.name, pattern)]
        if not hits:
            examples = ", ".join(n.name for n in nodes[:3])
            raise UserError(f"--keep-float {pattern!r} matches no node name or op type in the model "
                            f"(names look like: {examples}; see the worst layers in quantize.md)")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def _load(quantizer: Quantizer, path: Path, threads: int | None) -> Session:
    """FP32 and INT8 run on the quantizer's check runtime, float parts pinned to f32 (OpenVINO would pick bf16
    on its own)."""
    return BACKENDS[quantizer.check_runtime].load(path, RunOptions(threads=threads, precision="f32"))


def _load_data(source: SourceModel, options: QuantizeOptions, recipe: Any, progress: Progress) -> SampleSet:
    if options.calibration_data is None:
        return load_embedded(recipe, options.num_samples, options.holdout, options.seed, progress)
    return load_directory(options.calibration_data, recipe, source.sample_shape, options.num_samples,
                          options.holdout, options.seed, options.allow_upscale, progress)


def _check_float_model_runs(source: SourceModel, samples: np.ndarray) -> None:
    """The samples fit the model and ONNX Runtime runs it on one of them, before any work: a model from
    elsewhere may want other channels, or hold an operator or a shape no runtime accepts. An export run
    directory was validated by ONNX Runtime when written, so only its sample shape is checked."""
    expected = source.sample_shape
    if expected is not None and tuple(samples.shape[1:]) != expected:
        raise UserError(f"{source.onnx_path} takes {expected} per sample, the calibration data gives "
                        f"{tuple(samples.shape[1:])} (images are RGB): pass --calibration-data with .npy tensors "
                        "of the model's shape")
    if source.has_manifest:
        return
    try:
        session = cpu_session(source.onnx_path, threads=1)
        session.run(None, {source.input_name: np.repeat(samples[:1], source.batch or 1, axis=0)})
    except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument/... types, all ending here
        raise UserError(f"ONNX Runtime cannot run {source.onnx_path} ({first_line(e)}): fix or re-export the model "
                        "(`python -m onnx.checker` and onnxruntime name the node)") from None


def _accuracy(folder: ImageFolder, recipe: Any, fp32: Session, int8: Session, batch: int | None,
              allow_upscale: bool, progress: Progress) -> AccuracyReport:
    skipped: list[str] = []
    too_small: list[str] | None = None if allow_upscale else []
    hits = np.zeros(4)
    n = done = 0
    with bar(progress, f"Measuring accuracy on {folder.root} ({len(folder.files)} images)", len(folder.files)) as advance:
        for x, y in folder.batches(recipe, batch or 32, skipped, too_small):
            for j, session in enumerate((fp32, int8)):
                logits = run_all(session, x, batch)
                top5 = np.argsort(-logits, axis=1)[:, :5]
                hits[2 * j] += float((top5[:, 0] == y).sum())
                hits[2 * j + 1] += float((top5 == y[:, None]).any(1).sum())
            n += len(y)
            left_out = len(skipped) + len(too_small or [])
            advance(n + left_out - done)
            done = n + left_out
    if n == 0 and too_small:
        h, w = recipe.input_size
        raise UserError(f"all {len(too_small)} readable images in --eval-data {folder.root} are smaller than the "
                        f"model's {h}x{w} crop: use larger images, or pass --allow-upscale to enlarge them")
    if n == 0:
        raise UserError(f"none of the images in --eval-data {folder.root} could be read")
    top1_fp32, top5_fp32, top1_int8, top5_int8 = (float(h / n) for h in hits)
    return AccuracyReport(str(folder.root), n, len(folder.classes), len(skipped), top1_fp32, top1_int8,
                          top5_fp32, top5_int8, len(too_small or []))


def _auto_keep_float(quantizer: Quantizer, source: SourceModel, options: QuantizeOptions, data: SampleSet,
                     fp32: Session, int8_path: Path, work: Path, progress: Progress,
                     saturating: bool, load_int8: Loader) -> SearchResult:
    """Rank layers by local INT8 noise, then keep the smallest prefix in float that meets --min-agreement.

    Every agreement is measured on the deployed kernels. When the scheme saturates on the target
    (``saturating``: a forced u8s8 for a CPU without VNNI), each layer's predicted saturation noise joins its
    rank, so the layers the target's int16 pairs clip come first even on a host that does not clip them."""
    samples = data.calibration[:SEARCH_SAMPLES]
    reference = run_all(fp32, samples, source.batch).argmax(-1)

    def agreement(path: Path) -> float:
        int8 = load_int8(path, RunOptions(threads=options.threads, precision="f32"))
        try:
            return float((run_all(int8, samples, source.batch).argmax(-1) == reference).mean())
        finally:
            release(int8)

    baseline = agreement(int8_path)
    if baseline >= options.min_agreement:
        return SearchResult([], True, [(0, baseline)])
    with progress.step("Ranking layers by local INT8 noise"):
        consumers = quantizer.quantized_consumers(int8_path)
        rank_samples = whole_batches(data.calibration, source.batch, RANK_SAMPLES)
        ranked = rank_layers(quantizer.float_model, consumers, rank_samples, source.input_name,
                             source.batch, quantizer.symmetric_activations, work, options.threads)
        if saturating:
            clipped = {layer.node: 10 ** (-layer.sqnr_db / 10) for layer in predict_saturation(
                int8_path, rank_samples, source.input_name, source.batch, work)
                if layer.saturated_pairs}
            ranked = sorted((replace(r, noise_to_signal=r.noise_to_signal + clipped.get(r.node, 0.0)) for r in ranked),
                            key=lambda r: -r.noise_to_signal)
    order = [r.node for r in ranked]

    def measure(prefix: list[str]) -> float:
        scratch = work / f"keep-{len(prefix)}"
        scratch.mkdir(exist_ok=True)
        with progress.step(f"Trying {len(prefix)} layer(s) in float"):
            value = agreement(quantizer.quantize(prefix, scratch))
        progress.note(f"top-1 agreement {value:.1%} on {len(samples)} calibration samples")
        return value

    result = search(order, baseline, measure, options.min_agreement, options.sensitivity_rounds)
    result.ranking, result.layers = [r.to_dict() for r in ranked[:20]], len(ranked)
    return result


@dataclass
class _Run:
    """What the stage settles before it reads any data, the steps it times, and the warnings it gathers."""

    opt: QuantizeOptions
    #: Parts that draw their own bars or steps get ``progress``; ``steps`` shows and times the named steps.
    progress: Progress
    steps: TimedSteps
    source: SourceModel
    kind: type[Quantizer]
    target: cpu.CpuTarget
    choice: SchemeChoice
    host_ok: bool
    #: Where the host's own kernels are not the target's: the cap that makes its runtime run them (``isa_cap``).
    cap: isa_cap.IsaCap | None
    out: Path
    recipe: Recipe | None
    recipe_origin: str
    folder: ImageFolder | None
    warnings: list[str]

    def load_checked(self, path: Path, options: RunOptions) -> tuple[Session, isa_cap.CapCheck | None]:
        """A quantized model on the kernels the target runs: the check runtime here, or capped in a child (then
        with the kernels it ran)."""
        if self.cap is None:
            return BACKENDS[self.kind.check_runtime].load(path, options), None
        return isa_cap.load(self.cap, path, options)

    def load_int8(self, path: Path, options: RunOptions) -> Session:
        """``load_checked`` as a ``Loader``."""
        return self.load_checked(path, options)[0]

    @property
    def random_weights(self) -> bool:
        model = self.source.manifest.model
        return bool(model and model.random_weights)


def quantize_run(run_dir: Path, options: QuantizeOptions | None = None, *,
                 progress: Progress | None = None) -> QuantizeResult:
    """Quantize the model in ``run_dir`` to INT8 for ``options.backend``; see the module docstring."""
    opt = options or QuantizeOptions()
    opt.check()
    start = time.perf_counter()
    run = _settle(run_dir, opt, progress or Quiet())
    steps = run.steps
    with steps.timed("load_data"):
        data = _load_data(run.source, opt, run.recipe, run.progress)
    _check_float_model_runs(run.source, data.calibration)
    run.warnings += _data_warnings(opt, data.stats)
    with (tempfile.TemporaryDirectory(prefix="vmlp-quantize-") as work_name,
          staged_dir(run.out, opt.overwrite) as tmp, child_memory() as children):
        work = Path(work_name)
        with steps.timed("layout"):
            layout = _choose_layout(run, data.calibration, work)
        quantizer = run.kind.create(layout.source, opt, run.choice.scheme, work, run.source.onnx_path)
        with nullcontext() if quantizer.calibrates_in_quantize else steps.timed("calibrate"):
            quantizer.prepare(data.calibration, run.progress)
        keep = _named_keep_float(opt, quantizer.float_model)
        model_path = _quantize(run, quantizer, keep, tmp)
        fp32 = _load(quantizer, run.source.onnx_path, opt.threads)
        sensitivity = None
        if opt.keep_float_auto and run.random_weights:
            run.warnings.append("--keep-float auto kept nothing in float: random weights have near-tied logits, so "
                                "top-1 agreement cannot tell which layers matter; pass --checkpoint with trained "
                                "weights, or name layers with --keep-float NAMES")
        elif opt.keep_float_auto:
            with steps.timed("sensitivity"):
                sensitivity, model_path = _search_keep_float(run, quantizer, data, fp32, model_path, work, tmp)
            keep = sensitivity.kept
        graph_check = quantizer.post_check(model_path, run.progress)
        int8, fidelity, stand_in = _measure_fidelity(run, quantizer, fp32, model_path, data.held_out, work)
        if not fidelity.layers_measured:
            run.warnings.append("no layer is quantized (--keep-float keeps them all in float): this model is the FP32 "
                                "one with extra nodes, not INT8; keep fewer layers in float")
        saturation = None
        if quantizer.predicts_saturation and run.target.isa.u8s8_saturates:
            saturation = _target_saturation(run, model_path, data.held_out, work)
        _warn_low_agreement(run, fidelity.logits)
        accuracy = None
        if run.folder is not None and run.recipe is not None:
            with steps.timed("accuracy"):
                accuracy = _accuracy(run.folder, run.recipe, fp32, int8, run.source.batch, run.opt.allow_upscale,
                                     run.progress)
            if accuracy.skipped or accuracy.too_small:
                run.warnings.append(f"top-1 is measured on {accuracy.images} of the {len(run.folder.files)} --eval-data "
                                    f"images: {accuracy.skipped} unreadable and {accuracy.too_small} smaller than the "
                                    "model's crop left out (--allow-upscale enlarges the small ones)")
        release(int8)
        gate = _apply_gate(run, fidelity.logits, accuracy, len(keep))
        speed = _measure_speed(run, model_path, data.held_out)
        steps.seconds["total"] = round(time.perf_counter() - start, 3)
        result = _write(run, tmp, quantizer, layout, model_path, data.stats, keep, sensitivity, fidelity, accuracy,
                        graph_check, saturation, gate, steps.seconds, stand_in, children, speed)
    return result


def _settle(run_dir: Path, opt: QuantizeOptions, progress: Progress) -> _Run:
    """Open the source and settle the quantizer, target CPU, integer scheme, output and recipe: every refusal
    comes before any data is read."""
    source = open_source(run_dir)
    kind = QUANTIZERS[opt.backend]
    require_modules(kind)
    target = cpu.resolve_target(opt.target_cpu)
    choice = choose_scheme(opt.backend, target, opt.int8_scheme)
    progress.note(f"INT8 scheme {choice.scheme.name}: {choice.reason}")
    warnings = [w for w in (choice.warning, cpu.oversubscription_warning(opt.threads)) if w]
    host_ok = BACKENDS[kind.backend].accelerator or cpu.host_stands_for(target, integer_only=True)
    cap = None
    if not host_ok:
        cap, why_not = isa_cap.plan(kind.check_runtime, target)
        if cap is None:
            warnings.append(f"this host ({cpu.host().isa.summary()}) does not run the integer kernels of --target-cpu "
                            f"{target.name} ({target.isa.summary()}) and {why_not}: fidelity below is the host's; "
                            + _host_vs_target_saturation(choice.scheme, target, kind))
        else:
            progress.note(f"Measuring on {target.name}'s integer kernels: {cap.describe()}")
    out = opt.output or default_output(run_dir, opt.backend, opt.target_cpu)
    check_output_dir(out, opt.overwrite)
    recipe, recipe_origin = resolve_recipe(source, opt.recipe)
    folder = ImageFolder.open(opt.eval_data, source.num_classes) if opt.eval_data else None
    if folder is not None and recipe is None:
        raise UserError("--eval-data images need preprocessing, and the model carries no recipe: pass --mean R G B "
                        "--std R G B (and --resize, --interpolation) or --recipe FILE")
    return _Run(opt, progress, TimedSteps(progress), source, kind, target, choice, host_ok, cap, out, recipe,
                recipe_origin, folder, warnings)


def _host_vs_target_saturation(scheme: IntegerScheme, target: cpu.CpuTarget, kind: type[Quantizer]) -> str:
    """Which way the host's fidelity errs for the target: it misses the target's int16 saturation (predicted
    separately where the quantizer can), or it has saturation the target does not (then it understates the
    target's fidelity)."""
    if target.isa.u8s8_saturates:
        if kind.predicts_saturation:
            return "the target's saturation is predicted separately"
        if not scheme.saturates_on(target.isa):
            return f"{scheme.name} cannot saturate int16 on the target"
        return (f"the target's int16 saturation of {scheme.name} is not predicted for --backend {kind.backend}: "
                f"check the accuracy on a {target.name} machine")
    if scheme.saturates_on(cpu.host().isa):
        return (f"this host's int16 saturation of {scheme.name}, which the target does not have, can make it look worse "
                "than it will be there")
    return "neither saturates int16 with this scheme"


def _data_warnings(opt: QuantizeOptions, stats: DataStats) -> list[str]:
    """What the manifest should say about the calibration data: embedded photographs, skipped files."""
    warnings = [EMBEDDED_WARNING] if opt.calibration_data is None else []
    if stats.skipped_unreadable or stats.skipped_too_small:
        warnings.append(f"skipped {len(stats.skipped_unreadable)} unreadable and "
                        f"{len(stats.skipped_too_small)} too-small file(s) (listed in the manifest)")
    if stats.note and opt.calibration_data is not None:
        warnings.append(stats.note)
    return warnings


def _choose_layout(run: _Run, samples: np.ndarray, work: Path) -> LayoutChoice:
    opt = run.opt
    layout = choose_layout(run.source, run.kind, opt.layout, _layout_timing(run), samples,
                           _quick_quantizer(run.kind, opt, run.choice.scheme, run.source.onnx_path), work, run.progress,
                           opt.threads, named_nodes=bool(opt.keep_float) and not opt.keep_float_auto,
                           decision_key={"backend": run.kind.backend, "scheme": run.choice.scheme.name,
                                         "quantizer": environment(run.kind.required_modules),
                                         "threads": opt.threads, "model_type": opt.model_type,
                                         "smooth_quant_alpha": opt.smooth_quant_alpha,
                                         "qdq_layernorm": opt.qdq_layernorm})
    run.progress.note(f"Layout: {layout.layout} ({layout.how}: {layout.reason})")
    return layout


def _layout_timing(run: _Run) -> tuple[Loader, str] | None:
    """How layout candidates are timed on the target's kernels, and where: None where this host cannot."""
    if run.host_ok:
        return BACKENDS[run.kind.check_runtime].load, "on this host"
    if run.cap is not None:
        return run.load_int8, f"on this host with {run.cap.variable}={run.cap.level}"
    return None


def _named_keep_float(opt: QuantizeOptions, float_model: Path) -> list[str]:
    """The nodes ``--keep-float NAMES`` names (none for ``auto``: the search decides later)."""
    if opt.keep_float_auto or not opt.keep_float:
        return []
    return resolve_keep_float(opt.keep_float, float_model)


def _quantize(run: _Run, quantizer: Quantizer, keep: list[str], out_dir: Path) -> Path:
    with run.steps.step(f"Quantizing for {run.opt.backend}" + (f" ({len(keep)} node(s) kept in float)" if keep else ""),
                        "quantize"):
        return quantizer.quantize(keep, out_dir)


def _search_keep_float(run: _Run, quantizer: Quantizer, data: SampleSet, fp32: Session, model_path: Path,
                       work: Path, out_dir: Path) -> tuple[SearchResult, Path]:
    """``--keep-float auto``: find the layers to keep in float, then quantize again with them kept."""
    opt = run.opt
    saturating = quantizer.predicts_saturation and run.choice.scheme.saturates_on(run.target.isa)
    sensitivity = _auto_keep_float(quantizer, run.source, opt, data, fp32, model_path, work, run.progress,
                                   saturating, run.load_int8)
    keep = sensitivity.kept
    if keep:
        with run.progress.step(f"Quantizing for {opt.backend} with {len(keep)} layer(s) kept in float"):
            model_path = quantizer.quantize(keep, out_dir)
    if not sensitivity.met:
        run.warnings.append(f"--keep-float auto did not reach {opt.min_agreement:.1%} top-1 agreement within "
                            f"{opt.sensitivity_rounds} rounds; kept the best setting seen")
    if 2 * len(keep) > sensitivity.layers:
        run.warnings.append(f"--keep-float auto kept {len(keep)} of {sensitivity.layers} quantized layers in float: "
                            "the model is mostly float; calibrate on more of your own images (--calibration-data) "
                            "or lower --min-agreement")
    return sensitivity, model_path


def _measure_fidelity(run: _Run, quantizer: Quantizer, fp32: Session, model_path: Path, held_out: np.ndarray,
                      work: Path) -> tuple[Session, FidelityReport, isa_cap.CapCheck | None]:
    """FP32 vs INT8 logits on the held-out samples, then the SQNR of every quantized layer on a few of them; and,
    where the INT8 model ran capped, the kernels it ran."""
    source, threads = run.source, run.opt.threads
    with run.steps.step(f"Measuring fidelity on {len(held_out)} held-out samples", "fidelity"):
        int8, stand_in = run.load_checked(model_path, RunOptions(threads=threads, precision="f32"))
        logits = compare_logits(run_all(fp32, held_out, source.batch), run_all(int8, held_out, source.batch))
        fidelity = FidelityReport(logits, quantizer.check_runtime, getattr(int8, "precision", "int8"))
        layers = quantizer.quantized_consumers(model_path)
        run_fp32, run_int8, pairs = quantizer.layer_probes(model_path, layers, work, threads, run.load_int8)
        probe = whole_batches(held_out, source.batch, LAYER_SAMPLES)
        measured = layer_sqnr(run_fp32, run_int8, pairs, probe, source.input_name, source.batch)
        fidelity.layers_measured = len(measured)
        fidelity.layer_samples = min(len(held_out), max(LAYER_SAMPLES, source.batch or 1))
        fidelity.worst_layers = measured[:WORST_LAYERS]
        fidelity.layer_method = quantizer.layer_method
    return int8, fidelity, stand_in


def _target_saturation(run: _Run, model_path: Path, samples: np.ndarray, work: Path) -> dict[str, Any]:
    """Per layer, how often u8 x s8 pairs leave int16 on the target's kernels (saturation.py), worst first."""
    target = run.target
    with run.steps.step(f"Predicting int16 pair saturation on {target.name} ({target.isa.summary()})",
                        "saturation_prediction"):
        layers = predict_saturation(model_path, samples, run.source.input_name, run.source.batch, work)
    worst = sorted((layer for layer in layers if layer.pairs), key=lambda layer: (-layer.rate, layer.sqnr_db))
    summary = summarize_saturation(layers).to_dict()
    if summary["saturated_pairs"]:
        run.warnings.append(f"predicted on {target.name}: {summary['rate']:.3%} of u8 x s8 pairs saturate in "
                            f"{summary['saturating_layers']} layer(s) (see saturation_prediction in the manifest); "
                            "--int8-scheme auto avoids it")
    return {"target": target.name, "samples": min(len(samples), SATURATION_SAMPLES),
            "method": "u8 activation codes of the held-out samples x int8 weights, pairs of adjacent K summed in "
                      "int16 as vpmaddubsw does (quantize/saturation.py)",
            "summary": summary, "worst_layers": [w.to_dict() for w in worst[:10]]}


def _measure_speed(run: _Run, model_path: Path, samples: np.ndarray) -> SpeedCheck | None:
    """INT8 against the FP32 source graph on this host, where the host runs the target's kernels itself (a capped
    stand-in keeps the host's float kernels, and TensorRT's engine is not what runs here): a CPU whose integer
    kernels are no faster than its float ones (AMD Zen/Zen+, measured in BENCHMARKS.md) gains no speed from INT8,
    and the user should learn it here rather than after deploying."""
    if not run.host_ok or BACKENDS[run.kind.backend].accelerator:
        return None
    runtime = run.kind.check_runtime
    batch = run.source.batch or 1
    with run.steps.step(f"Timing INT8 against FP32 on this host ({SPEED_ROUNDS} interleaved rounds)", "speed"):
        medians = interleaved_medians(BACKENDS[runtime].load, {"fp32": run.source.onnx_path, "int8": model_path},
                                      whole_batches(samples, batch), run.opt.threads, SPEED_ROUNDS)
    speed = SpeedCheck(medians["fp32"], medians["int8"], batch, SPEED_ROUNDS, runtime)
    int8_ms, fp32_ms = ms(speed.int8_ms), ms(speed.fp32_ms)
    run.progress.note(f"INT8 {int8_ms} ms vs FP32 {fp32_ms} ms on this host ({speed.ratio:.2f}x)")
    if speed.ratio > SLOWER_INT8_RATIO:
        run.warnings.append(f"INT8 runs at {speed.ratio:.2f}x the FP32 latency on this host ({cpu.host().label}, "
                            f"{int8_ms} vs {fp32_ms} ms): INT8 is slower here, so keep the FP32 model for this CPU "
                            f"unless its size matters; `vmlp-deploy profile {run.out} {run.source.onnx_path} "
                            f"--backend {runtime}` shows which layers' integer kernels lose")
    elif speed.ratio > SLOW_INT8_RATIO:
        run.warnings.append(f"INT8 runs at {speed.ratio:.2f}x the FP32 latency on this host ({cpu.host().label}, "
                            f"{int8_ms} vs {fp32_ms} ms): INT8 buys a smaller model here, not "
                            "speed (its integer kernels are no faster than its float ones, or the model is too small "
                            "to pay for quantizing activations); `vmlp-deploy profile` measures both at length")
    return speed


def _warn_low_agreement(run: _Run, logits: LogitsReport) -> None:
    """Random weights have near-tied logits, so their agreement says nothing and is not warned about."""
    opt = run.opt
    if logits.top1_agreement < opt.min_agreement and not run.random_weights:
        run.warnings.append(f"top-1 agreement {logits.top1_agreement:.1%} is below --min-agreement "
                            f"{opt.min_agreement:.1%}" + ("" if opt.keep_float_auto else ": try --keep-float auto"))


def _apply_gate(run: _Run, logits: LogitsReport, accuracy: AccuracyReport | None, kept: int) -> GateResult:
    """Fail the stage (nothing written) when the gate fails, unless ``--no-gate``, which writes it with a warning."""
    gate = fidelity_gate(run.opt, logits, accuracy, run.random_weights, kept)
    if not gate.passed:
        if run.opt.gate:
            raise FidelityGateError(f"fidelity gate failed: {gate.note}")
        run.warnings.append(f"--no-gate: written although the fidelity gate failed ({gate.note})")
    return gate


def _write(run: _Run, tmp: Path, quantizer: Quantizer, layout: LayoutChoice, model_path: Path, stats: DataStats,
           keep: list[str], sensitivity: SearchResult | None, fidelity: FidelityReport,
           accuracy: AccuracyReport | None, graph_check: dict[str, Any] | None, saturation: dict[str, Any] | None,
           gate: GateResult, timings: dict[str, float], stand_in: isa_cap.CapCheck | None,
           children: ChildMemory, speed: SpeedCheck | None) -> QuantizeResult:
    """``manifest.json`` and ``quantize.md`` beside the model in the staged output directory."""
    opt, source = run.opt, run.source
    peak, child_peak = peak_rss_mb(), children.peak_mb()
    settings = {**opt.to_dict(), **quantizer.settings()}
    manifest = _manifest(source, run.recipe, model_path)
    manifest.add_stage(QuantizeStage(
        backend=opt.backend,
        precision="int8",
        source={"onnx": str(source.onnx_path.resolve()), "sha256": sha256_file(source.onnx_path),
                "had_manifest": source.has_manifest},
        preprocessing_source=run.recipe_origin,
        settings=settings,
        calibration=stats.to_dict(),
        keep_float={
            "mode": "auto" if opt.keep_float_auto else ("names" if opt.keep_float else "none"),
            "nodes": keep,
            "search": sensitivity.to_dict() if sensitivity else None,
        },
        fidelity=fidelity.to_dict(),
        accuracy=accuracy.to_dict() if accuracy else None,
        tensorrt_graph_check=graph_check,
        timings_s=timings,
        peak_rss_mb=peak,
        child_peak_rss_mb=child_peak,
        warnings=run.warnings,
        **_target_record(run.target, run.choice, run.host_ok, gate),
        stand_in=stand_in.to_dict() if stand_in else None,
        layout=layout.to_dict(),
        saturation_prediction=saturation,
        speed=speed.to_dict() if speed else None,
    ))
    write_manifest(tmp, manifest)
    result = QuantizeResult(run.out, run.out / model_path.name, opt.backend, source.onnx_path, manifest, settings,
                            stats, fidelity, accuracy, keep, sensitivity, graph_check, timings, peak, run.warnings,
                            run.target, run.choice, gate, child_peak, speed)
    write_report(tmp / "quantize.md", result)
    return result


def _target_record(target: cpu.CpuTarget, choice: SchemeChoice, host_ok: bool, gate: GateResult) -> dict[str, Any]:
    """Which CPU the model is for, which it was measured on, and the integer scheme chosen between them
    (``host_ok``: the host's own integer kernels are the target's; a capped stand-in is recorded apart)."""
    return {"target_cpu": target.to_dict(), "host_cpu": cpu.host().to_dict(), "host_stands_for_target": host_ok,
            "integer_scheme": choice.to_dict(), "gate": gate.to_dict()}


def _manifest(source: SourceModel, recipe: Recipe | None, model_path: Path) -> RunManifest:
    """The source's manifest, made this run's: the command, the recipe used, the quantized model's files and the
    versions of every quantizer's libraries; the quantize stage is added by the caller."""
    manifest = copy.deepcopy(source.manifest)
    manifest.created = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.command = " ".join(sys.argv)
    if recipe is not None:
        manifest.preprocessing = recipe.to_dict()
    if model_path.suffix == ".xml":
        manifest.artifacts = Artifacts(openvino_xml=model_path.name, openvino_bin=model_path.with_suffix(".bin").name)
    else:
        manifest.artifacts = Artifacts(onnx=model_path.name, external_data=None)
    manifest.environment = environment(quantizer_modules())
    return manifest
