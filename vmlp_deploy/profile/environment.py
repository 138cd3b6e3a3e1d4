"""The machine and software a profile ran on, captured with every result: a latency without its CPU,
flags, core count, frequency policy and library versions cannot be compared with anything. The CPU facts
come from :func:`vmlp_deploy.cpu.host`, the one place that reads them."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__, cpu

LIBRARIES = ("onnxruntime", "openvino", "onnx", "numpy", "torch", "tensorrt", "cuda-python", "nvidia-modelopt")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def capture() -> dict[str, Any]:
    host = cpu.host()
    versions = {name: v for name in LIBRARIES if (v := _version(name)) is not None}
    versions["vmlp_deploy"] = __version__
    return {
        "cpu_model": host.model,
        "cpu_flags": sorted(host.isa.features),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": host.cores,
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_max_mhz": host.max_mhz,
        "cpu_nominal_mhz": host.nominal_mhz,
        "memory_gb": _memory_gb(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def _memory_gb() -> float | None:
    text = _read("/proc/meminfo")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None
