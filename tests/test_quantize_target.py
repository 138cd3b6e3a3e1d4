"""INT8 for the CPU it is deployed to: the scheme per ISA, models that differ only where the scheme says, the
fidelity gate, the layout choice, and host/target in every manifest. No expectation assumes this host's CPU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from vmlp_deploy.models import create_model

from vmlp_deploy import cpu, isa_cap
from vmlp_deploy.backends import BACKENDS
from vmlp_deploy.errors import FidelityGateError, UserError
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import LoadedModel, load_model
from vmlp_deploy.preprocess import Recipe
from vmlp_deploy.quantize import QuantizeOptions, quantize_run
from vmlp_deploy.quantize.fidelity import LogitsReport
from vmlp_deploy.quantize import layout
from vmlp_deploy.quantize.layout import decision_file
from vmlp_deploy.quantize.registry import QUANTIZERS
from vmlp_deploy.quantize.scheme import SCHEMES, choose_scheme
from vmlp_deploy.quantize.stage import AccuracyReport, _host_vs_target_saturation, fidelity_gate

Cli = Callable[..., tuple[int, str, str]]
FAST = dict(num_samples=16, holdout=4, layout="as-given")

#: target name -> the scheme ``auto`` must pick for cpu/openvino (from the ISA's facts, isa.md).
EXPECTED = {"avx2": "u8s8-7bit", "avx512": "u8s8-7bit", "avx-vnni": "u8s8", "avx512-vnni": "u8s8",
            "avx512-bf16": "u8s8", "amx": "u8s8", "arm64": "u8s8", "arm64-dotprod": "u8s8", "arm64-i8mm": "u8s8"}


@pytest.mark.parametrize("name", list(cpu.TARGETS))
@pytest.mark.parametrize("backend", ["cpu", "openvino"])
def test_auto_scheme_for_every_isa(name: str, backend: str) -> None:
    target = cpu.TARGETS[name]
    choice = choose_scheme(backend, target)
    assert choice.scheme.name == EXPECTED[name] and not choice.forced and choice.warning is None
    assert not choice.scheme.saturates_on(target.isa), "auto never picks a scheme that saturates on its target"
    assert choice.scheme.reduce_range == target.isa.u8s8_saturates
    assert choice.scheme.nncf_overflow_fix == ("enable" if target.isa.u8s8_saturates else "disable")
    assert name in choice.reason


@pytest.mark.parametrize("name", list(cpu.TARGETS))
def test_forced_schemes_warn_exactly_where_they_saturate(name: str) -> None:
    target = cpu.TARGETS[name]
    for scheme in ("u8s8", "u8s8-7bit", "u8u8"):
        choice = choose_scheme("cpu", target, scheme)
        assert choice.forced and choice.scheme.name == scheme
        assert (choice.warning is not None) == (scheme == "u8s8" and target.isa.u8s8_saturates)


def test_scheme_errors_and_tensorrt() -> None:
    avx2 = cpu.TARGETS["avx2"]
    assert choose_scheme("tensorrt", avx2).scheme.name == "s8s8"
    with pytest.raises(UserError, match="NNCF weights are signed"):
        choose_scheme("openvino", avx2, "u8u8")
    with pytest.raises(UserError, match="TensorRT"):
        choose_scheme("tensorrt", avx2, "u8s8")
    with pytest.raises(UserError, match="unknown --target-cpu 'avx9'"):
        cpu.resolve_target("avx9")


def test_only_a_clear_layout_decision_is_kept() -> None:
    """Kept when the middle half of the per-round ratios is on one side of the switching threshold (0.97x)."""
    def rounds(ratios: list[float]) -> dict[str, list[float]]:
        return {"as-given": [10.0] * len(ratios), "openvino": [10.0 * r for r in ratios]}

    assert layout.clear_winner(rounds([0.6, 0.62, 0.65, 0.61, 0.9]))
    assert layout.clear_winner(rounds([1.0, 1.02, 0.99, 1.05, 0.8]))
    assert not layout.clear_winner(rounds([0.9, 0.95, 1.0, 1.02, 0.93, 0.99]))


def test_backend_lists_and_all() -> None:
    """quantize/deploy ``--backend``: names in order, each once; ``all`` is every quantizer that can run here."""
    import argparse

    from vmlp_deploy.quantize.base import missing_modules
    from vmlp_deploy.quantize.cli import backend_list

    assert backend_list("openvino, cpu,openvino") == ("openvino", "cpu")
    every = backend_list("all")
    assert every == backend_list("cpu,all") == tuple(n for n, q in QUANTIZERS.items() if not missing_modules(q))
    assert {"cpu", "openvino"} <= set(every)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown backend tpu: .* or all"):
        backend_list("tpu")


def test_the_warning_says_which_way_the_hosts_fidelity_errs() -> None:
    """Measured on a host whose integer path is not the target's: an AVX2 target's saturation is predicted; an
    8-bit model for a VNNI target measured on a saturating host looks worse than it will be there."""
    ort, nncf = QUANTIZERS["cpu"], QUANTIZERS["openvino"]
    avx2, vnni = cpu.TARGETS["avx2"], cpu.TARGETS["avx512-vnni"]
    assert "predicted separately" in _host_vs_target_saturation(SCHEMES["u8s8-7bit"], avx2, ort)
    assert "cannot saturate int16" in _host_vs_target_saturation(SCHEMES["u8s8-7bit"], avx2, nncf)
    assert "not predicted for --backend openvino" in _host_vs_target_saturation(SCHEMES["u8s8"], avx2, nncf)
    vnni_u8s8 = _host_vs_target_saturation(SCHEMES["u8s8"], vnni, ort)
    assert ("look worse than it will be" in vnni_u8s8) == cpu.host().isa.u8s8_saturates
    assert "neither" in _host_vs_target_saturation(SCHEMES["u8s8-7bit"], vnni, nncf)


def test_isa_facts_from_cpuinfo_text() -> None:
    zen3 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC 7B13\ncpu MHz\t\t: 2450.0\n" \
           "flags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
    isa, model, mhz = cpu.parse_cpuinfo(zen3, "x86_64")
    assert model == "AMD EPYC 7B13" and mhz == 2450.0
    assert isa.u8s8_saturates and not isa.bf16 and not isa.int8_dot32 and isa.vector_bits == 256
    zen4 = zen3.replace("avx2 fma", "avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16")
    isa4, _, _ = cpu.parse_cpuinfo(zen4, "x86_64")
    assert isa4.int8_dot32 and isa4.bf16 and isa4.datapath_bits == 256, "Zen 4 runs AVX-512 on 256-bit units"
    isa5, _, _ = cpu.parse_cpuinfo(zen4.replace(": 25", ": 26"), "x86_64")
    assert isa5.datapath_bits == 512
    zen1, _, _ = cpu.parse_cpuinfo(zen3.replace(": 25", ": 23\nmodel\t\t: 1"), "x86_64")
    assert zen1.uarch == "Zen/Zen+" and zen1.datapath_bits == 128, "Zen/Zen+ run AVX2 on 128-bit units"
    assert cpu.ops_per_cycle(zen1, "f32")[0] == cpu.ops_per_cycle(zen1, "int8")[0] == 16, "int8 at the f32 rate"
    zen2, _, _ = cpu.parse_cpuinfo(zen3.replace(": 25", ": 23\nmodel\t\t: 49"), "x86_64")
    assert zen2.uarch == "Zen 2" and zen2.datapath_bits == 256
    arm, _, _ = cpu.parse_cpuinfo("Features\t: fp asimd asimddp\n", "aarch64")
    assert arm.int8_dot32 and not arm.u8s8_saturates and arm.summary() == "aarch64 NEON dotprod"


@pytest.fixture(scope="module")
def s2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("target") / "s2"
    export_model(load_model("s2mlpv2_small", tiny=True), out, ExportOptions())
    return out


def _weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: inits[n.input[0]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2}


def test_avx2_and_vnni_models_differ_only_in_weight_bits_onnxruntime(s2_run: Path, tmp_path: Path) -> None:
    runs = {}
    for target in ("avx2", "avx512-vnni"):
        runs[target] = quantize_run(s2_run, QuantizeOptions(backend="cpu", output=tmp_path / target,
                                                            target_cpu=target, **FAST))
    w7, w8 = _weights(tmp_path / "avx2" / "model.onnx"), _weights(tmp_path / "avx512-vnni" / "model.onnx")
    assert w7.keys() == w8.keys() and w7
    assert max(int(np.abs(w).max()) for w in w7.values()) <= 64 < min(int(np.abs(w).max()) for w in w8.values())
    a, b = (onnx.load(str(tmp_path / t / "model.onnx")) for t in ("avx2", "avx512-vnni"))
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    acts = {n.input[1] for n in a.graph.node if n.op_type == "QuantizeLinear"}
    inits_a = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer if t.name in acts}
    inits_b = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer if t.name in acts}
    assert all(np.array_equal(inits_a[k], inits_b[k]) for k in inits_a), "activation scales do not depend on target"
    for target, scheme in (("avx2", "u8s8-7bit"), ("avx512-vnni", "u8s8")):
        q = json.loads((tmp_path / target / "manifest.json").read_text())["stages"]["quantize"]
        assert q["target_cpu"]["name"] == target and q["integer_scheme"]["name"] == scheme
        assert q["host_cpu"]["summary"] == cpu.host().isa.summary()
        stands = cpu.host_stands_for(cpu.TARGETS[target], integer_only=True)
        assert q["host_stands_for_target"] == stands
        assert any("does not run the integer kernels" in w for w in q["warnings"]) == (not stands)
        assert q["settings"]["target_cpu"] == target


def test_avx2_and_vnni_models_differ_only_in_weight_bits_openvino(s2_run: Path, tmp_path: Path) -> None:
    import openvino as ov

    ranges = {}
    for target in ("avx2", "avx512-vnni"):
        r = quantize_run(s2_run, QuantizeOptions(backend="openvino", output=tmp_path / target, target_cpu=target,
                                                 **FAST))
        assert r.settings["overflow_fix"].startswith(SCHEMES[r.scheme.scheme.name].nncf_overflow_fix)
        consts = [op.get_data() for op in ov.Core().read_model(str(tmp_path / target / "model.xml")).get_ordered_ops()
                  if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
        ranges[target] = [int(np.abs(c).max()) for c in consts]
    assert len(ranges["avx2"]) == len(ranges["avx512-vnni"]) > 0
    assert max(ranges["avx2"]) <= 64 < min(ranges["avx512-vnni"])


def _logits(agreement: float) -> LogitsReport:
    return LogitsReport(50, agreement, 1.0, 0.99, 0.9, 30.0)


def _accuracy(fp32: float, int8: float) -> AccuracyReport:
    return AccuracyReport("eval", 500, 10, 0, fp32, int8, 1.0, 1.0)


def test_gate_rules() -> None:
    opt = QuantizeOptions()
    assert fidelity_gate(opt, _logits(0.5), _accuracy(0.98, 0.975), False, 0).passed
    failed = fidelity_gate(opt, _logits(1.0), _accuracy(0.98, 0.96), False, 0)
    assert not failed.passed and failed.value == pytest.approx(2.0) and "--keep-float auto" in failed.note
    assert fidelity_gate(QuantizeOptions(max_drop=2.5), _logits(1.0), _accuracy(0.98, 0.96), False, 0).passed
    random = fidelity_gate(opt, _logits(0.1), None, True, 0)
    assert random.passed and random.bound is None and "not gated" in random.note
    trained = fidelity_gate(opt, _logits(0.9), None, False, 0)
    assert not trained.passed and trained.bound == 0.95


@pytest.fixture(scope="module")
def fragile_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1000 near-tied classes make INT8 top-1 disagree with FP32 on some samples; weights marked trained."""
    torch.manual_seed(0)
    module = create_model("s2mlpv2_small", tiny=True, num_classes=1000)
    d = module.vmlp_cfg.data
    lm = LoadedModel(module, "s2mlpv2_small", module.vmlp_cfg,
                     Recipe(d.input_size, d.mean, d.std, d.crop_pct, d.interpolation), False, None)
    out = tmp_path_factory.mktemp("gate") / "fragile"
    export_model(lm, out, ExportOptions())
    return out


