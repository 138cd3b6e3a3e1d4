"""Run a runtime's CPU kernels as a lesser x86 CPU's, natively: the host stands in for the target CPU.

Why: a model quantized here for ``--target-cpu avx2`` must be measured on the kernels an AVX2-only CPU runs
(u8 x s8 pairs saturate in int16 there, ``quantize/saturation.py``); on an AVX-512/VNNI host the runtimes pick
their VNNI kernels instead. OpenVINO's CPU plugin runs its convolutions and integer GEMMs through oneDNN, which
dispatches on the CPU's flags but obeys ``ONEDNN_MAX_CPU_ISA`` (read once, at its first use): a child process
started with it runs the target's integer kernels at native speed, where QEMU (``emulate``) is ~30x slower and
good for accuracy only. ONNX Runtime's MLAS reads CPUID with no override, so it cannot be capped.

Measured (AMD EPYC Zen 5 host; BENCHMARKS.md "Standing in for an AVX2 CPU"): capped to AVX2, every integer
kernel of a digits-trained S2-MLPv2 quantized u8s8 for OpenVINO is an AVX2 one (``jit_gemm_I8``,
``jit_avx2_1x1_I8``, ``jit_avx2_I8``), and its logits match ``qemu-x86_64 -cpu Haswell``'s to 0.013 (top-1
identical on all 539 test images), while the uncapped run differs by up to 1.47 (saturation the host lacks).

What the cap does not reach: the plugin's own JIT kernels (reductions, RMS norm, FakeQuantize, some elementwise
ops, in f32 or i8) and MLAS's f32 FullyConnected keep the host's ISA. None of them multiplies u8 by s8 in
pairs, so integer results are the target's, while float parts run faster than on the target. Every capped
session is checked by its kernel names: an integer dot-product kernel (convolution, fully connected, matmul)
above the cap is an error; names without an ISA (``jit_gemm_I8`` dispatches inside oneDNN) are listed as such and
checked by their results in the tests; the other kernels above the cap are counted in the record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import cpu
from .backends import BACKENDS, Loader, RunOptions
from .backends.isolated import IsolatedSession
from .errors import UserError

#: Kernel-name suffixes of integer kernels (OpenVINO's ``execType``: ``jit_avx2_1x1_I8``).
INTEGER_SUFFIXES = ("_i8", "_u8")
#: Layer-type fragments of the ops whose integer kernels multiply u8 x s8 (where int16 pairs can saturate).
DOT_PRODUCT_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Gemm")


def dot_product(layer_type: str, kernel: str) -> bool:
    """An integer dot-product kernel: a convolution, fully connected or matmul layer run in int8."""
    return kernel.lower().endswith(INTEGER_SUFFIXES) and any(t in layer_type for t in DOT_PRODUCT_LAYERS)


def onednn_isa(isa: cpu.Isa) -> str:
    """oneDNN's name for the widest ISA level whose every feature ``isa`` has (oneDNN's "CPU dispatcher control")."""
    f = isa.features
    if isa.amx_int8:
        return "AVX512_CORE_AMX"
    if isa.avx512:
        if "avx512_fp16" in f:
            return "AVX512_CORE_FP16"
        if "avx512_bf16" in f:
            return "AVX512_CORE_BF16"
        return "AVX512_CORE_VNNI" if "avx512_vnni" in f else "AVX512_CORE"
    if "avx_vnni" in f:
        return "AVX2_VNNI"
    return "AVX2" if "avx2" in f else "SSE41"


def above(kernel: str, level: str) -> bool:
    """Whether a kernel name (``brgemm_avx512_amx_I8``) uses an ISA beyond the oneDNN ``level``."""
    k = kernel.lower()
    if "amx" in k and "AMX" not in level:
        return True
    if "avx512" in k and not level.startswith("AVX512"):
        return True
    return "vnni" in k and "VNNI" not in level and level in ("AVX2", "SSE41", "AVX512_CORE")


@dataclass(frozen=True)
class IsaCap:
    """The environment that makes ``backend`` run ``target``'s kernels on this host."""

    backend: str
    target: str
    variable: str
    level: str

    @property
    def env(self) -> dict[str, str]:
        return {self.variable: self.level}

    def describe(self) -> str:
        return f"{self.backend} in a child process with {self.variable}={self.level}"


