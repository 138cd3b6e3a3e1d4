"""``--backend cpu``: ONNX Runtime static QDQ quantization, and the ONNX Runtime machinery ``tensorrt`` reuses.

Steps, as ONNX Runtime recommends: ``quant_pre_process`` (symbolic shape inference + basic graph optimisation),
calibration, then ``quantize_static`` in QDQ format with per-channel int8 weights.

Calibration is driven here rather than inside ``quantize_static`` for two reasons. Memory: the histogram
calibrators (entropy, percentile) keep every intermediate tensor of every sample they are fed at once, so
samples go in chunks sized to a fixed memory budget (the histograms merge across chunks); min-max only keeps
per-tensor minima and maxima. (ONNX Runtime's own ``CalibMaxIntermediateOutputs`` option is not used: in
1.32 it drops the collected outputs without folding them into the ranges, and calibration then fails with
"No data is collected".) Reuse: the ranges are written to a calibration cache once, and every later
``quantize_static`` call (``--keep-float auto`` re-quantizes several times) reads them from it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from ..backends import Loader
from ..backends.onnxruntime import OnnxRuntimeBackend
from ..cpu import CpuTarget
from ..errors import UserError
from ..progress import Progress
from ._bar import bar
from .base import LayerProbes, LayoutRule
from .data import BatchReader
from .fidelity import ort_layer_probes
from .options import AS_GIVEN, METHODS, QuantizeOptions
from .scheme import IntegerScheme, SchemeChoice, scheme_for_isa
from .source import SourceModel

#: Bytes of intermediate tensors a histogram calibrator may hold at once (one chunk of samples).
HISTOGRAM_CHUNK_BYTES = 1 << 30
#: Largest chunk of calibration batches (sets the progress bar's granularity).
MAX_CHUNK = 32


@dataclass(frozen=True)
class OrtScheme:
    """Where Q/DQ go and how they are encoded: one preset per deployment target."""

    name: str
    activation_type: str
    weight_type: str
    activation_symmetric: bool
    op_types: tuple[str, ...] | None
    extra: dict[str, Any] = field(default_factory=dict)
    gelu_float: bool = False
    reduce_range: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "QDQ",
            "activations": f"{self.activation_type}, {'symmetric' if self.activation_symmetric else 'asymmetric'}, per-tensor",
            "weights": f"{self.weight_type}{' (7 bits: reduce_range)' if self.reduce_range else ''}, symmetric, "
                       "per-channel",
            "op_types_to_quantize": "onnxruntime defaults (all QDQ-capable ops)" if self.op_types is None
            else list(self.op_types),
            "extra_options": self.extra,
            "gelu_float": self.gelu_float,
        }


def cpu_scheme(integer: IntegerScheme) -> OrtScheme:
    """ONNX Runtime settings for an integer scheme chosen for the target CPU (``scheme.py``).

    The exact-GELU subgraph stays float: ONNX Runtime fuses it into one Gelu kernel, which quantized Mul/Add
    nodes inside it would prevent (five int8 elementwise ops plus Q/DQ instead of one float kernel).
    """
    return OrtScheme(f"cpu/{integer.name}", "QUInt8", integer.ort_weight_type, False, None, {"WeightSymmetric": True},
                     gelu_float=True, reduce_range=integer.reduce_range)


def gelu_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of every exact-GELU chain ``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only(node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        nxt = consumers.get(node.output[0], [])
        return nxt[0] if len(nxt) == 1 and nxt[0].op_type == op else None

    names: list[str] = []
    for erf in (n for n in model.graph.node if n.op_type == "Erf"):
        div = producer.get(erf.input[0])
        add = only(erf, "Add")
        mul = only(add, "Mul") if add is not None else None
        half = only(mul, "Mul") if mul is not None else None
        if div is not None and div.op_type == "Div" and half is not None and div.input[0] in mul.input:
            names += [div.name, erf.name, add.name, mul.name, half.name]
    return names


def _quiet() -> contextlib.AbstractContextManager[Any]:
    """ONNX Runtime's calibrators print progress lines to stdout and log pre-processing hints and failures (with
    tracebacks); keep them out: a failure reaches the user as the exception it raises, in one line."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    stack.callback(logger.setLevel, level)
    return stack


def restore_float_inputs(model: onnx.ModelProto, reads_float: Callable[[onnx.NodeProto, int], bool]) -> int:
    """Reconnect the inputs ``reads_float`` picks to the float tensors behind their Q/DQ pairs; drop dead pairs.

    ``quantize_static`` routes *every* reader of a quantized tensor through its Q/DQ pair as soon as one reader
    is quantized, so a node "excluded" from quantization may still read fake-quantized activations (a
    LayerNorm next to a quantized residual Add, say). Keeping a layer in float means float inputs, so they are
    restored here. Returns how many inputs were rewired.
    """
    graph = model.graph
    q_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    dq_source = {n.output[0]: q_input[n.input[0]] for n in graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in q_input}
    rewired = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in dq_source and reads_float(node, i):
                node.input[i] = dq_source[name]
                rewired += 1
    if not rewired:
        return 0
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)
    return rewired