def test_gate_failure_writes_nothing_and_no_gate_writes_with_a_warning(fragile_trained: Path, cli: Cli,
                                                                       tmp_path: Path) -> None:
    data = tmp_path / "noise.npy"
    np.save(data, np.random.default_rng(0).standard_normal((40, 3, 56, 56)).astype(np.float32) * 3)
    args = ("quantize", fragile_trained, "--backend", "cpu", "--num-samples", "16", "--holdout", "24",
            "--layout", "as-given", "--calibration-data", data)
    code, out, err = cli(*args, "-o", tmp_path / "gated")
    assert code == 4, out
    assert "fidelity gate failed" in err and "--no-gate" in err and "Traceback" not in err
    assert not (tmp_path / "gated").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    code, out, err = cli(*args, "-o", tmp_path / "forced", "--no-gate")
    assert code == 0, err
    q = json.loads((tmp_path / "forced" / "manifest.json").read_text())["stages"]["quantize"]
    assert not q["gate"]["passed"] and q["gate"]["bound"] == 0.95 and any(w.startswith("--no-gate")
                                                                          for w in q["warnings"])
    code, _, err = cli(*args, "-o", tmp_path / "loose", "--gate-agreement", "0")
    assert code == 0, err
    with pytest.raises(FidelityGateError):
        quantize_run(fragile_trained, QuantizeOptions(backend="cpu", output=tmp_path / "api", num_samples=16,
                                                      holdout=24, layout="as-given", calibration_data=data))