def plan(backend: str, target: cpu.CpuTarget) -> tuple[IsaCap | None, str]:
    """The cap that lets this host run ``target``'s kernels on ``backend``, or None and why there is none."""
    variable = BACKENDS[backend].isa_cap_env
    if variable is None:
        return None, f"{backend} dispatches on the CPU's own flags and cannot be capped"
    host = cpu.host().isa
    if not (host.x86 and target.isa.x86):
        return None, "capping runs x86 targets on x86 hosts only"
    missing = sorted(target.isa.features - host.features)
    if missing:
        return None, f"this host lacks {', '.join(missing)}, which {target.name} has"
    return IsaCap(backend, target.name, variable, onednn_isa(target.isa)), ""


def names_isa(kernel: str) -> bool:
    """Whether a kernel name says which ISA it runs (``jit_avx2_1x1_I8`` does; ``jit_gemm_I8``, ``ref_I8`` and
    ``jit_uni_I8`` choose or need none in the name: those are checked by their results, ``tests/test_isa_cap.py``)."""
    return any(isa in kernel.lower() for isa in ("sse41", "avx", "amx"))


@dataclass
class CapCheck:
    """What a capped session really runs: its integer dot-product kernels (and which of them name no ISA), and
    the other kernels the cap did not reach."""

    cap: IsaCap
    integer_kernels: dict[str, int] = field(default_factory=dict)
    kernels_above_cap: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "isa cap", "backend": self.cap.backend, "target": self.cap.target, "env": self.cap.env,
                "integer_kernels": self.integer_kernels,
                "integer_kernels_naming_no_isa": sorted(k for k in self.integer_kernels if not names_isa(k)),
                "kernels_above_cap": self.kernels_above_cap,
                "note": "no integer dot product named an ISA above the cap; the kernels above it (the plugin's own "
                        "reductions, norms, elementwise ops) do no u8 x s8 pair arithmetic (isa_cap.py)"}


def check_kernels(cap: IsaCap, kernels: dict[str, tuple[str, str]]) -> CapCheck:
    """Refuse a session whose integer dot products exceed the cap (the variable did not take) or are not chosen
    yet (``undef``: read before an inference); count the rest.

    ``kernels``: layer -> (layer type, kernel name), as ``OvSession.kernels`` reports them."""
    dots = Counter(k for layer_type, k in kernels.values() if dot_product(layer_type, k))
    unknown = sorted(k for k in dots if k.lower().startswith("undef"))
    if unknown:
        raise UserError(f"{cap.backend} had not chosen the kernels of its integer layers ({', '.join(unknown)}): "
                        "cannot tell whether the cap took; run an inference before reading them")
    bad = sorted({k for k in dots if above(k, cap.level)})
    if bad:
        raise UserError(f"{cap.variable}={cap.level} did not cap {cap.backend}'s integer kernels (it ran "
                        f"{', '.join(bad)}): its runtime ignores the variable: measure on a {cap.target} CPU itself")
    rest = Counter(k for layer_type, k in kernels.values() if not dot_product(layer_type, k) and above(k, cap.level))
    return CapCheck(cap, dict(sorted(dots.items())), dict(sorted(rest.items())))


def load(cap: IsaCap, model: Path, options: RunOptions) -> tuple[IsolatedSession, CapCheck]:
    """``model`` loaded by ``cap.backend`` in a capped child process, its kernels checked. A dynamic shape picks
    its kernels only at the first inference, so then one is run first (``?`` dimensions fed as 1); a static one
    keeps its first inference for the caller (``profile`` reports it)."""
    session = IsolatedSession(cap.backend, model, options, cap.env)
    try:
        kernels = session.kernels()
        if any(k.lower().startswith("undef") for _, k in kernels.values()):
            session.run(np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in session.input_shape], np.float32))
            kernels = session.kernels()
        check = check_kernels(cap, kernels)
    except BaseException:
        session.close()
        raise
    return session, check


def loader(cap: IsaCap) -> Loader:
    """A ``Loader`` of capped sessions (their kernels checked, the check not kept)."""
    return lambda model, options: load(cap, model, options)[0]


def caps_for(backends: Iterable[str], target: cpu.CpuTarget, *, integer_only: bool = False) -> dict[str, IsaCap]:
    """The backends that must run capped to stand for ``target`` here and can: none where the host's own kernels
    are the target's (``integer_only``: for accuracy, where only the integer path matters), nor on accelerators."""
    if cpu.host_stands_for(target, integer_only=integer_only):
        return {}
    caps = {}
    for name in backends:
        if not BACKENDS[name].accelerator:
            cap, _ = plan(name, target)
            if cap is not None:
                caps[name] = cap
    return caps
