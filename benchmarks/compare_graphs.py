"""Any ONNX graphs of one model side by side: ONNX Runtime f32, OpenVINO default (bf16 here) and OpenVINO f32.

For before/after comparisons of a pass on saved graphs (export one graph at the commit before the change and
one after, or with and without an option). Same method as ``rewrite_speed.py``: one backend at a time, the
graphs visited in turn for ``--visit`` inferences, ORT spinning off, medians; ratios are to the first graph.

    python benchmarks/compare_graphs.py before.onnx after.onnx --iterations 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import onnx

from rewrite_speed import BACKENDS, time_backends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", type=Path, help="ONNX files with the same single input")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--visit", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    dims = onnx.load(str(args.graphs[0]), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    x = np.random.default_rng(0).standard_normal([d.dim_value or 1 for d in dims]).astype(np.float32)
    paths = {str(p): p for p in args.graphs}
    times, precisions = time_backends(paths, x, threads=args.threads, warmup=args.warmup,
                                      iterations=args.iterations, visit=args.visit)
    for backend in BACKENDS:
        medians = [statistics.median(times[f"{backend}/{p}"]) for p in paths]
        for p, m in zip(paths, medians):
            used = precisions.get(f"{backend}/{p}", "f32")
            print(f"{backend:>10} ({used}) {m:8.2f} ms  {m / medians[0]:.3f}  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