def _foreign(capped: bool) -> str | None:
    """An x86 target this host does not stand for whose OpenVINO kernels it can (``capped``) or cannot run capped."""
    return next((name for name, t in cpu.TARGETS.items() if t.isa.x86 and not cpu.host_stands_for(t, integer_only=True)
                 and (isa_cap.plan("openvino", t)[0] is not None) == capped), None)


def test_layout_rule_measurement_and_names(s2_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timed on the host when it stands for the target; the documented rule where nothing here can run the
    target's kernels (a runtime without an ISA cap, as ONNX Runtime); node names pin it."""
    measured = quantize_run(s2_run, QuantizeOptions(backend="openvino", output=tmp_path / "m", num_samples=16,
                                                    holdout=4))
    lay = json.loads((tmp_path / "m" / "manifest.json").read_text())["stages"]["quantize"]["layout"]
    assert lay["how"] == "measured" and set(lay["int8_median_ms"]) == {"as-given", "openvino"}
    assert measured.fidelity.logits.cosine_mean > 0.9
    assert measured.manifest["stages"]["quantize"]["child_peak_rss_mb"] > 50, "NNCF's child is counted"
    monkeypatch.setattr(BACKENDS["openvino"], "isa_cap_env", None)
    foreign = _foreign(capped=False)
    assert foreign is not None, "every x86 host lacks the integer path of some x86 target"
    ruled = quantize_run(s2_run, QuantizeOptions(backend="openvino", output=tmp_path / "r", num_samples=16, holdout=4,
                                                 target_cpu=foreign))
    lay = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["quantize"]["layout"]
    assert lay["how"] == "rule" and lay["layout"] == "openvino" and ruled.model_path.suffix == ".xml"
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(ruled.model_path)).get_ordered_ops()}
    assert "Transpose" not in ops, "channels-first end to end"
    cpu_rule = quantize_run(s2_run, QuantizeOptions(backend="cpu", output=tmp_path / "c", num_samples=16, holdout=4,
                                                    target_cpu=foreign))
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["stages"]["quantize"]["layout"]["layout"] == \
        "as-given" and cpu_rule.model_path.suffix == ".onnx"
    with pytest.raises(UserError, match="--keep-float NAMES"):
        quantize_run(s2_run, QuantizeOptions(backend="cpu", output=tmp_path / "k", num_samples=16, holdout=4,
                                             layout="openvino", keep_float=("Gemm",)))


