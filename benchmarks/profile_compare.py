"""Full-size S2-MLPv2-Small vs ConvNeXt-T on ONNX Runtime f32, OpenVINO f32 and OpenVINO bf16, batch 1,
2 threads, interleaved, with per-layer top categories: the reference comparison of `vmlp-deploy profile`.

It runs the same stage function as the CLI (so the figures are what users get) and then prints the
ratios that matter: S2-MLPv2/ConvNeXt per backend, and each backend against ONNX Runtime f32.

    python benchmarks/profile_compare.py --iterations 60 -o benchmarks/results/profile_s2mlpv2_vs_convnext

which is the CLI call

    vmlp-deploy profile s2mlpv2_small convnext_tiny --backend cpu,openvino --precision f32,bf16 --batch 1 \\
        --threads 2 -n 60 -o benchmarks/results/profile_s2mlpv2_vs_convnext
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from vmlp_deploy.profile import MeasurePlan, ProfileOptions, profile_models
from vmlp_deploy.profile.cli import print_result
from vmlp_deploy.progress import Steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["s2mlpv2_small", "convnext_tiny"])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/profile_s2mlpv2_vs_convnext"))
    args = parser.parse_args(argv)

    console = Console(highlight=False)
    options = ProfileOptions(backends=("cpu", "openvino"), precisions=("f32", "bf16"), batches=(1,),
                             threads=args.threads, plan=MeasurePlan(iterations=args.iterations, duration_s=None))
    result = profile_models(args.models, options, args.output, overwrite=True, progress=Steps(console))
    print_result(console, result.records)

    median = {(r.model, r.backend, r.precision): r.latency_ms["median"] for r in result.records}
    configs = list(dict.fromkeys((b, p) for _, b, p in median))
    first, *others = args.models
    console.print("\nRatios of medians (interleaved runs):")
    for backend, precision in configs:
        for other in others:
            if (first, backend, precision) in median and (other, backend, precision) in median:
                ratio = median[(first, backend, precision)] / median[(other, backend, precision)]
                console.print(f"  {backend} {precision}: {first} / {other} = {ratio:.2f}x")
    for model in args.models:
        base = median.get((model, "cpu", "f32"))
        for backend, precision in configs:
            if base and (backend, precision) != ("cpu", "f32") and (model, backend, precision) in median:
                console.print(f"  {model}: {backend} {precision} is {base / median[(model, backend, precision)]:.2f}x "
                              "faster than onnxruntime f32")
    for line in result.warnings:
        console.print(f"warning: {line}", markup=False, soft_wrap=True)
    console.print(f"written to {args.output}: {', '.join(result.files.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
