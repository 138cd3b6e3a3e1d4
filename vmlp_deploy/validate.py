"""Numerical validation of an ONNX model against its PyTorch source: the export's hard gate.

Unlike Optimum (where an atol failure is only a warning), a model outside tolerance is not written.
Figures are per output: max and mean absolute difference, the worst per-sample cosine similarity and
top-1 agreement, on random inputs and on real photographs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnxruntime as ort
import torch
from torch import nn


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.99999

    def limit(self, ref_peak: float) -> float:
        """Allowed max |onnx - torch|: atol plus rtol of the output's own scale."""
        return self.atol + self.rtol * ref_peak


@dataclass(frozen=True)
class OutputReport:
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    limit: float
    min_cosine: float
    top1_agreement: float | None
    passed: bool


@dataclass(frozen=True)
class ValidationReport:
    outputs: list[OutputReport]
    n_random: int
    n_images: int
    image_names: list[str]
    tolerance: Tolerance
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def failure_line(self) -> str:
        bad = [o for o in self.outputs if not o.passed]
        return "; ".join(
            f"{o.name}: max abs diff {o.max_abs_diff:.3g} (limit {o.limit:.3g}), min cosine {o.min_cosine:.6f}"
            for o in bad
        )


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)


def run_session(session: ort.InferenceSession, x: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """Run all samples through the session in chunks of the model's batch size (None = dynamic)."""
    input_name = session.get_inputs()[0].name
    step = batch or len(x)
    chunks = [session.run(None, {input_name: x[i : i + step]}) for i in range(0, len(x), step)]
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def compare(
    module: nn.Module,
    session: ort.InferenceSession,
    inputs: np.ndarray,
    batch: int | None,
    tolerance: Tolerance,
    n_random: int,
    image_names: list[str],
) -> ValidationReport:
    """Run PyTorch and ONNX Runtime on the same inputs and apply the tolerance per output."""
    with torch.no_grad():
        ref = module(torch.from_numpy(inputs))
    refs = [t.numpy() for t in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    outs = run_session(session, inputs, batch)
    reports = []
    for meta, r, o in zip(session.get_outputs(), refs, outs, strict=True):
        diff = np.abs(r.astype(np.float64) - o.astype(np.float64))
        limit = tolerance.limit(float(np.abs(r).max()))
        cos = float(_cosine_rows(r, o).min())
        top1 = float((r.argmax(-1) == o.argmax(-1)).mean()) if r.ndim == 2 else None
        max_diff = float(diff.max()) if diff.size else 0.0
        passed = bool(r.shape == o.shape and max_diff <= limit and cos >= tolerance.min_cosine)
        reports.append(
            OutputReport(meta.name, tuple(o.shape), max_diff, float(diff.mean()), limit, cos, top1, passed)
        )
    return ValidationReport(reports, n_random, len(image_names), image_names, tolerance)
