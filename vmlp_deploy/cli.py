"""Command line: each verb parses its arguments, calls one pipeline stage, and prints the stage's result.

Bad input ends with one ``error: ...`` line and a non-zero exit code, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, arg_types
from .errors import UserError
from .rundir import WRITE_ERRORS
from .targets import TARGETS
from .models import UnknownModelError, get_variant

#: Piped or captured output (CI logs, `| tee`) gets 120 columns instead of rich's 80, so tables do not wrap.
_WIDTH = None if sys.stdout is not None and sys.stdout.isatty() else 120
console = Console(stderr=False, highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False,
                      width=None if sys.stderr is not None and sys.stderr.isatty() else 120)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="NAME", help="zoo variant, e.g. s2mlpv2_small (`vmlp-deploy models` lists them)")
    p.add_argument("--checkpoint", type=Path, metavar="PATH",
                   help=".pth/.pt (optionally wrapped in 'model'/'state_dict') or .safetensors; "
                        "timm and official key layouts are mapped; without --model the architecture is inferred")
    p.add_argument("--tiny", action="store_true", help="build the family's tiny configuration (fast smoke tests)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input height and width")
    p.add_argument("--seed", type=arg_types.seed, default=0,
                   help="seed for random weights and validation inputs (default 0)")


def _variant_name(name: str) -> str:
    """The zoo variant ``name`` means; a family name is resolved to its default variant, said in one line."""
    variant = get_variant(name).name
    if variant != name:
        console.print(f"{name} -> {variant} (the family's default variant; `vmlp-deploy models` lists all)")
    return variant


def _cmd_models(args: argparse.Namespace) -> int:
    from .zoo_table import zoo_rows

    rows = zoo_rows(args.family)
    if not rows:
        raise UserError(f"no family named {args.family!r}: run `vmlp-deploy models` to see them")
    if args.json:
        console.print_json(json.dumps(rows))
        return 0
    sources: list[str] = []
    table = Table(title="vmlp-deploy model zoo: measured at each variant's input size, paper figures as printed")
    for col in ["model", "input", "params M", "paper M", "Δ", "GMACs", "paper G", "top-1", "src"]:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        if r["source"] not in sources:
            sources.append(r["source"])
        table.add_row(
            r["name"] + ("†" if r["paper_note"] else "") + (f" ← {', '.join(r['family_default_for'])}"
                                                          if r["family_default_for"] else ""),
            f"{r['input_size'][0]}" + ("*" if r["fixed_input_size"] else ""),
            f"{r['params_m']:.2f}",
            f"{r['paper_params_m']:g}" + ("ᵉ" if r["paper_params_exclude_head"] else ""),
            f"{r['params_delta_pct']:+.1f}%",
            f"{r['macs_g']:.2f}",
            "-" if r["paper_macs_g"] is None else f"{r['paper_macs_g']:g}",
            "-" if r["paper_top1"] is None else f"{r['paper_top1']:g}",
            f"[{sources.index(r['source']) + 1}]",
        )
    console.print(table)
    console.print("* fixed input size; ᵉ the paper counts params without the classifier (Δ compares like with like); "
                  "← the family names that stand for this variant (`export --model s2mlpv2`)")
    for r in rows:
        if r["paper_note"]:
            console.print(f"† {r['name']}: {r['paper_note']}")
    for i, source in enumerate(sources, 1):
        console.print(f"[{i}] {source}", markup=False)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportOptions, export_model, human_size
    from .model import load_model
    from .progress import Steps
    from .rundir import check_output_dir
    from .validate import Tolerance

    if args.model is None and args.checkpoint is None:
        raise UserError("nothing to export: pass --model NAME (see `vmlp-deploy models`) or --checkpoint PATH")
    if args.dynamic_batch and args.batch != 1:
        raise UserError("--batch and --dynamic-batch exclude each other: pass one of them")
    if args.model is not None:
        args.model = _variant_name(args.model)
    out = args.output or Path("out") / ((args.model or args.checkpoint.stem) + ("-tiny" if args.tiny else ""))
    options = ExportOptions(
        opset=args.opset, exporter=args.exporter, batch=args.batch, dynamic_batch=args.dynamic_batch,
        simplify=not args.no_simplify, rewrite=not args.no_rewrite, target=args.target, tolerance=Tolerance(atol=args.atol, rtol=args.rtol), seed=args.seed,
    )
    options.check()
    check_output_dir(out, args.overwrite)
    steps = Steps(console)
    with steps.step("Building the model" + (f" from {args.checkpoint}" if args.checkpoint else "")):
        lm = load_model(args.model, checkpoint=args.checkpoint, tiny=args.tiny,
                        input_size=tuple(args.input_size) if args.input_size else None, seed=args.seed)
    weights = "random weights (no --checkpoint)" if lm.random_weights else f"weights from {lm.checkpoint}"
    steps.note(f"{lm.name}{' (tiny)' if lm.cfg.tiny else ''}, input {lm.input_size[0]}x{lm.input_size[1]}, {weights}")
    result = export_model(lm, out, options, overwrite=args.overwrite, progress=steps)
    external = result.record.artifacts.external_data if result.record.artifacts else None
    size = sum(p.stat().st_size for p in [result.onnx_path, *([out / external] if external else [])])
    nodes = result.nodes
    console.print(
        f"[bold]Exported[/bold] {result.onnx_path} ({human_size(size)}): "
        + " -> ".join(f"{k} {v}" for k, v in nodes.items()) + " nodes; manifest in "
        + str(out / "manifest.json"), soft_wrap=True
    )
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .optimize import optimize_file
    from .progress import Steps

    out = args.output or Path("out") / f"{args.source.stem}-optimized"
    run = optimize_file(args.source, out, overwrite=args.overwrite, verify=not args.no_verify, seed=args.seed,
                        target=args.target, progress=Steps(console))
    r = run.result
    console.print(f"[bold]Optimized[/bold] {run.onnx_path}: {r.nodes_before} -> {r.nodes_after} nodes, "
                  f"{len(r.patterns)} shift sites rewritten; report in {out / 'manifest.json'}", soft_wrap=True)
    if args.explain:
        console.print("\n".join(r.explain_lines()), soft_wrap=True, markup=False, highlight=False)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import DeployOptions, deploy
    from .export import ExportOptions
    from .profile.measure import MeasurePlan
    from .profile.run import ProfileOptions
    from .progress import Steps
    from .quantize import QuantizeOptions
    from .quantize.cli import default_backends
    from .summary import print_rows

    if args.model is None and args.checkpoint is None:
        raise UserError("nothing to deploy: pass --model NAME (e.g. s2mlpv2; `vmlp-deploy models` lists them) "
                        "or --checkpoint PATH")
    if args.model is not None:
        args.model = _variant_name(args.model)
    opt = DeployOptions(
        model=args.model, checkpoint=args.checkpoint, tiny=args.tiny,
        backends=args.backend or default_backends(), root=args.root, overwrite=args.overwrite,
        quantize=QuantizeOptions(calibration_data=args.calibration_data, num_samples=args.num_samples,
                                 eval_data=args.eval_data, allow_upscale=args.allow_upscale,
                                 target_cpu=args.target_cpu, max_drop=args.max_drop,
                                 gate=not args.no_gate, threads=args.threads),
        input_size=tuple(args.input_size) if args.input_size else None, seed=args.seed,
        export=ExportOptions(seed=args.seed),
        profile=ProfileOptions(plan=MeasurePlan(iterations=args.iterations, duration_s=None), threads=args.threads,
                               layer_runs=args.layer_runs, charts=not args.no_charts),
    )
    result = deploy(opt, Steps(console))
    print_rows(console, result.rows, f"{result.export_dir.name}: FP32 vs INT8 (batch 1, median latency)")
    for line in result.profile.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
    console.print(f"[bold]Deployed[/bold] {result.export_dir} -> "
                  + ", ".join(str(d) for d in result.int8_dirs.values())
                  + f"; profile in {result.profile.out_dir}; summary in {result.summary_path}", soft_wrap=True)
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from .runs import age, list_runs

    if args.root.exists() and not args.root.is_dir():
        raise UserError(f"--root {args.root} is a file: pass the folder the runs are in (default out/)")
    runs = list_runs(args.root)
    if args.json:
        console.print_json(json.dumps([r.to_dict() for r in runs]))
        return 0
    if not runs:
        console.print(f"no runs under {args.root}/ yet: start with `vmlp-deploy export --model s2mlpv2`")
        return 0
    rows = [("run", "stage", "model", "backend", "precision", "target CPU", "age", "key figure")]
    rows += [(r.path.name, r.stage, r.model, r.backend, r.precision, r.target_cpu, age(r.created), r.figure)
             for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:  # one line per run, like `ls -l`: never wrapped, easy to grep
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


_TARGET_HELP = ("runtime the graph is laid out for: cpu (ONNX Runtime; channels-last, default), openvino "
                "(channels-first end to end: 1x1 Convs, LayerNorm over channels) or npu (as openvino, and lists "
                "ops an edge NPU may reject)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmlp-deploy",
        description="Export, rewrite, quantize and profile vision MLPs and MetaFormers for edge deployment.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list zoo variants: measured params/MACs next to the paper's figures")
    p.add_argument("--family", help="only this family (e.g. s2mlpv2, convnext)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("export", help="export a zoo model or checkpoint to a validated ONNX run directory")
    _add_model_args(p)
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="run directory (default out/<model>, out/<model>-tiny with --tiny)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17..23, default 18)")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="PyTorch exporter (default torchscript)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch dimension")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--no-rewrite", action="store_true",
                   help="keep the naive token-mixing graph (skip the shift -> grouped-conv passes)")
    p.add_argument("--target", choices=TARGETS, default="cpu", help=_TARGET_HELP)
    p.add_argument("--atol", type=float, default=1e-4, help="validation: absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="validation: tolerance relative to the output's peak magnitude (default 1e-3)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("optimize", help="rewrite token-mixing shifts of any ONNX model into Pad + grouped Conv")
    p.add_argument("source", type=Path, help="an .onnx file or a run directory from `vmlp-deploy export`")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="run directory (default out/<name>-optimized)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the whole-model ONNX Runtime check (each rewrite is still checked on its own)")
    p.add_argument("--seed", type=arg_types.seed, default=0, help="seed for probes and verification inputs")
    p.add_argument("--target", choices=TARGETS, default="cpu", help=_TARGET_HELP)
    p.add_argument("--explain", action="store_true",
                   help="print the target's rule set: how often each rule fired and why it declined where it looked")
    p.set_defaults(func=_cmd_optimize)

    from .cpu import TARGET_NAMES
    from .quantize.cli import backend_list

    p = sub.add_parser("deploy", help="the whole job: export, INT8 for each backend, profile FP32 vs INT8, summary")
    _add_model_args(p)
    p.add_argument("--backend", "-b", type=backend_list, metavar="NAMES",
                   help="comma-separated cpu, openvino, tensorrt, or all (default: every installed runtime: cpu, "
                        "openvino)")
    p.add_argument("--target-cpu", choices=TARGET_NAMES, default="host", metavar="CPU",
                   help="the CPU the model will run on (default host; see `vmlp-deploy quantize --help`)")
    p.add_argument("--calibration-data", type=Path, metavar="DIR",
                   help="calibration images or .npy/.npz (default: crops of the embedded photographs)")
    p.add_argument("--num-samples", type=int, default=300, help="calibration samples (default 300)")
    p.add_argument("--eval-data", type=Path, metavar="DIR", help="ImageFolder for real FP32 vs INT8 top-1 (gated)")
    p.add_argument("--allow-upscale", action="store_true",
                   help="enlarge calibration and eval images smaller than the model's crop (left out otherwise)")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="largest INT8 top-1 drop on --eval-data (default 1.0; exit 4 above it)")
    p.add_argument("--no-gate", action="store_true", help="keep an INT8 model that fails the fidelity gate")
    p.add_argument("-n", "--iterations", type=int, default=30, help="timed inferences per configuration (default 30)")
    p.add_argument("--threads", type=int, help="threads per inference (default: all usable cores)")
    p.add_argument("--layer-runs", type=int, default=5, help="profiled runs for the per-layer tables (0 skips them)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--root", type=Path, default=Path("out"), help="working folder for the run directories (out/)")
    p.add_argument("--overwrite", action="store_true", help="rebuild runs that exist instead of reusing them")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("runs", aliases=["ls"], help="list the run directories under out/: stage, model, backend, "
                                                   "precision, target CPU, key figure, age")
    p.add_argument("--root", type=Path, default=Path("out"), help="the working folder (default out/)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_runs)

    from .profile.cli import add_parser as add_profile
    from .quantize.cli import add_parser as add_quantize

    add_quantize(sub)
    add_profile(sub)
    return parser


#: Where an internal error is to be reported; the message adds the run's facts so the report is reproducible.
REPORT_TO = "the vmlp-deploy issue tracker (your copy's repository)"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C (staged outputs are deleted, the previous run is kept) and
    exits with 128 + the signal's number, the shell's convention (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _tolerant_streams() -> None:
    """Output never fails on the terminal's encoding (``PYTHONIOENCODING=ascii``: ✓ and ← become ?), and a
    closed stdout or stderr (``>&-``, ``2>&-``) swallows output instead of failing on the first print."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="replace")


