"""Argument parsing for `vmlp-deploy quantize`: parse, call :func:`quantize_run`, print its result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import arg_types
from ..cpu import TARGET_NAMES, targets_help
from ..errors import UserError
from ..records import format_db
from ..runs import latest_float_run
from .base import missing_modules
from .options import LAYOUTS, METHODS, MODEL_TYPES, PERCENTILE, QuantizeOptions, RecipeOverrides
from .registry import QUANTIZERS, default_quantizers
from .report import ms
from .scheme import SCHEME_NAMES

if TYPE_CHECKING:
    from .stage import QuantizeResult


def _names(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected 'auto' or comma-separated node names / op types")
    return names


def backend_list(text: str) -> tuple[str, ...]:
    """``--backend cpu,openvino``: the INT8 backends named, in order, each once (quantize and deploy); ``all``:
    every backend whose quantizer can run here, as `profile --backend all` means every installed runtime."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in QUANTIZERS and n != "all"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown) or '(none)'}: use "
                                         f"{', '.join(QUANTIZERS)} (comma-separated) or all")
    if "all" in names:
        return tuple(name for name, q in QUANTIZERS.items() if not missing_modules(q))
    return names


def default_backends() -> tuple[str, ...]:
    """The default INT8 backends whose modules import here; TensorRT's Q/DQ only when asked for."""
    return tuple(name for name in default_quantizers() if not missing_modules(QUANTIZERS[name]))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="INT8 post-training quantization for ONNX Runtime, OpenVINO or TensorRT, fidelity always measured",
        description="Quantize an exported run directory (or a bare .onnx) to INT8 with calibration data "
                    "preprocessed by the model's own recipe; writes a new run directory with the model, "
                    "manifest.json and quantize.md (fidelity vs FP32 on held-out samples).",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", nargs="?",
                   help="run directory from `vmlp-deploy export`, or an .onnx (default: the most recent export "
                        "under out/)")
    p.add_argument("--backend", "-b", type=backend_list, metavar="NAMES",
                   help="cpu: ONNX Runtime QDQ; openvino: NNCF -> OpenVINO IR; tensorrt: explicit Q/DQ ONNX; "
                        "comma-separated for several, or all (default: every backend whose runtime is installed: "
                        "cpu, openvino)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="output run directory "
                   "(default <RUN_DIR>-int8-<backend>; one backend only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    data = p.add_argument_group("calibration data")
    data.add_argument("--calibration-data", type=Path, metavar="DIR",
                      help="images (searched recursively) or .npy/.npz tensors; default: crops of the embedded "
                           "photographs (a smoke test: your own data calibrates better)")
    data.add_argument("--num-samples", type=int, default=300, help="calibration samples (default 300, like NNCF)")
    data.add_argument("--holdout", type=int, default=50,
                      help="samples held out of calibration to measure fidelity on (default 50)")
    data.add_argument("--seed", type=arg_types.seed, default=0,
                      help="seed of the shuffle and the embedded crops (default 0)")
    data.add_argument("--allow-upscale", action="store_true",
                      help="accept calibration and --eval-data images smaller than the model's crop (they are "
                           "enlarged; left out otherwise, and counted)")
    recipe = p.add_argument_group("preprocessing (for models without a manifest, or to replace its recipe)")
    recipe.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="per-channel mean (0..1 scale)")
    recipe.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="per-channel std (0..1 scale)")
    recipe.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="center crop = model input size")
    recipe.add_argument("--resize", type=int, metavar="N", help="resize the shorter side to N before the crop")
    recipe.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos"],
                        help="resize filter (default bicubic)")
    recipe.add_argument("--recipe", type=Path, metavar="FILE",
                        help="JSON/TOML with input_size, mean, std, resize or crop_pct, interpolation")
    method = p.add_argument_group("quantization")
    method.add_argument("--method", choices=METHODS, default="minmax",
                        help="activation ranges: minmax (global, default), entropy (cpu/tensorrt), percentile")
    method.add_argument("--percentile", type=float, default=PERCENTILE,
                        help="percentile for --method percentile (default 99.999)")
    method.add_argument("--keep-float", type=_names, default=(), metavar="auto|NAMES",
                        help="leave layers in float: 'auto' keeps the most sensitive until --min-agreement is met, "
                             "or comma-separated node names, globs or op types")
    method.add_argument("--min-agreement", type=float, default=0.99,
                        help="fidelity target: top-1 agreement with FP32 (default 0.99)")
    method.add_argument("--sensitivity-rounds", type=int, default=8,
                        help="budget of --keep-float auto: quantize-and-measure rounds (default 8)")
    method.add_argument("--model-type", choices=MODEL_TYPES, default="auto",
                        help="openvino: NNCF model type (auto: transformer for LayerNorm+MatMul graphs)")
    method.add_argument("--smooth-quant-alpha", type=float, metavar="A",
                        help="openvino, transformer models: SmoothQuant alpha for MatMuls, 0..1 (default off: it "
                             "measured worse on the zoo's MLPs; NNCF's own default is 0.95)")
    method.add_argument("--qdq-layernorm", action="store_true",
                        help="tensorrt: also put Q/DQ on LayerNormalization inputs (off: TensorRT keeps LN float)")
    target = p.add_argument_group("deployment CPU")
    target.add_argument("--target-cpu", choices=TARGET_NAMES, default="host", metavar="CPU",
                        help="the CPU the model will run on (default host: this machine's); decides the integer "
                             "scheme, and fidelity is measured on its kernels where this host can run them (its own, "
                             f"or OpenVINO capped to a lesser x86 target). {targets_help()}")
    target.add_argument("--int8-scheme", choices=SCHEME_NAMES, default="auto",
                        help="auto (by --target-cpu: u8s8-7bit without a 32-bit int8 dot product, else u8s8), or "
                             "force u8s8 / u8s8-7bit / u8u8 (cpu only); a forced scheme that can saturate warns")
    target.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="graph layout to quantize: auto (time the candidates on the target's kernels where "
                             "this host can run them, else the documented rule), as-given, or openvino "
                             "(channels-first)")
    gate = p.add_argument_group("fidelity gate (fails with exit code 4 and writes nothing)")
    p.add_argument("--eval-data", type=Path, metavar="DIR",
                   help="ImageFolder (one folder per class, sorted names = class index): real top-1 of FP32 and INT8")
    gate.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                      help="with --eval-data: largest INT8 top-1 drop allowed, in points (default 1.0)")
    gate.add_argument("--gate-agreement", type=float, default=0.95, metavar="FRACTION",
                      help="without --eval-data, trained weights: smallest held-out top-1 agreement with FP32 "
                           "(default 0.95; random-weight models are not gated on agreement)")
    gate.add_argument("--no-gate", action="store_true", help="write the model even when the gate fails (warns)")
    p.add_argument("--threads", type=int, help="threads for the fidelity and accuracy runs (default: all)")
    p.set_defaults(func=_cmd_quantize)


