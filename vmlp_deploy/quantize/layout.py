"""Quantize the graph layout the backend runs fastest in INT8 on the target CPU (``--layout auto``).

The default export lays token maps out channels-last (``--target cpu``: ONNX Runtime's fastest float graph).
OpenVINO's integer kernels can prefer the channels-first export (``--target openvino``: 1x1 Convs instead of
MatMuls, no Transposes), and float speed does not tell: on an AVX2-only Zen 3, s2mlpv2_small ran 123 ms
(channels-last) vs 125 ms (channels-first) in f32, but 122 ms vs 75 ms once quantized (issue 9).

So the candidates are the source graph and, for a zoo model this stage can rebuild exactly (random weights
under the recorded seed, or the recorded checkpoint with the same sha256), its channels-first re-export. The
re-export must compute the same function as the source on the calibration samples, or it is dropped; it is
cached under ``$VMLP_DEPLOY_CACHE`` by the source model's sha256, so every backend and rerun shares one.

* host stands for the target (same integer path), or its runtime can be capped to the target's kernels
  (``isa_cap``: OpenVINO for a lesser x86 target): each candidate is quantized on a few calibration samples
  (ranges do not change speed) and its INT8 latency is timed on the backend, interleaved; the faster wins.
  The medians are kept under ``$VMLP_DEPLOY_CACHE/layout/decisions``, keyed by the source model, backend, scheme,
  threads, how they were timed, this host's CPU and the library versions: a rerun on the same export (another
  calibration set, ``--eval-data``, ``--keep-float``) reuses them and says so, instead of quantizing and timing
  both candidates again (69 s for s2mlpv2_small on a Zen/Zen+ EPYC). Deleting the file measures again. Only a
  clear decision is kept (``clear_winner``); a re-export that is the source's graph again (a ViT, AS-MLP) is not
  timed at all.
* otherwise the documented rule, the quantizer's ``layout_rule``: channels-first for ``openvino`` (the
  measurement above, and BENCHMARKS.md), the source graph for ``cpu`` (ONNX Runtime runs the channels-last graph
  fastest, BENCHMARKS.md); a runtime that lays out its own engine (TensorRT) gets the graph as given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..backends import Loader, RunOptions, release
from ..backends.base import cache_root
from ..backends.onnxruntime import OnnxRuntimeBackend
from ..errors import UserError
from ..progress import Progress
from ..records import host_environment
from ..rundir import MANIFEST, load_manifest, sha256_file, write_text
from ..targets import CHANNELS_FIRST, DEFAULT_TARGET, channels_first
from .base import Quantizer
from .data import whole_batches
from .options import AS_GIVEN, AUTO
from .report import ms
from .source import SourceModel

#: Calibration samples for the quick quantization that is only timed.
TIMING_SAMPLES = 8
#: Interleaved rounds of one inference per candidate (after WARMUP runs of each); the median decides.
TIMING_ROUNDS = 15
WARMUP = 3
#: The channels-first graph must be this much faster to be chosen over the source graph (timing noise).
MARGIN = 0.03
#: Largest difference between the source and the re-exported logits, relative to the logits' range.
SAME_FUNCTION_RTOL = 1e-4

QuickQuantize = Callable[[SourceModel, np.ndarray, Path], Path]


@dataclass
class LayoutChoice:
    """The layout quantized, the graph it is in, and how it was chosen."""

    layout: str
    source: SourceModel
    how: str
    reason: str
    candidates: dict[str, str] = field(default_factory=dict)
    int8_median_ms: dict[str, float] = field(default_factory=dict)
    #: The decision file the medians were read from (measured by an earlier run on this host), or None.
    reused_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "onnx": str(self.source.onnx_path), "how": self.how, "reason": self.reason,
                "candidates": self.candidates, "int8_median_ms": self.int8_median_ms, "reused_from": self.reused_from}


def _cannot_rebuild(source: SourceModel) -> str | None:
    """Why the source has no channels-first re-export (checked before any work), or None."""
    manifest = source.manifest
    model, export = manifest.model, manifest.export
    if not source.has_manifest or export is None or model is None or model.name is None:
        return "not an export run directory of a zoo model (nothing to re-export from)"
    if manifest.optimize is not None:
        return "the source went through `optimize`: its graph is not the export's"
    target = export.target if export.target is not None else (export.rewrite or {}).get("target", DEFAULT_TARGET)
    if channels_first(target):
        return f"the export is already laid out for --target {target}"
    if export.batch == "dynamic":
        return "dynamic-batch exports are not rewritten"
    checkpoint = model.checkpoint
    if checkpoint:
        path = Path(checkpoint["path"])
        if not path.is_file() or sha256_file(path) != checkpoint["sha256"]:
            return f"its checkpoint {path} is gone or changed since the export"
    elif not model.random_weights:
        return "its weights were not loaded from a checkpoint file, so they cannot be rebuilt"
    return None


def _reexport_dir(source_sha: str) -> Path:
    return cache_root() / "layout" / f"{source_sha[:24]}-{CHANNELS_FIRST}-v{__version__}"


def _rebuild_channels_first(source: SourceModel, source_sha: str) -> tuple[Path | None, str]:
    """The channels-first re-export of a zoo run directory (``_cannot_rebuild`` said it can be made), or None
    and why it failed.

    It runs as a child `vmlp-deploy export`, so the PyTorch model and the exporter's memory (3.1 GB for
    s2mlpv2_medium) are never held by the quantizing process alongside the calibration (measured: 3.76 GB peak
    in-process for `quantize --backend openvino` of s2mlpv2_medium)."""
    model, export = source.manifest.model, source.manifest.export
    assert model is not None and export is not None
    checkpoint = model.checkpoint
    out = _reexport_dir(source_sha)
    if (out / MANIFEST).is_file():
        return out / "model.onnx", f"channels-first re-export reused from the cache {out}"
    seed = str(int(export.seed or 0))
    cmd = [sys.executable, "-m", "vmlp_deploy", "export", "--model", str(model.name), "--seed", seed,
           "--input-size", *(str(int(v)) for v in model.input_size), "--opset", str(int(export.opset)),
           "--exporter", str(export.exporter), "--batch", str(int(export.batch)), "--target", CHANNELS_FIRST,
           "-o", str(out), "--overwrite", *(["--tiny"] if model.tiny else []),
           *(["--checkpoint", str(checkpoint["path"])] if checkpoint else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the channels-first re-export failed ({last})"
    return out / "model.onnx", f"re-exported with --target {CHANNELS_FIRST} into the cache {out}"


def _same_function(a: Path, b: Path, samples: np.ndarray, batch: int | None) -> bool:
    from .fidelity import run_all

    outs = [run_all(OnnxRuntimeBackend().load(p, RunOptions(threads=None)), samples, batch) for p in (a, b)]
    if outs[0].shape != outs[1].shape:
        return False
    scale = float(np.abs(outs[0]).max()) or 1.0
    return float(np.abs(outs[0] - outs[1]).max()) <= SAME_FUNCTION_RTOL * scale


def _same_graph(source: SourceModel, reexport: Path) -> bool:
    """Whether the channels-first passes left the graph as the source's (a ViT's token sequence has no map to
    carry channels-first): the same node count and op histogram, as both export manifests record them; timing
    two copies of one graph would only pick the noise."""
    ours = source.manifest.export
    theirs = load_manifest(reexport.parent).export
    return (ours is not None and theirs is not None and ours.op_histogram is not None
            and ours.op_histogram == theirs.op_histogram and ours.nodes == theirs.nodes)


def decision_file(source_sha: str, key: dict[str, Any]) -> Path:
    """Where the timed medians for ``key`` (see the module docstring) are kept."""
    host = host_environment()
    full = {**key, "cpu": [host["cpu_model"], host["cpu_flags"], host["usable_cpus"]],
            "libraries": host["libraries"], "rounds": TIMING_ROUNDS, "samples": TIMING_SAMPLES}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / "layout" / "decisions" / f"{source_sha[:24]}-{digest}.json"


def _read_decision(path: Path) -> tuple[dict[str, float], str] | None:
    """The medians and when they were measured, or None where there are none (or the file is not ours)."""
    try:
        doc = json.loads(path.read_text())
        medians = {str(k): float(v) for k, v in doc["int8_median_ms"].items()}
        measured_at = str(doc["measured_at"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if set(medians) != {AS_GIVEN, CHANNELS_FIRST} or min(medians.values()) <= 0:
        return None
    return medians, measured_at


def _write_decision(path: Path, medians: dict[str, float]) -> str | None:
    """Written whole or not at all (rename), so a concurrent run never reads half a file; a cache that cannot
    be written costs the next run its timing, not this run its result. Returns why it was not kept, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"int8_median_ms": medians,
                                     "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")
    except OSError as e:
        return f"the timings could not be kept in {path.parent} ({e.strerror or e}): the next run times again"
    return None


