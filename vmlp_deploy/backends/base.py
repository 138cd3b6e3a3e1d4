"""One small interface for every inference backend: load a model, run it, time it, read its per-layer
counters, and say what precision really ran.

Quantization uses ``run`` to measure fidelity; profiling uses ``timer`` (one inference, timed by the
backend's own clock), ``concurrent`` (several requests in flight) and ``layer_times``. What differs between
backends (the device a run goes to, the default number of streams, the precision a result is labelled with,
the precisions it refuses) is a property of the backend, so the stages never test a backend's name. Adding a
backend means one file here and one line in ``BACKENDS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UserError

#: Precision names users may type, mapped to the one spelling used in results.
PRECISION_ALIASES = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16", "int8": "int8"}


def canonical_precision(name: str | None) -> str | None:
    """``fp32`` -> ``f32`` etc.; ``None`` stays ``None`` (the backend's default, always f32 here)."""
    if name is None:
        return None
    key = name.lower()
    if key not in PRECISION_ALIASES:
        raise UserError(f"unknown precision {name!r}: use one of f32, bf16, f16, int8")
    return PRECISION_ALIASES[key]


def precision_label(requested: str, quantized: bool) -> str:
    """``int8`` for a Q/DQ model whose float parts run f32; ``int8/bf16`` when they run bf16."""
    if not quantized:
        return requested
    return "int8" if requested in ("f32", "int8") else f"int8/{requested}"


@dataclass(frozen=True)
class RunOptions:
    """Settings a backend honours when it loads a model; every one is reported back with the results.

    ``input_shape`` fixes every dimension of the (single) image input, so symbolic batch or size
    dimensions become static before the backend optimises the graph. ``streams`` > 1 asks for a
    throughput configuration: that many requests in flight, the threads split between them.
    """

    threads: int | None = None
    precision: str | None = None
    device: str = "CPU"
    profiling: bool = False
    spinning: bool = True
    opt_level: str = "all"
    streams: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerTime:
    """Time of one executed layer (node or fused kernel), in milliseconds per inference."""

    name: str
    op_type: str
    time_ms: float
    exec_type: str = ""
    precision: str = ""


#: One inference on the bound input; returns its latency in seconds.
Timer = Callable[[], float]
#: ``n`` inferences with several requests in flight; returns (wall seconds, per-request latencies in seconds).
Concurrent = Callable[[int], tuple[float, list[float]]]


class Session(Protocol):
    """A loaded model, ready to run one input batch (NCHW float32) at a time."""

    input_name: str
    input_shape: list[int | str]
    precision: str
    quantized: bool

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def timer(self, x: np.ndarray) -> Timer:
        """Bind ``x`` once and return a callable timing one inference with the backend's own clock."""
        ...

    def concurrent(self, x: np.ndarray) -> Concurrent:
        """Bind ``x`` to every request/stream and return a callable running ``n`` inferences concurrently."""
        ...

    def layer_times(self, x: np.ndarray, runs: int) -> list[LayerTime]:
        """Run ``runs`` inferences and return per-layer mean times; needs ``RunOptions(profiling=True)``."""
        ...

    def describe(self) -> dict[str, Any]: ...


#: Loads a model for measuring: a backend's own ``load``, or one that runs the target CPU's kernels in a child
#: process (``isa_cap``).
Loader = Callable[[Path, RunOptions], Session]


def release(session: Session) -> None:
    """End what a session holds outside this process (the child serving an isolated session) as soon as it is
    done with; a session loaded in this process has nothing to end and is freed by the garbage collector."""
    close = getattr(session, "close", None)
    if close is not None:
        close()


class Backend(Protocol):
    name: str
    extra: str
    #: File suffixes the backend reads.
    suffixes: tuple[str, ...]
    #: Float precisions it can run (int8 comes from a Q/DQ model, never from a flag).
    precisions: tuple[str, ...]
    #: The device every run goes to, or None when ``--device`` picks it.
    fixed_device: str | None
    #: Runs on an accelerator (a GPU), never on this host's CPU: the host stands for no target CPU, the ISA
    #: ceilings do not describe it, and ``deploy`` profiles it only when it is the one backend asked for.
    accelerator: bool
    #: The environment variable that caps the instruction set its CPU kernels dispatch on (read once per
    #: process, so a capped session runs in a child: ``isa_cap``), or None where the runtime offers none.
    isa_cap_env: str | None
    #: The ``RunOptions`` fields only this runtime reads (``spinning``, ``opt_level``): set for another, they
    #: would be ignored, so ``profile`` refuses them there.
    own_options: tuple[str, ...]

    def default_streams(self, threads: int) -> int:
        """Requests in flight for a throughput run when ``--streams`` is not given."""
        ...

    def effective_precision(self, reported: str, quantized: bool) -> str:
        """The precision a result is labelled with, from the one the session reports."""
        ...

    def refuses(self, precision: str, quantized: bool) -> str | None:
        """Why a model cannot run at ``precision`` here beyond ``precisions`` (None when it can)."""
        ...

    def available(self) -> bool: ...

    def unavailable_reason(self) -> str | None:
        """None when usable here, else one line naming what is missing and how to get it."""
        ...

    def load(self, model: Path, options: RunOptions) -> Session: ...


class HostCpuPolicy:
    """The policy of a backend that runs on this host's CPU: one stream per thread for throughput, a Q/DQ model
    labelled by the precision its float parts run in (``int8``, ``int8/bf16``), nothing refused beyond
    ``precisions``."""

    accelerator: bool = False
    isa_cap_env: str | None = None
    own_options: tuple[str, ...] = ()

    def default_streams(self, threads: int) -> int:
        return threads

    def effective_precision(self, reported: str, quantized: bool) -> str:
        return precision_label(reported, quantized)

    def refuses(self, precision: str, quantized: bool) -> str | None:
        return None


def cache_root() -> Path:
    """``$VMLP_DEPLOY_CACHE`` or ``~/.cache/vmlp-deploy``: shared by zoo exports and TensorRT engines."""
    return Path(os.environ.get("VMLP_DEPLOY_CACHE") or Path.home() / ".cache" / "vmlp-deploy")


def require_profiling(options: RunOptions, backend: str) -> None:
    if not options.profiling:
        raise UserError(f"per-layer times need a {backend} session loaded with RunOptions(profiling=True)")


def fixed_shape(declared: list[int | str], requested: tuple[int, ...] | None, model: str) -> tuple[int, ...]:
    """The concrete input shape: ``requested`` where given (it must agree with every static dimension),
    else the declared shape, which then must be fully static."""
    if requested is None:
        if all(isinstance(d, int) and d > 0 for d in declared):
            return tuple(int(d) for d in declared)
        raise UserError(f"{model} has dynamic input dimensions {declared}: pass the shape to feed "
                        "(vmlp-deploy profile --input-shape CxHxW, and --batch)")
    if len(requested) != len(declared):
        raise UserError(f"{model} takes a rank-{len(declared)} input {declared}, "
                        f"but the requested shape is {list(requested)}: fix --input-shape")
    for i, (d, r) in enumerate(zip(declared, requested, strict=True)):
        if isinstance(d, int) and d > 0 and d != r:
            what = "batch" if i == 0 else f"dimension {i}"
            hint = ("re-export with --dynamic-batch to profile other batch sizes" if i == 0
                    else "drop --input-shape or match the model")
            raise UserError(f"{model} has a fixed {what} of {d}, cannot feed {r}: {hint}")
    return tuple(requested)
