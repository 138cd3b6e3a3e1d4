"""Naive vs rewritten graphs, side by side in one run: ONNX Runtime CPU and OpenVINO CPU latency, node counts.

All graphs come from the same PyTorch model and are simplified with onnxsim; they differ only in the passes:
``naive`` (none), ``rewritten`` (the default export, ``--target cpu``: shift -> grouped Conv, channels-last
layout for ONNX Runtime) and ``openvino`` (``--target openvino``: the same rewrite, then channels-first end
to end). Runs are interleaved (one inference of each configuration per round) so that machine noise hits
all alike; the figures are medians. Each visit to a configuration runs ``--visit`` inferences in a row:
the first inference after a switch pays for caches the other graph evicted. ONNX Runtime sessions run with
``session.intra_op.allow_spinning=0``: with spinning on, the worker threads of the session that just ran
keep spinning and take the two cores from the next one (measured side by side: naive 142 ms with
spinning, 105 ms without; ratios 0.79 vs 0.71). ``--ablation`` adds pass
variants built from the naive export (``shift_only``: no layout step; ``edge_mask``: edge borders as
zero-padded Conv + mask), timed in the same rounds. The backends are measured one after another (each with all its graphs
interleaved), not mixed: a runtime that ran just before leaves caches and thread pools in a state that
inflates the next one's times unevenly.

``--target-cpu avx2`` (or another lesser x86 target) runs OpenVINO on the target's oneDNN kernels: this
process sets ``ONEDNN_MAX_CPU_ISA`` before its first compile (``vmlp_deploy.isa_cap``; the plugin's own kernels
and MLAS keep the host's ISA), and OpenVINO's default precision becomes the target's (f32 without bf16). ONNX
Runtime's rows stay the host's: MLAS cannot be capped.

    python benchmarks/rewrite_speed.py --model s2mlpv2_small --iterations 60 --out benchmarks/results/rewrite_s2mlpv2_small.json
"""

from __future__ import annotations

import argparse
import json
import os
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

from vmlp_deploy import cpu, isa_cap
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.onnx_io import op_histogram
from vmlp_deploy.passes import optimize_model
from vmlp_deploy.records import environment

SHIFT_OPS = ("ScatterND", "Slice", "Concat", "Pad", "Where", "Expand")


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module doc
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def ov_runner(path: Path, threads: int, precision: str | None) -> tuple[Callable[[np.ndarray], object], str]:
    """OpenVINO latency configuration; ``precision=None`` keeps the CPU plugin's default (bf16 on CPUs with it)."""
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda x: request.infer({0: x})), used


BACKENDS = ("ort_fp32", "ov_default", "ov_f32")


def time_backends(paths: dict[str, Path], x: np.ndarray, *, threads: int, warmup: int, iterations: int,
                  visit: int, ov_default: str | None) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-inference ms for every ``backend/graph``: one backend at a time, its graphs visited in turn.
    ``ov_default``: the precision of the ``ov_default`` rows (None: the plugin's own choice).

    Returns the times and the OpenVINO precisions read back from the compiled models.
    """
    precisions: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    for backend in BACKENDS:  # one backend at a time: no cross-runtime interference
        runners: dict[str, Callable[[np.ndarray], object]] = {}
        for variant, path in paths.items():
            if backend == "ort_fp32":
                runners[f"{backend}/{variant}"] = ort_runner(path, threads)
            else:
                fn, used = ov_runner(path, threads, ov_default if backend == "ov_default" else "f32")
                runners[f"{backend}/{variant}"] = fn
                precisions[f"{backend}/{variant}"] = used
        for fn in runners.values():
            for _ in range(warmup):
                fn(x)
        times.update({k: [] for k in runners})
        for _ in range(-(-iterations // visit)):
            for key, fn in runners.items():
                for _ in range(visit):
                    t = time.perf_counter()
                    fn(x)
                    times[key].append((time.perf_counter() - t) * 1e3)
        del runners
        print(f"{backend}: timed", file=sys.stderr)
    return times, precisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s2mlpv2_small")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--visit", type=int, default=5,
                        help="inferences per visit to a configuration (see the module doc)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="also time pass variants (see module doc)")
    parser.add_argument("--target-cpu", default="host", help="run OpenVINO capped to this CPU's kernels (module doc)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    target = cpu.resolve_target(args.target_cpu)
    cap = isa_cap.caps_for(["openvino"], target).get("openvino")
    if cap is None and not cpu.host_stands_for(target):
        raise SystemExit(f"cannot run OpenVINO on {target.name}'s kernels here: {isa_cap.plan('openvino', target)[1]}")
    if cap is not None:
        os.environ.update(cap.env)  # before the first compile: oneDNN reads it once
        print(f"OpenVINO capped: {cap.variable}={cap.level} set in this process; ONNX Runtime runs the host's "
              "kernels", file=sys.stderr)

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
    naive_model = onnx.load(str(paths["naive"]))
    variants: list[tuple[str, dict]] = [("openvino", {"target": "openvino"})]
    if args.ablation:
        variants += [("shift_only", {"layout": False}), ("edge_mask", {"edge": "mask"})]
    for variant, options in variants:
        model = optimize_model(naive_model, **options).model
        paths[variant] = work / f"{variant}.onnx"
        onnx.save(model, str(paths[variant]))
        hist = op_histogram(model)
        graphs[variant] = {"nodes": len(model.graph.node), "ops": hist,
                           "shift_ops": {k: hist.get(k, 0) for k in SHIFT_OPS}}
        print(f"{variant}: {len(model.graph.node)} nodes", file=sys.stderr)

    x = np.random.default_rng(0).standard_normal((1, 3, *lm.input_size), dtype=np.float32)
    times, precisions = time_backends(paths, x, threads=args.threads, warmup=args.warmup,
                                      iterations=args.iterations, visit=args.visit,
                                      ov_default=None if target.isa.bf16 or cap is None else "f32")

    medians = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for backend in BACKENDS:
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
        "visit": args.visit,
        "graphs": graphs,
        "node_ratio": round(graphs["rewritten"]["nodes"] / graphs["naive"]["nodes"], 3),
        "node_ratio_openvino": round(graphs["openvino"]["nodes"] / graphs["naive"]["nodes"], 3),
        "latency": rows,
        "cpu": cpu.host().to_dict(),
        "target_cpu": target.to_dict(),
        "openvino_capped": cap.env if cap else None,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "environment": {**environment(), "openvino": ov.__version__},
    }
    for r in rows:
        print(f"{r['backend']:>11} ({r['precision']}): naive {r['naive_ms']:.2f} ms, rewritten "
              f"{r['rewritten_ms']:.2f} ms, ratio {r['ratio']:.3f}"
              + "".join(f", {k} {v:.3f}" for k, v in r.items() if k.endswith("_ratio")))
    print(f"nodes: naive {graphs['naive']['nodes']}, rewritten {graphs['rewritten']['nodes']} "
          f"(ratio {report['node_ratio']:.3f}), openvino target {graphs['openvino']['nodes']} "
          f"(ratio {report['node_ratio_openvino']:.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
