"""TensorRT, written against the TensorRT 10/11 Python API with strong typing.

TensorRT 10.12 deprecated, and 11.x removed, the FP16/INT8 builder flags and the implicit INT8 calibrators:
the precision of a strongly typed network is the precision of the ONNX graph. So

* ``f32``: the ONNX as it is, with TF32 cleared (TensorRT turns it on by default, which is not FP32);
* ``f16`` / ``bf16``: the ONNX cast to mixed precision by ModelOpt AutoCast (``nvidia-modelopt[onnx]``), I/O kept f32;
* ``int8``: a Q/DQ ONNX from ``vmlp-deploy quantize`` (explicit quantization).

Engines are cached by model hash + TensorRT version + GPU + precision + input shape. Latency is GPU
compute time between two CUDA events around ``execute_async_v3`` (host-device copies excluded, as
trtexec reports "GPU Compute Time"); per-layer times come from an ``IProfiler``, and the precision each
layer really runs in is read back from the engine inspector.

Everything that needs no GPU (cache keys, build configuration, inspector parsing, the install error) is
plain Python and unit-tested; the rest runs only where TensorRT and a GPU are.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, UserError
from .base import (
    Concurrent,
    LayerTime,
    RunOptions,
    Timer,
    cache_root,
    canonical_precision,
    fixed_shape,
    require_profiling,
)
from .onnxruntime import graph_input

INSTALL_HINT = ('pip install "vmlp-deploy[tensorrt]" on a machine with an NVIDIA GPU and driver, '
                "or run the image built from docker/tensorrt.Dockerfile")
DEFAULT_WORKSPACE_MB = 1024


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(f"TensorRT is not installed ({e.msg}): {INSTALL_HINT}") from None
    except Exception as e:  # installed but its shared libraries fail to load (driver, CUDA mismatch)
        raise BackendUnavailableError(f"TensorRT is installed but fails to load ({type(e).__name__}: "
                                      f"{_first_line(e)}): {INSTALL_HINT}") from None
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime bindings: ``cuda.bindings.runtime`` (12.6+) or the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendUnavailableError("cuda-python is not installed (TensorRT needs it here for buffers and "
                                          f"CUDA events): {INSTALL_HINT}") from None
    return cudart


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def model_digest(model: Path) -> str:
    """sha256 over the ONNX file and any external-data files beside it (their names included)."""
    digest = hashlib.sha256()
    files = [model, *sorted(p for p in model.parent.glob(model.name + ".data*") if p.is_file())]
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def engine_cache_key(model_sha256: str, trt_version: str, gpu_name: str, precision: str,
                     input_shape: tuple[int, ...]) -> str:
    """An engine is only valid for this exact model, TensorRT version, GPU, precision and input shape."""
    fields = {"model": model_sha256, "tensorrt": trt_version, "gpu": gpu_name.strip(), "precision": precision,
              "shape": list(input_shape)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def engine_cache_path(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "tensorrt" / f"{key}.engine"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides how an engine is built, as plain data (applied by ``apply_build_config``)."""

    precision: str
    cast_to: str | None
    strongly_typed: bool
    tf32: bool
    workspace_bytes: int
    input_name: str
    input_shape: tuple[int, ...]
    profiling_verbosity: str = "DETAILED"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_config(requested: str | None, quantized: bool, input_name: str, input_shape: tuple[int, ...],
                 workspace_mb: int = DEFAULT_WORKSPACE_MB) -> BuildConfig:
    """Decide precision handling for a strongly typed build; refuses what TensorRT 10.12+/11 cannot do."""
    precision = canonical_precision(requested) or "f32"
    if workspace_mb <= 0:
        raise UserError(f"the TensorRT workspace must be positive, got {workspace_mb} MB")
    if precision == "int8" and not quantized:
        raise UserError("TensorRT int8 needs a Q/DQ model (explicit quantization; TensorRT 10.1+ dropped implicit "
                        "calibrators): run vmlp-deploy quantize and profile its output")
    if quantized and precision in ("f16", "bf16"):
        raise UserError(f"this model is Q/DQ (int8); casting its float parts to {precision} is not supported: "
                        "profile it with --precision f32 (or int8)")
    cast_to = precision if precision in ("f16", "bf16") else None
    return BuildConfig(
        precision="int8" if quantized else precision,
        cast_to=cast_to,
        strongly_typed=True,
        tf32=False,
        workspace_bytes=workspace_mb << 20,
        input_name=input_name,
        input_shape=tuple(input_shape),
    )