def run_facts(argv: list[str]) -> str:
    """The facts an internal-error report needs: the command as typed, this version, Python and the platform."""
    command = " ".join(["vmlp-deploy", *argv])
    return (f"command: {command}; vmlp-deploy {__version__}; Python {platform.python_version()}; "
            f"{platform.platform()}")


def main(argv: list[str] | None = None) -> int:
    """Run one verb; every failure ends in one message and an exit code per class of error (README table)."""
    program = argv is None  # the process is ours (the console script, python -m), not a caller's
    argv = sys.argv[1:] if argv is None else argv
    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except (UserError, UnknownModelError) as e:
        if args.debug:
            raise
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        err_console.print(f"[red]interrupted[/red] by {signal.Signals(signum).name}: nothing was written "
                          "(an existing run is left as it was)", soft_wrap=True)
        return 128 + signum
    except BrokenPipeError:  # `vmlp-deploy runs | head`: the reader has what it wanted; exit 1 quietly, as rich does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:  # the machine's, not a bug
            where = f" ({e.filename})" if e.filename else ""
            fix = "point" if e.errno == errno.EROFS else "free space, or point"
            err_console.print(f"[red]error:[/red] cannot write{where}: {os.strerror(e.errno)}: {fix} -o (or TMPDIR, "
                              "for scratch files) elsewhere; nothing was written", soft_wrap=True)
            return 2
        # an internal bug: say so, where to report it and with which facts
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err_console.print(f"[red]internal error:[/red] {type(e).__name__}: {escape(first)}", soft_wrap=True)
        err_console.print(f"  this is a bug in vmlp-deploy: please report it to {REPORT_TO} with the traceback "
                          f"from --debug and these facts: {escape(run_facts(argv))}", soft_wrap=True)
        return 1
    finally:
        if main_thread and program:
            # The outcome is decided and said: a signal while the interpreter shuts down (0.85 s after a profile,
            # unloading OpenVINO) must not turn it into exit 130.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
