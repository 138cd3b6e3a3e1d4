"""The CPU a model runs on: its instruction set, detected once here, and the deployment CPUs a user can name.

Everything that depends on the hardware asks this module instead of reading flags itself: which integer
scheme avoids saturation (``quantize``), whether bf16 exists (``profile``), and the theoretical ceiling
that "% of peak" is measured against. A deployment CPU (``--target-cpu``) is the host's instruction set or
a named class of CPUs; the decisions below take the target, never the host, so a model can be prepared on
one machine for another.

Why the int8 dot product matters: x86 CPUs without VNNI (or AMX) multiply u8 activations by s8 weights with
``vpmaddubsw``, which adds pairs of products into a *saturating* 16-bit lane; VNNI/AMX and Arm's dot-product
and i8mm instructions accumulate in 32 bits. Plain Arm NEON widens to 16 bits per product before it adds, so
it does not saturate either (``../shared/reference/isa.md`` has the measured consequences).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import UserError

#: Feature names as Linux spells them in /proc/cpuinfo (x86 ``flags``, Arm ``Features``).
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "fphp", "asimdhp")


@dataclass(frozen=True)
class Isa:
    """An instruction set: the architecture and the features that change which kernels run."""

    arch: str
    features: frozenset[str]
    vendor: str = ""
    family: int | None = None
    model: int | None = None

    @property
    def x86(self) -> bool:
        return self.arch == "x86_64"

    @property
    def avx512(self) -> bool:
        return self.x86 and {"avx512f", "avx512bw", "avx512vl"} <= self.features

    @property
    def vnni(self) -> bool:
        return self.x86 and bool({"avx512_vnni", "avx_vnni"} & self.features)

    @property
    def amx_int8(self) -> bool:
        return self.x86 and {"amx_tile", "amx_int8"} <= self.features

    @property
    def int8_dot32(self) -> bool:
        """An 8-bit dot product that accumulates in 32 bits (no intermediate 16-bit saturation)."""
        if self.x86:
            return self.vnni or self.amx_int8
        return "asimddp" in self.features or "i8mm" in self.features

    @property
    def u8s8_saturates(self) -> bool:
        """u8 x s8 integer GEMMs add product pairs in saturating int16 lanes (x86 without VNNI/AMX)."""
        return self.x86 and not self.int8_dot32

    @property
    def bf16(self) -> bool:
        """bf16 arithmetic that runtimes use (OpenVINO runs bf16 only with these; elsewhere a bf16 hint runs f32)."""
        if self.x86:
            return "avx512_bf16" in self.features or {"amx_tile", "amx_bf16"} <= self.features
        return "bf16" in self.features

    @property
    def f16(self) -> bool:
        if self.x86:
            return "avx512_fp16" in self.features
        return "asimdhp" in self.features or "fphp" in self.features

    @property
    def vector_bits(self) -> int:
        """Width of one SIMD register the float kernels use."""
        if self.x86:
            return 512 if self.avx512 else (256 if "avx2" in self.features else 128)
        return 128

    @property
    def datapath_bits(self) -> int:
        """Width each FMA unit executes per cycle: AMD Zen 4 (family 0x19) runs AVX-512 as two 256-bit halves, and
        Zen/Zen+ (family 0x17, models below 0x30) run AVX2 as two 128-bit halves (Zen 2 widened the units)."""
        family = self.family if self.x86 and self.vendor == "AuthenticAMD" else None
        if family is not None and self.avx512 and family < 0x1A:
            return 256
        if self.uarch == "Zen/Zen+":
            return 128
        return self.vector_bits

    @property
    def uarch(self) -> str:
        """AMD's core generation from family/model (the model name of a virtual machine is often just "AMD
        EPYC", which does not say which), or "" where not known."""
        if not (self.x86 and self.vendor == "AuthenticAMD") or self.family is None or self.model is None:
            return ""
        if self.family == 0x17:
            return "Zen/Zen+" if self.model < 0x30 else "Zen 2"
        if self.family == 0x19:
            return "Zen 4" if 0x10 <= self.model < 0x20 or 0x60 <= self.model < 0xB0 else "Zen 3"
        if self.family == 0x1A:
            return "Zen 5"
        return ""

    def summary(self) -> str:
        """One short line, e.g. ``x86_64 AVX-512 VNNI BF16``."""
        if not self.x86:
            parts = [self.arch, "NEON"]
            parts += [n for f, n in (("asimddp", "dotprod"), ("i8mm", "i8mm"), ("bf16", "BF16"), ("sve", "SVE"))
                      if f in self.features]
            return " ".join(parts)
        parts = [self.arch, "AVX-512" if self.avx512 else ("AVX2" if "avx2" in self.features else "SSE")]
        if "avx512_vnni" in self.features:
            parts.append("VNNI")
        if "avx_vnni" in self.features:
            parts.append("AVX-VNNI")
        if "avx512_bf16" in self.features:
            parts.append("BF16")
        if "avx512_fp16" in self.features:
            parts.append("FP16")
        if self.amx_int8:
            parts.append("AMX")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "features": sorted(self.features), "summary": self.summary(),
                "int8_dot32": self.int8_dot32, "u8s8_saturates": self.u8s8_saturates, "bf16": self.bf16,
                "vector_bits": self.vector_bits, "datapath_bits": self.datapath_bits,
                **({"uarch": self.uarch} if self.uarch else {})}


