"""Which integer scheme keeps accuracy and speed on CPUs without VNNI: the data behind ``quantize/scheme.py``.

The digits-trained tiny S2-MLPv2 and ConvNeXt (``vmlp_deploy.quantize.digits``) are quantized for ``cpu``
(ONNX Runtime) and ``openvino`` (NNCF) with every scheme forced (``u8s8``, ``u8s8-7bit``, and ``u8u8`` for
ONNX Runtime) and with ``auto`` for ``--target-cpu avx2``, calibrated on 300 training images. Each INT8 model's
top-1 on the 539 test images is measured natively on this host, and on an AVX2-only CPU emulated with
``qemu-x86_64 -cpu Haswell`` (``vmlp_deploy.emulate``: the runtimes dispatch their AVX2 kernels there; accuracy
only). OpenVINO's models also run natively with oneDNN capped to AVX2 (``vmlp_deploy.isa_cap``, where this host
has more than AVX2), which must agree with the emulated column. ``quantize_top1`` is the accuracy
`vmlp-deploy quantize` itself reports, measured on the target's kernels where it can run them here
(``quantize_measured_on``). For ONNX Runtime the predicted saturation (``quantize/saturation.py``) is listed
beside the measured accuracy. ``--speed-model`` also times ONNX Runtime INT8 of a zoo model per scheme on this
host, interleaved.

    python benchmarks/int8_schemes.py --speed-model s2mlpv2_small --out benchmarks/results/int8_schemes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vmlp_deploy import cpu, isa_cap
from vmlp_deploy.backends import BACKENDS, RunOptions
from vmlp_deploy.emulate import emulate, emulation_available
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.quantize import QuantizeOptions, quantize_run
from vmlp_deploy.quantize import digits as dg
from vmlp_deploy.quantize.fidelity import run_all
from vmlp_deploy.quantize.layout import interleaved_medians
from vmlp_deploy.records import environment

SCHEMES = {"cpu": ("u8s8", "u8s8-7bit", "u8u8", "auto"), "openvino": ("u8s8", "u8s8-7bit", "auto")}


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def digits_table(work: Path, epochs: int, emulated: bool) -> dict[str, Any]:
    split = dg.write_digits(work / "digits")
    table: dict[str, Any] = {}
    for config in dg.CONFIGS:
        lm = dg.train(config, split, epochs=epochs)
        run = dg.export(lm, work / config).out_dir
        fp32 = BACKENDS["cpu"].load(run / "model.onnx", RunOptions())
        rows: dict[str, Any] = {"fp32_top1": top1(run_all(fp32, split.x_test, 1), split.y_test)}
        for backend, schemes in SCHEMES.items():
            for scheme in schemes:
                out = work / f"{config}-{backend}-{scheme}"
                result = quantize_run(run, QuantizeOptions(
                    backend=backend, output=out, calibration_data=split.train_dir, eval_data=split.test_dir,
                    target_cpu="avx2", int8_scheme=scheme, layout="as-given", gate=False))
                q = result.record.quantize
                host = BACKENDS[backend].load(result.model_path, RunOptions(threads=1, precision="f32"))
                logits = {"native": run_all(host, split.x_test, 1)}
                row: dict[str, Any] = {"scheme": q.integer_scheme["name"],
                                       "native_top1": top1(logits["native"], split.y_test),
                                       "quantize_top1": result.accuracy.top1_int8,
                                       "quantize_measured_on": "capped" if q.stand_in else "host",
                                       "native_fp32_top1": result.accuracy.top1_fp32}
                if q.saturation_prediction:
                    row["predicted_saturated_pairs"] = q.saturation_prediction["summary"]["rate"]
                cap = isa_cap.caps_for([backend], cpu.TARGETS["avx2"], integer_only=True).get(backend)
                if cap is not None:  # timed like the emulated run: child start, load and every image
                    start = time.perf_counter()
                    session, check = isa_cap.load(cap, result.model_path, RunOptions(threads=1, precision="f32"))
                    with session:
                        logits["capped"] = run_all(session, split.x_test, 1)
                    row["capped_seconds"] = round(time.perf_counter() - start, 2)
                    row["capped_avx2_top1"] = top1(logits["capped"], split.y_test)
                    row["capped_integer_kernels"] = check.integer_kernels
                if emulated:
                    run_ = emulate(result.model_path, split.x_test, backend, batch=1)
                    row["avx2_top1"] = top1(run_.outputs[0], split.y_test)
                    row["avx2_cpu_features"] = [f for f in run_.cpu_features if f.startswith("AVX")]
                    row["avx2_seconds"] = round(run_.seconds, 1)
                    for name, values in logits.items():  # how far each native run is from the AVX2 kernels
                        row[f"{name}_vs_emulated_max_abs"] = float(np.abs(values - run_.outputs[0]).max())
                rows[f"{backend}/{scheme}"] = row
                print(f"{config} {backend}/{scheme}: " + ", ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), file=sys.stderr)
        table[config] = rows
    return table


def speed_table(model: str, work: Path, iterations: int, threads: int) -> dict[str, Any]:
    """ONNX Runtime INT8 latency per scheme on this host, interleaved one inference per round, spinning off."""
    run = export_model(load_model(model), work / model, ExportOptions()).out_dir
    paths = {"fp32": run / "model.onnx"}
    for scheme in SCHEMES["cpu"][:3]:
        result = quantize_run(run, QuantizeOptions(backend="cpu", output=work / f"{model}-{scheme}",
                                                   int8_scheme=scheme, layout="as-given", num_samples=32))
        paths[scheme] = result.model_path
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    med = interleaved_medians(BACKENDS["cpu"].load, paths, x, threads, rounds=iterations)
    return {"model": model, "threads": threads, "iterations": iterations,
            "median_ms": {k: round(v, 2) for k, v in med.items()},
            "ratio_to_fp32": {k: round(v / med["fp32"], 3) for k, v in med.items() if k != "fp32"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--speed-model", help="also time ONNX Runtime INT8 per scheme on this zoo model")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    host = cpu.host()
    print(f"CPU: {host.label}", file=sys.stderr)
    why_not = emulation_available()
    if why_not:
        print(f"no AVX2 emulation: {why_not}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="vmlp-schemes-"))
    report: dict[str, Any] = {"cpu": host.to_dict(), "environment": environment(),
                              "emulated_cpu": None if why_not else "qemu-x86_64 -cpu Haswell (AVX2, no VNNI)",
                              "digits": digits_table(work, args.epochs, why_not is None)}
    if args.speed_model:
        report["speed"] = speed_table(args.speed_model, work, args.iterations, args.threads)
        print(json.dumps(report["speed"], indent=1), file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
