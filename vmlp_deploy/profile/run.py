"""Stage 5: `vmlp-deploy profile` - honest latency/throughput of models x backends x precisions x batches.

One entry point, :func:`profile_models`: resolve the inputs, plan the configurations (skipping, with a
reason, what a backend cannot do, and running once what the CPU would run the same way twice), measure
each backend's probe kernels, load every configuration, measure them interleaved, profile their layers in
separate sessions, set every rate against the best probe and the ISA's ceiling, and write the run
directory (profile.json, profile.md, charts, manifest.json) atomically.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .. import cpu, isa_cap
from ..backends import BACKENDS, RunOptions, Session, release
from ..backends.base import PRECISION_ALIASES, canonical_precision, precision_label
from ..errors import BackendUnavailableError, UserError, first_line
from ..progress import Progress, Quiet
from ..records import ProfileRecord, host_environment
from ..rundir import check_output_dir, staged_dir
from ..targets import DEFAULT_TARGET
from .ceiling import Clock, Rate, ceiling_dict, ceilings, host_clock
from .inputs import NAIVE_DYNAMIC_BATCH, ModelInput, resolve_inputs
from .layers import aggregate
from .measure import (FILL_DRAIN_FACTOR, MODES, MeasurePlan, Probe, Samples, latency_stats, measure, spread,
                      throughput)
from .peak import DEFAULT_SIZE, KINDS, Peak, measure_probe
from .report import write_outputs

T = TypeVar("T")

BACKEND_NAMES = tuple(BACKENDS)


@dataclass(frozen=True)
class ProfileOptions:
    """Everything `profile` was asked to do; each field is printed and stored with the results."""

    backends: tuple[str, ...] = ("all",)
    precisions: tuple[str, ...] = ("f32",)
    batches: tuple[int, ...] | None = None
    modes: tuple[str, ...] = ("latency",)
    threads: int | None = None
    streams: int | None = None
    device: str = "CPU"
    spinning: bool = True
    opt_level: str = "all"
    input_shape: tuple[int, ...] | None = None
    plan: MeasurePlan = field(default_factory=MeasurePlan)
    layer_runs: int = 10
    top: int = 10
    peak: bool = True
    peak_size: int = DEFAULT_SIZE
    spread_threshold: float = 0.05
    tiny: bool = False
    target: str = DEFAULT_TARGET
    target_cpu: str = "host"
    charts: bool = True
    seed: int = 0

    def check(self) -> None:
        self.plan.check()
        unknown = [b for b in self.backends if b != "all" and b not in BACKEND_NAMES]
        if unknown or not self.backends:
            raise UserError(f"unknown backend {', '.join(unknown) or '(none)'}: use {', '.join(BACKEND_NAMES)} or all")
        for p in self.precisions:
            canonical_precision(p)
        if self.batches is not None and (not self.batches or min(self.batches) < 1):
            raise UserError(f"--batch sizes must be positive integers, got {list(self.batches or [])}")
        if any(m not in MODES for m in self.modes) or not self.modes:
            raise UserError(f"unknown mode in {list(self.modes)}: use latency, throughput or both")
        for name, value in (("--threads", self.threads), ("--streams", self.streams)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.streams is not None and "throughput" not in self.modes:
            raise UserError("--streams sets the parallel requests of --mode throughput (latency runs one): add "
                            "--mode throughput or both, or drop --streams")
        named = [b for b in self.backends if b != "all"]
        changed = [f for f, set_ in (("spinning", not self.spinning), ("opt_level", self.opt_level != "all")) if set_]
        for flag in changed:
            if named and not any(flag in BACKENDS[b].own_options for b in named):
                readers = ", ".join(n for n, b in BACKENDS.items() if flag in b.own_options)
                raise UserError(f"--{flag.replace('_', '-')} is read by --backend {readers} only, which this run "
                                f"does not use: add it, or drop --{flag.replace('_', '-')}")
        if self.input_shape is not None and min(self.input_shape) < 1:
            raise UserError(f"--input-shape dimensions must be positive, got {list(self.input_shape)}")
        if self.layer_runs < 0:
            raise UserError(f"--layer-runs must be zero or more, got {self.layer_runs}")
        if self.top < 1:
            raise UserError(f"--top must be at least 1, got {self.top}")
        if self.peak_size < 16:
            raise UserError(f"--peak-size must be at least 16, got {self.peak_size}")
        if not 0 < self.spread_threshold < 10:
            raise UserError(f"--spread-warn must be a positive percentage, got {self.spread_threshold * 100:g}")
        cpu.resolve_target(self.target_cpu)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "plan"}
        d["plan"] = self.plan.to_dict()
        return d


def _check_zoo_only_flags(models: Sequence[ModelInput], options: ProfileOptions) -> None:
    """--tiny and --target shape the export of a zoo name; on files and run directories they would do nothing."""
    flags = [f for f, set_ in (("--tiny", options.tiny), (f"--target {options.target}",
                                                        options.target != DEFAULT_TARGET)) if set_]
    if flags and not any(m.kind == "zoo" for m in models):
        raise UserError(f"{' and '.join(flags)} {'choose' if len(flags) > 1 else 'chooses'} how a zoo name is "
                        f"exported, and no input here is a zoo name: "
                        f"drop {'them' if len(flags) > 1 else 'it'}, or export the model that way first "
                        f"(`vmlp-deploy export --model NAME {' '.join(flags)}`) and profile that run directory")


@dataclass
class Config:
    """One planned measurement: a model on a backend at a precision, batch size and mode."""

    model: ModelInput
    backend: str
    precision: str
    batch: int
    mode: str
    shape: tuple[int, ...]
    options: RunOptions
    #: Runs the target CPU's kernels on this host (``isa_cap``), where the host's own are not the target's.
    cap: isa_cap.IsaCap | None = None

    @property
    def label(self) -> str:
        return precision_label(self.precision, self.model.quantized)

    @property
    def key(self) -> str:
        return f"{self.model.label} | {self.backend} | {self.label} | b{self.batch} | {self.mode}"


@dataclass
class ProfileResult:
    out_dir: Path
    records: list[ProfileRecord]
    peaks: list[dict[str, Any]]
    cpu: dict[str, Any]
    environment: dict[str, Any]
    skipped: list[str]
    warnings: list[str]
    files: dict[str, str]


def feed_shape(model: ModelInput, batch: int, sample_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input shape to feed: batch first, then ``--input-shape`` or the model's static dims."""
    declared = model.declared_shape
    if not declared:
        raise UserError(f"{model.label} declares no input rank: re-export it with a static input shape")
    first, rest = declared[0], list(declared[1:])
    if first == 0:
        raise UserError(f"{model.label} has a batch of 0 ({list(declared)}): re-export it with a batch of 1 or a "
                        "dynamic batch")
    if isinstance(first, int) and first > 0 and first != batch:
        raise UserError(f"{model.label} has a fixed batch of {first}, cannot run --batch {batch}: "
                        "re-export with --dynamic-batch (or profile a zoo name, exported with a dynamic batch)")
    if sample_shape is not None:
        if len(sample_shape) != len(rest):
            raise UserError(f"{model.label} takes {len(rest)} dims after the batch ({declared}), "
                            f"--input-shape gives {len(sample_shape)}")
        for d, s in zip(rest, sample_shape, strict=True):
            if isinstance(d, int) and d > 0 and d != s:
                raise UserError(f"{model.label} has static input dims {list(declared)}; --input-shape "
                                f"{'x'.join(map(str, sample_shape))} does not match them")
        return (batch, *sample_shape)
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise UserError(f"{model.label} has dynamic input dims {list(declared)}: pass --input-shape "
                        "CxHxW (e.g. 3x224x224) to say what to feed")
    return (batch, *(int(d) for d in rest))