@dataclass(frozen=True)
class CpuTarget:
    """A deployment CPU: a name the user types, what it stands for, and its instruction set."""

    name: str
    isa: Isa
    description: str
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "description": self.description, **self.isa.to_dict()}
        if self.model:
            d["model"] = self.model
        return d


def _x86(*features: str) -> Isa:
    return Isa("x86_64", frozenset(("avx2", "fma", *features)))


def _arm(*features: str) -> Isa:
    return Isa("aarch64", frozenset(("asimd", *features)))


_AVX512 = ("avx512f", "avx512bw", "avx512vl")

#: ``--target-cpu`` names (besides ``host``): one class of CPUs each, with examples.
TARGETS: dict[str, CpuTarget] = {t.name: t for t in (
    CpuTarget("avx2", _x86(), "x86 with AVX2/FMA, no VNNI: Haswell..Comet Lake, AMD Zen 1-3, Atom/Celeron N"),
    CpuTarget("avx-vnni", _x86("avx_vnni"), "x86 with 256-bit AVX-VNNI, no AVX-512: Alder/Raptor Lake, Meteor Lake"),
    CpuTarget("avx512", _x86(*_AVX512), "x86 with AVX-512 but no VNNI: Skylake-SP/X"),
    CpuTarget("avx512-vnni", _x86(*_AVX512, "avx512_vnni"), "x86 with AVX-512 VNNI: Cascade Lake, Ice Lake, Tiger Lake"),
    CpuTarget("avx512-bf16", _x86(*_AVX512, "avx512_vnni", "avx512_bf16"),
              "x86 with AVX-512 VNNI and BF16: AMD Zen 4/Zen 5, Cooper Lake"),
    CpuTarget("amx", _x86(*_AVX512, "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"),
              "x86 with AMX: Sapphire/Emerald/Granite Rapids"),
    CpuTarget("arm64", _arm(), "Armv8-A with NEON only: Cortex-A53/A72 (Raspberry Pi 3/4)"),
    CpuTarget("arm64-dotprod", _arm("asimddp", "asimdhp", "fphp"),
              "Armv8.2-A with the dot product: Cortex-A55/A76/A78 (Raspberry Pi 5, Jetson Orin)"),
    CpuTarget("arm64-i8mm", _arm("asimddp", "asimdhp", "fphp", "i8mm", "bf16"),
              "Armv8.6-A with i8mm and BF16: Neoverse V1/N2, Cortex-A510/A710, Graviton 3/4"),
)}
TARGET_NAMES: tuple[str, ...] = ("host", *TARGETS)


def _cpuinfo(text: str) -> dict[str, str]:
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def parse_cpuinfo(text: str, machine: str) -> tuple[Isa, str, float | None]:
    """(instruction set, model name, nominal MHz) from the text of /proc/cpuinfo."""
    info = _cpuinfo(text)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    arm = machine.lower() in ("aarch64", "arm64")
    known = ARM_FEATURES if arm else X86_FEATURES
    family, model = info.get("cpu family"), info.get("model")
    isa = Isa("aarch64" if arm else "x86_64", frozenset(f for f in known if f in flags),
              vendor=info.get("vendor_id", ""), family=int(family) if family and family.isdigit() else None,
              model=int(model) if model and model.isdigit() else None)
    mhz = info.get("cpu MHz")
    try:
        nominal = float(mhz) if mhz else None
    except ValueError:
        nominal = None
    return isa, info.get("model name") or info.get("Hardware") or platform.processor() or machine, nominal


