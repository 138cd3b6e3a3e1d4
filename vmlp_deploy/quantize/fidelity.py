"""How far the INT8 model drifts from its FP32 source: logits agreement, cosine, SQNR, and per layer.

Logits metrics compare the deployed INT8 model (backend defaults, graph optimisations on) with the FP32
model on the same backend, on held-out samples that did not calibrate:

* top-1 agreement: INT8's top-1 class equals FP32's;
* top-5 agreement: FP32's top-1 class is among INT8's five highest logits;
* cosine similarity of the logit vectors (mean and worst sample);
* SQNR = 10 log10(sum fp32^2 / sum (int8 - fp32)^2) in dB over all logits: 20 dB means a noise power of 1 %
  of the signal's (10 % in amplitude); every 6 dB more halves the error amplitude.

Per-layer SQNR is measured at the output of every layer that reads quantized activations (the nodes INT8
actually changes), FP32 against INT8, so it shows where the error accumulates through the network. Both
runtimes run their deployed kernels, because a float simulation of the QDQ graph cannot see what the
integer kernels of the CPU do (u8 x s8 pair saturation without VNNI, ``../shared/reference/isa.md``):

* ONNX Runtime: both graphs run with every graph optimisation on; a layer is read where the fused graph
  keeps it (the (u)int8 output of its QuantizeLinear, dequantized, or its own float output), see
  ``_dequantizer``.
* OpenVINO: the INT8 IR keeps the ONNX node names (a Gemm or biased Conv becomes ``name/WithoutBiases`` +
  an Add named ``name``), so the same names are made extra outputs of both compiled models, f32 pinned.
  NNCF's SmoothQuant rescales the activations feeding a layer (and its weights inversely); comparing at the
  layer output cancels that scale, which comparing the FakeQuantize outputs would not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..backends import Loader, RunOptions, Session
from ..backends.onnxruntime import OnnxRuntimeBackend
from ..backends.openvino import OpenVinoBackend
from ..records import db_to_json
from .data import BatchReader, fill_batch

WORST_LAYERS = 10


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf for identical tensors."""
    signal = float(np.sum(np.square(ref, dtype=np.float64)))
    noise = float(np.sum(np.square(out.astype(np.float64) - ref.astype(np.float64))))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-300), 1.0)


@dataclass(frozen=True)
class LogitsReport:
    samples: int
    top1_agreement: float
    top5_agreement: float
    cosine_mean: float
    cosine_min: float
    sqnr_db: float


def compare_logits(ref: np.ndarray, out: np.ndarray) -> LogitsReport:
    ref2, out2 = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    top1_ref = ref2.argmax(1)
    k = min(5, ref2.shape[1])
    top5_out = np.argsort(-out2, axis=1)[:, :k]
    cos = _cosines(ref2, out2)
    return LogitsReport(
        samples=len(ref2),
        top1_agreement=float((top1_ref == out2.argmax(1)).mean()),
        top5_agreement=float((top5_out == top1_ref[:, None]).any(1).mean()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        sqnr_db=sqnr_db(ref2, out2),
    )


def run_all(session: Session, samples: np.ndarray, batch: int | None, chunk: int = 32) -> np.ndarray:
    """First output of ``session`` for every sample: a fixed batch size pads the last batch by repetition."""
    step = batch or chunk
    outs = []
    for i in range(0, len(samples), step):
        x = samples[i : i + step]
        outs.append(session.run(fill_batch(x, batch))[0][: len(x)])
    return np.concatenate(outs)


@dataclass(frozen=True)
class LayerSqnr:
    node: str
    op_type: str
    tensor: str
    sqnr_db: float


@dataclass
class FidelityReport:
    """Logits metrics on held-out samples and the worst layers; everything JSON-ready through ``to_dict``."""

    logits: LogitsReport
    runtime: str
    precision: str
    layers_measured: int = 0
    layer_samples: int = 0
    worst_layers: list[LayerSqnr] = field(default_factory=list)
    layer_method: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.logits)
        d["sqnr_db"] = db_to_json(self.logits.sqnr_db)
        d.update(runtime=self.runtime, precision=self.precision, layers_measured=self.layers_measured,
                 layer_samples=self.layer_samples, layer_method=self.layer_method,
                 worst_layers=[finite_dict(w) for w in self.worst_layers])
        return d


def layer_sqnr(
    fp32_run: Callable[[np.ndarray], list[np.ndarray]],
    int8_run: Callable[[np.ndarray], list[np.ndarray]],
    layers: list[tuple[str, str, str]],
    samples: np.ndarray,
    input_name: str,
    batch: int | None,
) -> list[LayerSqnr]:
    """SQNR per (node, op_type, tensor), streaming sums so memory stays at one batch of activations.

    ``fp32_run``/``int8_run`` return the probed tensors in ``layers`` order.
    """
    signal = np.zeros(len(layers))
    noise = np.zeros(len(layers))
    for x in BatchReader(samples, input_name, batch):
        for i, (a, b) in enumerate(zip(fp32_run(x), int8_run(x), strict=True)):
            a64 = a.astype(np.float64)
            signal[i] += float(np.sum(a64 * a64))
            noise[i] += float(np.sum(np.square(b.astype(np.float64) - a64)))
    out = []
    for (node, op, tensor), s, n in zip(layers, signal, noise, strict=True):
        value = float("inf") if n == 0 else (float("-inf") if s == 0 else 10 * float(np.log10(s / n)))
        out.append(LayerSqnr(node, op, tensor, value))
    return sorted(out, key=lambda layer: layer.sqnr_db)


