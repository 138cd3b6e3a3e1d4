"""``--backend openvino``: NNCF post-training quantization of the OpenVINO model, saved as IR (.xml/.bin).

NNCF reads the ONNX model through OpenVINO, collects statistics on the calibration samples (one sample per
batch, so ``subset_size`` is the sample count: NNCF counts batches), inserts FakeQuantize nodes and compresses
the weights to int8 when the IR is saved. ``model_type=TRANSFORMER`` (chosen automatically for graphs with
LayerNorm and MatMul/Gemm, i.e. every MetaFormer in the zoo) keeps NNCF from quantizing the inputs of
normalisation and similar float-only paths. It would also enable SmoothQuant on MatMuls (alpha 0.95); here
SmoothQuant is off unless ``--smooth-quant-alpha`` asks for it, because it hurt every model measured (logits
SQNR INT8 vs FP32 with min/max ranges, digits-trained S2-MLPv2: 46.3 dB off, 21.4 at alpha 0.15, 22.7 at 0.5,
13.7 at 0.95; digits-trained ConvNeXt: 42.4 off, 42.0 / 41.4 / 40.0).
Activation ranges are global minima/maxima over the calibration set (``--method minmax``, as ONNX Runtime
computes them), not NNCF's default of per-sample extremes averaged, which clips: logits SQNR of the
digits-trained S2-MLPv2 went from 26.4 dB to 46.3 dB with that one change.
Weights are 8-bit everywhere for targets with a 32-bit int8 dot product and 7-bit ("overflow fix" on every
layer) for x86 without VNNI, as ``scheme.py`` decides; NNCF's own default fixes the first layer only.
Layers to keep in float go in an ``IgnoredScope``: ONNX node names map to the OpenVINO ops NNCF sees (a Gemm
``name`` becomes ``name/WithoutBiases`` + ``name``), hence a pattern per name.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from ..backends import Loader
from ..backends.isolated import note_child_peak
from ..backends.openvino import OpenVinoBackend
from ..cpu import CpuTarget
from ..errors import UserError
from ..progress import Progress
from ..rundir import process_peak_rss_mb
from ..targets import CHANNELS_FIRST
from .base import LayerProbes, LayoutRule
from .data import BatchReader
from .fidelity import ov_layer_probes
from .options import QuantizeOptions
from .scheme import IntegerScheme, SchemeChoice, scheme_for_isa
from .source import SourceModel

#: Suffixes OpenVINO's ONNX frontend appends when it splits one ONNX node into several ops.
_SPLIT_SUFFIX = re.compile(r"/WithoutBiases$")


def auto_model_type(model: onnx.ModelProto) -> tuple[str, str]:
    """('transformer' | 'cnn', why): NNCF's TRANSFORMER type suits graphs with LayerNorm and matrix products."""
    ops = {n.op_type for n in model.graph.node}
    if "LayerNormalization" in ops and ops & {"MatMul", "Gemm"}:
        return "transformer", "the graph has LayerNormalization and MatMul/Gemm (a MetaFormer)"
    return "cnn", "no LayerNormalization + MatMul/Gemm pattern; NNCF's default (CNN) scheme"