@dataclass(frozen=True)
class HostCpu:
    """The machine this process runs on: its ISA, model name, cores and clock as far as the OS tells."""

    isa: Isa
    model: str
    cores: int
    nominal_mhz: float | None
    max_mhz: float | None
    flags_source: str = field(default="/proc/cpuinfo")

    @property
    def label(self) -> str:
        """What benchmark tables name the CPU by, e.g. ``AMD EPYC (Zen/Zen+; x86_64 AVX2)``."""
        return f"{self.model} ({'; '.join(p for p in (self.isa.uarch, self.isa.summary()) if p)})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "cores": self.cores, "nominal_mhz": self.nominal_mhz, "max_mhz": self.max_mhz,
                "flags_source": self.flags_source, **self.isa.to_dict()}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


#: x86-64 machine code for ``void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])`` (System V ABI):
#: push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid; mov [r8], eax; mov [r8+4], ebx;
#: mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("5389f889f14989d00fa2418900418958044189480841895 00c5bc3".replace(" ", ""))
#: (leaf, subleaf, register index eax=0..edx=3, bit) of each feature whose absence CPUID can prove.
_CPUID_BITS = {
    "avx2": (7, 0, 1, 5), "avx512f": (7, 0, 1, 16), "avx512bw": (7, 0, 1, 30), "avx512vl": (7, 0, 1, 31),
    "avx512_vnni": (7, 0, 2, 11), "avx512_fp16": (7, 0, 3, 23), "amx_bf16": (7, 0, 3, 22), "amx_tile": (7, 0, 3, 24),
    "amx_int8": (7, 0, 3, 25), "avx_vnni": (7, 1, 0, 4), "avx512_bf16": (7, 1, 0, 5), "fma": (1, 0, 2, 12),
}


def cpuid_features() -> frozenset[str] | None:
    """The x86 features this process's CPUID reports, or None where it cannot be executed.

    /proc/cpuinfo describes the physical CPU; CPUID is what the process sees, which is what ONNX Runtime and
    OpenVINO dispatch on. They differ under an emulator (``qemu-x86_64 -cpu Haswell`` keeps the host's
    /proc/cpuinfo) or a hypervisor that masks features, and the runtimes follow CPUID.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    import ctypes
    import mmap

    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    try:
        page.write(_CPUID_CODE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        call = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
        regs: dict[tuple[int, int], list[int]] = {}
        for leaf, sub in {(leaf, sub) for leaf, sub, _, _ in _CPUID_BITS.values()}:
            out = (ctypes.c_uint32 * 4)()
            call(leaf, sub, out)
            regs[(leaf, sub)] = list(out)
        del call, address
        return frozenset(name for name, (leaf, sub, reg, bit) in _CPUID_BITS.items()
                         if regs[(leaf, sub)][reg] >> bit & 1)
    finally:
        page.close()


@lru_cache(maxsize=1)
def host() -> HostCpu:
    """Detect the host once per process: /proc/cpuinfo's flags, less those this process's CPUID does not report
    (``VMLP_CPUINFO`` may name another cpuinfo file, for tests; then CPUID is not consulted)."""
    machine = platform.machine()
    fake = os.environ.get("VMLP_CPUINFO")
    text = _read(fake or "/proc/cpuinfo") or ""
    isa, model, nominal = parse_cpuinfo(text, machine)
    seen = None if fake else cpuid_features()
    source = "/proc/cpuinfo"
    if seen is not None and isa.x86:
        hidden = {f for f in isa.features if f in _CPUID_BITS and f not in seen}
        isa = replace(isa, features=isa.features - hidden)
        source = "/proc/cpuinfo and CPUID" + (f" (CPUID hides {', '.join(sorted(hidden))})" if hidden else "")
    max_khz = (_read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") or "").strip()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return HostCpu(isa, model, cores, nominal, int(max_khz) / 1000 if max_khz.isdigit() else None, source)


def oversubscription_warning(threads: int | None) -> str | None:
    """A warning when ``--threads`` asks for more threads than this process may run on: they then time-slice
    (a trial's fidelity step went from 0.2 s to 115 s with --threads 1000 on 2 cores)."""
    cores = host().cores
    if threads is None or threads <= cores:
        return None
    return (f"--threads {threads} exceeds the {cores} usable cores: the threads time-slice, which is slower and "
            "makes timings meaningless; leave --threads out to use them all")


def resolve_target(name: str | None) -> CpuTarget:
    """``host`` (or None) -> the detected CPU; otherwise one of :data:`TARGETS`."""
    if name is None or name == "host":
        h = host()
        return CpuTarget("host", h.isa, "this machine's CPU", model=h.model)
    key = name.lower().replace("_", "-")
    if key not in TARGETS:
        raise UserError(f"unknown --target-cpu {name!r}: use one of {', '.join(TARGET_NAMES)} "
                        "(`vmlp-deploy quantize --help` describes them)")
    return TARGETS[key]


def host_stands_for(target: CpuTarget, integer_only: bool = False) -> bool:
    """Whether kernels measured on the host are the ones ``target`` will run: the same integer path, and
    (unless ``integer_only``, for INT8 accuracy where floats run f32) the same bf16 support."""
    h = host().isa
    t = target.isa
    same_int = h.arch == t.arch and h.int8_dot32 == t.int8_dot32 and h.u8s8_saturates == t.u8s8_saturates
    return same_int and (integer_only or h.bf16 == t.bf16)


def targets_help() -> str:
    return "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())


@dataclass(frozen=True)
class Ceiling:
    """The most operations per second the ISA allows at one precision, with the arithmetic spelled out."""

    precision: str
    gops: float
    cores: int
    mhz: float
    ops_per_cycle: int
    derivation: str

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "gops": self.gops, "cores": self.cores, "mhz": self.mhz,
                "ops_per_cycle_per_core": self.ops_per_cycle, "derivation": self.derivation}


