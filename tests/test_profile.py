"""`vmlp-deploy profile` on real ONNX Runtime and OpenVINO runs of tiny models (few iterations): fields,
units, the precision that really ran, outputs, and one clear line for every kind of bad input.

No timing claims here: the numbers are only checked for consistency with each other. What depends on the
CPU (bf16 or not) is read from :func:`vmlp_deploy.cpu.host`, never assumed, so the suite holds on any CPU.
"""

from __future__ import annotations

import sys

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vmlp_deploy import cpu, isa_cap
from vmlp_deploy.backends.base import LayerTime
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.onnx_io import op_histogram
from vmlp_deploy.profile.ceiling import Clock, Rate, ceilings
from vmlp_deploy.profile.inputs import onnx_complexity, zoo_complexity
from vmlp_deploy.profile.layers import aggregate, category
from vmlp_deploy.profile.measure import MeasurePlan, Probe, latency_stats, measure

Cli = Callable[..., tuple[int, str, str]]
PNG = b"\x89PNG\r\n\x1a\n"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None  # the optional `plot` extra


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("p") / "s2mlpv2_small"
    export_model(load_model("s2mlpv2_small", tiny=True), out, ExportOptions(dynamic_batch=True))
    return out


@pytest.fixture(scope="module")
def qdq_model(run_dir: Path) -> Path:
    """The tiny model statically quantized (QDQ) by ONNX Runtime, as a bare ``qdq/model.onnx``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"pixel_values": rng.standard_normal((1, 3, 56, 56), dtype=np.float32)}
                              for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    out = run_dir.parent / "qdq" / "model.onnx"
    out.parent.mkdir()
    quantize_static(str(run_dir / "model.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ)
    return out


def small_model(path: Path, dims: list[int | str], inputs: int = 1) -> Path:
    """Conv -> GlobalAveragePool with the given input dims (symbolic names allowed)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, dims) for i in range(inputs)]
    nodes = [helper.make_node("Conv", ["x0", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def load_profile(out: Path) -> dict:
    return json.loads((out / "profile.json").read_text())


def assert_peaks_are_ceilings(doc: dict) -> None:
    """Every CPU record has a ceiling with its derivation, no rate exceeds it, and no % of peak exceeds 100."""
    assert doc["ceilings"] and doc["host_cpu"] == cpu.host().to_dict()
    for c in doc["ceilings"]:
        assert c["gops"] > 0 and " ops/cycle " in c["derivation"] and c["isa"] == cpu.host().isa.summary()
    probes = {(p["backend"], p["precision"]): [] for p in doc["peaks"]}
    for p in doc["peaks"]:
        probes[(p["backend"], p["precision"])].append(p["gops"])
    for r in doc["records"]:
        assert r["ceiling"]["derivation"] and r["ceiling"] in doc["ceilings"]
        assert r["achieved_gops"] <= r["ceiling"]["gops"] and 0 < r["ceiling_percent"] <= 100
        assert r["ceiling_percent"] == pytest.approx(100 * r["achieved_gops"] / r["ceiling"]["gops"])
        if doc["peaks"]:
            best = max(probes[(r["backend"], "int8" if r["quantized"] else r["precision_requested"])])
            assert r["probe_peak"]["gops"] >= best and 0 < r["probe_percent"] <= 100
            assert r["probe_percent"] == pytest.approx(100 * r["achieved_gops"] / r["probe_peak"]["gops"])
    for p in doc["peaks"]:
        used = "int8" if p["precision"] == "int8" else p["precision_used"]
        assert all(p["gops"] <= c["gops"] for c in doc["ceilings"] if c["precision"] == used)


def test_end_to_end_fields_units_and_precisions(cli: Cli, run_dir: Path, qdq_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "prof"
    code, stdout, err = cli("profile", run_dir, qdq_model, "--backend", "cpu,openvino", "--precision", "f32,bf16",
                            "--batch", "1,2", "-n", "6", "--warmup", "2", "--threads", "2", "--layer-runs", "2",
                            "--top", "5", "--peak-size", "256", "-o", out, *([] if HAS_MATPLOTLIB else ["--no-charts"]))
    assert code == 0, err
    doc = load_profile(out)
    charts = ["latency.png", "latency_vs_macs.png"] if HAS_MATPLOTLIB else []
    for name in ["profile.json", "profile.md", "manifest.json", *charts]:
        assert (out / name).is_file(), name
    assert all((out / name).read_bytes()[:8] == PNG for name in charts)
    assert sorted(json.loads((out / "manifest.json").read_text())["artifacts"].values()) == sorted(
        ["profile.json", "profile.md", *charts])
    assert "median" in stdout and "profile.json" in stdout
    assert not any("several batch sizes" in w for w in load_profile(out)["warnings"]), "run directories run as given"

    records = doc["records"]
    bf16 = cpu.host().isa.bf16  # OpenVINO runs bf16 only where the CPU has it; elsewhere bf16 is the f32 run
    by = {(r["model"], r["backend"], r["precision"], r["batch"]): r for r in records}
    assert len(by) == len(records) == (12 if bf16 else 8)
    assert set(by) == {(m, b, p, n) for n in (1, 2) for m, b, p in [
        ("s2mlpv2_small", "cpu", "f32"), ("s2mlpv2_small", "openvino", "f32"), ("qdq", "cpu", "int8"),
        ("qdq", "openvino", "int8"),
        *([("s2mlpv2_small", "openvino", "bf16"), ("qdq", "openvino", "int8/bf16")] if bf16 else [])]}
    assert any("cpu at bf16" in s for s in doc["skipped"])
    no_bf16 = [s for s in doc["skipped"] if "bf16 requested: this CPU has no bf16" in s]
    assert len(no_bf16) == (0 if bf16 else 2)
    assert by[("s2mlpv2_small", "openvino", "f32", 1)]["inference_precision"] == "f32"
    f32_kernels = by[("s2mlpv2_small", "openvino", "f32", 1)]["layers"]["kernel_precisions_percent"]
    assert max(f32_kernels, key=f32_kernels.get) == "f32" and "bf16" not in f32_kernels
    if bf16:
        assert by[("qdq", "openvino", "int8/bf16", 2)]["inference_precision"] == "bf16"
        bf16_kernels = by[("s2mlpv2_small", "openvino", "bf16", 1)]["layers"]["kernel_precisions_percent"]
        assert max(bf16_kernels, key=bf16_kernels.get) == "bf16"

    peaks = {(p["backend"], p["precision"], p["kind"]): p for p in doc["peaks"]}
    assert set(peaks) == {(b, p, k) for k in ("gemm", "conv1x1") for b, p in [
        ("cpu", "f32"), ("openvino", "f32"), ("cpu", "int8"), ("openvino", "int8"),
        *([("openvino", "bf16")] if bf16 else [])]}
    assert all(p["precision_used"] == p["precision"] for p in doc["peaks"])
    assert_peaks_are_ceilings(doc)
    macs = zoo_complexity("s2mlpv2_small", True)[1]
    for r in records:
        lat = r["latency_ms"]
        assert r["iterations"] == lat["count"] == 6 and r["warmup"]["inferences"] == 2
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lat["std"] >= 0 and lat["cov"] == pytest.approx(lat["std"] / lat["mean"])
        assert r["first_inference_ms"] > 0 and r["input_shape"] == [r["batch"], 3, 56, 56]
        assert r["throughput_images_per_s"] == pytest.approx(r["batch"] * 1000 / lat["mean"], rel=1e-6)
        assert r["macs_per_image"] == macs
        assert r["achieved_gops"] == pytest.approx(2 * macs * r["batch"] / lat["median"] / 1e6)
        assert r["settings"]["requested"]["threads"] == 2
        assert sum(c["percent"] for c in r["layers"]["by_category"]) == pytest.approx(100, abs=0.01)
        assert len(r["layers"]["by_op_type"]) <= 5 and r["layers"]["runs"] == 2
    env = doc["environment"]
    assert env["cpu_model"] and isinstance(env["cpu_flags"], list) and env["usable_cpus"] >= 1
    assert {"onnxruntime", "openvino", "vmlp_deploy"} <= set(env["libraries"])
    md = (out / "profile.md").read_text()
    assert "| s2mlpv2_small | openvino | f32 | 1 | latency |" in md and "## Layers: qdq on cpu (int8" in md
    assert ("| s2mlpv2_small | openvino | bf16 | 1 | latency |" in md) == bf16
    assert "% probe | % ceiling" in md and doc["ceilings"][0]["derivation"] in md
    assert "% probe" in stdout and "% ceil" in stdout and "ops/cycle" in stdout


@pytest.fixture
def host_without_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[cpu.HostCpu]:
    """This machine's /proc/cpuinfo without AVX-512, AVX-VNNI, AMX and Arm bf16: a CPU with no bf16 (and no
    VNNI), as `vmlp_deploy.cpu` sees it. Restores the real host afterwards."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to derive a fake one from")
    gone = ("avx512", "avx_vnni", "amx")
    lines = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            line = f"{key}: " + " ".join(f for f in value.split() if not f.startswith(gone) and f != "bf16")
        lines.append(line)
    fake = tmp_path / "cpuinfo"
    fake.write_text("\n".join(lines) + "\n")
    with monkeypatch.context() as m:
        m.setenv("VMLP_CPUINFO", str(fake))
        cpu.host.cache_clear()
        yield cpu.host()
    cpu.host.cache_clear()


def test_bf16_on_a_cpu_without_it_is_measured_once_as_f32(cli: Cli, run_dir: Path, qdq_model: Path, tmp_path: Path,
                                                          host_without_bf16: cpu.HostCpu) -> None:
    assert not host_without_bf16.isa.bf16 and not host_without_bf16.isa.avx512
    out = tmp_path / "nobf16"
    code, stdout, err = cli("profile", run_dir, qdq_model, "--backend", "openvino", "--precision", "f32,bf16",
                            "-n", "3", "--warmup", "1", "--threads", "2", "--layer-runs", "0", "--peak-size", "256",
                            "--target-cpu", "avx512-bf16", "--no-charts", "-o", out)
    assert code == 0, err
    doc = load_profile(out)
    assert [(r["model"], r["precision"], r["inference_precision"]) for r in doc["records"]] == [
        ("s2mlpv2_small", "f32", "f32"), ("qdq", "int8", "f32")]
    summary = host_without_bf16.isa.summary()
    assert [s for s in doc["skipped"] if "bf16 requested" in s] == [
        f"s2mlpv2_small on openvino: bf16 requested: this CPU has no bf16 ({summary}), runs f32; measured once as f32",
        f"qdq on openvino: bf16 requested: this CPU has no bf16 ({summary}), runs f32; measured once as int8"]
    assert {p["precision"] for p in doc["peaks"]} == {"f32", "int8"}
    assert_peaks_are_ceilings(doc)

    target = cpu.resolve_target("avx512-bf16").to_dict()
    manifest = json.loads((out / "manifest.json").read_text())["stages"]["profile"]
    for d in (doc, manifest):
        assert d["host_cpu"] == host_without_bf16.to_dict() and d["target_cpu"] == target
        assert d["host_stands_for_target"] is False and d["ceiling_isa"] == f"host: {summary}"
    (warning,) = [w for w in doc["warnings"] if "--target-cpu" in w]
    assert "cannot stand for the target" in warning and "\n" not in warning and warning in stdout.replace("\n", " ")
    md = (out / "profile.md").read_text()
    assert "`--target-cpu avx512-bf16`" in md and "cannot stand for the target" in md and summary in md


def test_a_lesser_x86_target_runs_capped_on_openvino(cli: Cli, run_dir: Path, qdq_model: Path, tmp_path: Path) -> None:
    """--target-cpu avx2 on a host with more: OpenVINO's configurations (probes, timings, layers) run its AVX2
    kernels capped; ONNX Runtime's stay the host's; bf16 follows the target; everything is recorded."""
    target = cpu.TARGETS["avx2"]
    cap, why = isa_cap.plan("openvino", target)
    if cpu.host_stands_for(target) or cap is None:
        pytest.skip(f"this host ({cpu.host().isa.summary()}) runs avx2's kernels itself or cannot cap: {why}")
    out = tmp_path / "capped"
    code, stdout, err = cli("profile", run_dir, qdq_model, "--backend", "openvino,cpu", "--precision", "f32,bf16,int8",
                            "-n", "3", "--warmup", "1", "--threads", "2", "--layer-runs", "1", "--peak-size", "256",
                            "--top", "1000", "--target-cpu", "avx2", "--no-charts", "-o", out)
    assert code == 0, err
    doc = load_profile(out)
    manifest = json.loads((out / "manifest.json").read_text())["stages"]["profile"]
    assert doc["capped_backends"] == manifest["capped_backends"] == {"openvino": {"env": cap.env, "target": "avx2"}}
    ov = [r for r in doc["records"] if r["backend"] == "openvino"]
    assert {r["precision"] for r in ov} == {"f32", "int8"}, "bf16 follows the target, which has none"
    assert any("bf16 requested: the target CPU has no bf16" in s for s in doc["skipped"])
    for r in ov:
        stand_in = r["settings"]["stand_in"]
        assert stand_in["env"] == cap.env and r["settings"]["environment"] == cap.env
    int8 = next(r for r in ov if r["precision"] == "int8")
    assert int8["layers"]["kernel_precisions_percent"].get("i8", 0) > 0
    ran = [n["detail"].split() for n in int8["layers"]["by_node"]]  # the performance counters: layer, kernel, ...
    dots = [d[1] for d in ran if len(d) >= 2 and isa_cap.dot_product(d[0], d[1])]
    assert dots and not any(isa_cap.above(k, cap.level) for k in dots), "the counters agree with the check"
    assert all("stand_in" not in r["settings"] for r in doc["records"] if r["backend"] == "cpu")
    (warning,) = [w for w in doc["warnings"] if "--target-cpu" in w]
    assert "openvino ran capped" in warning and "cpu timings are this host's" in warning
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in (out / "profile.md").read_text()
    assert_peaks_are_ceilings(doc)


@pytest.mark.parametrize(("target", "precision", "per_cycle"), [
    ("avx2", "f32", 32), ("avx2", "int8", 64), ("avx2", "bf16", 32), ("avx512", "f32", 64),
    ("avx512-vnni", "int8", 256), ("avx512-bf16", "bf16", 128), ("amx", "int8", 2048), ("amx", "bf16", 1024),
    ("arm64", "f32", 16), ("arm64-dotprod", "int8", 64),
])
def test_ceiling_arithmetic(target: str, precision: str, per_cycle: int) -> None:
    """cores x MHz x ops per cycle of the ISA (FMA counted as two operations)."""
    found = ceilings(cpu.TARGETS[target].isa, Clock(2000.0, "test clock"), [(precision, 4)], [])
    c = found[(precision, 4)]
    assert c.ops_per_cycle == per_cycle and c.gops == pytest.approx(4 * 2000e6 * per_cycle / 1e9)
    assert c.derivation.startswith(f"4 cores x 2000 MHz x {per_cycle} ops/cycle [")
    assert c.derivation.endswith(f"= {c.gops:.1f} GOPS; clock: test clock")


def test_a_beaten_ceiling_is_raised_to_the_observed_rate() -> None:
    """AVX2 at 2500 MHz allows 2 x 2500 MHz x 32 = 160 GOPS f32; a 200 GOPS probe means the cores ran at
    >= 3125 MHz, and that clock holds for every precision of the run."""
    isa = cpu.TARGETS["avx2"].isa
    rates = [Rate("f32", 2, 200.0, "the gemm probe on cpu"), Rate("int8", 2, 150.0, "a model")]
    found = ceilings(isa, Clock(2500.0, "nominal"), [("int8", 2), ("f32", 1)], rates)
    assert set(found) == {("f32", 2), ("int8", 2), ("f32", 1)}
    f32 = found[("f32", 2)]
    assert f32.mhz == 3126 and 200.0 < f32.gops < 200.2
    assert "raised from 2500 MHz (nominal): the gemm probe on cpu ran at 200.0 GOPS" in f32.derivation
    assert "clock >= 3126 MHz" in f32.derivation
    assert found[("int8", 2)].gops == pytest.approx(2 * 3126e6 * 64 / 1e9)
    assert found[("f32", 1)].gops == pytest.approx(f32.gops / 2)
    assert ceilings(isa, Clock(3500.0, "cpufreq"), [("f32", 2)], rates)[("f32", 2)].gops == pytest.approx(224.0)
    assert ceilings(isa, Clock(None, "no clock"), [("f32", 2)], rates) == {}


def test_throughput_mode_and_duration(cli: Cli, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tput"
    code, _, err = cli("profile", run_dir, "--backend", "cpu,openvino", "--mode", "both", "--streams", "2",
                       "--threads", "2", "--duration", "0.05", "--warmup-time", "0.01", "--no-peak",
                       "--layer-runs", "0", "--no-charts", "-o", out)
    assert code == 0, err
    doc = load_profile(out)
    assert sorted((r["backend"], r["mode"]) for r in doc["records"]) == [
        ("cpu", "latency"), ("cpu", "throughput"), ("openvino", "latency"), ("openvino", "throughput")]
    for r in doc["records"]:
        assert r["iterations"] >= 10 and r["measured_s"] >= 0.05 and r["warmup"]["seconds"] >= 0.01
        assert r["throughput_images_per_s"] > 0 and r["probe_percent"] is None and r["layers"] is None
        assert 0 < r["ceiling_percent"] <= 100
        if r["mode"] == "throughput":
            assert r["settings"]["streams"] == 2
            assert r["throughput_images_per_s"] == pytest.approx(r["iterations"] / r["measured_s"])
    ov = next(r for r in doc["records"] if r["backend"] == "openvino" and r["mode"] == "throughput")
    assert ov["settings"]["requests_in_flight"] >= 2 and ov["settings"]["performance_hint"].endswith("THROUGHPUT")
    assert not (out / "latency.png").exists()
    assert "draining" not in err


def test_throughput_from_too_few_inferences_is_flagged(cli: Cli, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "few"
    code, out_text, err = cli("profile", run_dir, "--backend", "cpu", "--mode", "throughput", "--streams", "2",
                              "--threads", "2", "-n", "3", "--warmup", "1", "--no-peak", "--layer-runs", "0",
                              "--no-charts", "-o", out)
    assert code == 0, err
    (record,) = load_profile(out)["records"]
    assert record["iterations"] == 3
    assert any("filling and draining" in w and "--iterations 8 or more" in w for w in record["warnings"])
    assert "filling and draining" in " ".join(out_text.split())


def test_zoo_name_exported_for_the_chosen_target(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path / "cache"))
    code, _, err = cli("profile", "s2mlpv2_small", "--tiny", "--target", "openvino", "--backend", "openvino",
                       "-n", "3", "--warmup", "1", "--no-peak", "--layer-runs", "0", "--no-charts", "-o", tmp_path / "p")
    assert code == 0, err
    (cached,) = (tmp_path / "cache" / "zoo").glob("s2mlpv2_small-tiny-*-openvino-*/model.onnx")
    meta = {p.key: p.value for p in onnx.load(str(cached)).metadata_props}
    assert meta["vmlp.target"] == "openvino" and "Transpose" not in op_histogram(onnx.load(str(cached)))


def test_zoo_name_ir_and_dynamic_dims(cli: Cli, run_dir: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino as ov

    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path / "cache"))
    ir = tmp_path / "ir" / "model.xml"
    ov.save_model(ov.convert_model(str(run_dir / "model.onnx")), str(ir))
    dyn = small_model(tmp_path / "dyn.onnx", ["n", 3, "h", "w"])
    out = tmp_path / "zoo"
    code, _, err = cli("profile", "poolformer_s12", ir, "--tiny", "-n", "3", "--warmup", "1", "--no-peak",
                       "--layer-runs", "1", "--no-charts", "-o", out)
    assert code == 0, err
    doc = load_profile(out)
    assert list((tmp_path / "cache" / "zoo").glob("poolformer_s12-tiny-*/manifest.json"))
    models = {r["model"]: r for r in doc["records"]}
    assert {(r["model"], r["backend"]) for r in doc["records"]} >= {("poolformer_s12-tiny", "cpu"),
                                                                   ("ir", "openvino")}
    assert not any(r["model"] == "ir" and r["backend"] == "cpu" for r in doc["records"])
    assert models["poolformer_s12-tiny"]["macs_per_image"] == zoo_complexity("poolformer_s12", True)[1]
    assert models["ir"]["macs_per_image"] == zoo_complexity("s2mlpv2_small", True)[1]
    assert any("does not read .xml" in s for s in doc["skipped"])
    assert any(s.startswith("tensorrt:") for s in doc["skipped"]) or any(
        r["backend"] == "tensorrt" for r in doc["records"])

    code, _, err = cli("profile", dyn, "--backend", "cpu", "--input-shape", "3x16x16", "-n", "2", "--no-peak",
                       "--layer-runs", "0", "--no-charts", "-o", tmp_path / "dyn")
    assert code == 0, err
    (record,) = load_profile(tmp_path / "dyn")["records"]
    assert record["input_shape"] == [1, 3, 16, 16] and record["macs_per_image"] == 4 * 27 * 14 * 14


def test_charts_without_matplotlib_are_a_clear_error(cli: Cli, run_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a machine without the `plot` extra: a None entry in sys.modules makes the import fail."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code, _, err = cli("profile", run_dir, "-n", "1", "-o", tmp_path / "out")
    assert code == 2 and "--no-charts" in err and not (tmp_path / "out").exists()


def test_graph_macs_match_the_pytorch_count(run_dir: Path) -> None:
    params, macs, complete = onnx_complexity(run_dir / "model.onnx")
    ref_params, ref_macs = zoo_complexity("s2mlpv2_small", True)
    assert complete and macs == ref_macs
    assert params == pytest.approx(ref_params, rel=0.05)


@pytest.mark.parametrize(("args", "message"), [
    (["nope/model.onnx"], "no such ONNX file"),
    (["s2mlpv2_smal"], "did you mean s2mlpv2_small"),
    (["{empty}"], "has no manifest.json"),
    (["{dyn}"], "--input-shape"),
    (["{fixed}", "--batch", "2"], "--dynamic-batch"),
    (["{two}"], "2 inputs"),
    (["{run}", "--backend", "openvino", "--device", "NPU"], "not available here"),
    (["{run}", "--backend", "cpu", "--device", "GPU"], "selects the OpenVINO device"),
    (["{run}", "-n", "0"], "--iterations must be a positive"),
    (["{run}", "-n", "-3"], "--iterations must be a positive"),
    (["{run}", "--duration", "0"], "--duration must be a positive"),
    (["{run}", "--warmup", "-1"], "--warmup must be zero or more"),
    (["{run}", "--chunk", "0"], "--chunk (seconds per interleaved visit) must be positive"),
    (["{run}", "--batch", "0"], "--batch sizes must be positive"),
    (["{run}", "--backend", "tensorrt"], "docker/tensorrt.Dockerfile"),
    (["{run}", "--backend", "cuda"], "unknown backend cuda"),
    (["{run}", "--precision", "int4"], "unknown precision"),
    (["{run}", "--backend", "cpu", "--precision", "bf16"], "nothing to profile"),
    (["{run}", "--precision", "int8"], "no Q/DQ nodes"),
    (["{run}", "--target-cpu", "avx3"], "unknown --target-cpu 'avx3'"),
])
def test_bad_input_is_one_clear_line(cli: Cli, run_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    paths = {
        "{empty}": tmp_path / "empty",
        "{dyn}": small_model(tmp_path / "dyn.onnx", ["n", 3, "h", "w"]),
        "{fixed}": small_model(tmp_path / "fixed.onnx", [1, 3, 8, 8]),
        "{two}": small_model(tmp_path / "two.onnx", [1, 3, 8, 8], inputs=2),
        "{run}": run_dir,
    }
    out = tmp_path / "out"
    argv = [str(paths.get(a, a)) for a in args]
    extra = [] if {"-n", "--duration"} & set(argv) else ["-n", "2"]
    code, stdout, err = cli("profile", *argv, *extra, "--no-peak", "--layer-runs", "0", "--no-charts", "-o", out)
    assert code == (5 if "tensorrt" in args else 2), (stdout, err)  # 5: backend unavailable
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_measure_interleaves_and_counts() -> None:
    log: list[str] = []

    def timer(name: str) -> Callable[[], float]:
        def one() -> float:
            log.append(name)
            return 0.001

        return one

    probes = [Probe("a", 1, "latency", timer=timer("a")), Probe("b", 2, "latency", timer=timer("b"))]
    samples = measure(probes, MeasurePlan(warmup=3, iterations=5, duration_s=None, chunk_s=0.002))
    assert [s.inferences for s in samples] == [5, 5] and [s.warmup_inferences for s in samples] == [3, 3]
    assert all(len(s.latencies_s) == 5 and s.first_s == 0.001 for s in samples)
    timed = log[2 + 6:]
    assert timed[:4] == ["a", "a", "b", "b"] and timed[4:8] == ["b", "b", "a", "a"]
    assert samples[1].visit_rates[0] == pytest.approx(2 / 0.001)

    by_time = measure(probes[:1], MeasurePlan(warmup=0, duration_s=0.004, chunk_s=0.002))
    assert by_time[0].inferences == 10 and by_time[0].measured_s >= 0.004


def test_statistics_and_layer_aggregation() -> None:
    stats = latency_stats([0.001 * v for v in range(1, 101)])
    assert stats is not None and (stats.min, stats.max, stats.count) == (1.0, 100.0, 100)
    assert stats.median == pytest.approx(50.5) and stats.p90 == pytest.approx(np.percentile(range(1, 101), 90))
    assert latency_stats([]) is None

    layers = [LayerTime("mm1", "MatMul", 3.0), LayerTime("mm2", "FullyConnected", 1.0, "brgemm_avx512_bf16", "bf16"),
              LayerTime("ln", "LayerNormalization", 1.0), LayerTime("shift", "ScatterND", 5.0)]
    b = aggregate(layers, runs=4, top=2)
    assert b.total_ms == 10.0 and b.layers == 4 and b.runs == 4
    assert {r.name: r.percent for r in b.by_category} == {"shift/data movement": 50.0, "gemm": 40.0, "norm": 10.0}
    assert [r.name for r in b.by_op_type] == ["ScatterND", "MatMul"] and [r.name for r in b.by_node] == ["shift", "mm1"]
    assert b.kernel_precisions == {"bf16": 100.0}
    assert (category("Subgraph"), category("GroupConvolution"), category("Unknown")) == ("elementwise", "conv", "other")


def test_zoo_name_at_several_batch_sizes_says_it_ran_the_naive_graph(cli: Cli, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a user: the note was printed only when the export was made, not when it came from the cache."""
    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path / "cache"))
    for run in ("first", "cached"):
        code, _, err = cli("profile", "s2mlpv2", "--tiny", "--batch", "1,2", "--backend", "cpu", "-n", "3",
                           "--no-peak", "--layer-runs", "0", "--no-charts", "-o", tmp_path / run)
        assert code == 0, err
        assert any("ran their naive graph" in w for w in load_profile(tmp_path / run)["warnings"]), run
        assert "ran their naive graph" in (tmp_path / run / "profile.md").read_text()
