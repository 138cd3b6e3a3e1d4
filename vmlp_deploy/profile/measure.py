"""Timing: first inference, warm-up, then interleaved measurement of every configuration, and statistics.

Configurations (model x backend x precision x batch x mode) are measured in rounds: each round visits
every configuration for about ``chunk_s`` seconds, in a rotating order, so that slow drifts of a noisy
machine (frequency, other tenants) hit all of them alike and their ratios hold. Latency mode times one
synchronous request at a time; throughput mode keeps several requests in flight and times the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Concurrent, Timer
from ..errors import UserError

MODES = ("latency", "throughput")
#: Inferences per throughput visit, in multiples of its requests in flight: fewer would time mostly the filling
#: and draining of the requests rather than their steady rate.
FILL_DRAIN_FACTOR = 4


@dataclass(frozen=True)
class MeasurePlan:
    """Warm-up by count (``warmup``) or seconds (``warmup_s``); then ``iterations`` or ``duration_s`` per
    configuration (with at least ``min_iterations``, as trtexec does). Each visit of a configuration in the
    interleaved rounds lasts about ``chunk_s``: short enough to follow drifts of a shared machine, long
    enough that switching models (cold caches, idle thread pools) does not dominate."""

    warmup: int | None = 10
    warmup_s: float | None = None
    iterations: int | None = None
    duration_s: float | None = 3.0
    min_iterations: int = 10
    chunk_s: float = 0.5

    def check(self) -> None:
        if self.iterations is not None and self.iterations <= 0:
            raise UserError(f"--iterations must be a positive number, got {self.iterations}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise UserError(f"--duration must be a positive number of seconds, got {self.duration_s}")
        if self.iterations is None and self.duration_s is None:
            raise UserError("pass --iterations N or --duration SECONDS")
        if self.warmup is not None and self.warmup < 0:
            raise UserError(f"--warmup must be zero or more, got {self.warmup}")
        if self.warmup_s is not None and self.warmup_s < 0:
            raise UserError(f"--warmup-time must be zero or more seconds, got {self.warmup_s}")
        if self.chunk_s <= 0:
            raise UserError(f"--chunk (seconds per interleaved visit) must be positive, got {self.chunk_s}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Probe:
    """One configuration under measurement: how to run it and how many images one inference is."""

    key: str
    batch: int
    mode: str
    timer: Timer | None = None
    concurrent: Concurrent | None = None
    requests: int = 1


@dataclass
class Samples:
    first_s: float
    latencies_s: list[float] = field(default_factory=list)
    measured_s: float = 0.0
    inferences: int = 0
    visit_rates: list[float] = field(default_factory=list)
    warmup_inferences: int = 0
    warmup_s: float = 0.0


@dataclass(frozen=True)
class LatencyStats:
    """Per-inference latency in milliseconds; ``cov`` is std/mean (a fraction)."""

    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cov: float
    count: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats | None:
    """Percentiles by linear interpolation between order statistics (numpy's default)."""
    if not latencies_s:
        return None
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p90, p95, p99 = np.percentile(ms, [90, 95, 99])
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return LatencyStats(float(ms.min()), mean, float(np.median(ms)), float(p90), float(p95), float(p99),
                        float(ms.max()), std, std / mean if mean > 0 else 0.0, int(ms.size))


def _visit(probe: Probe, n: int) -> tuple[float, list[float]]:
    """Run ``n`` inferences of ``probe``; returns (measured seconds, per-inference latencies)."""
    if probe.mode == "latency":
        assert probe.timer is not None
        lat = [probe.timer() for _ in range(n)]
        return math.fsum(lat), lat
    assert probe.concurrent is not None
    return probe.concurrent(n)


def _chunk(probe: Probe, per_inference_s: float, chunk_s: float) -> int:
    n = max(1, round(chunk_s / max(per_inference_s, 1e-6)))
    return max(n, FILL_DRAIN_FACTOR * probe.requests) if probe.mode == "throughput" else n


def measure(probes: Sequence[Probe], plan: MeasurePlan,
            on_progress: Callable[[float], None] | None = None) -> list[Samples]:
    """First inference, interleaved warm-up, interleaved measurement; one :class:`Samples` per probe."""
    plan.check()
    samples = [Samples(first_s=_visit(p, 1)[0]) for p in probes]
    per_inf = [s.first_s for s in samples]

    def warm_done(s: Samples) -> bool:
        if plan.warmup_s is not None:
            return s.warmup_s >= plan.warmup_s
        return s.warmup_inferences >= (plan.warmup or 0)

    def done(s: Samples) -> bool:
        if plan.iterations is not None:
            return s.inferences >= plan.iterations
        return s.measured_s >= (plan.duration_s or 0) and s.inferences >= plan.min_iterations

    round_no = 0
    while not all(warm_done(s) for s in samples):
        for i in _rotation(len(probes), round_no):
            s, p = samples[i], probes[i]
            if warm_done(s):
                continue
            n = _chunk(p, per_inf[i], plan.chunk_s)
            if plan.warmup_s is None:
                n = min(n, (plan.warmup or 0) - s.warmup_inferences)
            elapsed, _ = _visit(p, n)
            s.warmup_inferences += n
            s.warmup_s += elapsed
            per_inf[i] = elapsed / n
        round_no += 1

    round_no = 0
    while not all(done(s) for s in samples):
        for i in _rotation(len(probes), round_no):
            s, p = samples[i], probes[i]
            if done(s):
                continue
            n = _chunk(p, per_inf[i], plan.chunk_s)
            if plan.iterations is not None:
                n = min(n, plan.iterations - s.inferences)
            elapsed, lat = _visit(p, n)
            s.latencies_s.extend(lat)
            s.measured_s += elapsed
            s.inferences += n
            s.visit_rates.append(n * p.batch / elapsed if elapsed > 0 else 0.0)
            per_inf[i] = elapsed / n
        round_no += 1
        if on_progress is not None:
            on_progress(sum(_fraction(s, plan) for s in samples) / len(samples))
    return samples


def _rotation(k: int, round_no: int) -> list[int]:
    start = round_no % k if k else 0
    return list(range(start, k)) + list(range(start))


def _fraction(s: Samples, plan: MeasurePlan) -> float:
    if plan.iterations is not None:
        return min(1.0, s.inferences / plan.iterations)
    return min(1.0, s.measured_s / (plan.duration_s or 1.0), s.inferences / plan.min_iterations)


def throughput(s: Samples, batch: int) -> float:
    """Images per second over the measured time (latency mode: back-to-back single requests)."""
    return s.inferences * batch / s.measured_s if s.measured_s > 0 else 0.0


def spread(s: Samples) -> tuple[float, str]:
    """Run-to-run spread: the CoV of per-inference latencies, or of per-visit throughput where a backend
    times only whole batches of requests."""
    stats = latency_stats(s.latencies_s)
    if stats is not None and stats.count > 1:
        return stats.cov, "cov of per-inference latency"
    rates = np.asarray(s.visit_rates, dtype=np.float64)
    if rates.size > 1 and rates.mean() > 0:
        return float(rates.std(ddof=1) / rates.mean()), "cov of per-visit throughput"
    return 0.0, "too few samples"
