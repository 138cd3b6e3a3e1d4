"""The `models` table: every zoo variant measured (params, MACs) beside the paper's printed figures."""

from __future__ import annotations

from typing import Any

from . import models as zoo
from .complexity import zoo_complexity


def printed_half_unit(figure: float) -> float:
    """Half a unit of the last printed digit: "28" M means 27.5..28.5, "15.4" means 15.35..15.45."""
    text = repr(float(figure))
    decimals = 0 if float(figure).is_integer() else len(text.split(".")[1])
    return 0.5 * 10.0 ** (-decimals)


def params_within_paper(measured_m: float, paper_m: float, rel: float = 0.02) -> bool:
    """Measured params agree with the paper within ``rel`` plus the rounding of the printed figure."""
    return abs(measured_m - paper_m) <= rel * paper_m + printed_half_unit(paper_m)


def zoo_rows(family: str | None = None) -> list[dict[str, Any]]:
    rows = []
    defaults = zoo.family_defaults()
    if family is not None and family in defaults:
        family = zoo.get_variant(family).family
    for name in zoo.list_models(family):
        variant = zoo.get_variant(name)
        counts = zoo_complexity(name)
        paper = variant.paper
        params_m = (counts.params_without_head if paper.params_exclude_head else counts.params) / 1e6
        rows.append({
            "name": name,
            "family": variant.family,
            "input_size": list(variant.data.input_size),
            "fixed_input_size": variant.fixed_input_size,
            "params_m": round(counts.params_m, 3),
            "params_compared_m": round(params_m, 3),
            "paper_params_m": paper.params_m,
            "paper_params_exclude_head": paper.params_exclude_head,
            "params_delta_pct": round(100 * (params_m / paper.params_m - 1), 2),
            "params_within_2pct": params_within_paper(params_m, paper.params_m),
            "macs_g": round(counts.macs_g, 3),
            "paper_macs_g": paper.macs_g,
            "paper_top1": paper.top1,
            "source": paper.source,
            "paper_note": paper.note,
            "timm_name": variant.timm_name,
            "family_default_for": sorted(k for k, v in defaults.items() if v == name),
        })
    return rows