def test_layout_measurement_is_reused_by_a_rerun_and_keyed_by_what_changes_speed(
        s2_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantizing the same export again (other data, seed, holdout) reuses the timed medians and says so (a tiny
    model's two layouts may be too close to call on a noisy machine, which keeps nothing: see the next test)."""
    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(layout, "clear_winner", lambda times: True)
    first = quantize_run(s2_run, QuantizeOptions(backend="cpu", output=tmp_path / "a", num_samples=8, holdout=4))
    lay = first.manifest["stages"]["quantize"]["layout"]
    assert lay["how"] == "measured" and lay["reused_from"] is None
    second = quantize_run(s2_run, QuantizeOptions(backend="cpu", output=tmp_path / "b", num_samples=8, holdout=6,
                                                  seed=3))
    again = second.manifest["stages"]["quantize"]["layout"]
    assert again["how"] == "measured" and again["int8_median_ms"] == lay["int8_median_ms"]
    memo = Path(again["reused_from"])
    assert memo.is_file() and memo.is_relative_to(tmp_path / "cache") and "by an earlier run" in again["reason"]
    assert f"delete {memo} to measure again" in (tmp_path / "b" / "quantize.md").read_text()
    key = {"backend": "cpu", "scheme": "u8s8", "threads": None, "where": "on this host"}
    assert len({decision_file("ab" * 32, key), decision_file("ab" * 32, {**key, "threads": 1}),
                decision_file("ab" * 32, {**key, "scheme": "u8u8"}), decision_file("cd" * 32, key)}) == 4


def test_capped_target_is_measured_on_its_own_integer_kernels(s2_run: Path, tmp_path: Path) -> None:
    """A lesser x86 target on OpenVINO: layout timed and fidelity measured with the oneDNN ISA cap, recorded."""
    target = _foreign(capped=True)
    if target is None:
        pytest.skip(f"this host ({cpu.host().isa.summary()}) has no lesser x86 target it does not already stand for")
    result = quantize_run(s2_run, QuantizeOptions(backend="openvino", output=tmp_path / "cap", num_samples=16,
                                                  holdout=4, target_cpu=target))
    q = result.manifest["stages"]["quantize"]
    level = isa_cap.onednn_isa(cpu.TARGETS[target].isa)
    assert q["host_stands_for_target"] is False and q["stand_in"]["env"] == {"ONEDNN_MAX_CPU_ISA": level}
    assert q["stand_in"]["integer_kernels"] and not any(k.startswith("undef") for k in q["stand_in"]["integer_kernels"])
    assert not any("does not run the integer kernels" in w for w in q["warnings"])
    assert q["layout"]["how"] == "measured" and f"ONEDNN_MAX_CPU_ISA={level}" in q["layout"]["reason"]
    assert f"ONEDNN_MAX_CPU_ISA={level}" in (tmp_path / "cap" / "quantize.md").read_text()
    assert q["child_peak_rss_mb"] > 50 and "(largest child)" in result.memory, "the child's memory is counted"
    assert result.fidelity.logits.cosine_mean > 0.9


def test_keep_float_auto_ranks_with_the_targets_saturation(fragile_trained: Path, tmp_path: Path) -> None:
    """A forced u8s8 for an AVX2 target: the ranking adds each layer's predicted int16 clipping noise."""
    data = tmp_path / "noise.npy"
    np.save(data, np.random.default_rng(0).standard_normal((40, 3, 56, 56)).astype(np.float32) * 3)
    result = quantize_run(fragile_trained, QuantizeOptions(
        backend="cpu", output=tmp_path / "kf", num_samples=16, holdout=24, layout="as-given", calibration_data=data,
        target_cpu="avx2", int8_scheme="u8s8", keep_float=("auto",), sensitivity_rounds=1, gate=False))
    pred = result.manifest["stages"]["quantize"]["saturation_prediction"]
    assert pred["target"] == "avx2" and pred["summary"]["pairs"] > 0
    assert result.sensitivity is not None and len(result.sensitivity.history) <= 2


def test_cpuid_is_what_the_process_sees() -> None:
    """CPUID never reports a feature the kernel's cpuinfo lacks; under qemu -cpu Haswell it hides AVX-512/VNNI, so
    the host ISA (and every decision made from it) follows the CPU the runtimes really dispatch on."""
    import subprocess
    import sys

    from vmlp_deploy.emulate import QEMU, emulation_available

    seen = cpu.cpuid_features()
    if seen is None:
        pytest.skip("CPUID cannot be executed here (not x86-64, or no executable memory)")
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].splitlines()[0].split())
    assert seen <= flags
    why = emulation_available()
    if why is not None:
        pytest.skip(why)
    code = "from vmlp_deploy import cpu; h = cpu.host(); print(h.isa.summary(), h.isa.u8s8_saturates, h.isa.bf16)"
    done = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split("\n")[0].strip() == "x86_64 AVX2 True False"
