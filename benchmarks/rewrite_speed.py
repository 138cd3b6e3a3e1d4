"""Naive vs rewritten graphs, side by side in one run: ONNX Runtime CPU and OpenVINO CPU latency, node counts.

Both graphs come from the same PyTorch model and are simplified with onnxsim; the only difference is the
shift->grouped-conv rewrite. Runs are interleaved (one inference of each configuration per round) so that
machine noise hits both alike; the figures are medians. ``--ablation`` adds pass variants built from the
naive export (``shift_only``: no layout pass; ``edge_mask``: edge borders as zero-padded Conv + mask),
timed in the same rounds, so the pass options can be compared under the same load.

    python benchmarks/rewrite_speed.py --model s2mlpv2_small --iterations 60 --out benchmarks/results/rewrite_s2mlpv2_small.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov

from vmlp_deploy.export import ExportOptions, environment, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.onnx_io import op_histogram
from vmlp_deploy.passes import optimize_model

SHIFT_OPS = ("ScatterND", "Slice", "Concat", "Pad", "Where", "Expand")


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def ov_runner(path: Path, threads: int, precision: str | None) -> tuple[Callable[[np.ndarray], object], str]:
    """OpenVINO latency configuration; ``precision=None`` keeps the CPU plugin's default (bf16 on this CPU)."""
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda x: request.infer({0: x})), used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s2mlpv2_small")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="also time pass variants (see module doc)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    lm = load_model(args.model, tiny=args.tiny)
    scratch = tempfile.TemporaryDirectory(prefix="vmlp-bench-")  # removed at exit: ~200 MB per full-size model
    work = Path(scratch.name)
    paths: dict[str, Path] = {}
    graphs: dict[str, dict] = {}
    for variant, rewrite in (("naive", False), ("rewritten", True)):
        result = export_model(lm, work / variant, ExportOptions(rewrite=rewrite))
        paths[variant] = result.onnx_path
        model = onnx.load(str(result.onnx_path))
        hist = op_histogram(model)
        graphs[variant] = {"nodes": len(model.graph.node), "ops": hist,
                           "shift_ops": {k: hist.get(k, 0) for k in SHIFT_OPS}}
        print(f"{variant}: {len(model.graph.node)} nodes", file=sys.stderr)
    if args.ablation:
        naive_model = onnx.load(str(paths["naive"]))
        for variant, options in (("shift_only", {"layout": False}), ("edge_mask", {"edge": "mask"})):
            model = optimize_model(naive_model, **options).model
            paths[variant] = work / f"{variant}.onnx"
            onnx.save(model, str(paths[variant]))
            hist = op_histogram(model)
            graphs[variant] = {"nodes": len(model.graph.node), "ops": hist,
                               "shift_ops": {k: hist.get(k, 0) for k in SHIFT_OPS}}
            print(f"{variant}: {len(model.graph.node)} nodes", file=sys.stderr)

    x = np.random.default_rng(0).standard_normal((1, 3, *lm.input_size), dtype=np.float32)
    runners: dict[str, Callable[[np.ndarray], object]] = {}
    precisions: dict[str, str] = {}
    for variant, path in paths.items():
        runners[f"ort_fp32/{variant}"] = ort_runner(path, args.threads)
        for label, hint in (("ov_default", None), ("ov_f32", "f32")):
            fn, used = ov_runner(path, args.threads, hint)
            runners[f"{label}/{variant}"] = fn
            precisions[f"{label}/{variant}"] = used

    for fn in runners.values():
        for _ in range(args.warmup):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.iterations):
        for key, fn in runners.items():
            t = time.perf_counter()
            fn(x)
            times[key].append((time.perf_counter() - t) * 1e3)

    medians = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for backend in ("ort_fp32", "ov_default", "ov_f32"):
        naive, rewritten = medians[f"{backend}/naive"], medians[f"{backend}/rewritten"]
        row = {
            "backend": backend,
            "precision": precisions.get(f"{backend}/naive", "f32"),
            "naive_ms": round(naive, 2),
            "rewritten_ms": round(rewritten, 2),
            "ratio": round(rewritten / naive, 3),
        }
        for variant in paths.keys() - {"naive", "rewritten"}:
            row[f"{variant}_ratio"] = round(medians[f"{backend}/{variant}"] / naive, 3)
        rows.append(row)
    report = {
        "model": args.model,
        "tiny": args.tiny,
        "batch": 1,
        "threads": args.threads,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "graphs": graphs,
        "node_ratio": round(graphs["rewritten"]["nodes"] / graphs["naive"]["nodes"], 3),
        "latency": rows,
        "environment": {**environment(), "openvino": ov.__version__},
    }
    for r in rows:
        print(f"{r['backend']:>11} ({r['precision']}): naive {r['naive_ms']:.2f} ms, rewritten "
              f"{r['rewritten_ms']:.2f} ms, ratio {r['ratio']:.3f}"
              + "".join(f", {k} {v:.3f}" for k, v in r.items() if k.endswith("_ratio")))
    print(f"nodes: naive {graphs['naive']['nodes']}, rewritten {graphs['rewritten']['nodes']}, "
          f"ratio {report['node_ratio']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
