"""Which integer encoding to quantize to, decided by the CPU the model will run on (``--target-cpu``).

x86 CPUs without VNNI or AMX run u8 x s8 GEMMs through ``vpmaddubsw``, which sums each pair of products in a
saturating int16 lane: with full 8-bit weights and activations the pair can pass 32767 and is clipped
silently (-5 points top-1 on a digits model, ``../shared/reference/isa.md``). Two encodings avoid it:

* ``u8s8-7bit``: weights in 7 bits (|w| <= 64; ONNX Runtime's ``reduce_range``, NNCF's overflow fix on every
  layer). 255 x 64 x 2 = 32 640 < 32 767, so no pair can saturate, and the kernels are the same u8 x s8
  ones as before: the speed of the default encoding, at one bit less weight precision.
* ``u8u8``: unsigned weights, which MLAS runs through a widening 16-bit kernel (no pair sums), at a cost in
  speed. ONNX Runtime only; NNCF's weights are always signed.

Measured (``benchmarks/int8_schemes.py``, BENCHMARKS.md "INT8 schemes"): on emulated AVX2 kernels both keep
the digits models' FP32 top-1 (within 0.19 points; 8-bit u8s8 lost up to 0.56), and on ONNX Runtime
s2mlpv2_small ran u8s8-7bit at 0.531x FP32 (the same as u8s8, 0.532x: the same kernels) but u8u8 at 0.795x,
so ``u8s8-7bit`` is the choice for saturating targets.
Targets with a 32-bit-accumulating int8 dot product (VNNI, AVX-VNNI, AMX, Arm dot product / i8mm) and plain
Arm NEON (which widens each product to 16 bits before adding) keep full 8-bit weights: ``u8s8``.
TensorRT's explicit quantization is symmetric s8 x s8 on the GPU, whatever the CPU (``tensorrt_qdq.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cpu import CpuTarget, Isa
from ..errors import UserError

SCHEME_NAMES: tuple[str, ...] = ("auto", "u8s8", "u8s8-7bit", "u8u8")


@dataclass(frozen=True)
class IntegerScheme:
    """How activations and weights are encoded; the quantizers read their settings from it."""

    name: str
    weights: str
    weight_bits: int
    description: str

    @property
    def ort_weight_type(self) -> str:
        return "QUInt8" if self.weights == "u8" else "QInt8"

    @property
    def reduce_range(self) -> bool:
        return self.weight_bits == 7

    @property
    def nncf_overflow_fix(self) -> str:
        """NNCF's OverflowFix: 7-bit ("half range") weights on every conv/matmul, or none."""
        return "enable" if self.weight_bits == 7 else "disable"

    def saturates_on(self, isa: Isa) -> bool:
        """Whether u8 x s8 pair sums can leave int16 on ``isa``'s kernels with this encoding."""
        return isa.u8s8_saturates and self.weights == "s8" and self.weight_bits == 8

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "activations": "u8", "weights": self.weights, "weight_bits": self.weight_bits,
                "description": self.description}


SCHEMES: dict[str, IntegerScheme] = {s.name: s for s in (
    IntegerScheme("u8s8", "s8", 8, "u8 activations x s8 weights, 8 bits: the VNNI/AMX/Arm fast path"),
    IntegerScheme("u8s8-7bit", "s8", 7, "u8 activations x s8 weights in 7 bits: no int16 saturation on AVX2 "
                                        "kernels, same kernels and speed"),
    IntegerScheme("u8u8", "u8", 8, "u8 activations x u8 weights: MLAS's widening kernel, no saturation, slower"),
)}


@dataclass(frozen=True)
class SchemeChoice:
    """The scheme, why it was chosen, and a warning when the user forced one that saturates on the target."""

    scheme: IntegerScheme
    reason: str
    forced: bool
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.scheme.to_dict(), "reason": self.reason, "forced": self.forced,
                "saturates_on_target": self.warning is not None}


def choose_scheme(backend: str, target: CpuTarget, requested: str = "auto") -> SchemeChoice:
    """The encoding ``backend``'s quantizer uses on ``target``: its own policy (``Quantizer.choose_scheme``)."""
    from .registry import QUANTIZERS  # the quantizers themselves are built on the schemes defined here

    if requested not in SCHEME_NAMES:
        raise UserError(f"unknown --int8-scheme {requested!r}: use one of {', '.join(SCHEME_NAMES)}")
    return QUANTIZERS[backend].choose_scheme(target, requested)


def scheme_for_isa(target: CpuTarget, requested: str) -> SchemeChoice:
    """By ``target``'s ISA for ``auto``, as asked otherwise (with a warning when that saturates on the target)."""
    isa = target.isa
    if requested != "auto":
        scheme = SCHEMES[requested]
        warning = None
        if scheme.saturates_on(isa):
            warning = (f"--int8-scheme {requested} on --target-cpu {target.name} ({isa.summary()}): u8 x s8 "
                       "pair sums can saturate in int16 on this CPU's kernels (no VNNI); 'auto' picks u8s8-7bit")
        return SchemeChoice(scheme, f"--int8-scheme {requested}", forced=True, warning=warning)
    if isa.u8s8_saturates:
        return SchemeChoice(SCHEMES["u8s8-7bit"],
                            f"{target.name} ({isa.summary()}) has no 32-bit int8 dot product: 8-bit u8 x s8 pairs "
                            "saturate in int16, 7-bit weights cannot and keep the same kernels", forced=False)
    why = ("an int8 dot product that accumulates in 32 bits" if isa.int8_dot32
           else "NEON widening multiplies (no int16 pair sums)")
    return SchemeChoice(SCHEMES["u8s8"], f"{target.name} ({isa.summary()}) has {why}: full 8-bit weights "
                                          "cannot saturate", forced=False)