def plan_configs(models: Sequence[ModelInput], opt: ProfileOptions) -> tuple[list[Config], list[str]]:
    """Every runnable combination, plus one reason per combination skipped or run as another precision.

    bf16 on a CPU without bf16 arithmetic runs f32 (OpenVINO falls back silently), so it is planned as the
    f32 run it is: one record, not two of the same kernels under different labels. Where the host does not stand
    for ``--target-cpu`` and a backend can be capped to the target's kernels, its configurations run capped,
    and the target's ISA decides about bf16."""
    explicit = "all" not in opt.backends
    names = list(dict.fromkeys(opt.backends if explicit else BACKEND_NAMES))
    skipped: list[str] = []
    usable = []
    for name in names:
        reason = BACKENDS[name].unavailable_reason()
        if reason is None:
            usable.append(name)
        elif explicit:
            raise BackendUnavailableError(reason)
        else:
            skipped.append(f"{name}: {reason}")
    if opt.device.upper() != "CPU" and all(BACKENDS[name].fixed_device for name in usable):
        pickers = " or ".join(n for n, b in BACKENDS.items() if b.fixed_device is None)
        raise UserError(f"--device {opt.device} selects the OpenVINO device: add --backend {pickers} or drop --device")
    precisions = list(dict.fromkeys(canonical_precision(p) or "f32" for p in opt.precisions))
    threads = opt.threads or cpu.host().cores
    caps = isa_cap.caps_for([n for n in usable if _device(n, opt.device).upper() == "CPU"],
                            cpu.resolve_target(opt.target_cpu))
    configs: list[Config] = []
    seen: set[str] = set()
    for model in models:
        batches = opt.batches or ((model.declared_shape[0],) if isinstance(model.declared_shape[0], int)
                                  and model.declared_shape[0] > 0 else (1,))
        shapes = {b: feed_shape(model, b, opt.input_shape) for b in batches}
        for name in usable:
            backend = BACKENDS[name]
            if model.path.suffix not in backend.suffixes:
                hint = " (OpenVINO IR runs on --backend openvino)" if model.path.suffix == ".xml" else ""
                skipped.append(f"{model.label} on {name}: {name} does not read {model.path.suffix} files{hint}")
                continue
            for precision in precisions:
                why = _unsupported(model, name, precision)
                if why:
                    skipped.append(f"{model.label} on {name} at {precision}: {why}")
                    continue
                isa, which = (cpu.TARGETS[caps[name].target].isa, "the target CPU") if name in caps else \
                    (cpu.host().isa, "this CPU")
                if precision == "bf16" and not isa.bf16 and _device(name, opt.device).upper() == "CPU":
                    precision = "f32"
                    skipped.append(f"{model.label} on {name}: bf16 requested: {which} has no bf16 "
                                   f"({isa.summary()}), runs f32; measured once as "
                                   f"{precision_label(precision, model.quantized)}")
                for batch in batches:
                    for mode in opt.modes:
                        streams = 1 if mode == "latency" else (opt.streams or backend.default_streams(threads))
                        options = RunOptions(
                            threads=threads, precision=precision, device=_device(name, opt.device),
                            spinning=opt.spinning, opt_level=opt.opt_level, streams=streams,
                            input_shape=shapes[batch])
                        config = Config(model, name, precision, batch, mode, shapes[batch], options, caps.get(name))
                        if config.key not in seen:
                            seen.add(config.key)
                            configs.append(config)
    if not configs:
        raise UserError("nothing to profile: " + "; ".join(skipped or ["no configuration was asked for"]))
    return configs, skipped


