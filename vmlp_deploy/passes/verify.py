"""Verify a rewritten model against the original with ONNX Runtime on seeded random inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx

from ..onnx_io import cpu_session

#: Allowed max |difference| relative to max(1, max |reference|): float round-off, nothing more.
DEFAULT_RTOL = 1e-5


@dataclasses.dataclass
class Verification:
    """How close the rewritten model's outputs are to the original's, over all outputs and samples."""

    max_abs_diff: float
    mean_abs_diff: float
    cosine: float
    n_samples: int
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        mark = "ok" if self.passed else "FAILED"
        return (f"verification {mark}: max|diff|={self.max_abs_diff:.3g} mean|diff|={self.mean_abs_diff:.3g} "
                f"cosine={self.cosine:.9f} over {self.n_samples} random input(s) (tolerance {self.tolerance:.3g})")


def random_feeds(model: onnx.ModelProto, *, n_samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded random inputs for every graph input (symbolic dimensions become 1)."""
    session = cpu_session(model, threads=1, optimize=False)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n_samples):
        feed = {}
        for inp in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            kind = inp.type
            if "float" in kind or "double" in kind:
                dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(kind, np.float32)
                feed[inp.name] = rng.standard_normal(shape).astype(dtype)
            elif "bool" in kind:
                feed[inp.name] = rng.integers(0, 2, shape).astype(bool)
            elif "int" in kind:
                dtype = np.int32 if "int32" in kind else np.int64
                feed[inp.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                raise ValueError(f"cannot make a random input of type {kind} for {inp.name}")
        feeds.append(feed)
    return feeds


def compare_models(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    *,
    n_samples: int = 3,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
    threads: int = 1,
) -> Verification:
    """Run both models on the same seeded random inputs and compare every output."""
    feeds = random_feeds(original, n_samples=n_samples, seed=seed)
    sess_a = cpu_session(original, threads)
    try:
        sess_b = cpu_session(rewritten, threads)
    except Exception:  # noqa: BLE001 - a rewritten model ONNX Runtime refuses is a failed verification
        return Verification(math.inf, math.inf, 0.0, len(feeds), rtol, False)
    max_abs, total, count, dot, na, nb, scale = 0.0, 0.0, 0, 0.0, 0.0, 0.0, 1.0
    passed = True
    for feed in feeds:
        outs_a = sess_a.run(None, feed)
        try:
            outs_b = sess_b.run(None, feed)
        except Exception:  # noqa: BLE001 - so is one that fails to run
            return Verification(math.inf, math.inf, 0.0, len(feeds), rtol, False)
        if len(outs_a) != len(outs_b):
            passed = False
            continue
        for a, b in zip(outs_a, outs_b):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape:
                passed = False
                max_abs = math.inf
                continue
            if not np.issubdtype(a.dtype, np.number):
                passed &= bool(np.array_equal(a, b))
                continue
            a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            diff = np.abs(a64 - b64)
            both_nan = np.isnan(a64) & np.isnan(b64)
            diff[both_nan] = 0.0
            if diff.size:
                max_abs = max(max_abs, float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))))
                total += float(diff.sum())
                count += diff.size
                finite = np.isfinite(a64) & np.isfinite(b64)
                dot += float(a64[finite] @ b64[finite])
                na += float(a64[finite] @ a64[finite])
                nb += float(b64[finite] @ b64[finite])
                scale = max(scale, float(np.max(np.abs(a64[finite]))) if finite.any() else 0.0)
    tolerance = rtol * scale
    cosine = dot / math.sqrt(na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    passed = passed and max_abs <= tolerance
    return Verification(
        max_abs_diff=max_abs,
        mean_abs_diff=total / count if count else 0.0,
        cosine=cosine,
        n_samples=len(feeds),
        tolerance=tolerance,
        passed=passed,
    )
