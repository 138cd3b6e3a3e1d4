"""Zoo-wide checks: paper parameter counts, registry behaviour and tiny forwards for every variant."""

from __future__ import annotations

import pytest
import torch

from vmlp_deploy import models as zoo
from vmlp_deploy.zoo_table import params_within_paper, printed_half_unit, zoo_rows

ALL = zoo.list_models()
REQUIRED = {
    "s2mlp_wide", "s2mlp_deep", "s2mlpv2_small", "s2mlpv2_medium", "mixer_s16_224", "mixer_b16_224",
    "resmlp_12_224", "resmlp_24_224", "resmlp_b24_224", "gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224",
    "poolformer_s12", "poolformer_s24", "poolformer_s36", "poolformer_m36", "poolformer_m48",
    "convnext_tiny", "convnext_small", "convnext_base", "asmlp_tiny", "asmlp_small", "asmlp_base",
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
}


def test_every_issue_variant_is_registered() -> None:
    assert REQUIRED <= set(ALL)


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return {r["name"]: r for r in zoo_rows()}


@pytest.mark.parametrize("name", ALL)
def test_params_match_paper(rows: dict[str, dict], name: str) -> None:
    """Within 2% (plus the printed figure's rounding); a documented paper inconsistency is the only exception."""
    r = rows[name]
    if not r["params_within_2pct"]:
        note = zoo.get_variant(name).paper.note
        assert note and "MACs" in note, f"{name}: {r['params_delta_pct']}% off the paper and no documented reason"
        assert r["paper_macs_g"] is not None and abs(r["macs_g"] / r["paper_macs_g"] - 1) <= 0.02, (
            f"{name}: the params deviation is only excused when the paper's own MACs confirm the hyper-parameters"
        )


@pytest.mark.parametrize("name", ALL)
def test_macs_are_measured(rows: dict[str, dict], name: str) -> None:
    r = rows[name]
    assert r["macs_g"] > 0
    if r["paper_macs_g"] is not None:
        assert 0.85 <= r["macs_g"] / r["paper_macs_g"] <= 1.15, f"{name}: {r['macs_g']} vs {r['paper_macs_g']}"


def test_tolerance_rounding() -> None:
    assert printed_half_unit(28) == 0.5
    assert printed_half_unit(15.4) == pytest.approx(0.05)
    assert params_within_paper(28.59, 28)
    assert not params_within_paper(29.2, 28)
    assert not params_within_paper(53.5, 51)


@pytest.mark.parametrize("name", ALL)
def test_tiny_forward(name: str) -> None:
    model = zoo.create_model(name, tiny=True)
    h, w = model.vmlp_cfg.input_size
    with torch.no_grad():
        y = model(torch.randn(2, 3, h, w))
    assert y.shape == (2, model.get_classifier().out_features)
    assert torch.isfinite(y).all()


def test_create_model_overrides_and_seed() -> None:
    torch.manual_seed(1)
    a = zoo.create_model("convnext_tiny", tiny=True, num_classes=7)
    torch.manual_seed(1)
    b = zoo.create_model("convnext_tiny", tiny=True, num_classes=7)
    assert a.get_classifier().out_features == 7
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(zoo.UnknownModelError, match="s2mlpv2_small"):
        zoo.get_variant("s2mlpv2_smal")


def test_zoo_is_not_a_top_level_package(tmp_path) -> None:
    """Installed, the zoo is vmlp_deploy.models; no generic `models` package lands in site-packages."""
    import subprocess
    import sys

    code = "import importlib.util, vmlp_deploy.models as m; print(importlib.util.find_spec('models'), len(m.list_models()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    spec, count = out.stdout.split()
    assert spec == "None" and int(count) >= 20


def test_every_subpackage_ships_in_the_wheel() -> None:
    """The build config lists packages explicitly (to map models/ and calibration/): none may be forgotten."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"vmlp_deploy." + p.parent.relative_to(root / "vmlp_deploy").as_posix().replace("/", ".")
             for p in (root / "vmlp_deploy").rglob("__init__.py") if p.parent != root / "vmlp_deploy"}
    assert found | {"vmlp_deploy", "vmlp_deploy.models", "vmlp_deploy.calibration_data"} <= listed


def test_counts_are_kept_per_architecture_and_code(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vmlp-deploy models` measures once per code version: a second call reads what the first measured, another
    architecture is measured afresh, and an unreadable cache file is measured again, never trusted."""
    from vmlp_deploy.complexity import measure, zoo_complexity

    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path))
    first = zoo_complexity("convnext_tiny", tiny=True)
    with torch.device("meta"):
        assert first == measure(zoo.create_model("convnext_tiny", tiny=True), (32, 32))
    (kept,) = (tmp_path / "complexity").glob("convnext_tiny-*.json")
    assert zoo_complexity("convnext_tiny", tiny=True) == first
    wider = zoo_complexity("convnext_tiny", tiny=True, num_classes=20)
    assert wider.params > first.params and len(list((tmp_path / "complexity").glob("*.json"))) == 2
    kept.write_text("{not json")
    assert zoo_complexity("convnext_tiny", tiny=True) == first
    assert kept.read_text().startswith("{\"params\"")
