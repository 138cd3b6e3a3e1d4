"""Stage 5, `vmlp-deploy profile`: latency and throughput of models x backends x precisions x batches,
measured interleaved, with per-layer breakdowns, each rate set against the best of the backends' probe kernels
and the ISA's theoretical ceiling, and the host and target CPU."""

from __future__ import annotations

from .measure import MeasurePlan
from .run import ProfileOptions, ProfileResult, profile_models

__all__ = ["MeasurePlan", "ProfileOptions", "ProfileResult", "profile_models"]
