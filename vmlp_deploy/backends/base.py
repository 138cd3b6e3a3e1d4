"""One small interface for every inference backend: load a model, run it, say what precision really ran.

Quantization uses it to measure fidelity, profiling to time and to read per-layer counters. Adding a
backend means one file here and one line in ``BACKENDS``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class RunOptions:
    """Settings a backend honours when it loads a model; every one is reported back with the results."""

    threads: int | None = None
    precision: str | None = None
    device: str = "CPU"
    profiling: bool = False
    spinning: bool = True
    opt_level: str = "all"
    streams: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Session(Protocol):
    """A loaded model, ready to run one input batch (NCHW float32) at a time."""

    input_name: str
    input_shape: list[int | str]
    precision: str

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


class Backend(Protocol):
    name: str
    extra: str

    def available(self) -> bool: ...

    def load(self, model: Path, options: RunOptions) -> Session: ...
