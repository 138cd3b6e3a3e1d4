"""INT8 vs FP32 latency on ONNX Runtime and OpenVINO, and the cost of `vmlp-deploy quantize` itself.

One exported model (``vmlp-deploy export`` defaults: onnxsim + the shift->conv rewrite; ``--also-naive`` adds
the ScatterND graph of ``--no-rewrite``) is quantized for each backend by the real CLI in a child
process (wall time; peak RSS as the child's own VmHWM; 300 calibration samples by default). Latency:
batch 1, ``--threads`` threads, configurations loaded side by side and run interleaved (one inference of
each per round, so machine noise hits all alike), medians over ``--iterations`` rounds, timed with the
backends' own ``timer``; each runtime's configurations are interleaved with each other (see ``latency``).
OpenVINO runs FP32 with f32 pinned and with bf16, and the INT8 IR with its float
remainder in f32 and in bf16 (the plugin's default on CPUs with bf16; on CPUs without, the bf16 rows are
left out: they would run f32 again). The host's CPU and ISA are printed and stored with the results.

``--target-cpu`` (default ``host``) is passed to `vmlp-deploy quantize`; for a lesser x86 target the OpenVINO
rows run capped to the target's kernels (``vmlp_deploy.isa_cap``: ONEDNN_MAX_CPU_ISA in a child process), and
the ONNX Runtime rows stay the host's (MLAS cannot be capped). The cap reaches oneDNN's kernels only: the
plugin's own float kernels and its MLAS f32 FullyConnected keep the host's ISA, so the capped FP32 rows run
faster than on the target, which makes a capped INT8/FP32 ratio an overestimate of the target's.

    python benchmarks/quantize_speed.py --model s2mlpv2_small --also-naive --threads 2 \
        --out benchmarks/results/quantize_s2mlpv2_small.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vmlp_deploy import cpu, isa_cap
from vmlp_deploy.backends import BACKENDS, RunOptions
from vmlp_deploy.onnx_io import op_histogram
from vmlp_deploy.quantize import QUANTIZERS
from vmlp_deploy.records import environment
from vmlp_deploy.rundir import load_manifest


def cli(*args: str) -> float:
    """Run ``vmlp-deploy ARGS`` in a child process; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "vmlp_deploy", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"vmlp-deploy {' '.join(args)} failed:\n{proc.stdout.decode(errors='replace')}")
    return time.perf_counter() - start


def quantize(run: Path, backend: str, out: Path, samples: int, target_cpu: str) -> dict[str, Any]:
    """The CLI in a child process: wall seconds, and the manifest's figures (peak RSS is the child's VmHWM)."""
    args = ("quantize", str(run), "--backend", backend, "-o", str(out), "--num-samples", str(samples),
            "--target-cpu", target_cpu)
    wall = cli(*args)
    q = load_manifest(out).quantize
    f = q.fidelity
    layout = q.layout or {}
    return {"command": "vmlp-deploy " + " ".join(args), "wall_s": round(wall, 1), "peak_rss_mb": q.peak_rss_mb,
            "timings_s": q.timings_s, "top1_agreement": f["top1_agreement"], "sqnr_db": f["sqnr_db"],
            "cosine_mean": f["cosine_mean"], "scheme": q.integer_scheme["name"],
            "layout": layout.get("layout"), "layout_how": layout.get("how"),
            "layout_int8_median_ms": layout.get("int8_median_ms")}


def graph_facts(path: Path) -> dict[str, Any]:
    hist = op_histogram(onnx.load(str(path), load_external_data=False))
    return {"nodes": sum(hist.values()), "scatternd": hist.get("ScatterND", 0), "ops": hist}


