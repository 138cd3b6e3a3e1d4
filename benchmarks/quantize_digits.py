"""Real INT8 accuracy: tiny S2-MLPv2, ConvNeXt and DeiT trained on scikit-learn's digits, quantized for every backend.

The same procedure as ``tests/test_quantize_digits.py`` (see ``vmlp_deploy.quantize.digits``): 1 797 digits
upsampled to 32x32 RGB, a fixed 70/30 split, training seeded on ``--threads`` threads, calibration on 300
training images, FP32 and INT8 top-1 on the 539 test images, both run by the backend's own runtime
(OpenVINO with f32 pinned). The acceptance bound is |INT8 - FP32| <= 1.0 point (target 0.5).

    python benchmarks/quantize_digits.py --out benchmarks/results/quantize_digits.json
    python benchmarks/quantize_digits.py --configs deit --out benchmarks/results/quantize_digits_deit_zen1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from vmlp_deploy.quantize import QUANTIZERS, QuantizeOptions, quantize_run
from vmlp_deploy.quantize import digits as dg
from vmlp_deploy.records import environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", choices=list(dg.CONFIGS), default=list(dg.CONFIGS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vmlp-digits-"))
    split = dg.write_digits(work / "data", seed=args.seed)
    rows = []
    for config in args.configs:
        start = time.perf_counter()
        lm = dg.train(config, split, epochs=args.epochs, seed=args.seed, threads=args.threads)
        train_s = time.perf_counter() - start
        run = dg.export(lm, work / config).out_dir
        params = sum(p.numel() for p in lm.module.parameters())
        for backend in QUANTIZERS:
            start = time.perf_counter()
            r = quantize_run(run, QuantizeOptions(backend=backend, output=work / f"{config}-{backend}",
                                                  calibration_data=split.train_dir, eval_data=split.test_dir,
                                                  threads=args.threads))
            a = r.accuracy
            assert a is not None
            rows.append({
                "model": f"{config} ({dg.CONFIGS[config][0]} overrides)", "params": params,
                "train_s": round(train_s, 1), "backend": backend, "test_images": a.images,
                "top1_fp32": round(100 * float(a.top1_fp32), 2), "top1_int8": round(100 * float(a.top1_int8), 2),
                "delta_points": round(float(a.delta_points), 2), "top1_agreement_heldout": float(r.fidelity.logits.top1_agreement),
                "logits_sqnr_db": round(float(r.fidelity.logits.sqnr_db), 1), "quantize_s": round(time.perf_counter() - start, 1),
                "within_1_point": bool(abs(a.delta_points) <= 1.0),
            })
    print(f"{'model':<10}{'backend':<10}{'FP32 %':>8}{'INT8 %':>8}{'Δ pts':>7}{'SQNR dB':>9}{'train s':>9}"
          f"{'quant s':>9}")
    for r in rows:
        print(f"{r['model'].split()[0]:<10}{r['backend']:<10}{r['top1_fp32']:>8.2f}{r['top1_int8']:>8.2f}"
              f"{r['delta_points']:>+7.2f}{r['logits_sqnr_db']:>9.1f}{r['train_s']:>9.1f}{r['quantize_s']:>9.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "configs": {k: {"variant": dg.CONFIGS[k][0], "overrides": dg.CONFIGS[k][1]}
                                                                  for k in args.configs},
                                        "epochs": args.epochs, "threads": args.threads, "seed": args.seed,
                                        "environment": environment()}, indent=2, default=list) + "\n")
    return 0 if all(r["within_1_point"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
