"""The theoretical ceiling "% of ceiling" is measured against: cores x clock x operations per cycle of the ISA
that ran (:func:`vmlp_deploy.cpu.ceiling`), never below anything measured.

The clock is the weak term. Without cpufreq (virtual machines) the OS reports a nominal "cpu MHz" while the
cores boost above it, so a probe or a model can run faster than the nominal ceiling. A ceiling that is beaten
is no ceiling: the clock is then raised to the lowest one that every measured rate implies, one clock for the
whole run, and the derivation says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import cpu


@dataclass(frozen=True)
class Clock:
    """The frequency the OS reports for the host, and where it comes from."""

    mhz: float | None
    source: str


@dataclass(frozen=True)
class Rate:
    """A measured rate the ceiling must cover: ``gops`` at ``precision`` on ``cores`` cores, and what ran."""

    precision: str
    cores: int
    gops: float
    what: str


def host_clock(host: cpu.HostCpu) -> Clock:
    """cpufreq's maximum when the OS has it, else the nominal ``cpu MHz`` of /proc/cpuinfo."""
    if host.max_mhz:
        return Clock(host.max_mhz, "cpufreq cpuinfo_max_freq")
    if host.nominal_mhz:
        return Clock(host.nominal_mhz, "/proc/cpuinfo 'cpu MHz', nominal: no cpufreq here, boost is invisible")
    return Clock(None, "the OS reports no clock frequency")


def ceilings(isa: cpu.Isa, clock: Clock, wanted: Iterable[tuple[str, int]],
             rates: Sequence[Rate]) -> dict[tuple[str, int], cpu.Ceiling]:
    """One ceiling per (precision, cores) in ``wanted`` or ``rates``, at a clock no measured rate exceeds
    (empty when the OS reports no clock: a ceiling made of measurements alone would be a floor)."""
    if clock.mhz is None:
        return {}
    mhz, beaten_by = clock.mhz, None
    for r in rates:
        implied = r.gops * 1e3 / (r.cores * cpu.ops_per_cycle(isa, r.precision)[0])
        if implied > mhz:
            mhz, beaten_by = math.floor(implied) + 1.0, r
    if beaten_by is None:
        why = f"clock: {clock.source}"
    else:
        why = (f"clock raised from {clock.mhz:.0f} MHz ({clock.source}): {beaten_by.what} ran at "
               f"{beaten_by.gops:.1f} GOPS ({beaten_by.precision}, {beaten_by.cores} cores), which implies a "
               f"clock >= {mhz:.0f} MHz")
    out: dict[tuple[str, int], cpu.Ceiling] = {}
    for precision, cores in sorted({*wanted, *((r.precision, r.cores) for r in rates)}):
        c = cpu.ceiling(isa, precision, cores, mhz)
        out[(precision, cores)] = replace(c, derivation=f"{c.derivation}; {why}")
    return out


def ceiling_dict(c: cpu.Ceiling, isa: cpu.Isa) -> dict[str, Any]:
    """The ceiling as stored in profile.json: its arithmetic and the ISA it was computed for."""
    return {**c.to_dict(), "isa": isa.summary()}
