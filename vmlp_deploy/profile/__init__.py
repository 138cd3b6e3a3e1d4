"""Stage 5, `vmlp-deploy profile`: latency and throughput of models x backends x precisions x batches,
measured interleaved, with per-layer breakdowns, the backends' own GEMM peaks and the environment."""

from __future__ import annotations

from .measure import MeasurePlan
from .run import ProfileOptions, ProfileResult, profile_models

__all__ = ["MeasurePlan", "ProfileOptions", "ProfileResult", "profile_models"]
