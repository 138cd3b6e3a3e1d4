"""One interface for every INT8 quantizer: how it calibrates and quantizes, and everything the stage must know
about its backend (what runs its output, which options and schemes it accepts, how its layers are probed,
what it checks afterwards), so ``stage.py`` and ``layout.py`` never test a backend's name.

A quantizer is a class registered in ``QUANTIZERS`` (``registry.py``) under the name of the backend its output
is for; the policy is class-level, because the stage needs it before an instance exists (to pick the scheme and
the layout it is created with). Adding a quantizer means one file here and one line in ``QUANTIZERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..backends import Loader
from ..cpu import CpuTarget
from ..errors import BackendUnavailableError
from ..progress import Progress
from .scheme import IntegerScheme, SchemeChoice
from .source import SourceModel

if TYPE_CHECKING:
    from .options import QuantizeOptions

#: Both layer probes (FP32, INT8) and the (node, op type, tensor) of each layer they expose.
LayerProbes = tuple[Callable, Callable, list[tuple[str, str, str]]]


@dataclass(frozen=True)
class LayoutRule:
    """The graph layout a quantizer's runtime is known to run fastest in INT8, for when this host cannot time
    the target's kernels: ``layout`` (a ``--layout`` name) and why. ``relayouts`` is False when the runtime lays
    out its own graph, so no candidate layout is ever made for it."""

    layout: str
    reason: str
    relayouts: bool = True


class Quantizer(Protocol):
    """Calibrate once, quantize (again) with some nodes kept in float; the class carries its backend's policy."""

    #: The backend (a ``BACKENDS`` name, also the ``--backend`` name) that runs the output where it is deployed.
    backend: ClassVar[str]
    #: The backend that runs the output here, to measure its fidelity against FP32.
    check_runtime: ClassVar[str]
    #: How option errors name it (``openvino (NNCF)``), and the library that quantizes.
    label: ClassVar[str]
    library: ClassVar[str]
    #: The backend-specific ``QuantizeOptions`` fields it accepts (the others' are refused, and left out of
    #: the manifest).
    own_options: ClassVar[tuple[str, ...]]
    #: The ``--method`` values it can calibrate with.
    methods: ClassVar[tuple[str, ...]]
    #: Python modules its INT8 path needs beyond vmlp-deploy's own.
    required_modules: ClassVar[tuple[str, ...]]
    #: Quantized when ``--backend`` is not given (and its modules import).
    by_default: ClassVar[bool]
    #: Its output runs ONNX Runtime's u8 x s8 CPU kernels, whose int16 pair saturation on the target
    #: ``saturation.py`` predicts.
    predicts_saturation: ClassVar[bool]
    #: Calibration runs inside every ``quantize`` call (NNCF), not in ``prepare``: then it is timed there.
    calibrates_in_quantize: ClassVar[bool]
    layout_rule: ClassVar[LayoutRule]
    #: How the per-layer fidelity is measured (written to the manifest).
    layer_method: ClassVar[str]
    float_model: Path
    #: Activation ranges symmetric around zero (the sensitivity ranking fake-quantizes the same way).
    symmetric_activations: bool

    @classmethod
    def create(cls, source: SourceModel, options: QuantizeOptions, scheme: IntegerScheme, work: Path,
               architecture: Path | None = None) -> Quantizer:
        """``architecture``: the source graph, when ``source`` is its channels-first re-export."""
        ...

    @classmethod
    def choose_scheme(cls, target: CpuTarget, requested: str) -> SchemeChoice:
        """The integer encoding for ``target`` (``requested`` is a valid ``--int8-scheme``)."""
        ...

    def prepare(self, samples: np.ndarray, progress: Progress) -> None: ...

    def quantize(self, keep_float: list[str], out_dir: Path) -> Path: ...

    def quantized_consumers(self, int8_model: Path) -> list[str]: ...

    def layer_probes(self, int8_model: Path, nodes: list[str], work: Path, threads: int | None,
                     load_int8: Loader) -> LayerProbes:
        """FP32 and INT8 runs on ``check_runtime`` with the outputs of ``nodes`` exposed (INT8 by ``load_int8``)."""
        ...

    def post_check(self, int8_model: Path, progress: Progress) -> dict[str, Any] | None:
        """Verify the written model against its runtime's rules; returns what the manifest records, or None."""
        ...

    def settings(self) -> dict[str, Any]: ...


def missing_modules(quantizer: type[Quantizer]) -> list[str]:
    """The modules ``quantizer`` needs that do not import (or fail to load) here; none when it is usable."""
    missing = []
    for module in quantizer.required_modules:
        try:
            __import__(module)
        except Exception:  # ImportError, or a broken install failing inside its own import
            missing.append(module)
    return missing


def require_modules(quantizer: type[Quantizer]) -> None:
    """A clear, actionable error when a module the quantizer needs is missing (all are vmlp-deploy dependencies)."""
    missing = missing_modules(quantizer)
    if missing:
        raise BackendUnavailableError(f"--backend {quantizer.backend} needs {' and '.join(missing)}, which does not "
                                      f"import here: pip install --force-reinstall {' '.join(missing)} (vmlp-deploy "
                                      "depends on them)")