def interleaved_times(load: Loader, models: dict[str, Path], x: np.ndarray, threads: int | None,
                      rounds: int = TIMING_ROUNDS) -> dict[str, list[float]]:
    """Latencies (ms) per model, one inference each per round, rounds interleaved (ORT spinning off, so one
    session's spinning threads do not steal the next one's cores; float parts pinned to f32, which OpenVINO
    would otherwise trade for bf16). ``load`` is a backend's ``load`` or a capped loader (``isa_cap``)."""
    sessions = {name: load(path, RunOptions(threads=threads, precision="f32", spinning=False))
                for name, path in models.items()}
    try:
        timers = {name: session.timer(x) for name, session in sessions.items()}
        for timer in timers.values():
            for _ in range(WARMUP):
                timer()
        times: dict[str, list[float]] = {name: [] for name in timers}
        for _ in range(rounds):
            for name, timer in timers.items():
                times[name].append(timer() * 1e3)
    finally:
        for session in sessions.values():
            release(session)
    return times


def interleaved_medians(load: Loader, models: dict[str, Path], x: np.ndarray, threads: int | None,
                        rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Median latency (ms) per model of :func:`interleaved_times`."""
    return _medians(interleaved_times(load, models, x, threads, rounds))


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: round(float(np.median(t)), 3) for name, t in times.items()}


def clear_winner(times: dict[str, list[float]]) -> bool:
    """Whether the middle half of the per-round ratios (channels-first / source, one pair per interleaved round)
    lies on one side of the switching threshold: a decision worth keeping for later runs. Two copies of one graph
    can still show a median ratio past the threshold (0.948x measured); their rounds straddle it."""
    ratios = np.asarray(times[CHANNELS_FIRST]) / np.asarray(times[AS_GIVEN])
    low, high = np.percentile(ratios, [25, 75])
    return bool(high <= 1 - MARGIN or low > 1 - MARGIN)


def choose_layout(source: SourceModel, quantizer: type[Quantizer], requested: str,
                  timing: tuple[Loader, str] | None, samples: np.ndarray, quick_quantize: QuickQuantize, work: Path,
                  progress: Progress, threads: int | None = None, named_nodes: bool = False,
                  decision_key: dict[str, Any] | None = None) -> LayoutChoice:
    """The graph to quantize with ``quantizer``: see the module docstring. ``timing``: how to load a candidate
    so that it runs the target's kernels, and where that is (``on this host``), or None where nothing here can.
    ``named_nodes``: the user named nodes of the source graph (``--keep-float NAMES``), which a re-export would
    not have. ``decision_key``: what, besides the source, host and timing, the INT8 speed depends on (backend,
    scheme, threads), to reuse an earlier measurement; None always measures."""
    rule = quantizer.layout_rule
    if not rule.relayouts or requested == AS_GIVEN:
        why = "--layout as-given" if rule.relayouts else rule.reason
        return LayoutChoice(AS_GIVEN, source, "requested" if requested == AS_GIVEN else "rule", why)
    if named_nodes:
        if requested == CHANNELS_FIRST:
            raise UserError("--keep-float NAMES name nodes of the source graph, which --layout openvino replaces: "
                            "use --keep-float auto, or quantize a `vmlp-deploy export --target openvino` run")
        return LayoutChoice(AS_GIVEN, source, "rule", "--keep-float names nodes of the source graph")
    cannot_time = "this host cannot time the target's kernels"
    if requested == AUTO and timing is None and rule.layout == AS_GIVEN:
        return LayoutChoice(AS_GIVEN, source, "rule", f"{rule.reason}; {cannot_time}")
    path, note = None, _cannot_rebuild(source)
    source_sha = sha256_file(source.onnx_path) if note is None else ""
    if note is None:
        cached = (_reexport_dir(source_sha) / MANIFEST).is_file()
        with progress.step(("Checking the cached" if cached else "Re-exporting the") + " channels-first graph "
                           "(--target openvino), a layout candidate"):
            path, note = _rebuild_channels_first(source, source_sha)
            if path is not None and not _same_function(source.onnx_path, path, samples[:4], source.batch):
                path, note = None, "the re-export does not reproduce the source model's outputs"
    candidates = {AS_GIVEN: str(source.onnx_path), CHANNELS_FIRST: str(path) if path else f"unavailable: {note}"}
    if path is None:
        if requested == CHANNELS_FIRST:
            raise UserError(f"--layout openvino: cannot make the channels-first graph ({note}); re-export with "
                            "`vmlp-deploy export --target openvino` and quantize that run directory")
        return LayoutChoice(AS_GIVEN, source, "only candidate", note, candidates)
    channels_first_source = dataclasses.replace(source, onnx_path=path)
    if requested == CHANNELS_FIRST:
        return LayoutChoice(CHANNELS_FIRST, channels_first_source, "requested", "--layout openvino", candidates)
    if _same_graph(source, path):
        return LayoutChoice(AS_GIVEN, source, "rule", "the channels-first re-export is the same graph as the source "
                            "(no channels-last token map to carry channels-first)", candidates)
    if timing is None:
        return LayoutChoice(CHANNELS_FIRST, channels_first_source, "rule", f"{rule.reason}; {cannot_time}",
                            candidates)
    load, where = timing
    memo = decision_file(source_sha, {**decision_key, "where": where}) if decision_key is not None else None
    earlier = _read_decision(memo) if memo is not None else None
    if earlier is not None:
        medians, measured_at = earlier
        when = f" (measured {measured_at} by an earlier run; delete {memo} to measure again)"
    else:
        times = _time_candidates(quantizer, {AS_GIVEN: source, CHANNELS_FIRST: channels_first_source}, samples,
                                 quick_quantize, load, work, progress, threads)
        medians, when = _medians(times), ""
        if memo is not None and not clear_winner(times):
            unkept: str | None = ("the rounds disagree on which layout is faster (too close to call): the timings "
                                  "are not kept, the next run times again")
        else:
            unkept = _write_decision(memo, medians) if memo is not None else None
        if unkept:
            progress.note(unkept)
    progress.note("INT8 median latency by layout: " + ", ".join(f"{k} {ms(v)} ms" for k, v in medians.items())
                  + (" (from an earlier run on this host)" if earlier is not None else ""))
    ratio = medians[CHANNELS_FIRST] / medians[AS_GIVEN]
    reused = str(memo) if earlier is not None else None
    if ratio <= 1 - MARGIN:
        return LayoutChoice(CHANNELS_FIRST, channels_first_source, "measured", f"channels-first INT8 is {ratio:.3f}x "
                            f"the source graph's latency {where}{when}", candidates, medians, reused)
    return LayoutChoice(AS_GIVEN, source, "measured", f"channels-first INT8 is {ratio:.3f}x the source graph's "
                        f"latency {where} (switching needs <= {1 - MARGIN:.2f}x){when}", candidates, medians,
                        reused)


def _time_candidates(quantizer: type[Quantizer], sources: dict[str, SourceModel], samples: np.ndarray,
                     quick_quantize: QuickQuantize, load: Loader, work: Path, progress: Progress,
                     threads: int | None) -> dict[str, list[float]]:
    """Quantize each candidate on a few samples (ranges do not change speed) and time them interleaved."""
    with progress.step(f"Timing INT8 of both layouts on {quantizer.backend} ({TIMING_SAMPLES} calibration samples "
                       "each)"), tempfile.TemporaryDirectory(prefix="layout-", dir=work) as scratch:
        quantized = {}
        for name, src in sources.items():
            folder = Path(scratch) / name
            folder.mkdir()
            quantized[name] = quick_quantize(src, whole_batches(samples, src.batch, TIMING_SAMPLES), folder)
        x = whole_batches(samples, next(iter(sources.values())).batch)
        return interleaved_times(load, quantized, x, threads)
