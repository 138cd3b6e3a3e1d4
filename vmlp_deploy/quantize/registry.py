"""Every INT8 quantizer by the name of the backend its output is for (``--backend``), beside ``BACKENDS``.

Adding one means a file implementing ``base.Quantizer`` and one line here.
"""

from __future__ import annotations

from .base import Quantizer
from .openvino_nncf import OpenVinoQuantizer
from .ort_static import OrtQuantizer
from .tensorrt_qdq import TensorRtQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {q.backend: q for q in (
    OrtQuantizer,
    OpenVinoQuantizer,
    TensorRtQuantizer,
)}


def default_quantizers() -> tuple[str, ...]:
    """What ``--backend`` means when it is not given: the quantizers made by default whatever is installed."""
    return tuple(name for name, q in QUANTIZERS.items() if q.by_default)


def quantizer_modules() -> tuple[str, ...]:
    """The modules any quantizer needs, each once: a quantize manifest records their versions (or that they are
    not installed), whichever backend it was made for."""
    return tuple(dict.fromkeys(m for q in QUANTIZERS.values() for m in q.required_modules))