def _load(c: Config, options: RunOptions) -> tuple[Session, dict[str, Any] | None, float]:
    """A configuration's session, capped to the target's kernels where planned; what those kernels were; and the
    seconds the backend took to load it (for a capped one, inside its child: starting Python is not loading)."""
    if c.cap is None:
        start = time.perf_counter()
        session = BACKENDS[c.backend].load(c.model.path, options)
        return session, None, time.perf_counter() - start
    session, check = isa_cap.load(c.cap, c.model.path, options)
    return session, check.to_dict(), session.load_s


def _target_warning(configs: Sequence[Config], target: cpu.CpuTarget, host: cpu.HostCpu) -> str:
    """What stands for ``target`` in this run: capped backends run its integer kernels, the others the host's."""
    capped = {c.backend: c.cap for c in configs if c.cap is not None}
    own = sorted({c.backend for c in configs if c.cap is None and _on_cpu(c)})
    parts = [f"--target-cpu {target.name} ({target.isa.summary()}):"]
    for name, cap in capped.items():
        parts.append(f"{name} ran capped to its kernels ({cap.variable}={cap.level}; kernels outside oneDNN keep the "
                     "host's ISA, so float parts run faster than on the target);")
    if own:
        parts.append(f"{', '.join(own)} timings are this host's ({host.isa.summary()}) and cannot stand for the "
                     "target;")
    parts.append("the ceilings are computed for the host's ISA")
    return " ".join(parts)


