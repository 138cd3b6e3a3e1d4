"""``--keep-float auto``: find the few layers that INT8 hurts most and leave them in float.

Ranking. Each quantized layer is scored by the quantization noise it adds locally, measured on the FP32
model: its activation inputs are quantized to 8 bits with ranges taken over calibration samples (asymmetric
uint8 or symmetric int8, as the backend will), its weights per output channel (symmetric int8), and the
noise-to-signal power ratios of its inputs and weights are summed. Layers fed by outlier-heavy tensors
(LayerNorm inputs on the residual stream, the split-attention softmax, the patch embedding's raw pixels,
the pooled features before the head) score high. It costs two float passes over a few samples.

Search. The ranking is a priority order; the quantizer then keeps the top 1, 2, 4, 8 ... layers in float and
measures top-1 agreement with FP32 on calibration samples (the held-out samples stay unseen for the final
report) until ``--min-agreement`` is met, then bisects down to the smallest such prefix. Every step is a real
quantization on the real backend; ``--sensitivity-rounds`` caps how many. If the target is never met, the
best prefix seen is kept and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..backends import RunOptions
from ..backends.onnxruntime import OnnxRuntimeBackend
from .data import BatchReader

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Ranked:
    node: str
    op_type: str
    noise_to_signal: float
    inputs: tuple[str, ...]
    weight: str | None

    def to_dict(self) -> dict[str, Any]:
        snr = float("inf") if self.noise_to_signal == 0 else 10 * float(np.log10(1 / self.noise_to_signal))
        return {"node": self.node, "op_type": self.op_type, "local_sqnr_db": round(snr, 2) if np.isfinite(snr) else "inf"}


def _fake_quant(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> np.ndarray:
    """8-bit quantize-dequantize with a per-tensor range, the way ONNX Runtime and NNCF derive scales."""
    if symmetric:
        a = max(abs(lo), abs(hi))
        if a == 0:
            return x
        scale = a / 127.0
        return np.clip(np.round(x / scale), -127, 127) * scale
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return x
    scale = (hi - lo) / 255.0
    zp = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def _weight_nsr(w: np.ndarray, axis: int) -> float:
    """Noise-to-signal of symmetric per-output-channel int8 weights."""
    moved = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    peak = np.abs(moved).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    noise = float(np.sum(np.square(np.round(moved / scale) * scale - moved)))
    signal = float(np.sum(np.square(moved)))
    return noise / signal if signal > 0 else 0.0


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    if node.op_type == "MatMul":
        return -1
    if node.op_type == "ConvTranspose":
        return 1
    return 0


def rank_layers(
    float_model: Path,
    nodes: list[str],
    samples: np.ndarray,
    input_name: str,
    batch: int | None,
    symmetric: bool,
    work: Path,
    threads: int | None,
) -> list[Ranked]:
    """Score ``nodes`` of ``float_model`` by local INT8 noise (highest first)."""
    model = onnx.load(str(float_model))
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    chosen = [by_name[n] for n in nodes if n in by_name]
    tensors: list[str] = []
    for node in chosen:
        for i in node.input:
            if i and i not in inits and i not in tensors:
                tensors.append(i)
    existing = [o.name for o in model.graph.output]
    for t in tensors:
        if t not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    probe = work / "sensitivity-probe.onnx"
    onnx.save(model, str(probe))
    session = OnnxRuntimeBackend().load(probe, RunOptions(threads=threads, opt_level="disable"))
    names = [o.name for o in model.graph.output]
    index = {t: names.index(t) for t in tensors}
    reader = BatchReader(samples, input_name, batch)
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    floats: set[str] = set()
    for x in reader:
        outs = session.run(x)
        for t in tensors:
            v = outs[index[t]]
            if np.issubdtype(v.dtype, np.floating) and v.size:
                floats.add(t)
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    signal = dict.fromkeys(floats, 0.0)
    noise = dict.fromkeys(floats, 0.0)
    for x in reader:
        outs = session.run(x)
        for t in floats:
            v = outs[index[t]].astype(np.float64)
            signal[t] += float(np.sum(v * v))
            noise[t] += float(np.sum(np.square(_fake_quant(v, lo[t], hi[t], symmetric) - v)))
    ranked = []
    for node in chosen:
        acts = tuple(i for i in node.input if i in floats)
        nsr = sum(noise[t] / signal[t] for t in acts if signal[t] > 0)
        weight = node.input[1] if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits else None
        if weight is not None:
            w = numpy_helper.to_array(inits[weight])
            if w.ndim >= 2:
                nsr += _weight_nsr(w, _weight_axis(node) % w.ndim)
        ranked.append(Ranked(node.name, node.op_type, nsr, acts, weight))
    return sorted(ranked, key=lambda r: -r.noise_to_signal)


@dataclass
class SearchResult:
    kept: list[str]
    met: bool
    history: list[tuple[int, float]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    #: How many quantized layers were ranked (the most the search could keep in float).
    layers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": self.kept, "target_met": self.met, "ranked_layers": self.layers,
                "history": [{"float_layers": k, "top1_agreement": a} for k, a in self.history],
                "ranking_top20": self.ranking}


def search(order: list[str], baseline: float, measure: Callable[[list[str]], float], target: float,
           rounds: int) -> SearchResult:
    """Smallest prefix of ``order`` kept in float that reaches ``target`` (doubling, then bisection).

    ``baseline`` is the agreement with nothing kept in float; ``measure(prefix)`` quantizes and measures.
    """
    history = [(0, baseline)]
    if baseline >= target or not order:
        return SearchResult([], baseline >= target, history)
    lo, hi, k = 0, None, 1
    while rounds > 0:
        k = min(k, len(order))
        agreement = measure(order[:k])
        history.append((k, agreement))
        rounds -= 1
        if agreement >= target:
            hi = k
            break
        lo = k
        if k == len(order):
            break
        k *= 2
    while hi is not None and rounds > 0 and hi - lo > 1:
        mid = (lo + hi) // 2
        agreement = measure(order[:mid])
        history.append((mid, agreement))
        rounds -= 1
        if agreement >= target:
            hi = mid
        else:
            lo = mid
    if hi is not None:
        return SearchResult(order[:hi], True, history)
    best_k, _ = max(history, key=lambda h: (h[1], -h[0]))
    return SearchResult(order[:best_k], False, history)
