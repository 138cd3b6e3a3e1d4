"""Does INT8 pay on this CPU? The profile's probe kernels (a 2048³ GEMM and a 1x1 Conv, 768 channels on 56x56),
in f32 and INT8 (Q/DQ), on ONNX Runtime and OpenVINO, best of ``--runs`` after warm-up, and the int8/f32 rate
ratio per kernel. On CPUs whose int8 dot product is no faster than their f32 FMAs (AMD Zen/Zen+: 128-bit units,
no VNNI) the ratio is about 1, and a model's INT8 latency cannot drop much below its FP32 latency.

    python benchmarks/kernel_probes.py --out benchmarks/results/kernel_probes_zen1.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmlp_deploy import cpu
from vmlp_deploy.backends import RunOptions
from vmlp_deploy.profile.peak import DEFAULT_SIZE, KINDS, measure_probe
from vmlp_deploy.records import environment

#: The float precision each backend's probe is pinned to.
FLOAT = {"cpu": "fp32", "openvino": "f32"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    host = cpu.host()
    print(f"CPU: {host.label}, {host.cores} usable cores", file=sys.stderr)
    options = RunOptions(threads=args.threads)
    rows = []
    for backend, f32 in FLOAT.items():
        for kind in KINDS:
            rates = {}
            for precision in (f32, "int8"):
                p = measure_probe(kind, backend, precision, options, size=args.size, runs=args.runs)
                rates[precision] = p
            ratio = rates["int8"].gops / rates[f32].gops
            rows.append({"backend": backend, "kernel": kind, "shape": rates[f32].shape,
                         "f32_gops": round(rates[f32].gops, 1), "int8_gops": round(rates["int8"].gops, 1),
                         "f32_precision_used": rates[f32].precision_used, "int8_over_f32": round(ratio, 2)})
            print(f"{backend:9} {kind:8} {rates[f32].shape:28} f32 {rates[f32].gops:7.1f} GOPS  "
                  f"int8 {rates['int8'].gops:7.1f} GOPS  int8/f32 {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"cpu": host.to_dict(), "threads": args.threads, "size": args.size,
                                        "runs": args.runs, "probes": rows, "environment": environment(("openvino",))},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
