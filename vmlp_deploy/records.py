"""Typed run records: the ``manifest.json`` every stage writes and reads, the stage entries in it, the
environment each run records, and one profile measurement.

Stages used to build and read these as nested dicts by hand in four places; the types here give each key one
definition. The JSON on disk is unchanged: ``to_json(from_json(d)) == d`` for every manifest the pipeline
writes, so older run directories keep working. A record read from a file writes back the keys it was read
with (in their order; unknown keys ride along in ``extra``); a record built fresh writes every field that is
set, plus the fields its stage has always written as ``null``.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from . import __version__, cpu

MANIFEST_FORMAT = "vmlp-deploy/1"
#: Distributions a profile records (those installed), by their package names.
PROFILE_LIBRARIES = ("onnxruntime", "openvino", "onnx", "numpy", "torch", "tensorrt", "cuda-python",
                     "nvidia-modelopt")


class ManifestError(ValueError):
    """A manifest whose structure cannot be read (a list, or ``model`` that is not an object): the message names
    what is wrong, for the one-line error the CLI prints."""


@dataclass
class JsonRecord:
    """One JSON object as a dataclass: each field is a key, ``extra`` holds the keys no field names."""

    #: Keys a freshly built record writes as ``null`` when unset (the rest are left out).
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    #: The field keys of the object this record was read from, in order (None: built fresh).
    keys: tuple[str, ...] | None = field(default=None, kw_only=True, compare=False, repr=False)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "keys"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        names = cls.names()
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names}, keys=tuple(known))

    def nullable(self) -> frozenset[str]:
        """Fields written as ``null`` when unset: the class's, or (where overridden) decided by the other fields."""
        return self.NULLABLE

    def to_json(self) -> dict[str, Any]:
        read = self.keys or ()
        added = [n for n in self.names() if n not in read
                 and (getattr(self, n) is not None or n in self.nullable())]
        return {**{n: self._value(n) for n in (*read, *added)}, **self.extra}

    def _value(self, name: str) -> Any:
        value = getattr(self, name)
        return value.to_json() if isinstance(value, JsonRecord) else value


@dataclass
class ModelInfo(JsonRecord):
    """The model a run holds: a zoo model's full record, or the name and origin of an ONNX file from elsewhere
    (``source`` when optimized, ``source_onnx`` when quantized)."""

    name: str | None = None
    family: str | None = None
    tiny: bool | None = None
    input_size: list[int] | None = None
    num_classes: int | None = None
    params: int | None = None
    random_weights: bool | None = None
    checkpoint: dict[str, str] | None = None
    source: str | None = None
    source_onnx: str | None = None

    def nullable(self) -> frozenset[str]:
        """A zoo model always says which checkpoint it loaded (null: the pretrained or random weights)."""
        return frozenset({"checkpoint"}) if self.family is not None else frozenset()


@dataclass
class Artifacts(JsonRecord):
    """The run's files by role: the model (ONNX or OpenVINO IR) or a profile's reports."""

    onnx: str | None = None
    external_data: str | None = None
    openvino_xml: str | None = None
    openvino_bin: str | None = None
    json: str | None = None
    markdown: str | None = None
    latency_chart: str | None = None
    macs_chart: str | None = None

    #: The roles whose values are file names in the run directory, checked when a manifest is read.
    MODEL_FILES: ClassVar[tuple[str, ...]] = ("onnx", "openvino_xml", "external_data")

    def nullable(self) -> frozenset[str]:
        """An ONNX model says whether it has external data; an OpenVINO IR says that there is no ONNX model."""
        if self.openvino_xml is not None:
            return frozenset({"onnx"})
        return frozenset({"external_data"}) if self.onnx is not None else frozenset()


@dataclass
class StageRecord(JsonRecord):
    """One entry under ``stages``; a stage this version does not know keeps all its keys in ``extra``."""

    NAME: ClassVar[str] = ""

    def nullable(self) -> frozenset[str]:
        """A stage writes every one of its keys, ``null`` for what did not apply."""
        return frozenset(self.names())


@dataclass
class ExportStage(StageRecord):
    """PyTorch -> ONNX: how it was exported, the graph after each pass, and the validation gate's figures."""

    NAME: ClassVar[str] = "export"

    exporter: str | None = None
    opset: int | None = None
    batch: int | str | None = None
    seed: int | None = None
    target: str | None = None
    input_name: str | None = None
    output_name: str | None = None
    passes: list[str] | None = None
    nodes: dict[str, int] | None = None
    rewrite: dict[str, Any] | None = None
    op_histogram: dict[str, int] | None = None
    validation: dict[str, Any] | None = None
    exporter_warnings: list[str] | None = None
    simplifier_log: list[str] | None = None
    timings_s: dict[str, float] | None = None
    peak_rss_mb: float | None = None