class OpenVinoQuantizer:
    """NNCF on the OpenVINO model: it calibrates inside every ``quantize`` call, so ``prepare`` keeps the samples."""

    backend: ClassVar[str] = OpenVinoBackend.name
    check_runtime: ClassVar[str] = OpenVinoBackend.name
    label: ClassVar[str] = f"{OpenVinoBackend.name} (NNCF)"
    library: ClassVar[str] = "NNCF"
    own_options: ClassVar[tuple[str, ...]] = ("smooth_quant_alpha", "model_type")
    #: NNCF has no entropy (KL) calibration.
    methods: ClassVar[tuple[str, ...]] = ("minmax", "percentile")
    required_modules: ClassVar[tuple[str, ...]] = ("openvino", "nncf")
    by_default: ClassVar[bool] = True
    #: The IR's FakeQuantize layers are not the ONNX Q/DQ graph ``saturation.py`` reads.
    predicts_saturation: ClassVar[bool] = False
    calibrates_in_quantize: ClassVar[bool] = True
    layout_rule: ClassVar[LayoutRule] = LayoutRule(
        CHANNELS_FIRST, "OpenVINO's INT8 kernels run the channels-first graph fastest (BENCHMARKS.md)")
    layer_method: ClassVar[str] = "OpenVINO f32 pinned, outputs of quantized layers"
    #: The sensitivity ranking fake-quantizes activations symmetrically for NNCF.
    symmetric_activations: bool = True

    @classmethod
    def create(cls, source: SourceModel, options: QuantizeOptions, scheme: IntegerScheme, work: Path,
               architecture: Path | None = None) -> OpenVinoQuantizer:
        return cls(source, options, scheme, work, architecture)

    @classmethod
    def choose_scheme(cls, target: CpuTarget, requested: str) -> SchemeChoice:
        """By the target's ISA, as on ONNX Runtime, but NNCF's weights are always signed: no u8u8."""
        if requested == "u8u8":
            raise UserError("--int8-scheme u8u8 is ONNX Runtime's (--backend cpu); NNCF weights are signed: "
                            "use u8s8-7bit for an AVX2 target")
        return scheme_for_isa(target, requested)

    def __init__(self, source: SourceModel, options: QuantizeOptions, scheme: IntegerScheme, work: Path,
                 architecture: Path | None = None) -> None:
        """``architecture``: the graph whose ops decide ``--model-type auto`` when ``source`` is a re-laid-out
        copy (the channels-first graph has no LayerNormalization node, yet is the same MetaFormer: NNCF's
        TRANSFORMER type measured 19.4 vs 16.9 dB logits SQNR on s2mlpv2_small there, BENCHMARKS.md)."""
        self.source = source
        self.options = options
        self.scheme = scheme
        self.work = work
        self.float_model = source.onnx_path
        self.samples: np.ndarray | None = None
        model = onnx.load(str(architecture or source.onnx_path), load_external_data=False)
        if options.model_type == "auto":
            self.model_type, self.model_type_reason = auto_model_type(model)
        else:
            self.model_type, self.model_type_reason = options.model_type, "--model-type"
        self.smooth_quant_alpha = -1.0 if options.smooth_quant_alpha is None else options.smooth_quant_alpha

    def prepare(self, samples: np.ndarray, progress: Progress) -> None:
        """NNCF calibrates inside every ``quantize`` call; keep the samples for it (on disk: it runs in a child)."""
        self.samples = samples
        np.save(self.work / "nncf-calibration.npy", samples)

    def quantize(self, keep_float: list[str], out_dir: Path) -> Path:
        """NNCF in a child process: a signal inside NNCF's graph walk crashed CPython 3.11 (SIGSEGV in about one
        Ctrl-C of three early in the call, leaving the staging directory behind); in a child, the crash and its
        memory stay there, and this process unwinds cleanly and removes what it staged."""
        assert self.samples is not None, "prepare() first"
        out = out_dir / "model.xml"
        job = NncfJob(str(self.source.onnx_path), str(self.work / "nncf-calibration.npy"), self.source.input_name,
                      self.source.batch, self.model_type == "transformer", keep_float, self.options.method,
                      self.options.percentile, self.scheme.nncf_overflow_fix, self.smooth_quant_alpha, str(out))
        run_child(job, self.work)
        return out

    def quantized_consumers(self, int8_model: Path) -> list[str]:
        """ONNX node names of the ops that read a FakeQuantize output (the layers NNCF quantized)."""
        import openvino as ov

        names = {n.name for n in onnx.load(str(self.float_model), load_external_data=False).graph.node}
        found: list[str] = []
        for op in ov.Core().read_model(str(int8_model)).get_ordered_ops():
            if op.get_type_name() != "FakeQuantize" or op.input_value(0).get_node().get_type_name() == "Constant":
                continue
            for target in op.output(0).get_target_inputs():
                name = _SPLIT_SUFFIX.sub("", target.get_node().get_friendly_name())
                if name in names and name not in found:
                    found.append(name)
        return found

    def layer_probes(self, int8_model: Path, nodes: list[str], work: Path, threads: int | None,
                     load_int8: Loader) -> LayerProbes:
        return ov_layer_probes(self.float_model, int8_model, nodes, work, threads, load_int8)

    def post_check(self, int8_model: Path, progress: Progress) -> dict[str, Any] | None:
        """OpenVINO reads the IR it wrote: nothing to check."""
        return None

    def settings(self) -> dict[str, Any]:
        import nncf
        import openvino as ov

        return {
            "runtime": f"nncf {nncf.__version__} on openvino {ov.__version__}",
            "model_type": self.model_type,
            "model_type_reason": self.model_type_reason,
            "preset": "NNCF default (mixed for transformer: symmetric weights, asymmetric activations; "
                      "performance for cnn: symmetric)",
            "smooth_quant_alpha_matmul": (self.smooth_quant_alpha if self.smooth_quant_alpha >= 0 else "off")
            if self.model_type == "transformer" else "not applied (NNCF applies it to transformers only)",
            "subset_size": len(self.samples) // (self.source.batch or 1) if self.samples is not None else 0,
            "batch_size": self.source.batch or 1,
            "fast_bias_correction": True,
            "overflow_fix": f"{self.scheme.nncf_overflow_fix} ({self.scheme.name}: "
                            + ("7-bit weights on every convolution and matrix product)" if self.scheme.reduce_range
                               else "8-bit weights everywhere)"),
            "saved_as": "OpenVINO IR, int8 weights, compress_to_fp16=False",
        }