#: FMA units per core assumed for the ceiling: two on every x86 core with AVX2 and on big Arm cores (a
#: ceiling errs high: a core with fewer units only makes the percentage smaller).
FMA_PIPES = 2


def ops_per_cycle(isa: Isa, precision: str) -> tuple[int, str]:
    """Operations (multiply and add counted separately) per cycle per core, and why."""
    lanes = isa.datapath_bits // 32
    f32 = FMA_PIPES * lanes * 2
    base = f"{FMA_PIPES} FMA units x {lanes} f32 lanes ({isa.datapath_bits}-bit) x 2 ops"
    if precision == "int8":
        if isa.amx_int8:
            return 2048, "AMX-INT8: 1024 int8 MACs per cycle per core x 2 ops"
        if isa.int8_dot32:
            what = "VNNI" if isa.x86 else "dot product" + (" / i8mm (counted as dot product)" if "i8mm" in
                                                          isa.features else "")
            return 4 * f32, f"{what}: 4 int8 MACs per 32-bit lane, 4x f32 ({base})"
        if isa.uarch == "Zen/Zen+":
            return f32, ("no 32-bit int8 dot product, and Zen/Zen+ issue vpmaddubsw and vpmaddwd on one 128-bit "
                         f"integer-multiply pipe: 8 u8xs8 MACs per cycle, the f32 FMA rate ({base})")
        return 2 * f32, f"no 32-bit int8 dot product: u8xs8 pairs then int16->int32 adds, about 2x f32 ({base})"
    if precision == "bf16" and isa.bf16:
        if isa.x86 and {"amx_tile", "amx_bf16"} <= isa.features:
            return 1024, "AMX-BF16: 512 bf16 MACs per cycle per core x 2 ops"
        return 2 * f32, f"bf16 dot product: 2 bf16 MACs per 32-bit lane, 2x f32 ({base})"
    if precision == "f16" and isa.f16:
        return 2 * f32, f"native f16 FMA: 2x the f32 lanes ({base})"
    note = "" if precision == "f32" else f" ({precision} runs in f32 arithmetic on this ISA)"
    return f32, base + note


def ceiling(isa: Isa, precision: str, cores: int, mhz: float) -> Ceiling:
    """cores x frequency x ops/cycle for ``precision`` on ``isa``."""
    per_cycle, why = ops_per_cycle(isa, precision)
    gops = cores * mhz * 1e6 * per_cycle / 1e9
    return Ceiling(precision, gops, cores, mhz, per_cycle,
                   f"{cores} cores x {mhz:.0f} MHz x {per_cycle} ops/cycle [{why}] = {gops:.1f} GOPS")