def _unsupported(model: ModelInput, backend: str, precision: str) -> str | None:
    if precision == "int8" and not model.quantized:
        return "the model has no Q/DQ nodes (run vmlp-deploy quantize first)"
    if precision != "int8" and precision not in BACKENDS[backend].precisions:
        return f"{backend} runs {', '.join(BACKENDS[backend].precisions)} (and int8 from Q/DQ models)"
    return BACKENDS[backend].refuses(precision, model.quantized)


def _device(backend: str, device: str) -> str:
    """--device picks the device of a backend that lets it (OpenVINO); the others always run on their own."""
    return BACKENDS[backend].fixed_device or device


def _busy_machine(env: dict[str, Any]) -> str | None:
    """Record the load average after measuring; warn when other processes were competing for the CPUs
    (our own threads account for at most one run queue entry per usable CPU)."""
    if not hasattr(os, "getloadavg"):
        return None
    env["load_average_after"] = list(os.getloadavg())
    cpus = env.get("usable_cpus") or 1
    if env["load_average_after"][0] > cpus + 1:
        return (f"the 1-minute load average was {env['load_average_after'][0]:.1f} on {cpus} CPUs while measuring: "
                "other processes competed for the CPUs, so absolute times are inflated (ratios of interleaved "
                "runs hold better)")
    return None


def _peak_precision(config: Config) -> str:
    return "int8" if config.model.quantized else config.precision


def _peak_key(config: Config) -> tuple[str, str, str]:
    """Configurations that share probes: same backend, probe precision and device (threads are run-wide)."""
    return config.backend, _peak_precision(config), config.options.device


def _on_cpu(config: Config) -> bool:
    """Whether the configuration runs on this host's CPU, the only device the ISA ceiling describes."""
    return not BACKENDS[config.backend].accelerator and config.options.device.upper() == "CPU"


def _cores(config: Config) -> int:
    return min(config.options.threads or cpu.host().cores, cpu.host().cores)


def _norm(precision: str) -> str:
    return PRECISION_ALIASES.get(precision.lower(), precision)