def float_graph_outputs(model: onnx.ModelProto) -> int:
    """Undo the Q/DQ that ``quantize_static`` puts on graph outputs; returns how many.

    8-bit logits gain no speed (they are dequantized right away) and round close classes onto the same level,
    which breaks top-1 ties arbitrarily; the producing layer writes the float output directly instead.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    undone = 0
    for out in graph.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in producer:
            continue
        inner = q.input[0]
        for node in graph.node:
            node.output[:] = [out.name if o == inner else o for o in node.output]
            node.input[:] = [out.name if i == inner else i for i in node.input]
        graph.node.remove(q)
        graph.node.remove(dq)
        undone += 1
    if undone:
        read = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(t)
    return undone


class OrtQuantizer:
    """Pre-process and calibrate once, then quantize as often as needed with different nodes kept in float."""

    backend: ClassVar[str] = OnnxRuntimeBackend.name
    check_runtime: ClassVar[str] = OnnxRuntimeBackend.name
    label: ClassVar[str] = OnnxRuntimeBackend.name
    library: ClassVar[str] = "ONNX Runtime"
    own_options: ClassVar[tuple[str, ...]] = ()
    methods: ClassVar[tuple[str, ...]] = METHODS
    required_modules: ClassVar[tuple[str, ...]] = ()
    by_default: ClassVar[bool] = True
    predicts_saturation: ClassVar[bool] = True
    calibrates_in_quantize: ClassVar[bool] = False
    layout_rule: ClassVar[LayoutRule] = LayoutRule(
        AS_GIVEN, f"{OnnxRuntimeBackend.name} runs the channels-last export fastest (BENCHMARKS.md)")
    layer_method: ClassVar[str] = ("ONNX Runtime, all graph optimisations (deployed integer kernels), outputs of "
                                   "quantized layers")

    @classmethod
    def create(cls, source: SourceModel, options: QuantizeOptions, scheme: IntegerScheme, work: Path,
               architecture: Path | None = None) -> OrtQuantizer:
        """ONNX Runtime quantizes the graph it is given: ``architecture`` changes nothing here."""
        return cls(source, options, cpu_scheme(scheme), work)

    @classmethod
    def choose_scheme(cls, target: CpuTarget, requested: str) -> SchemeChoice:
        """Every scheme runs on ONNX Runtime's kernels: by the target's ISA, or as asked."""
        return scheme_for_isa(target, requested)

    def __init__(self, source: SourceModel, options: QuantizeOptions, scheme: OrtScheme, work: Path) -> None:
        self.source = source
        self.options = options
        self.scheme = scheme
        self.work = work
        self.float_model = work / "preprocessed.onnx"
        self.cache = work / "calibration.json"
        self.preprocess_note = ""
        self.float_by_default: list[str] = []
        self.calibration_chunk = 0
        self.calibration_batches = 0

    def _q(self) -> Any:
        from onnxruntime import quantization as q

        return q

    def _method(self) -> Any:
        q = self._q()
        return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                "percentile": q.CalibrationMethod.Percentile}[self.options.method]

    def _op_types(self) -> list[str]:
        if self.scheme.op_types is not None:
            return list(self.scheme.op_types)
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))

    def preprocess(self) -> None:
        """``quant_pre_process``: symbolic shape inference and basic optimisation, as ONNX Runtime advises."""
        q = self._q()
        with _quiet():
            try:
                q.quant_pre_process(str(self.source.onnx_path), str(self.float_model))
            except Exception as e:  # symbolic shape inference fails on some graphs; ONNX shape inference suffices
                self.preprocess_note = (f"symbolic shape inference failed ({type(e).__name__}); "
                                        "pre-processed with ONNX shape inference only")
                q.quant_pre_process(str(self.source.onnx_path), str(self.float_model), skip_symbolic_shape=True)

    def calibrate(self, samples: np.ndarray, progress: Progress) -> None:
        """Collect activation ranges over ``samples`` in memory-bounded chunks and cache them."""
        q = self._q()
        extra: dict[str, Any] = {"symmetric": self.scheme.activation_symmetric}
        if self.options.method == "percentile":
            extra["percentile"] = self.options.percentile
        reader = BatchReader(samples, self.source.input_name, self.source.batch)
        if len(reader) == 0:
            raise UserError(f"{len(samples)} calibration samples do not fill one batch of {self.source.batch}: "
                            "pass more --num-samples")
        with _quiet():
            calibrator = q.create_calibrator(self.float_model, self._op_types(),
                                             augmented_model_path=str(self.work / "augmented.onnx"),
                                             calibrate_method=self._method(), extra_options=extra)
        chunk = MAX_CHUNK
        if self.options.method != "minmax":
            first = next(reader.batches())
            per_batch = sum(o.nbytes for o in calibrator.infer_session.run(None, {self.source.input_name: first}))
            chunk = max(1, min(MAX_CHUNK, HISTOGRAM_CHUNK_BYTES // per_batch))
        self.calibration_chunk, self.calibration_batches = chunk, len(reader)
        with bar(progress, f"Calibrating ({self.options.method}, ONNX Runtime, {len(reader)} batches)", len(reader)) as advance:
            for start in range(0, len(reader), chunk):
                reader.set_range(start, start + chunk)
                with _quiet():
                    calibrator.collect_data(reader)
                advance(min(chunk, len(reader) - start))
        with _quiet():
            ranges = calibrator.compute_data()
        q.save_tensors_data(ranges, self.cache)
        del calibrator

    def prepare(self, samples: np.ndarray, progress: Progress) -> None:
        with progress.step("Pre-processing with onnxruntime quant_pre_process"):
            self.preprocess()
        if self.scheme.gelu_float:
            self.float_by_default = gelu_nodes(onnx.load(str(self.float_model), load_external_data=False))
        self.calibrate(samples, progress)

    def quantize(self, keep_float: list[str], out_dir: Path) -> Path:
        """Write ``out_dir/model.onnx`` quantized with the cached ranges, ``keep_float`` nodes left in float."""
        q = self._q()
        out = out_dir / "model.onnx"
        with _quiet():
            q.quantize_static(
                str(self.float_model), str(out), None,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(self.scheme.op_types) if self.scheme.op_types else None,
                per_channel=True,
                reduce_range=self.scheme.reduce_range,
                activation_type=getattr(q.QuantType, self.scheme.activation_type),
                weight_type=getattr(q.QuantType, self.scheme.weight_type),
                nodes_to_exclude=list(keep_float) + self.float_by_default,
                calibrate_method=self._method(),
                extra_options={**self.scheme.extra, "ActivationSymmetric": self.scheme.activation_symmetric},
                calibration_cache_path=str(self.cache),
            )
        model = onnx.load(str(out))
        keep = set(keep_float) | set(self.float_by_default)
        rewired = restore_float_inputs(model, lambda node, i: node.name in keep or self.reads_float(node, i))
        if rewired + float_graph_outputs(model):
            onnx.save(model, str(out))
        return out

    @property
    def symmetric_activations(self) -> bool:
        return self.scheme.activation_symmetric

    def reads_float(self, node: onnx.NodeProto, index: int) -> bool:
        """Whether input ``index`` of ``node`` must bypass Q/DQ whatever its other readers need (none for cpu)."""
        return False

    def quantized_consumers(self, int8_model: Path) -> list[str]:
        """Names of the float model's nodes that read a dequantized activation in ``int8_model``."""
        model = onnx.load(str(int8_model), load_external_data=False)
        dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        weights = {t.name for t in model.graph.initializer}
        names = {n.name for n in onnx.load(str(self.float_model), load_external_data=False).graph.node}
        q_in = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        dq_src = {n.output[0]: q_in.get(n.input[0], "") for n in model.graph.node if n.op_type == "DequantizeLinear"}
        return [n.name for n in model.graph.node
                if n.name in names and any(i in dq_out and dq_src.get(i) not in weights and dq_src.get(i) != ""
                                           for i in n.input)]

    def layer_probes(self, int8_model: Path, nodes: list[str], work: Path, threads: int | None,
                     load_int8: Loader) -> LayerProbes:
        return ort_layer_probes(self.float_model, int8_model, nodes, work, threads, load_int8)

    def post_check(self, int8_model: Path, progress: Progress) -> dict[str, Any] | None:
        """ONNX Runtime runs any QDQ graph ``quantize_static`` writes: nothing to check."""
        return None

    def settings(self) -> dict[str, Any]:
        import onnxruntime

        return {
            "runtime": f"onnxruntime {onnxruntime.__version__} (quantize_static)",
            "scheme": self.scheme.to_dict(),
            "float_by_default": f"{len(self.float_by_default)} nodes of exact-GELU chains (fused into Gelu at run time)"
            if self.float_by_default else "none",
            "calibration_method": self.options.method,
            "calibration_batches": self.calibration_batches,
            "calibration_batch_size": self.source.batch or 1,
            "calibration_chunk_batches": self.calibration_chunk,
            "pre_process": "onnxruntime.quantization.quant_pre_process" + (f" ({self.preprocess_note})"
                                                                         if self.preprocess_note else ""),
        }
