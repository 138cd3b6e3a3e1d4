"""Settings of one quantization run: what to quantize for, with which data, and how hard to try.

Options are plain literals (like ONNX Runtime's ``CalibrationMethod`` / ``QuantType`` enums, but printable and
JSON-ready as they are), and every one of them is written into the output manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..backends.onnxruntime import OnnxRuntimeBackend
from ..errors import UserError
from ..targets import CHANNELS_FIRST

Method = Literal["minmax", "entropy", "percentile"]
ModelTypeChoice = Literal["auto", "transformer", "cnn"]

METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
#: The default --percentile (of --method percentile): ORT's own default, 99.999.
PERCENTILE = 99.999
MODEL_TYPES: tuple[str, ...] = ("auto", "transformer", "cnn")
AUTO = "auto"
AS_GIVEN = "as-given"
#: ``--layout``: measure the candidates (auto), keep the graph as given, or use the channels-first rewrite.
LAYOUTS: tuple[str, ...] = (AUTO, AS_GIVEN, CHANNELS_FIRST)


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

    #: A ``QUANTIZERS`` name (``registry.py``); ONNX Runtime's unless asked.
    backend: str = OnnxRuntimeBackend.name
    output: Path | None = None
    overwrite: bool = False
    calibration_data: Path | None = None
    num_samples: int = 300
    holdout: int = 50
    seed: int = 0
    method: Method = "minmax"
    percentile: float = PERCENTILE
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
        """Reject impossible settings before any work starts (the CLI's choices catch most of these too); what
        each backend accepts is its quantizer's to say."""
        from .data import ImageFolder, require_data_root
        from .registry import QUANTIZERS  # the quantizers are built on these options

        if self.backend not in QUANTIZERS:
            raise UserError(f"unknown backend {self.backend!r}: use one of {', '.join(QUANTIZERS)}")
        quantizer = QUANTIZERS[self.backend]
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
        if self.percentile != PERCENTILE and self.method != "percentile":
            raise UserError(f"--percentile applies to --method percentile only (this is --method {self.method}): "
                            "add --method percentile or drop --percentile")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UserError(f"--min-agreement is a fraction in [0, 1], got {self.min_agreement}")
        if self.sensitivity_rounds < 1:
            raise UserError(f"--sensitivity-rounds must be at least 1, got {self.sensitivity_rounds}")
        alpha = self.smooth_quant_alpha
        if alpha is not None and not (alpha == -1 or 0 <= alpha <= 1):
            raise UserError(f"--smooth-quant-alpha must be in [0, 1] (or -1 to disable), got {alpha}")
        defaults = {f.name: f.default for f in fields(self)}
        for owner in QUANTIZERS.values():
            for name in owner.own_options:
                if getattr(self, name) != defaults[name] and name not in quantizer.own_options:
                    raise UserError(f"--{name.replace('_', '-')} applies to --backend {owner.label} only: drop it")
        if self.method not in quantizer.methods:
            users = [q for q in QUANTIZERS.values() if self.method in q.methods]
            raise UserError(f"--method {self.method} is {' and '.join(dict.fromkeys(q.library for q in users))}'s "
                            f"({', '.join(q.backend for q in users)}); for {self.backend} use "
                            f"{' or '.join(quantizer.methods)}")
        if AUTO in self.keep_float and len(self.keep_float) > 1:
            raise UserError("--keep-float takes either 'auto' or a list of node names/op types, not both")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if not 0.0 <= self.max_drop <= 100.0:
            raise UserError(f"--max-drop is in top-1 points, 0..100, got {self.max_drop}")
        if not 0.0 <= self.gate_agreement <= 1.0:
            raise UserError(f"--gate-agreement is a fraction in [0, 1], got {self.gate_agreement}")
        if self.calibration_data is not None:
            require_data_root(self.calibration_data)
        if self.eval_data is not None:
            ImageFolder.require_root(self.eval_data)
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown --layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.layout == CHANNELS_FIRST and not quantizer.layout_rule.relayouts:
            users = [q.backend for q in QUANTIZERS.values() if q.layout_rule.relayouts]
            raise UserError(f"--layout {self.layout} applies to --backend {' and '.join(users)}: drop it for "
                            f"{self.backend}")

    def to_dict(self) -> dict[str, Any]:
        """The settings that apply to this backend (the others are dropped so the manifest does not mislead)."""
        from .registry import QUANTIZERS

        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        d["recipe"] = {k: v for k, v in d["recipe"].items() if v is not None}
        drop = {name for q in QUANTIZERS.values() for name in q.own_options} - set(QUANTIZERS[self.backend].own_options)
        if self.method != "percentile":
            drop.add("percentile")
        return {k: v for k, v in d.items() if k not in drop}