def apply_build_config(trt: Any, builder: Any, cfg: BuildConfig) -> tuple[Any, Any]:
    """Create the network (STRONGLY_TYPED where the flag exists; 11.x always is) and the builder config."""
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if cfg.strongly_typed and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    if not cfg.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, cfg.profiling_verbosity)
    profile = builder.create_optimization_profile()
    shape = tuple(cfg.input_shape)
    profile.set_shape(cfg.input_name, shape, shape, shape)
    config.add_optimization_profile(profile)
    return network, config


def cast_low_precision(model: Path, precision: str) -> bytes:
    """FP16/BF16 ONNX for strong typing via ModelOpt AutoCast (TensorRT's documented route), I/O kept f32."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise UserError(f"TensorRT {precision} needs the ONNX cast to {precision} by ModelOpt AutoCast "
                        "(strongly typed TensorRT has no FP16 flag): pip install \"nvidia-modelopt[onnx]\"") from None
    low = {"f16": "fp16", "bf16": "bf16"}[precision]
    converted = convert_to_mixed_precision(onnx_path=str(model), low_precision_type=low, keep_io_types=True)
    return converted.SerializeToString()


_DTYPE_WORDS = (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("half", "f16"), ("fp16", "f16"),
                ("fp32", "f32"), ("float", "f32"))
_RANK = {"int8": 0, "fp8": 0, "f16": 1, "bf16": 1, "f32": 2}


def datatype_precision(text: str) -> str:
    """``"Row major linear FP16 format"`` -> ``f16``; ``"Int8"`` -> ``int8``; index/bool types -> ``""``."""
    low = text.lower()
    return next((p for word, p in _DTYPE_WORDS if word in low), "")


def layer_precisions(engine_info: str) -> dict[str, str]:
    """Layer name -> the lowest float/int8 precision among its inputs, from the inspector's JSON
    (``get_engine_information(LayerInformationFormat.JSON)`` of an engine built with DETAILED verbosity)."""
    data = json.loads(engine_info)
    result: dict[str, str] = {}
    for layer in data.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        found = [datatype_precision(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", [])]
        found = [p for p in found if p]
        if found:
            result[str(layer.get("Name", ""))] = min(found, key=_RANK.__getitem__)
    return result


def engine_precision(per_layer: dict[str, str]) -> str:
    """The precision an engine really computes in: the lowest one that its layers use."""
    if not per_layer:
        return "unknown"
    return min(Counter(per_layer.values()), key=_RANK.__getitem__)


def gpu_index(device: str) -> int:
    """``GPU`` or ``GPU.N``; ``CPU`` (the interface's default, meaning "not chosen") selects GPU 0."""
    name = device.upper()
    if name in ("CPU", "GPU"):
        return 0
    if name.startswith("GPU.") and name[4:].isdigit():
        return int(name[4:])
    raise UserError(f"the tensorrt backend runs on an NVIDIA GPU (GPU or GPU.N), not {device}: fix --device")


class _Cuda:
    """Thin error-checked wrapper over cuda-python: every call returns (err, *results)."""

    def __init__(self) -> None:
        self.rt = import_cudart()

    def __call__(self, result: Any) -> Any:
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            raise UserError(f"CUDA call failed: {err}: check the driver and GPU (nvidia-smi)")
        return rest[0] if len(rest) == 1 else rest

    def gpu_name(self, device: int = 0) -> str:
        props = self(self.rt.cudaGetDeviceProperties(device))
        name = props.name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()

    def to_device(self, ptr: int, x: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self(self.rt.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, kind, stream))
        self(self.rt.cudaStreamSynchronize(stream))

    def to_host(self, out: np.ndarray, ptr: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self(self.rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, kind, stream))
        self(self.rt.cudaStreamSynchronize(stream))


class _Stream:
    """One execution context with its own device buffers and CUDA stream (one throughput 'stream')."""

    def __init__(self, trt: Any, cuda: _Cuda, engine: Any, input_name: str, shape: tuple[int, ...]) -> None:
        self.cuda, self.context = cuda, engine.create_execution_context()
        self.context.set_input_shape(input_name, shape)
        self.stream = cuda(cuda.rt.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = tuple(self.context.get_tensor_shape(name))
            host = np.empty(dims, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = int(cuda(cuda.rt.cudaMalloc(max(host.nbytes, 1))))
            self.context.set_tensor_address(name, ptr)
            self.buffers[name] = (ptr, host)
        self.input_name = input_name
        self.outputs = [n for n in self.buffers if n != input_name]

    def load(self, x: np.ndarray) -> None:
        self.cuda.to_device(self.buffers[self.input_name][0], np.ascontiguousarray(x, dtype=np.float32), self.stream)

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise UserError("TensorRT failed to enqueue the inference: re-run with --debug and check the log")

    def sync(self) -> None:
        self.cuda(self.cuda.rt.cudaStreamSynchronize(self.stream))

    def fetch(self) -> list[np.ndarray]:
        result = []
        for name in self.outputs:
            ptr, host = self.buffers[name]
            self.cuda.to_host(host, ptr, self.stream)
            result.append(host.copy())
        return result


class TrtSession:
    def __init__(self, model: Path, options: RunOptions) -> None:
        self.gpu_index = gpu_index(options.device)
        trt = import_tensorrt()
        self.cuda = _Cuda()
        self.cuda(self.cuda.rt.cudaSetDevice(self.gpu_index))
        if options.streams < 1:
            raise UserError(f"streams must be at least 1, got {options.streams}")
        self.trt, self.options, self.model = trt, options, model
        self.input_name, declared, self.quantized = graph_input(model)
        shape = fixed_shape(declared, options.input_shape, model.name)
        self.input_shape: list[int | str] = list(shape)
        self.config = build_config(options.precision, self.quantized, self.input_name, shape,
                                   int(options.extra.get("workspace_mb", DEFAULT_WORKSPACE_MB)))
        self.gpu = self.cuda.gpu_name(self.gpu_index)
        key = engine_cache_key(model_digest(model), trt.__version__, self.gpu, self.config.precision
                               + (f"+{self.config.cast_to}" if self.config.cast_to else ""), shape)
        self.engine_path = engine_cache_path(key)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.cached = self.engine_path.is_file()
        if not self.cached:
            self._build()
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize {self.engine_path}: delete it to rebuild")
        self.streams = [_Stream(trt, self.cuda, self.engine, self.input_name, shape)
                        for _ in range(options.streams)]
        inspector = self.engine.create_engine_inspector()
        self.per_layer = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        self.precision = engine_precision(self.per_layer)
        start, end = self.cuda(self.cuda.rt.cudaEventCreate()), self.cuda(self.cuda.rt.cudaEventCreate())
        self.events = (start, end)

    def _build(self) -> None:
        trt = self.trt
        onnx_bytes = (cast_low_precision(self.model, self.config.cast_to) if self.config.cast_to
                      else self.model.read_bytes())
        builder = trt.Builder(self.logger)
        network, config = apply_build_config(trt, builder, self.config)
        parser = trt.OnnxParser(network, self.logger)
        ok = parser.parse(onnx_bytes, str(self.model))
        if not ok:
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT's ONNX parser rejected {self.model.name}: {errors[:400]}")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise UserError(f"TensorRT could not build an engine for {self.model.name}: re-run with --debug")
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.engine_path.with_name(f".{self.engine_path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(bytes(plan))
        tmp.replace(self.engine_path)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        s = self.streams[0]
        s.load(x)
        s.enqueue()
        s.sync()
        return s.fetch()

    def timer(self, x: np.ndarray) -> Timer:
        s, rt, (start, end) = self.streams[0], self.cuda.rt, self.events
        s.load(x)

        def one() -> float:
            self.cuda(rt.cudaEventRecord(start, s.stream))
            s.enqueue()
            self.cuda(rt.cudaEventRecord(end, s.stream))
            self.cuda(rt.cudaEventSynchronize(end))
            return float(self.cuda(rt.cudaEventElapsedTime(start, end))) / 1000.0

        return one

    def concurrent(self, x: np.ndarray) -> Concurrent:
        for s in self.streams:
            s.load(x)

        def many(n: int) -> tuple[float, list[float]]:
            begin = time.perf_counter()
            for i in range(n):
                self.streams[i % len(self.streams)].enqueue()
            for s in self.streams:
                s.sync()
            return time.perf_counter() - begin, []

        return many

    def layer_times(self, x: np.ndarray, runs: int) -> list[LayerTime]:
        require_profiling(self.options, "tensorrt")
        trt = self.trt
        totals: dict[str, float] = defaultdict(float)

        class _Profiler(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] += ms

        s = self.streams[0]
        s.load(x)
        s.context.profiler = _Profiler()
        for _ in range(runs):
            s.enqueue()
            s.sync()
        types = self._layer_types()
        return [LayerTime(name=n, op_type=types.get(n, "TensorRT layer"), time_ms=ms / runs,
                          precision=self.per_layer.get(n, "")) for n, ms in totals.items()]

    def _layer_types(self) -> dict[str, str]:
        info = json.loads(self.engine.create_engine_inspector().get_engine_information(
            self.trt.LayerInformationFormat.JSON))
        return {str(la.get("Name", "")): str(la.get("LayerType", "")) for la in info.get("Layers", [])
                if isinstance(la, dict)}

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "tensorrt",
            "runtime": f"tensorrt {self.trt.__version__}",
            "device": f"GPU.{self.gpu_index}",
            "device_name": self.gpu,
            "precision_requested": canonical_precision(self.options.precision) or "f32",
            "precision": self.precision,
            "layer_precisions": dict(Counter(self.per_layer.values())),
            "streams": self.options.streams,
            "build": self.config.to_dict(),
            "engine": str(self.engine_path),
            "engine_from_cache": self.cached,
            "timing": "GPU compute time between CUDA events (host-device copies excluded)",
        }


class TensorRtBackend:
    name: str = "tensorrt"
    extra: str = "tensorrt"
    suffixes: tuple[str, ...] = (".onnx",)
    precisions: tuple[str, ...] = ("f32", "f16", "bf16")
    fixed_device: str | None = "GPU"
    accelerator: bool = True
    isa_cap_env: str | None = None
    own_options: tuple[str, ...] = ()

    def default_streams(self, threads: int) -> int:
        """Two CUDA streams keep the GPU busy while the host prepares the next request; CPU threads say nothing."""
        return 2

    def effective_precision(self, reported: str, quantized: bool) -> str:
        """The engine's precision already reads ``int8`` for a Q/DQ model (its float parts stay f32)."""
        return reported

    def refuses(self, precision: str, quantized: bool) -> str | None:
        if quantized and precision in ("f16", "bf16"):
            return "a Q/DQ model runs int8 on TensorRT; its float parts stay f32"
        return None

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        try:
            import_tensorrt()
            import_cudart()
        except BackendUnavailableError as e:
            return str(e)
        return None

    def load(self, model: Path, options: RunOptions) -> TrtSession:
        if model.suffix != ".onnx":
            raise UserError(f"the tensorrt backend builds engines from .onnx files, not {model.name}")
        return TrtSession(model, options)