def latency(configs: dict[str, tuple[str, Path, str | None]], shape: tuple[int, ...], threads: int,
            iterations: int, warmup: int, blocks: int, caps: dict[str, isa_cap.IsaCap]) -> dict[str, dict[str, Any]]:
    """Median latency (ms) per configuration, the configurations of one runtime measured interleaved.

    Runtimes are measured one after the other, not interleaved with each other: ONNX Runtime's spinning
    worker threads and OpenVINO's thread pool stay busy for a moment after an inference and would slow
    whichever other runtime runs next. For the same reason ONNX Runtime sessions run with spinning off: with it
    on, the interleaved FP32 and INT8 sessions slow each other down (FP32 74 ms instead of 48 ms).
    ``blocks`` splits the rounds so that the spread of the ratio between
    blocks shows how much machine noise there was. A backend in ``caps`` runs capped in child processes.
    """
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    out: dict[str, dict[str, Any]] = {}
    for runtime in dict.fromkeys(backend for backend, _, _ in configs.values()):
        group = {k: v for k, v in configs.items() if v[0] == runtime}
        timers, precisions = {}, {}
        for key, (backend, path, precision) in group.items():
            # spinning=False: interleaved sessions of one runtime would otherwise steal each other's cores
            options = RunOptions(threads=threads, precision=precision, spinning=False)
            session = (isa_cap.loader(caps[backend]) if backend in caps else BACKENDS[backend].load)(path, options)
            timers[key], precisions[key] = session.timer(x), session.precision
        for timer in timers.values():
            for _ in range(warmup):
                timer()
        times: dict[str, list[list[float]]] = {k: [[] for _ in range(blocks)] for k in timers}
        for b in range(blocks):
            for _ in range(iterations // blocks):
                for key, timer in timers.items():
                    times[key][b].append(timer() * 1e3)
        for k, per_block in times.items():
            flat = [t for block in per_block for t in block]
            out[k] = {"median_ms": round(statistics.median(flat), 2), "p90_ms": round(float(np.percentile(flat, 90)), 2),
                      "block_medians_ms": [round(statistics.median(b), 2) for b in per_block],
                      "precision_used": precisions[k]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s2mlpv2_small")
    parser.add_argument("--run", type=Path, help="an existing export run directory instead of exporting --model")
    parser.add_argument("--also-naive", action="store_true", help="also measure the graph without the rewrite")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=150, help="timed rounds per configuration (default 150)")
    parser.add_argument("--blocks", type=int, default=3, help="the rounds are split into this many blocks")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-cpu", default="host", help="passed to `vmlp-deploy quantize` (default host)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    host = cpu.host()
    print(f"CPU: {host.label}, {host.cores} usable cores", file=sys.stderr)
    target = cpu.resolve_target(args.target_cpu)
    caps = isa_cap.caps_for(BACKENDS, target)
    for backend, cap in caps.items():
        print(f"{backend} rows: {target.name}'s kernels, {cap.describe()}", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="vmlp-qbench-"))
    runs: dict[str, Path] = {}
    if args.run:
        runs["given"] = args.run
    else:  # exports run in child processes too, so this process stays small while the quantizers run
        cli("export", "--model", args.model, "-o", str(work / "default"))
        runs["export default"] = work / "default"
        if args.also_naive:
            cli("export", "--model", args.model, "--no-rewrite", "-o", str(work / "naive"))
            runs["naive (--no-rewrite)"] = work / "naive"
    report: dict[str, Any] = {"model": args.model, "batch": 1, "threads": args.threads, "iterations": args.iterations,
                              "warmup": args.warmup, "calibration_samples": args.samples,
                              "target_cpu": target.to_dict(),
                              "capped": {b: {"env": c.env, "target": c.target} for b, c in caps.items()},
                              "graphs": {}}
    for label, run in runs.items():
        src = run / "model.onnx"
        entry: dict[str, Any] = {"graph": graph_facts(src), "quantize": {}}
        print(f"[{label}] {entry['graph']['nodes']} nodes, ScatterND {entry['graph']['scatternd']}", file=sys.stderr)
        outs = {}
        for backend in QUANTIZERS:
            outs[backend] = work / f"{label.split()[0]}-{backend}"
            entry["quantize"][backend] = quantize(run, backend, outs[backend], args.samples, args.target_cpu)
            print(f"  quantize {backend}: {entry['quantize'][backend]['wall_s']} s, "
                  f"{entry['quantize'][backend]['peak_rss_mb']} MB", file=sys.stderr)
        shape = tuple(d.dim_value for d in onnx.load(str(src), load_external_data=False).graph.input[0]
                      .type.tensor_type.shape.dim)
        configs = {
            "ort fp32": ("cpu", src, None),
            "ort int8": ("cpu", outs["cpu"] / "model.onnx", None),
            "ov fp32 (f32)": ("openvino", src, "f32"),
            "ov fp32 (bf16)": ("openvino", src, "bf16"),
            "ov int8 (rest f32)": ("openvino", outs["openvino"] / "model.xml", "f32"),
            "ov int8 (rest bf16)": ("openvino", outs["openvino"] / "model.xml", "bf16"),
        }
        if not (host.isa.bf16 and target.isa.bf16):  # a bf16 hint runs f32 there: the same run twice
            configs = {k: v for k, v in configs.items() if "bf16" not in k}
        lat = latency(configs, shape, args.threads, args.iterations, args.warmup, args.blocks, caps)
        med = {k: v["median_ms"] for k, v in lat.items()}
        entry["latency"] = lat
        pairs = {"ort int8 / fp32 (issue 9: <= 0.75)": ("ort int8", "ort fp32"),
                 "ov int8 (rest f32) / fp32 f32 (issue 9: <= 0.65)": ("ov int8 (rest f32)", "ov fp32 (f32)"),
                 "ov int8 (rest bf16) / fp32 f32": ("ov int8 (rest bf16)", "ov fp32 (f32)"),
                 "ov int8 (rest f32) / bf16": ("ov int8 (rest f32)", "ov fp32 (bf16)"),
                 "ov int8 (rest bf16) / bf16": ("ov int8 (rest bf16)", "ov fp32 (bf16)")}
        pairs = {k: v for k, v in pairs.items() if v[0] in lat and v[1] in lat}
        entry["block_ratios"] = {k: [round(a / b, 3) for a, b in zip(lat[x]["block_medians_ms"],
                                                                      lat[y]["block_medians_ms"], strict=True)]
                                 for k, (x, y) in pairs.items()}
        entry["ratios"] = {k: round(med[x] / med[y], 3) for k, (x, y) in pairs.items()}
        report["graphs"][label] = entry
        print(f"\n{args.model} [{label}]: {entry['graph']['nodes']} nodes, ScatterND {entry['graph']['scatternd']}")
        print(f"{'configuration':<24}{'median ms':>10}{'p90 ms':>9}  precision")
        for k, v in lat.items():
            print(f"{k:<24}{v['median_ms']:>10.2f}{v['p90_ms']:>9.2f}  {v['precision_used']}")
        for k, v in entry["ratios"].items():
            print(f"  {k}: {v:.3f}")
        for k, v in entry["block_ratios"].items():
            print(f"  per block, {k}: {v}")
        print(f"{'quantize':<10}{'wall s':>8}{'peak MB':>9}{'top-1 agr':>10}{'SQNR dB':>9}  scheme, layout")
        for b, q in entry["quantize"].items():
            print(f"{b:<10}{q['wall_s']:>8.1f}{q['peak_rss_mb']:>9}{q['top1_agreement']:>10.1%}{q['sqnr_db']:>9.1f}"
                  f"  {q['scheme']}, {q['layout']} ({q['layout_how']})")
    report["environment"] = environment()
    report["cpu"] = host.to_dict()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
