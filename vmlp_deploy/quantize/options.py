"""Settings of one quantization run: what to quantize for, with which data, and how hard to try.

Options are plain literals (like ONNX Runtime's ``CalibrationMethod`` / ``QuantType`` enums, but printable and
JSON-ready as they are), and every one of them is written into the output manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError

BackendName = Literal["cpu", "openvino", "tensorrt"]
Method = Literal["minmax", "entropy", "percentile"]
ModelTypeChoice = Literal["auto", "transformer", "cnn"]

BACKEND_NAMES: tuple[str, ...] = ("cpu", "openvino", "tensorrt")
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
MODEL_TYPES: tuple[str, ...] = ("auto", "transformer", "cnn")
AUTO = "auto"
#: ``--layout``: measure the candidates (auto), keep the graph as given, or use the channels-first rewrite.
LAYOUTS: tuple[str, ...] = ("auto", "as-given", "openvino")


@dataclass(frozen=True)
class RecipeOverrides:
    """Preprocessing given on the command line or in a recipe file, for models that carry none (or to replace it).

    ``resize`` is the shorter side before the center crop (timm's ``crop_pct = input / resize``).
    """

    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize: int | None = None
    interpolation: str | None = None
    recipe_file: Path | None = None

    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything ``quantize_run`` needs besides the run directory; defaults match the CLI's."""

    backend: BackendName = "cpu"
    output: Path | None = None
    overwrite: bool = False
    calibration_data: Path | None = None
    num_samples: int = 300
    holdout: int = 50
    seed: int = 0
    method: Method = "minmax"
    percentile: float = 99.999
    keep_float: tuple[str, ...] = ()
    min_agreement: float = 0.99
    sensitivity_rounds: int = 8
    model_type: ModelTypeChoice = "auto"
    smooth_quant_alpha: float | None = None
    qdq_layernorm: bool = False
    eval_data: Path | None = None
    allow_upscale: bool = False
    threads: int | None = None
    recipe: RecipeOverrides = field(default_factory=RecipeOverrides)
    target_cpu: str = "host"
    int8_scheme: str = "auto"
    max_drop: float = 1.0
    gate_agreement: float = 0.95
    gate: bool = True
    layout: str = "auto"

    @property
    def keep_float_auto(self) -> bool:
        return self.keep_float == (AUTO,)

    def check(self) -> None:
        """Reject impossible settings before any work starts (the CLI's choices catch most of these too)."""
        if self.backend not in BACKEND_NAMES:
            raise UserError(f"unknown backend {self.backend!r}: use one of {', '.join(BACKEND_NAMES)}")
        if self.method not in METHODS:
            raise UserError(f"unknown calibration method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.model_type not in MODEL_TYPES:
            raise UserError(f"unknown model type {self.model_type!r}: use one of {', '.join(MODEL_TYPES)}")
        if self.num_samples < 1:
            raise UserError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.holdout < 1:
            raise UserError(f"--holdout must be at least 1 (fidelity is measured on held-out samples), got {self.holdout}")
        if not 0.0 < self.percentile <= 100.0:
            raise UserError(f"--percentile must be in (0, 100], got {self.percentile}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UserError(f"--min-agreement is a fraction in [0, 1], got {self.min_agreement}")
        if self.sensitivity_rounds < 1:
            raise UserError(f"--sensitivity-rounds must be at least 1, got {self.sensitivity_rounds}")
        alpha = self.smooth_quant_alpha
        if alpha is not None and not (alpha == -1 or 0 <= alpha <= 1):
            raise UserError(f"--smooth-quant-alpha must be in [0, 1] (or -1 to disable), got {alpha}")
        if self.smooth_quant_alpha is not None and self.backend != "openvino":
            raise UserError("--smooth-quant-alpha applies to --backend openvino (NNCF) only: drop it")
        if self.model_type != "auto" and self.backend != "openvino":
            raise UserError("--model-type applies to --backend openvino (NNCF) only: drop it")
        if self.qdq_layernorm and self.backend != "tensorrt":
            raise UserError("--qdq-layernorm applies to --backend tensorrt only: drop it")
        if self.method == "entropy" and self.backend == "openvino":
            raise UserError("--method entropy is ONNX Runtime's (cpu, tensorrt); for openvino use minmax or "
                            "percentile")
        if AUTO in self.keep_float and len(self.keep_float) > 1:
            raise UserError("--keep-float takes either 'auto' or a list of node names/op types, not both")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if not 0.0 <= self.max_drop <= 100.0:
            raise UserError(f"--max-drop is in top-1 points, 0..100, got {self.max_drop}")
        if not 0.0 <= self.gate_agreement <= 1.0:
            raise UserError(f"--gate-agreement is a fraction in [0, 1], got {self.gate_agreement}")
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown --layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.layout == "openvino" and self.backend == "tensorrt":
            raise UserError("--layout openvino applies to --backend cpu and openvino: drop it for tensorrt")

    def to_dict(self) -> dict[str, Any]:
        """The settings that apply to this backend (the others are dropped so the manifest does not mislead)."""
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        d["recipe"] = {k: v for k, v in d["recipe"].items() if v is not None}
        if self.backend == "openvino":
            drop = {"qdq_layernorm"}
        else:
            drop = {"model_type", "smooth_quant_alpha"} | ({"qdq_layernorm"} if self.backend == "cpu" else set())
        if self.method != "percentile":
            drop.add("percentile")
        return {k: v for k, v in d.items() if k not in drop}
