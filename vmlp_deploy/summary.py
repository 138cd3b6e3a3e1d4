"""FP32 vs INT8 side by side: one row per backend from a profile's records and the INT8 runs' manifests.

``profile`` without a model and ``deploy`` both end with this table: the float model and the INT8 model made for
each backend, measured in the same interleaved rounds, with the speedup and the fidelity the quantize stage
measured (top-1 agreement, logits SQNR, and the real top-1 change when ``--eval-data`` was given).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from .records import ProfileRecord, QuantizeStage
from .runs import RunInfo


@dataclass(frozen=True)
class SpeedupRow:
    """FP32 and INT8 of one model on one backend (batch 1, latency mode, medians)."""

    backend: str
    fp32_ms: float | None
    int8_ms: float | None
    fp32_precision: str
    int8_run: str
    scheme: str
    target_cpu: str
    top1_agreement: float | None
    sqnr_db: float | None
    top1_delta_points: float | None

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def _median(records: list[ProfileRecord], label: str, backend: str, quantized: bool) -> tuple[float | None, str]:
    for r in records:
        if (r.model == label and r.backend == backend and r.quantized == quantized and r.batch == 1
                and r.mode == "latency" and r.latency_ms):
            if quantized or r.precision_requested == "f32":
                return float(r.latency_ms["median"]), str(r.precision)
    return None, "-"


def speedup_rows(records: list[ProfileRecord], float_label: str, int8_runs: list[RunInfo]) -> list[SpeedupRow]:
    """One row per INT8 run: its backend's FP32 and INT8 medians from ``records`` (labels are run dir names)."""
    rows = []
    for run in int8_runs:
        q = run.record.quantize or QuantizeStage()
        f = q.fidelity or {}
        acc = q.accuracy or {}
        fp32_ms, fp32_precision = _median(records, float_label, run.backend, False)
        int8_ms, _ = _median(records, run.path.name, run.backend, True)
        sqnr = f.get("sqnr_db")
        rows.append(SpeedupRow(run.backend, fp32_ms, int8_ms, fp32_precision, str(run.path),
                               str((q.integer_scheme or {}).get("name", "-")), run.target_cpu,
                               f.get("top1_agreement"),
                               float(sqnr) if isinstance(sqnr, float | int) or sqnr in ("inf", "-inf") else None,
                               acc.get("top1_delta_points")))
    return rows


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def _cells(r: SpeedupRow) -> list[str]:
    return [r.backend, _fmt(r.fp32_ms, ".2f"), _fmt(r.int8_ms, ".2f"), _fmt(r.speedup, ".2f", "x"),
            _fmt(r.top1_agreement, ".1%"), _fmt(r.sqnr_db, ".1f", " dB"), _fmt(r.top1_delta_points, "+.2f"),
            f"{r.scheme}/{r.target_cpu}"]


HEADER = ["backend", "FP32 ms", "INT8 ms", "speedup", "agree", "SQNR", "Δtop-1", "scheme/CPU"]


def print_rows(console: Console, rows: list[SpeedupRow], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in HEADER:
        table.add_column(col, justify="left" if col in ("backend", "scheme/CPU") else "right", no_wrap=True)
    for r in rows:
        table.add_row(*_cells(r))
    console.print(table)


def markdown(rows: list[SpeedupRow], title: str, files: dict[str, str], notes: list[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", "Latency: batch 1, medians of interleaved rounds, FP32 with f32 pinned on OpenVINO. speedup = FP32 / "
              "INT8 latency. agree: INT8 top-1 = FP32 top-1 on held-out calibration samples; SQNR: logits, INT8 vs "
              "FP32; Δtop-1: real top-1 change in points on --eval-data (if given).", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in files.items()] + [""]
    return "\n".join(lines)