@dataclass(frozen=True)
class NncfJob:
    """One ``nncf.quantize`` call, as the child process runs it (JSON both ways)."""

    onnx_path: str
    samples_path: str
    input_name: str
    batch: int | None
    transformer: bool
    keep_float: list[str]
    method: str
    percentile: float
    overflow_fix: str
    smooth_quant_alpha: float
    out_xml: str


#: Free bytes below which a failed child is taken to have run out of disk (OpenVINO reports a full disk as
#: "basic_ios::clear: iostream error").
_IR_ROOM = 64 << 20


def run_child(job: NncfJob, work: Path) -> None:
    """Run ``job`` in a child Python and wait; NNCF's refusal becomes one line (a ``UserError``), its peak memory
    is counted with the stage's children. Interrupted here, ``subprocess.run`` kills the child before unwinding."""
    spec = work / "nncf-job.json"
    spec.write_text(json.dumps(asdict(job)))
    result = work / "nncf-result.json"
    result.unlink(missing_ok=True)
    child = f"import sys; from {__name__} import child_main; child_main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-P", "-c", child, str(spec), str(result), str(os.getpid())],
                          capture_output=True, text=True, check=False)
    if done.returncode < 0 and -done.returncode in (signal.SIGINT, signal.SIGTERM):
        raise KeyboardInterrupt
    outcome = json.loads(result.read_text()) if result.is_file() else {}
    if outcome.get("peak_rss_mb"):
        note_child_peak(outcome["peak_rss_mb"])
    if outcome.get("refused"):
        raise UserError(f"NNCF refused the model ({outcome['refused']}): try --model-type cnn")
    if done.returncode != 0 or not outcome.get("ok"):
        full = next((d for d in (Path(job.out_xml).parent, work) if shutil.disk_usage(d).free < _IR_ROOM), None)
        if full is not None:  # OpenVINO reports a full disk as "iostream error": name the folder that is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(full))
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"NNCF's quantize failed in its child process: {last}")


def _range_estimator(method: str, percentile: float) -> Any:
    """``--method`` in NNCF's terms: minmax = global min/max (as ONNX Runtime); percentile = the most extreme
    per-sample quantiles (outlier probability ``1 - percentile``): NNCF's MEAN_QUANTILE, which averages them
    instead, clipped the digits S2-MLPv2 to 11.7 dB logits SQNR."""
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if method == "minmax":
        return RangeEstimatorParametersSet.MINMAX
    prob = (100.0 - percentile) / 100.0
    low = StatisticsCollectorParameters(statistics_type=StatisticsType.QUANTILE, aggregator_type=AggregatorType.MIN,
                                        quantile_outlier_prob=prob)
    high = StatisticsCollectorParameters(statistics_type=StatisticsType.QUANTILE, aggregator_type=AggregatorType.MAX,
                                         quantile_outlier_prob=prob)
    return RangeEstimatorParameters(min=low, max=high)


def _quantize_in_child(job: NncfJob) -> dict[str, Any]:
    """The child's work: the calibration samples through NNCF, the IR saved; ``refused`` when NNCF says no."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    nncf.set_log_level(logging.ERROR)
    batches = list(BatchReader(np.load(job.samples_path), job.input_name, job.batch))
    model = ov.Core().read_model(job.onnx_path)
    kwargs: dict[str, Any] = {}
    if job.transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if job.keep_float:
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            patterns=[f"^{re.escape(name)}(/.*)?$" for name in job.keep_float], validate=False)
    advanced: dict[str, Any] = {"activations_range_estimator_params": _range_estimator(job.method, job.percentile),
                                "overflow_fix": nncf.OverflowFix(job.overflow_fix)}
    if job.transformer:
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=job.smooth_quant_alpha)
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws its own progress bars
            quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), **kwargs)
    except nncf.ValidationError as e:
        return {"ok": False, "refused": str(e).splitlines()[0]}
    ov.save_model(quantized, job.out_xml, compress_to_fp16=False)
    return {"ok": True}


def _end_with_parent(parent: int) -> None:
    """SIGTERM this child when the parent dies (Linux), so a killed ``quantize`` leaves no NNCF run behind."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        sys.exit(1)


def child_main(argv: list[str]) -> None:
    """The child's entry (``run_child``): JOB.json RESULT.json PARENT_PID. Imported, not run as ``__main__``, so the
    module is loaded once."""
    _end_with_parent(int(argv[2]))
    outcome = _quantize_in_child(NncfJob(**json.loads(Path(argv[0]).read_text())))
    outcome["peak_rss_mb"] = process_peak_rss_mb()
    Path(argv[1]).write_text(json.dumps(outcome))