@dataclass
class OptimizeStage(StageRecord):
    """The graph passes' report (:meth:`OptimizeResult.to_dict`) and the file they ran on."""

    NAME: ClassVar[str] = "optimize"

    changed: bool | None = None
    pattern_counts: dict[str, int] | None = None
    patterns: list[dict[str, Any]] | None = None
    nodes_before: int | None = None
    nodes_after: int | None = None
    ops_before: dict[str, int] | None = None
    ops_after: dict[str, int] | None = None
    verification: dict[str, Any] | None = None
    rolled_back: list[str] | None = None
    skipped: list[dict[str, Any]] | None = None
    cleanup: dict[str, Any] | None = None
    layout: dict[str, Any] | None = None
    target: str | None = None
    channels_first: dict[str, Any] | None = None
    npu: dict[str, Any] | None = None
    seconds: float | None = None
    source: str | None = None
    peak_rss_mb: float | None = None


@dataclass
class QuantizeStage(StageRecord):
    """INT8 for one backend: the source, the settings, calibration, what stayed float, and the fidelity measured."""

    NAME: ClassVar[str] = "quantize"

    backend: str | None = None
    precision: str | None = None
    source: dict[str, Any] | None = None
    preprocessing_source: str | None = None
    settings: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    keep_float: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    tensorrt_graph_check: dict[str, Any] | None = None
    timings_s: dict[str, float] | None = None
    peak_rss_mb: float | None = None
    warnings: list[str] | None = None
    target_cpu: dict[str, Any] | None = None
    host_cpu: dict[str, Any] | None = None
    host_stands_for_target: bool | None = None
    integer_scheme: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    layout: dict[str, Any] | None = None
    saturation_prediction: dict[str, Any] | None = None
    #: INT8 vs FP32 latency on this host, where it runs the target's kernels itself (absent elsewhere).
    speed: dict[str, Any] | None = None
    #: How the host ran the target's integer kernels when its own are not the target's (``isa_cap``), and the
    #: peak memory of the largest child process that did.
    stand_in: dict[str, Any] | None = None
    child_peak_rss_mb: float | None = None

    def nullable(self) -> frozenset[str]:
        """Every key, null for what did not apply, except those of a stand-in and the speed check: written only by
        runs that had them."""
        return super().nullable() - {"stand_in", "child_peak_rss_mb", "speed"}


@dataclass
class ProfileStage(StageRecord):
    """A profile run: how many records, what was skipped or warned about, the options, and the CPUs involved."""

    NAME: ClassVar[str] = "profile"

    records: int | None = None
    skipped: list[str] | None = None
    warnings: list[str] | None = None
    options: dict[str, Any] | None = None
    host_cpu: dict[str, Any] | None = None
    target_cpu: dict[str, Any] | None = None
    host_stands_for_target: bool | None = None
    #: Backends that ran the target's kernels on this host, capped (``isa_cap``): their environment.
    capped_backends: dict[str, Any] | None = None
    ceiling_isa: str | None = None
    clock: dict[str, Any] | None = None
    ceilings: list[dict[str, Any]] | None = None

    def nullable(self) -> frozenset[str]:
        """Every key, null for what did not apply, except ``capped_backends``: written only by runs that capped."""
        return super().nullable() - {"capped_backends"}


STAGES: dict[str, type[StageRecord]] = {s.NAME: s for s in (ExportStage, OptimizeStage, QuantizeStage, ProfileStage)}
S = TypeVar("S", bound=StageRecord)


class StageEntry(Generic[S]):
    """``manifest.quantize``: the entry of one stage, typed, or None when the run did not go through it."""

    def __init__(self, stage: type[S]) -> None:
        self.stage = stage

    def __get__(self, manifest: RunManifest | None, owner: type | None = None) -> S | None:
        found = (manifest.stages or {}).get(self.stage.NAME) if manifest is not None else None
        return found if isinstance(found, self.stage) else None