def _options(args: argparse.Namespace, backend: str) -> QuantizeOptions:
    return QuantizeOptions(
        backend=backend, output=args.output, overwrite=args.overwrite, calibration_data=args.calibration_data,
        num_samples=args.num_samples, holdout=args.holdout, seed=args.seed, method=args.method,
        percentile=args.percentile, keep_float=args.keep_float, min_agreement=args.min_agreement,
        sensitivity_rounds=args.sensitivity_rounds, model_type=args.model_type,
        smooth_quant_alpha=args.smooth_quant_alpha, qdq_layernorm=args.qdq_layernorm, eval_data=args.eval_data,
        allow_upscale=args.allow_upscale, threads=args.threads, target_cpu=args.target_cpu,
        int8_scheme=args.int8_scheme, layout=args.layout, max_drop=args.max_drop, gate_agreement=args.gate_agreement,
        gate=not args.no_gate,
        recipe=RecipeOverrides(
            input_size=tuple(args.input_size) if args.input_size else None,
            mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
            resize=args.resize, interpolation=args.interpolation, recipe_file=args.recipe),
    )


def _cmd_quantize(args: argparse.Namespace) -> int:
    from ..cli import console
    from ..progress import Steps
    from .stage import quantize_run

    run_dir = args.run_dir
    if run_dir is None:
        run_dir = latest_float_run().path
        console.print(f"Quantizing the most recent export: {run_dir}")
    backends = args.backend or default_backends()
    if args.output is not None and len(backends) > 1:
        raise UserError(f"-o names one run directory, but {len(backends)} backends were asked for: drop -o "
                        "(each goes to <RUN_DIR>-int8-<backend>) or pass one --backend")
    for backend in backends:
        if len(backends) > 1:
            console.rule(f"INT8 for {backend}")
        result = quantize_run(run_dir, _options(args, backend), progress=Steps(console))
        print_result(console, result)
    return 0


def print_result(console: Console, result: QuantizeResult) -> None:
    f = result.fidelity.logits
    c = result.calibration
    table = Table(title=f"INT8 ({result.backend}) vs FP32 on {f.samples} held-out samples", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1 agreement", f"{f.top1_agreement:.2%}")
    table.add_row("top-5 agreement", f"{f.top5_agreement:.2%}")
    table.add_row("logits cosine (mean / worst)", f"{f.cosine_mean:.5f} / {f.cosine_min:.5f}")
    table.add_row("logits SQNR", f"{format_db(f.sqnr_db)} dB")
    if result.fidelity.worst_layers:
        w = result.fidelity.worst_layers[0]
        table.add_row("worst layer SQNR", f"{format_db(w.sqnr_db)} dB ({w.op_type} {w.node})")
    if result.accuracy is not None:
        a = result.accuracy
        table.add_row(f"top-1 accuracy on {a.images} images", f"FP32 {a.top1_fp32:.2%} / INT8 {a.top1_int8:.2%} "
                      f"({a.delta_points:+.2f} pts)")
    table.add_row("calibration", f"{c.calibration_samples} samples from {c.source}"
                  + (f", {len(c.skipped_unreadable)} unreadable skipped" if c.skipped_unreadable else "")
                  + (f", {len(c.skipped_too_small)} too small skipped" if c.skipped_too_small else ""))
    table.add_row("kept in float", str(len(result.keep_float)) + (
        f" ({', '.join(result.keep_float[:3])}{', ...' if len(result.keep_float) > 3 else ''})"
        if result.keep_float else ""))
    if result.target is not None and result.scheme is not None:
        table.add_row("target CPU / scheme", f"{result.target.name} ({result.target.isa.summary()}) / "
                      f"{result.scheme.scheme.name}")
    if result.speed is not None:
        sp = result.speed
        table.add_row("INT8 / FP32 latency here", f"{ms(sp.int8_ms)} / {ms(sp.fp32_ms)} ms ({sp.ratio:.2f}x)")
    if result.gate is not None:
        verdict = "passed" if result.gate.passed else "FAILED (--no-gate)"
        table.add_row("fidelity gate", f"{verdict}: {result.gate.checked}" if result.gate.bound is not None
                      else "not gated (random weights)")
    table.add_row("time / peak memory", f"{result.timings['total']:.1f} s / {result.memory}")
    console.print(table)
    for line in result.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)
    console.print(f"[bold]Quantized[/bold] {result.model_path}; manifest and quantize.md in {result.out_dir}",
                  soft_wrap=True)
