"""V-MLPs against a CNN and a ViT at the edge: the article's question, measured through the three user commands.

Each model is exported with the defaults (`vmlp-deploy export`), quantized for ONNX Runtime and OpenVINO
(`vmlp-deploy quantize --backend cpu,openvino`), and then every FP32 export and INT8 run is profiled in one
`vmlp-deploy profile` call, so all configurations are measured interleaved (batch 1, ``--threads`` threads) and
their ratios hold on a noisy machine. The table pairs each model's published ImageNet top-1 (random weights here:
no weights can be downloaded, and speed does not depend on them) with its measured medians and the INT8 fidelity
that `quantize` measured (agreement and logits SQNR against FP32 on held-out calibration crops).

    python benchmarks/edge_compare.py --iterations 60 --out benchmarks/results/edge_compare_zen1.json

runs, for each model M (work folder ``--work``, default a temporary one):

    vmlp-deploy export --model M -o WORK/M
    vmlp-deploy quantize WORK/M --backend cpu,openvino --num-samples 128
    vmlp-deploy profile WORK/M WORK/M-int8-cpu WORK/M-int8-openvino ... --backend cpu,openvino --threads 2 -n 60 \\
        --layer-runs 0 --no-charts
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vmlp_deploy import cpu
from vmlp_deploy.models import get_variant
from vmlp_deploy.records import environment
from vmlp_deploy.rundir import load_manifest

MODELS = ("s2mlpv2_small", "asmlp_tiny", "convnext_tiny", "deit_small_patch16_224")
KIND = {"s2mlpv2": "V-MLP", "asmlp": "V-MLP", "convnext": "CNN", "deit": "ViT", "poolformer": "MetaFormer",
        "mlp_mixer": "V-MLP", "resmlp": "V-MLP", "gmlp": "V-MLP", "s2mlp": "V-MLP"}


def cli(*args: str) -> None:
    """Run ``vmlp-deploy ARGS`` in a child process, its output shown as it comes; stop on failure."""
    print("$ vmlp-deploy " + " ".join(args), flush=True)
    if subprocess.run([sys.executable, "-m", "vmlp_deploy", *args], check=False).returncode != 0:
        raise SystemExit(f"vmlp-deploy {args[0]} failed")


def measure(models: tuple[str, ...], work: Path, iterations: int, threads: int, samples: int,
            tiny: bool) -> dict[str, Any]:
    runs: list[str] = []
    for model in models:
        cli("export", "--model", model, "-o", str(work / model), "--overwrite", *(["--tiny"] if tiny else []))
        cli("quantize", str(work / model), "--backend", "cpu,openvino", "--num-samples", str(samples),
            "--overwrite")
        runs += [str(work / model), str(work / f"{model}-int8-cpu"), str(work / f"{model}-int8-openvino")]
    profile = work / "profile"
    cli("profile", *runs, "--backend", "cpu,openvino", "--threads", str(threads), "-n", str(iterations),
        "--layer-runs", "0", "--no-charts", "-o", str(profile), "--overwrite")
    records = json.loads((profile / "profile.json").read_text())["records"]
    median = {(r["model"], r["backend"]): r["latency_ms"]["median"] for r in records}
    rows = []
    for model in models:
        variant = get_variant(model)
        exported = load_manifest(work / model).model
        assert exported is not None and exported.params is not None
        fidelity = {}
        for backend in ("cpu", "openvino"):
            q = load_manifest(work / f"{model}-int8-{backend}").quantize
            assert q is not None and q.fidelity is not None
            fidelity[backend] = {"top1_agreement": q.fidelity["top1_agreement"], "sqnr_db": q.fidelity["sqnr_db"],
                                 "scheme": (q.integer_scheme or {}).get("name"),
                                 "layout": (q.layout or {}).get("layout")}
        rows.append({
            "model": model, "kind": KIND.get(variant.family, variant.family),
            "params_m": round(exported.params / 1e6, 1), "paper_gmacs": variant.paper.macs_g,
            "paper_top1": variant.paper.top1,
            "ms": {"ort_f32": median[(model, "cpu")], "ort_int8": median[(f"{model}-int8-cpu", "cpu")],
                   "ov_f32": median[(model, "openvino")], "ov_int8": median[(f"{model}-int8-openvino", "openvino")]},
            "int8": fidelity,
        })
    return {"rows": rows, "profile": str(profile), "iterations": iterations, "threads": threads,
            "calibration_samples": samples, "tiny": tiny}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | kind | params (M) | GMACs | ImageNet top-1 (paper) | ORT f32 | ORT INT8 | OpenVINO f32 | "
             "OpenVINO INT8 | INT8 agreement / SQNR (ORT; OpenVINO) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ms, q = r["ms"], r["int8"]
        lines.append(f"| {r['model']} | {r['kind']} | {r['params_m']:g} | {r['paper_gmacs']:g} | {r['paper_top1']:g} "
                     f"| {ms['ort_f32']:.1f} | {ms['ort_int8']:.1f} | {ms['ov_f32']:.1f} | {ms['ov_int8']:.1f} | "
                     f"{q['cpu']['top1_agreement']:.0%} / {q['cpu']['sqnr_db']:.1f} dB; "
                     f"{q['openvino']['top1_agreement']:.0%} / {q['openvino']['sqnr_db']:.1f} dB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=128, help="calibration samples per quantize")
    parser.add_argument("--tiny", action="store_true", help="the tiny configurations (checks this script, fast)")
    parser.add_argument("--work", type=Path, help="folder for the run directories (default: a temporary one)")
    parser.add_argument("--out", type=Path, required=True, help="JSON with the table's figures and the host")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="edge-compare-") as tmp:
        work = args.work or Path(tmp)
        result = measure(tuple(args.models), work, args.iterations, args.threads, args.num_samples, args.tiny)
    host = cpu.host()
    result["cpu"], result["environment"] = host.to_dict(), environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{host.label}, batch 1, {args.threads} threads, medians in ms over "
          f"{args.iterations} interleaved runs\n")
    print(table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