def default_output_dir(root: Path = Path("out")) -> Path:
    """``out/profile-<timestamp>``; a second profile within the same second gets ``-2``, ``-3``..."""
    base = root / f"profile-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def profile_models(
    inputs: Sequence[str],
    options: ProfileOptions,
    out_dir: Path | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_measure: Callable[[float], None] | None = None,
) -> ProfileResult:
    """Profile every input on every requested backend/precision/batch/mode; write the run directory."""
    options.check()
    progress = progress or Quiet()
    out = out_dir or default_output_dir()
    check_output_dir(out, overwrite)
    if not inputs:
        raise UserError("nothing to profile: pass run directories, .onnx/.xml files or zoo model names")
    require_backends(options.backends)
    models = resolve_inputs(inputs, tiny=options.tiny, sample_shape=options.input_shape, batches=options.batches,
                            progress=progress, target=options.target)
    _check_zoo_only_flags(models, options)
    configs, skipped = plan_configs(models, options)
    env = host_environment()
    host, target = cpu.host(), cpu.resolve_target(options.target_cpu)
    stands = cpu.host_stands_for(target)
    warnings: list[str] = [] if stands else [_target_warning(configs, target, host)]
    if len(options.batches or ()) > 1 and any(m.kind == "zoo" for m in models):
        warnings.append(NAIVE_DYNAMIC_BATCH)
    peaks = _probe_peaks(configs, options, progress) if options.peak else {}
    feeds = _feeds(configs, options.seed)
    samples, described, load_s = _measure_interleaved(configs, feeds, options, progress, on_measure)
    busy = _busy_machine(env)
    breakdowns = _layer_breakdowns(configs, feeds, options, progress) if options.layer_runs > 0 else {}

    warnings += [w for w in (busy, cpu.oversubscription_warning(options.threads)) if w]
    records = [_record(c, s, info, loaded, breakdowns.get(_layer_key(c)), options)
               for c, s, info, loaded in zip(configs, samples, described, load_s, strict=True)]
    warnings += _against_probes(configs, records, peaks)
    run_ceilings, clock = _against_ceilings(configs, records, peaks, host)
    if clock.mhz is None and any(_on_cpu(c) for c in configs):
        warnings.append(f"no theoretical ceiling: {clock.source} (no % of ceiling)")
    warnings += [w for r in records for w in r.warnings]

    capped = {c.backend: {"env": c.cap.env, "target": c.cap.target} for c in configs if c.cap is not None}
    cpu_info = {"host_cpu": host.to_dict(), "target_cpu": target.to_dict(), "host_stands_for_target": stands,
                "capped_backends": capped or None,
                "ceiling_isa": f"host: {host.isa.summary()}", "clock": {"mhz": clock.mhz, "source": clock.source},
                "ceilings": run_ceilings}
    result = ProfileResult(out, records, [p.to_dict() for ps in peaks.values() for p in ps], cpu_info, env,
                           skipped, warnings, {})
    with progress.step(f"Writing {out}"), staged_dir(out, overwrite) as tmp:
        result.files = write_outputs(tmp, result, options, models, command=" ".join(sys.argv),
                                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return result


def require_backends(backends: tuple[str, ...]) -> None:
    """Every named backend can load (checked before any export or calibration is spent)."""
    for name in dict.fromkeys(b for b in backends if b != "all"):
        reason = BACKENDS[name].unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(reason)


def _probe_peaks(configs: Sequence[Config], options: ProfileOptions,
                 progress: Progress) -> dict[tuple[str, str, str], list[Peak]]:
    """The probe kernels' rates, once per backend, precision and thread count."""
    peaks: dict[tuple[str, str, str], list[Peak]] = {}
    for c in configs:
        pk = _peak_key(c)
        if pk in peaks:
            continue
        peaks[pk] = []
        for kind in KINDS:
            with progress.step(f"Probe: {kind} on {c.backend} ({pk[1]}, {c.options.threads} threads)"):
                load = isa_cap.loader(c.cap) if c.cap else None
                peaks[pk].append(measure_probe(kind, c.backend, pk[1], c.options, options.peak_size, load=load))
            progress.note(f"{peaks[pk][-1].gops:.1f} GOPS ({peaks[pk][-1].shape}, ran {peaks[pk][-1].precision_used})")
    return peaks


def _feeds(configs: Sequence[Config], seed: int) -> dict[tuple[int, ...], np.ndarray]:
    """One seeded random input per input shape, shared by every configuration of that shape."""
    rng = np.random.default_rng(seed)
    feeds: dict[tuple[int, ...], np.ndarray] = {}
    for c in configs:
        feeds.setdefault(c.shape, rng.standard_normal(c.shape, dtype=np.float32))
    return feeds


def _measure_interleaved(configs: Sequence[Config], feeds: dict[tuple[int, ...], np.ndarray], options: ProfileOptions,
                         progress: Progress, on_measure: Callable[[float], None] | None,
                         ) -> tuple[list[Samples], list[dict[str, Any]], list[float]]:
    """Load every configuration, then time them interleaved: (samples, session descriptions, load seconds)."""
    sessions, probes, load_s, stand_ins = [], [], [], []
    plan = options.plan
    what = f"{plan.iterations} iterations" if plan.iterations is not None else f"{plan.duration_s:g} s"
    try:
        with progress.step(f"Loading {len(configs)} configuration(s)"):
            for c in configs:
                x = feeds[c.shape]
                session, stand_in, seconds = _load(c, c.options)
                load_s.append(seconds)
                sessions.append(session)
                stand_ins.append(stand_in)
                if c.mode == "latency":
                    probes.append(Probe(c.key, c.batch, c.mode, timer=_refusal_is_bad_input(c, session.timer(x))))
                else:
                    probes.append(Probe(c.key, c.batch, c.mode,
                                        concurrent=_refusal_is_bad_input(c, session.concurrent(x)),
                                        requests=c.options.streams))
        with progress.step(f"Measuring {len(configs)} configuration(s) interleaved, {what} each"):
            samples = measure(probes, plan, on_measure)
        described = [{**s.describe(), **({"stand_in": stand_in} if stand_in else {})}
                     for s, stand_in in zip(sessions, stand_ins, strict=True)]
    finally:
        for session in sessions:
            release(session)
    return samples, described, load_s


def _refusal_is_bad_input(c: Config, run: Callable[..., T]) -> Callable[..., T]:
    """``run``, with a runtime's refusal to execute the model (a Conv whose weight disagrees with its input, an
    unknown operator) turned into one line naming the model: a user's model, not a bug here."""
    def guarded(*args: Any) -> T:
        try:
            return run(*args)
        except UserError:
            raise
        except Exception as e:  # each runtime raises its own types (ORT's Fail/InvalidArgument, RuntimeError)
            raise UserError(f"{c.backend} cannot run {c.model.path} ({first_line(e)}): fix or re-export the "
                            "model") from None

    return guarded


def _layer_key(c: Config) -> str:
    return f"{c.model.label}|{c.backend}|{c.precision}|{c.batch}"


def _layer_breakdowns(configs: Sequence[Config], feeds: dict[tuple[int, ...], np.ndarray], options: ProfileOptions,
                      progress: Progress) -> dict[str, dict[str, Any]]:
    """Per-layer times, once per model, backend, precision and batch, in a profiling session of its own."""
    breakdowns: dict[str, dict[str, Any]] = {}
    for c in configs:
        lk = _layer_key(c)
        if lk in breakdowns:
            continue
        with progress.step(f"Per-layer profile: {c.model.label} on {c.backend} ({c.label}, batch {c.batch})"):
            session, _, _ = _load(c, replace(c.options, profiling=True, streams=1))
            x = feeds[c.shape]
            try:
                for _ in range(2):
                    session.run(x)
                layers = session.layer_times(x, options.layer_runs)
            finally:
                release(session)
            breakdowns[lk] = aggregate(layers, options.layer_runs, options.top).to_dict()
    return breakdowns


def _against_probes(configs: Sequence[Config], records: list[ProfileRecord],
                    peaks: dict[tuple[str, str, str], list[Peak]]) -> list[str]:
    """Fill each record's ``probe_peak`` and ``probe_percent``: the best probe of its backend/precision, or a
    model that beat every probe (a probe is only a floor of what the kernels can do); returns warnings."""
    warnings = []
    for pk, probes in peaks.items():
        group = [(c, r) for c, r in zip(configs, records, strict=True) if _peak_key(c) == pk]
        best = max(probes, key=lambda p: p.gops)
        gops, source = best.gops, f"{best.kind} probe ({best.shape})"
        fastest = max(group, key=lambda cr: cr[1].achieved_gops or 0.0)
        if (fastest[1].achieved_gops or 0.0) > gops:
            gops, source = fastest[1].achieved_gops, f"{fastest[0].key} (faster than every probe)"
            warnings.append(f"{fastest[0].key}: {gops:.1f} GOPS beats every probe on {pk[0]} at {pk[1]} (best "
                            f"{best.kind}, {best.gops:.1f} GOPS): % of best probe is measured against this rate")
        summary = {"gops": gops, "source": source,
                   "probes": [{"kind": p.kind, "shape": p.shape, "gops": p.gops, "precision_used": p.precision_used}
                              for p in probes]}
        for _, r in group:
            r.probe_peak = summary
            if r.achieved_gops is not None:
                r.probe_percent = 100.0 * r.achieved_gops / gops
    return warnings


def _against_ceilings(configs: Sequence[Config], records: list[ProfileRecord],
                      peaks: dict[tuple[str, str, str], list[Peak]],
                      host: cpu.HostCpu) -> tuple[list[dict[str, Any]], Clock]:
    """Fill each CPU record's ``ceiling`` and ``ceiling_percent`` from the host ISA's ceiling at a clock that
    no probe or model of this run exceeds; returns the ceilings used and the OS's clock."""
    clock = host_clock(host)
    rates, wanted = [], set()
    for pk, probes in peaks.items():
        c = next(c for c in configs if _peak_key(c) == pk)
        if _on_cpu(c):
            rates += [Rate("int8" if p.precision == "int8" else p.precision_used, _cores(c), p.gops,
                           f"the {p.kind} probe on {p.backend}") for p in probes]
    for c, r in zip(configs, records, strict=True):
        if _on_cpu(c):
            wanted.add((r.ceiling_precision, _cores(c)))
            if r.achieved_gops:
                rates.append(Rate(r.ceiling_precision, _cores(c), r.achieved_gops, c.key))
    found = ceilings(host.isa, clock, wanted, rates)
    for c, r in zip(configs, records, strict=True):
        ceiling = found.get((r.ceiling_precision, _cores(c))) if _on_cpu(c) else None
        if ceiling is not None:
            r.ceiling = ceiling_dict(ceiling, host.isa)
            if r.achieved_gops is not None:
                r.ceiling_percent = 100.0 * r.achieved_gops / ceiling.gops
    return [ceiling_dict(found[k], host.isa) for k in sorted(wanted) if k in found], clock


def _record(c: Config, s: Samples, info: dict[str, Any], load_s: float, layers: dict[str, Any] | None,
            opt: ProfileOptions) -> ProfileRecord:
    """The record of one configuration; the peaks it is set against are filled in once every rate is known."""
    stats = latency_stats(s.latencies_s)
    ips = throughput(s, c.batch)
    macs = c.model.macs
    if c.mode == "latency" and stats is not None:
        achieved = 2.0 * macs * c.batch / (stats.median / 1e3) / 1e9 if macs else None
    else:
        achieved = 2.0 * macs * ips / 1e9 if macs else None
    inference_precision = _norm(str(info.get("precision", c.precision)))
    effective = BACKENDS[c.backend].effective_precision(inference_precision, c.model.quantized)
    value, metric = spread(s)
    warnings = []
    if value > opt.spread_threshold:
        warnings.append(f"{c.key}: run-to-run spread is high ({metric} {value:.1%} > {opt.spread_threshold:.1%}); "
                        "close other programs, pin the CPU frequency, or measure longer (--duration)")
    if c.mode == "throughput" and s.inferences < FILL_DRAIN_FACTOR * c.options.streams:
        warnings.append(f"{c.key}: {s.inferences} inferences with {c.options.streams} requests in flight time "
                        f"mostly the filling and draining of the requests, not their steady rate: pass --duration "
                        f"or --iterations {FILL_DRAIN_FACTOR * c.options.streams} or more for a throughput figure")
    if not c.model.quantized and inference_precision != c.precision:
        warnings.append(f"{c.key}: {c.backend} ran {inference_precision} although {c.precision} was requested")
    return ProfileRecord(
        model=c.model.label,
        model_spec=c.model.spec,
        model_path=str(c.model.path),
        model_name=c.model.model_name,
        backend=c.backend,
        device=info.get("device", c.options.device),
        precision=effective,
        precision_requested=c.precision,
        inference_precision=inference_precision,
        quantized=c.model.quantized,
        batch=c.batch,
        mode=c.mode,
        input_shape=list(c.shape),
        params=c.model.params,
        macs_per_image=macs,
        macs_source=c.model.macs_source,
        settings={**info, "requested": {k: v for k, v in c.options.to_dict().items() if k != "extra"}},
        load_s=load_s,
        first_inference_ms=s.first_s * 1e3,
        warmup={"inferences": s.warmup_inferences, "seconds": s.warmup_s},
        iterations=s.inferences,
        measured_s=s.measured_s,
        latency_ms=stats.to_dict() if stats else None,
        throughput_images_per_s=ips,
        achieved_gops=achieved,
        probe_peak=None,
        probe_percent=None,
        ceiling_precision=("int8" if c.model.quantized else inference_precision) if _on_cpu(c) else None,
        ceiling=None,
        ceiling_percent=None,
        spread={"value": value, "metric": metric, "threshold": opt.spread_threshold,
                "warning": value > opt.spread_threshold},
        layers=layers,
        warnings=warnings,
    )