def _picker(session: Session, index: list[int],
            read: list[Callable[[np.ndarray], np.ndarray]] | None = None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """One inference, the probed outputs in ``index`` order (each passed through ``read``, if given)."""

    def run(x: np.ndarray) -> list[np.ndarray]:
        outs = session.run(x)
        if read is None:
            return [outs[i] for i in index]
        return [f(outs[i]) for i, f in zip(index, read, strict=True)]

    return run


def _dequantizer(model: onnx.ModelProto, tensor: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Where the deployed INT8 graph keeps ``tensor``, and how to read it back as float.

    ONNX Runtime fuses ``DQ -> layer -> Q`` into one integer kernel (QGemm, QLinearConv, ...) whose output is
    the Q node's (u)int8 tensor; a layer's float output only exists in the unfused graph. So a layer followed
    by a per-tensor QuantizeLinear is read at that Q output and dequantized here (exposing it as a graph output
    leaves every fusion in place: the logits are bit-identical); any other layer is read at its own output.
    """
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] != tensor or len(node.input) < 3:
            continue
        if node.input[1] in inits and node.input[2] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            if scale.size == 1 and zero.size == 1:
                s, z = float(scale), float(zero)
                return node.output[0], lambda q: (q.astype(np.float32) - z) * s
    return tensor, lambda v: v


def ort_layer_probes(float_model: Path, int8_model: Path, nodes: list[str], work: Path, threads: int | None,
                     load_int8: Loader) -> tuple[Callable, Callable, list[tuple[str, str, str]]]:
    """Both ONNX graphs with the outputs of ``nodes`` exposed, run with every graph optimisation on: the INT8
    numbers come from the integer kernels that will be deployed (saturation included), not from a float
    simulation of the QDQ graph."""
    fm = onnx.load(str(float_model))
    qm = onnx.load(str(int8_model))
    by_name = {n.name: n for n in fm.graph.node}
    q_tensors = {o for n in qm.graph.node for o in n.output}
    layers = [(name, by_name[name].op_type, by_name[name].output[0]) for name in nodes
              if name in by_name and by_name[name].output[0] in q_tensors]
    taps = {"fp32": [(t, lambda v: v) for _, _, t in layers],
            "int8": [_dequantizer(qm, t) for _, _, t in layers]}
    runs = []
    for model, tag in ((fm, "fp32"), (qm, "int8")):
        existing = {o.name for o in model.graph.output}
        for tensor, _ in taps[tag]:
            if tensor not in existing:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
                existing.add(tensor)
        path = work / f"probe-{tag}.onnx"
        onnx.save(model, str(path))
        load = load_int8 if tag == "int8" else OnnxRuntimeBackend().load
        session = load(path, RunOptions(threads=threads))
        names = [o.name for o in model.graph.output]
        runs.append(_picker(session, [names.index(t) for t, _ in taps[tag]], [f for _, f in taps[tag]]))
    return runs[0], runs[1], layers


def ov_layer_probes(float_model: Path, int8_model: Path, nodes: list[str], work: Path, threads: int | None,
                    load_int8: Loader) -> tuple[Callable, Callable, list[tuple[str, str, str]]]:
    """Both models in OpenVINO (f32 pinned) with the outputs of the ops named ``nodes`` exposed."""
    import openvino as ov

    core = ov.Core()
    fm, qm = core.read_model(str(float_model)), core.read_model(str(int8_model))
    onnx_ops = {n.name: n.op_type for n in onnx.load(str(float_model), load_external_data=False).graph.node}
    f_ops = {op.get_friendly_name(): op for op in fm.get_ordered_ops()}
    q_ops = {op.get_friendly_name(): op for op in qm.get_ordered_ops()}
    layers = [(n, onnx_ops.get(n, "?"), n) for n in nodes if n in f_ops and n in q_ops
              and f_ops[n].get_output_size() >= 1 and q_ops[n].get_output_size() >= 1]
    runs = []
    for model, ops, tag in ((fm, f_ops, "fp32"), (qm, q_ops, "int8")):
        model.add_outputs([ops[n].output(0) for n, _, _ in layers])
        sources = [(r.input_value(0).get_node().get_friendly_name(), r.input_value(0).get_index())
                   for r in model.get_results()]
        index = [sources.index((n, 0)) for n, _, _ in layers]
        path = work / f"probe-{tag}.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        load = load_int8 if tag == "int8" else OpenVinoBackend().load
        runs.append(_picker(load(path, RunOptions(threads=threads, precision="f32")), index))
    return runs[0], runs[1], layers


def finite_dict(layer: LayerSqnr) -> dict[str, Any]:
    d = asdict(layer)
    d["sqnr_db"] = db_to_json(layer.sqnr_db)
    return d
