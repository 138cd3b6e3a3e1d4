"""ONNX Runtime CPU execution provider.

Timed runs use I/O binding (the input is bound once, as benchmark tools do), so a latency is one
``run_with_iobinding`` call. Throughput runs use one session per stream, the threads split between them,
each stream driven by its own Python thread (ONNX Runtime releases the GIL while it runs).
Per-layer times come from ONNX Runtime's own profiler (Chrome-trace JSON, ``<node>_kernel_time`` events).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UserError, first_line
from ..onnx_io import load_checked
from .base import (Concurrent, HostCpuPolicy, LayerTime, RunOptions, Timer, canonical_precision, fixed_shape,
                   require_profiling)

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger")


def graph_input(model: Path) -> tuple[str, list[int | str], bool]:
    """Name and declared shape of the model's single image input, and whether the graph is quantized
    (QDQ nodes or QLinear*/*Integer operators), read from the protobuf without the weights."""
    graph = load_checked(model, load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{model.name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                        "vmlp-deploy feeds one image tensor: export a single-input model")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise UserError(f"{model.name} takes {onnx.TensorProto.DataType.Name(tensor.elem_type)} input "
                        f"{inputs[0].name!r}; vmlp-deploy feeds float32 images: keep float I/O when exporting")
    dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                             for d in tensor.shape.dim]
    quantized = any(n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear") for n in graph.node)
    return inputs[0].name, dims, quantized


def parse_profile(events: list[dict[str, Any]], runs: int) -> list[LayerTime]:
    """Per-node mean kernel time over the last ``runs`` ``model_run`` events of an ONNX Runtime profile.

    Earlier runs (warm-up, or inferences before profiling was wanted) are left out by their timestamps.
    """
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) < runs or runs < 1:
        raise ValueError(f"the profile holds {len(starts)} runs, fewer than the {runs} asked for")
    first = starts[-runs]
    totals: dict[str, list[Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < first:
            continue
        args = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        entry = totals.setdefault(name, [args.get("op_name", "?"), args.get("provider", ""), 0.0])
        entry[2] += float(e["dur"])
    return [LayerTime(name=n, op_type=op, exec_type=prov, time_ms=us / 1000.0 / runs)
            for n, (op, prov, us) in totals.items()]


class OrtSession:
    def __init__(self, model: Path, options: RunOptions) -> None:
        if options.device.upper() != "CPU":
            raise UserError(f"the cpu backend runs on CPU only, not {options.device}: drop --device")
        precision = canonical_precision(options.precision)
        self.input_name, declared, self.quantized = graph_input(model)
        if precision not in (None, "f32", "int8"):
            raise UserError(f"the cpu backend runs the model's own precision; --precision {options.precision} "
                            "is not available (quantize the model for int8)")
        if precision == "int8" and not self.quantized:
            raise UserError(f"{model.name} has no Q/DQ nodes, so ONNX Runtime would run it in f32: "
                            "quantize it first (vmlp-deploy quantize) to profile int8")
        if options.opt_level not in _LEVELS:
            raise UserError(f"unknown graph optimisation level {options.opt_level!r}: use {', '.join(_LEVELS)}")
        if options.streams < 1:
            raise UserError(f"streams must be at least 1, got {options.streams}")
        self.options = options
        self.model = model
        self.free_dims: dict[str, int] = {}
        self.input_shape: list[int | str] = declared
        if options.input_shape is not None:
            shape = fixed_shape(declared, options.input_shape, model.name)
            if "?" in declared:
                raise UserError(f"{model.name} has unnamed dynamic input dimensions {declared}, which ONNX Runtime "
                                "cannot fix: re-export it with named (or static) dimensions")
            self.free_dims = {str(d): s for d, s in zip(declared, shape, strict=True) if isinstance(d, str)}
            self.input_shape = list(shape)
        self.intra_threads = options.threads // options.streams if options.threads else None
        if options.threads and self.intra_threads == 0:
            raise UserError(f"{options.streams} streams need at least {options.streams} threads: "
                            "raise --threads or lower --streams")
        self.sessions = [self._session(self.intra_threads, options.profiling and i == 0)
                         for i in range(options.streams)]
        self.session = self.sessions[0]
        self.precision = "int8" if self.quantized else "fp32"

    def _session(self, threads: int | None, profiling: bool) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = _LEVELS[self.options.opt_level]
        so.log_severity_level = 3
        so.inter_op_num_threads = 1
        if threads:
            so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spinning else "0")
        for name, value in self.free_dims.items():
            so.add_free_dimension_override_by_name(name, value)
        if profiling:
            so.enable_profiling = True
            prefix = self.options.extra.get("profile_prefix") or os.path.join(tempfile.gettempdir(), "vmlp_ort_profile")
            so.profile_file_prefix = str(prefix)
        try:
            return ort.InferenceSession(str(self.model), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own pybind error types (Fail, InvalidGraph, NotImplemented...)
            raise UserError(f"ONNX Runtime cannot load {self.model.name}: {first_line(e)}") from None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})

    def _binding(self, session: ort.InferenceSession, x: np.ndarray) -> ort.IOBinding:
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cpu")
        return binding

    def timer(self, x: np.ndarray) -> Timer:
        session, binding = self.session, self._binding(self.session, x)

        def one() -> float:
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            return time.perf_counter() - start

        return one

    def concurrent(self, x: np.ndarray) -> Concurrent:
        runners = [(s, self._binding(s, x)) for s in self.sessions]

        def many(n: int) -> tuple[float, list[float]]:
            latencies: list[list[float]] = [[] for _ in runners]

            def worker(i: int, count: int) -> None:
                session, binding = runners[i]
                for _ in range(count):
                    t = time.perf_counter()
                    session.run_with_iobinding(binding)
                    latencies[i].append(time.perf_counter() - t)

            shares = [n // len(runners) + (i < n % len(runners)) for i in range(len(runners))]
            threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(shares) if c]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - start, [v for per in latencies for v in per]

        return many

    def layer_times(self, x: np.ndarray, runs: int) -> list[LayerTime]:
        require_profiling(self.options, "cpu")
        feed = {self.input_name: x}
        for _ in range(runs):
            self.session.run(None, feed)
        path = Path(self.session.end_profiling())
        try:
            events = json.loads(path.read_text())
        finally:
            path.unlink(missing_ok=True)
        return parse_profile(events, runs)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "cpu",
            "runtime": f"onnxruntime {ort.__version__}",
            "provider": "CPUExecutionProvider",
            "device": "CPU",
            "precision": self.precision,
            "threads": self.options.threads,
            "streams": self.options.streams,
            "intra_op_threads_per_stream": self.intra_threads,
            "spinning": self.options.spinning,
            "graph_optimization": self.options.opt_level,
        }


class OnnxRuntimeBackend(HostCpuPolicy):
    name: str = "cpu"
    extra: str = ""
    suffixes: tuple[str, ...] = (".onnx",)
    precisions: tuple[str, ...] = ("f32",)
    fixed_device: str | None = "CPU"
    #: MLAS dispatches on CPUID and offers no variable to cap it.
    isa_cap_env: str | None = None
    own_options: tuple[str, ...] = ("spinning", "opt_level")

    def available(self) -> bool:
        return True

    def unavailable_reason(self) -> str | None:
        return None

    def load(self, model: Path, options: RunOptions) -> OrtSession:
        if model.suffix != ".onnx":
            raise UserError(f"the cpu backend (ONNX Runtime) reads .onnx files, not {model.name}: "
                            "use --backend openvino for OpenVINO IR")
        return OrtSession(model, options)
