"""Argument parsing for `vmlp-deploy profile`: parse, call :func:`profile_models`, print the result."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .. import arg_types
from ..cpu import TARGET_NAMES, targets_help
from ..errors import UserError
from ..records import ProfileRecord
from ..rundir import write_text
from ..runs import int8_runs_of, latest_float_run
from ..summary import markdown, print_rows, speedup_rows
from ..targets import DEFAULT_TARGET, TARGETS

T = TypeVar("T")


def _csv(kind: Callable[[str], T], what: str) -> Callable[[str], tuple[T, ...]]:
    def parse(text: str) -> tuple[T, ...]:
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}") from None

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dims like 3x224x224, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="honest latency/throughput of models on ONNX Runtime, OpenVINO and TensorRT, with per-layer times",
        description="Profile run directories, .onnx/.xml files or zoo model names on one or more backends; "
                    "configurations are measured interleaved so their ratios hold on a noisy machine.",
    )
    p.add_argument("inputs", nargs="*", metavar="MODEL",
                   help="run directory (export/quantize), .onnx, OpenVINO .xml, or zoo model name (default: the "
                        "most recent export under out/ and every INT8 run made from it for the chosen backends, "
                        "with the INT8 speedup)")
    p.add_argument("--backend", type=_csv(str, "backends"), default=("all",), metavar="LIST",
                   help="cpu (ONNX Runtime), openvino, tensorrt, or all that are installed (default all); "
                        "comma-separated")
    p.add_argument("--precision", type=_csv(str, "precisions"), default=("f32",), metavar="LIST",
                   help="f32, bf16, f16, int8 (Q/DQ models), comma-separated (default f32; OpenVINO's hint is "
                        "pinned and the precision it really used is read back)")
    p.add_argument("--batch", type=_csv(int, "integers"), default=None, metavar="LIST",
                   help="batch sizes, e.g. 1,8,32 (default: the model's own, 1 when dynamic)")
    p.add_argument("--mode", choices=["latency", "throughput", "both"], default="latency",
                   help="latency: one synchronous request; throughput: several requests/streams in flight")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per backend (default: every usable CPU)")
    p.add_argument("--streams", type=int, metavar="N",
                   help="streams/requests in throughput mode (default: one per thread; 2 on TensorRT)")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU (default), GPU, NPU when present")
    p.add_argument("--spinning", choices=["on", "off"], default="on", help="ONNX Runtime thread spinning")
    p.add_argument("--opt-level", choices=["disable", "basic", "extended", "all"], default="all",
                   help="ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--input-shape", type=_shape, metavar="CxHxW",
                   help="per-sample input dims for models with dynamic spatial dims, e.g. 3x224x224")
    warm = p.add_mutually_exclusive_group()
    warm.add_argument("--warmup", type=int, default=None, metavar="N", help="warm-up inferences (default 10)")
    warm.add_argument("--warmup-time", type=float, metavar="S", help="warm-up seconds instead of a count")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--iterations", "-n", type=int, metavar="N", help="timed inferences per configuration")
    count.add_argument("--duration", "-t", type=float, metavar="S",
                       help="timed seconds per configuration, at least 10 inferences (default 3)")
    p.add_argument("--chunk", type=float, default=0.5, metavar="S",
                   help="seconds per visit when interleaving configurations (default 0.5; a value longer than "
                        "--duration runs them one after another)")
    p.add_argument("--layer-runs", type=int, default=10, metavar="N",
                   help="inferences in the separate per-layer profiling session (0 skips it; default 10)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows in each per-layer table (default 10)")
    p.add_argument("--no-peak", action="store_true",
                   help="skip the probe kernels (no %% of best probe; the ISA ceiling costs nothing and stays)")
    p.add_argument("--peak-size", type=int, default=2048, metavar="N",
                   help="probe size: an NxNxN GEMM and a 1x1 conv with 3N/8 channels on 56x56 (default 2048)")
    p.add_argument("--target-cpu", default="host", metavar="CPU",
                   help=f"the CPU the models will be deployed on, recorded with the results; OpenVINO runs its "
                        f"kernels capped where it is a lesser x86 CPU than this host, and a warning says which "
                        f"timings cannot stand for it ({', '.join(TARGET_NAMES)}; default host). {targets_help()}")
    p.add_argument("--spread-warn", type=float, default=5.0, metavar="PCT",
                   help="warn when run-to-run spread (CoV) exceeds this percentage (default 5)")
    p.add_argument("--tiny", action="store_true", help="zoo names: export the tiny configuration")
    p.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                   help="zoo names: layout the export is written in (see `vmlp-deploy export --help`); "
                        "openvino suits --backend openvino")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--seed", type=arg_types.seed, default=0, metavar="N", help="seed of the random input (default 0)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="run directory (default out/profile-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(func=_cmd_profile)


class _Bar:
    """A transient progress bar over the interleaved measurement (fraction of the planned work)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None

    def __call__(self, fraction: float) -> None:
        if self.progress is None:
            self.progress = Progress(TextColumn("  measuring"), BarColumn(), TaskProgressColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("measure", total=1.0)
        self.progress.update(self.task, completed=fraction)
        if fraction >= 1.0:
            self.progress.stop()


def _cmd_profile(args: argparse.Namespace) -> int:
    from ..cli import console
    from ..progress import Steps
    from .measure import MeasurePlan
    from .report import require_matplotlib
    from .run import ProfileOptions, default_output_dir, profile_models

    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup must be zero or more, got {args.warmup}")
    plan = MeasurePlan(
        warmup=None if args.warmup_time is not None else (10 if args.warmup is None else args.warmup),
        warmup_s=args.warmup_time,
        iterations=args.iterations,
        duration_s=None if args.iterations is not None else (3.0 if args.duration is None else args.duration),
        chunk_s=args.chunk,
    )
    options = ProfileOptions(
        backends=args.backend, precisions=args.precision, batches=args.batch,
        modes=("latency", "throughput") if args.mode == "both" else (args.mode,),
        threads=args.threads, streams=args.streams, device=args.device, spinning=args.spinning == "on",
        opt_level=args.opt_level, input_shape=args.input_shape, plan=plan, layer_runs=args.layer_runs,
        top=args.top, peak=not args.no_peak, peak_size=args.peak_size, spread_threshold=args.spread_warn / 100.0,
        tiny=args.tiny, target=args.target, target_cpu=args.target_cpu, charts=not args.no_charts, seed=args.seed,
    )
    options.check()
    if options.charts:
        require_matplotlib()
    out = args.output or default_output_dir()
    inputs, float_run, int8_runs = list(args.inputs), None, []
    if not inputs:
        float_run = latest_float_run()
        int8_runs = [r for r in int8_runs_of(float_run)
                     if "all" in options.backends or r.backend in options.backends]
        inputs = [str(float_run.path), *(str(r.path) for r in int8_runs)]
        console.print(f"Profiling the most recent export {float_run.path}"
                      + (" and its INT8 runs " + ", ".join(str(r.path) for r in int8_runs) if int8_runs else
                         " (no INT8 run made from it yet: `vmlp-deploy quantize` makes them)"), soft_wrap=True)
    result = profile_models(inputs, options, out, overwrite=args.overwrite, progress=Steps(console),
                            on_measure=_Bar(console))
    print_result(console, result.records)
    if float_run is not None and int8_runs:
        rows = speedup_rows(result.records, float_run.path.name, int8_runs)
        print_rows(console, rows, f"{float_run.path.name}: FP32 vs INT8 (batch 1, median latency)")
        write_text(out / "summary.md", markdown(rows, f"FP32 vs INT8: {float_run.model}",
                                                    {"profile": str(out)}, []))
    for c in result.cpu["ceilings"]:
        console.print(Text(f"ceiling {c['precision']} ({result.cpu['ceiling_isa']}): {c['derivation']}", style="dim"),
                      soft_wrap=True)
    for line in result.skipped:
        console.print(Text("skipped: " + line, style="dim"), soft_wrap=True)
    for line in result.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)
    console.print(f"[bold]Profiled[/bold] {len(result.records)} configuration(s): "
                  + ", ".join(str(out / f) for f in result.files.values()), soft_wrap=True)
    return 0


