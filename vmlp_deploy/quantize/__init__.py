"""Stage 4: INT8 post-training quantization (``vmlp-deploy quantize``).

One entry point, shaped like ONNX Runtime's quantization API: ``quantize_run(run_dir, QuantizeOptions(...),
progress=...) -> QuantizeResult``. One data protocol (:class:`~.data.BatchReader`: NCHW float32 batches, also an
ONNX Runtime ``CalibrationDataReader``), one module per backend (``ort_static``, ``openvino_nncf``,
``tensorrt_qdq``) implementing ``base.Quantizer`` and registered in ``QUANTIZERS`` (``registry``), and fidelity
(``fidelity``), layer sensitivity (``sensitivity``) and the Markdown report (``report``) beside them.
"""

from .data import BatchReader, DataStats, SampleSet
from .fidelity import FidelityReport, LayerSqnr, LogitsReport
from .options import QuantizeOptions, RecipeOverrides
from .registry import QUANTIZERS
from .stage import AccuracyReport, QuantizeResult, quantize_run

__all__ = [
    "AccuracyReport",
    "BatchReader",
    "DataStats",
    "FidelityReport",
    "LayerSqnr",
    "LogitsReport",
    "QUANTIZERS",
    "QuantizeOptions",
    "QuantizeResult",
    "RecipeOverrides",
    "SampleSet",
    "quantize_run",
]