@dataclass
class RunManifest(JsonRecord):
    """A run directory's ``manifest.json``: what model, made how, from which stages, on which machine.

    Later stages copy the manifest they read and add their own entry to ``stages``."""

    format: str | None = None
    created: str | None = None
    command: str | None = None
    model: ModelInfo | None = None
    preprocessing: dict[str, Any] | None = None
    artifacts: Artifacts | None = None
    stages: dict[str, StageRecord] | None = None
    inputs: list[dict[str, Any]] | None = None
    environment: dict[str, Any] | None = None

    #: Top-level keys that must hold a JSON object (or null, where listed) for a stage to read them.
    OBJECTS: ClassVar[dict[str, tuple[type, ...]]] = {
        "model": (dict,), "artifacts": (dict,), "stages": (dict,), "preprocessing": (dict, type(None)),
    }

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Parse a manifest; raises :class:`ManifestError` naming the first key whose JSON type is wrong."""
        if not isinstance(data, dict):
            raise ManifestError(f"a JSON {type(data).__name__}, not an object")
        for key, types in cls.OBJECTS.items():
            if key in data and not isinstance(data[key], types):
                raise ManifestError(f"{key!r} is a {type(data[key]).__name__}, not an object")
        for name, stage in (data.get("stages") or {}).items():
            if not isinstance(stage, dict):
                raise ManifestError(f"stages.{name} is a {type(stage).__name__}, not an object")
        manifest = super().from_json(data)
        if isinstance(data.get("model"), dict):
            manifest.model = ModelInfo.from_json(data["model"])
        if isinstance(data.get("artifacts"), dict):
            manifest.artifacts = Artifacts.from_json(data["artifacts"])
        if isinstance(data.get("stages"), dict):
            manifest.stages = {name: STAGES.get(name, StageRecord).from_json(stage)
                               for name, stage in data["stages"].items()}
        return manifest

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if self.stages is not None:
            data["stages"] = {name: stage.to_json() for name, stage in self.stages.items()}
        return data

    def add_stage(self, stage: StageRecord) -> None:
        """Record ``stage`` under its name, after the stages the model went through before."""
        if self.stages is None:
            self.stages = {}
        self.stages[stage.NAME] = stage

    export = StageEntry(ExportStage)
    optimize = StageEntry(OptimizeStage)
    quantize = StageEntry(QuantizeStage)
    profile = StageEntry(ProfileStage)


@dataclass
class ProfileRecord:
    """One measured configuration (model x backend x precision x batch x mode) of a profile run; the probe and
    ceiling fields are filled in once every rate of the run is known."""

    model: str
    model_spec: str
    model_path: str
    model_name: str | None
    backend: str
    device: str
    precision: str
    precision_requested: str
    inference_precision: str
    quantized: bool
    batch: int
    mode: str
    input_shape: list[int]
    params: int | None
    macs_per_image: int | None
    macs_source: str
    settings: dict[str, Any]
    load_s: float
    first_inference_ms: float
    warmup: dict[str, Any]
    iterations: int
    measured_s: float
    latency_ms: dict[str, float] | None
    throughput_images_per_s: float | None
    achieved_gops: float | None
    probe_peak: dict[str, Any] | None
    probe_percent: float | None
    ceiling_precision: str | None
    ceiling: dict[str, Any] | None
    ceiling_percent: float | None
    spread: dict[str, Any]
    layers: dict[str, Any] | None
    warnings: list[str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``profile.json`` holds it: every field, in order, values as they are."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def db_to_json(v: float) -> float | str:
    """A decibel figure as JSON can hold it: an exact match (no noise) is ``"inf"``, which JSON has no number for."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def format_db(v: float | str | None) -> str:
    """A decibel figure from a manifest (a number, or ``"inf"``/``"-inf"``) for a table: ``13.4``, ``∞``."""
    if v is None:
        return "-"
    value = float(v)
    return f"{value:.1f}" if math.isfinite(value) else ("∞" if value > 0 else "-∞")


def environment(optional: tuple[str, ...] = ()) -> dict[str, str]:
    """The interpreter, platform and library versions a stage's manifest records; ``optional`` names modules
    recorded as ``not installed`` when absent (quantize: every quantizer's required modules)."""
    import onnx
    import onnxruntime
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "vmlp_deploy": __version__,
    }
    for module in optional:
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = "not installed"
    return env


def host_environment() -> dict[str, Any]:
    """The machine a profile ran on: a latency without its CPU, flags, core count, frequency policy and library
    versions cannot be compared with anything. CPU facts come from :func:`vmlp_deploy.cpu.host`."""
    host = cpu.host()
    versions = {name: v for name in PROFILE_LIBRARIES if (v := _distribution_version(name)) is not None}
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


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _distribution_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _memory_gb() -> float | None:
    text = _read("/proc/meminfo")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None