def print_result(console: Console, records: list[ProfileRecord]) -> None:
    """The results table (wide: piped output is not squeezed to 80 columns), then the top layers."""
    table = Table(title="vmlp-deploy profile (latency in ms per inference)", box=box.SIMPLE_HEAD)
    cols = ["model", "backend", "precision", "batch", "mode", "median", "p90", "p99", "mean±std", "first",
            "img/s", "GOPS", "% probe", "% ceil", "CoV"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "backend", "precision", "mode") else "right",
                         no_wrap=True)
    for r in records:
        lat = r.latency_ms or {}
        g = r.achieved_gops
        table.add_row(
            r.model, r.backend, r.precision, str(r.batch), r.mode,
            *(f"{lat[k]:.2f}" if k in lat else "-" for k in ("median", "p90", "p99")),
            f"{lat['mean']:.2f}±{lat['std']:.2f}" if lat else "-",
            f"{r.first_inference_ms:.1f}",
            f"{r.throughput_images_per_s:.1f}",
            "-" if g is None else f"{g:.1f}",
            *("-" if p is None else f"{p:.1f}" for p in (r.probe_percent, r.ceiling_percent)),
            ("[yellow]" if r.spread["warning"] else "") + f"{r.spread['value']:.1%}",
        )
    wide = console if console.is_terminal else Console(file=console.file, width=240, highlight=False)
    wide.print(table)
    shown: set[str] = set()
    for r in records:
        layers, key = r.layers, f"{r.model}|{r.backend}|{r.precision}|{r.batch}"
        if not layers or key in shown:
            continue
        shown.add(key)
        cats = ", ".join(f"{c['name']} {c['percent']:.0f}%" for c in layers["by_category"][:4])
        ops = ", ".join(f"{o['name']} {o['percent']:.0f}%" for o in layers["by_op_type"][:4])
        prec = layers["kernel_precisions_percent"]
        kern = ("; kernels " + ", ".join(f"{k} {v:.0f}%" for k, v in list(prec.items())[:3])) if prec else ""
        console.print(f"  {r.model} {r.backend} {r.precision} b{r.batch}: {cats} | top ops: {ops}{kern}",
                      soft_wrap=True, markup=False)
