"""`vmlp-deploy quantize` on real ONNX Runtime and OpenVINO runs with tiny zoo models: outputs, graphs, data, errors."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from vmlp_deploy.models import create_model

from vmlp_deploy.backends import BACKENDS, RunOptions
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import LoadedModel, load_model
from vmlp_deploy.preprocess import Recipe
from vmlp_deploy.quantize import QuantizeOptions, quantize_run
from vmlp_deploy.quantize.fidelity import compare_logits, layer_sqnr, ort_layer_probes, run_all, sqnr_db
from vmlp_deploy.quantize.sensitivity import search
from vmlp_deploy.quantize.stage import SLOW_INT8_RATIO, SLOWER_INT8_RATIO, SPEED_ROUNDS
from vmlp_deploy.quantize.tensorrt_qdq import check_graph

Cli = Callable[..., tuple[int, str, str]]
#: Small and deterministic: the layout choice (timed, so machine-dependent) has its own tests.
FAST = ("--num-samples", "24", "--holdout", "8", "--layout", "as-given")


@pytest.fixture(scope="module")
def s2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny S2-MLPv2 (56x56, LayerNorm, Softmax, shifts): the family the quantizer is for."""
    out = tmp_path_factory.mktemp("q") / "s2"
    export_model(load_model("s2mlpv2_small", tiny=True), out, ExportOptions())
    return out


@pytest.fixture(scope="module")
def cpu_run(s2_run: Path) -> Path:
    out = s2_run.parent / "s2-int8-cpu"
    quantize_run(s2_run, QuantizeOptions(backend="cpu", num_samples=24, holdout=8, layout="as-given"))
    return out


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def test_cpu_run_directory_manifest_and_report(s2_run: Path, cpu_run: Path) -> None:
    assert sorted(p.name for p in cpu_run.iterdir()) == ["manifest.json", "model.onnx", "quantize.md"]
    m = _manifest(cpu_run)
    assert m["stages"]["export"] == _manifest(s2_run)["stages"]["export"]
    q = m["stages"]["quantize"]
    assert q["backend"] == "cpu" and q["precision"] == "int8"
    assert q["calibration"]["calibration_samples"] == 24 and q["calibration"]["held_out_samples"] == 8
    assert q["calibration"]["source"].startswith("embedded")
    assert any("your own data" in w for w in q["warnings"])
    f = q["fidelity"]
    assert 0.0 <= f["top1_agreement"] <= f["top5_agreement"] <= 1.0
    assert f["cosine_mean"] > 0.9 and f["sqnr_db"] > 10
    assert 0 < len(f["worst_layers"]) <= 10 and f["layers_measured"] >= len(f["worst_layers"])
    assert set(q["timings_s"]) >= {"load_data", "calibrate", "quantize", "fidelity", "total"} and q["peak_rss_mb"] > 0
    assert m["preprocessing"] == _manifest(s2_run)["preprocessing"]
    speed = q["speed"]
    assert speed["runtime"] == "cpu" and speed["rounds"] == SPEED_ROUNDS and speed["fp32_ms"] > 0
    assert speed["ratio"] == round(speed["int8_ms"] / speed["fp32_ms"], 3)
    slow = [w for w in q["warnings"] if "INT8 buys a smaller model here, not speed" in w or "INT8 is slower here" in w]
    assert len(slow) == (speed["ratio"] > SLOW_INT8_RATIO), "warned exactly when INT8 is not faster here"
    assert all(("keep the FP32 model" in w) == (speed["ratio"] > SLOWER_INT8_RATIO) for w in slow)
    report = (cpu_run / "quantize.md").read_text()
    assert "INT8 vs FP32 latency (this host)" in report
    for heading in ("## Fidelity", "Ten worst layers", "## Calibration data", "## Settings", "## Time and memory"):
        assert heading in report


def test_cpu_graph_is_qdq_with_per_channel_int8_weights(cpu_run: Path) -> None:
    model = onnx.load(str(cpu_run / "model.onnx"))
    inits = _inits(model)
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = [n for n in dqs if n.input[0] in inits and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim >= 2]
    assert weights and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in weights)
    activations = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(inits[n.input[2]].dtype == np.uint8 for n in activations)


def test_logits_stay_float_and_the_layer_probe_matches_the_deployed_run(s2_run: Path, cpu_run: Path,
                                                                        tmp_path: Path) -> None:
    """The head writes float logits; probing it unoptimised gives the SQNR the optimised INT8 session gives."""
    model = onnx.load(str(cpu_run / "model.onnx"))
    head = next(n for n in model.graph.node if "logits" in n.output)
    assert head.op_type == "Gemm"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 56, 56), dtype=np.float32)
    run_fp32, run_int8, layers = ort_layer_probes(s2_run / "model.onnx", cpu_run / "model.onnx", [head.name],
                                                  tmp_path, 1, BACKENDS["cpu"].load)
    assert [name for name, _, _ in layers] == [head.name]
    probed = layer_sqnr(run_fp32, run_int8, layers, x, "pixel_values", 1)[0].sqnr_db
    fp32 = BACKENDS["cpu"].load(s2_run / "model.onnx", RunOptions(threads=1))
    int8 = BACKENDS["cpu"].load(cpu_run / "model.onnx", RunOptions(threads=1))
    deployed = compare_logits(run_all(fp32, x, 1), run_all(int8, x, 1)).sqnr_db
    assert abs(probed - deployed) < 0.5


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_in_memory_bounded_chunks(method: str, s2_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Histogram calibrators hold whole tensors: a tiny budget forces several chunks, whose histograms merge."""
    monkeypatch.setattr("vmlp_deploy.quantize.ort_static.HISTOGRAM_CHUNK_BYTES", 1)
    result = quantize_run(s2_run, QuantizeOptions(backend="cpu", output=tmp_path / method, num_samples=24, holdout=8,
                                                  layout="as-given", method=method,
                                                  **({"percentile": 99.9} if method == "percentile" else {})))
    settings = result.settings
    assert settings["calibration_method"] == method and settings["calibration_chunk_batches"] == 1
    assert settings["calibration_batches"] == 24 and result.fidelity.logits.sqnr_db > 10
    assert ("percentile" in settings) == (method == "percentile")


def test_tensorrt_graph_follows_explicit_quantization_rules(s2_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "trt"
    result = quantize_run(s2_run, QuantizeOptions(backend="tensorrt", output=out, num_samples=24, holdout=8))
    model = onnx.load(str(out / "model.onnx"))
    inits = _inits(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in qdq)
    consumers = {n.op_type for n in model.graph.node for i in n.input
                 if any(i == d.output[0] for d in qdq if d.op_type == "DequantizeLinear")}
    assert consumers <= {"Conv", "Gemm", "MatMul"}
    assert not any(inits[i].dtype == np.int32 for n in qdq for i in n.input[:1] if i in inits), "biases stay float"
    check = result.graph_check
    assert check is not None and check["weights_per_channel"] == check["weights_quantized"] > 0
    assert check["layernorm_inputs_quantized"] == 0
    assert _manifest(out)["stages"]["quantize"]["tensorrt_graph_check"] == check
    assert result.speed is None and "speed" not in _manifest(out)["stages"]["quantize"], "no engine runs here"
    assert result.fidelity.logits.sqnr_db > 10, "the Q/DQ graph runs in ONNX Runtime"
    with_ln = quantize_run(s2_run, QuantizeOptions(backend="tensorrt", output=tmp_path / "ln", num_samples=24,
                                                   holdout=8, qdq_layernorm=True))
    assert with_ln.graph_check is not None and with_ln.graph_check["layernorm_inputs_quantized"] > 0
    assert check_graph(tmp_path / "ln" / "model.onnx", allow_layernorm=True)


def test_openvino_ir_with_f32_pinned_fidelity(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    code, stdout, _ = cli("quantize", s2_run, "--backend", "openvino", "-o", out, *FAST)
    assert code == 0, stdout
    assert {"model.xml", "model.bin", "manifest.json", "quantize.md"} <= {p.name for p in out.iterdir()}
    assert "FakeQuantize" in (out / "model.xml").read_text()
    m = _manifest(out)
    q = m["stages"]["quantize"]
    assert m["artifacts"]["openvino_xml"] == "model.xml" and m["artifacts"]["onnx"] is None
    assert q["fidelity"]["precision"] == "f32" and q["settings"]["model_type"] == "transformer"
    assert q["settings"]["smooth_quant_alpha_matmul"] == "off" and "qdq_layernorm" not in q["settings"]
    assert "top-1 agreement" in stdout


def test_calibration_directory_formats_skips_and_recipe(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    """JPEG/PNG/BMP/WebP found recursively; grayscale, RGBA, 16-bit read; corrupt and too-small files counted."""
    data = tmp_path / "calib"
    (data / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(data / f"rgb{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 70), dtype=np.uint8)).save(data / "a" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (70, 70, 4), dtype=np.uint8), mode="RGBA").save(data / "a" / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (70, 70), dtype=np.uint16)).save(data / "a" / "b" / "deep.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / "a" / "b" / "x.bmp")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / "a" / "y.webp")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / "tiny.png")
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    (data / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    code, stdout, _ = cli("quantize", s2_run, "--backend", "cpu", "--calibration-data", data, "-o", out,
                          "--holdout", "1")
    assert code == 0, stdout
    c = _manifest(out)["stages"]["quantize"]["calibration"]
    assert c["files_found"] == 11 and c["skipped_unreadable"] == 1 and c["skipped_too_small"] == 1
    assert c["images"] == 9 and c["calibration_samples"] == 8 and c["held_out_samples"] == 1
    assert "too-small" in stdout and "unreadable" in stdout


def _from_elsewhere(model: Path, to: Path) -> None:
    """``model`` as a file from another tool: without the ``vmlp.*`` metadata `export` writes."""
    m = onnx.load(str(model))
    del m.metadata_props[:]
    onnx.save(m, str(to))


def test_bare_onnx_needs_a_recipe_and_keeps_it(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    _from_elsewhere(s2_run / "model.onnx", bare / "model.onnx")
    code, _, err = cli("quantize", bare, "--backend", "cpu", *FAST)
    assert code == 2 and "--mean" in err and not (tmp_path / "bare-int8-cpu").exists()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\nresize = 64\ninterpolation = "bilinear"\n')
    code, stdout, _ = cli("quantize", bare / "model.onnx", "--backend", "cpu", "--recipe", recipe, "--std", "0.2",
                          "0.2", "0.2", *FAST)
    assert code == 0, stdout
    m = _manifest(tmp_path / "bare" / "model-int8-cpu")
    p = m["preprocessing"]
    assert p["mean"] == [0.5, 0.5, 0.5] and p["std"] == [0.2, 0.2, 0.2], "flags beat the file"
    assert p["resize_to"] == [64, 64] and p["center_crop"] == [56, 56] and p["interpolation"] == "bilinear"
    assert m["stages"]["quantize"]["preprocessing_source"] == f"file {recipe} + flags"


def test_a_copied_out_export_keeps_what_its_metadata_says(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    """The model file alone still carries its recipe and random weights (``vmlp.*`` metadata), so it is not
    gated on agreement; the same file inside its run directory means the run directory."""
    bare = tmp_path / "copy"
    bare.mkdir()
    shutil.copy(s2_run / "model.onnx", bare / "m.onnx")
    code, stdout, _ = cli("quantize", bare / "m.onnx", "--backend", "cpu", "--gate-agreement", "1.0", *FAST)
    assert code == 0, stdout
    m = _manifest(bare / "m-int8-cpu")
    assert m["model"]["name"] == "s2mlpv2_small" and m["model"]["random_weights"] is True
    assert m["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    q = m["stages"]["quantize"]
    assert q["preprocessing_source"] == "ONNX metadata" and q["gate"]["checked"] == "none" and "random weights" in q["gate"]["note"]
    code, stdout, _ = cli("quantize", s2_run / "model.onnx", "--backend", "cpu", "-o", tmp_path / "in-run", *FAST)
    assert code == 0, stdout
    m = _manifest(tmp_path / "in-run")
    assert m["stages"]["quantize"]["preprocessing_source"] == "manifest" and "export" in m["stages"]


def test_npy_npz_tensors_need_no_recipe(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(s2_run / "model.onnx", bare / "model.onnx")
    data = tmp_path / "tensors"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "batch.npy", rng.standard_normal((10, 3, 56, 56), dtype=np.float32))
    np.savez(data / "more.npz", a=rng.standard_normal((3, 56, 56), dtype=np.float32),
             b=rng.standard_normal((5, 3, 56, 56), dtype=np.float32))
    whole = (data / "more.npz").read_bytes()
    (data / "truncated.npz").write_bytes(whole[: len(whole) // 2])  # numpy raises zipfile's BadZipFile
    code, stdout, _ = cli("quantize", bare, "--backend", "tensorrt", "--calibration-data", data, "--holdout", "3")
    assert code == 0, stdout
    c = _manifest(tmp_path / "bare-int8-tensorrt")["stages"]["quantize"]["calibration"]
    assert c["tensors"] == 16 and c["calibration_samples"] == 13 and c["held_out_samples"] == 3
    assert [Path(p).name for p in c["skipped_unreadable_files"]] == ["truncated.npz"]
    np.save(data / "wrong.npy", np.zeros((3, 32, 32), np.float32))
    code, _, err = cli("quantize", bare, "--backend", "cpu", "--calibration-data", data, "-o", tmp_path / "w",
                       "--num-samples", "100")
    assert code == 2 and "(3, 32, 32)" in err and not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def b16_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "b16"
    export_model(load_model("s2mlpv2_small", tiny=True), out, ExportOptions(batch=16))
    return out


@pytest.mark.parametrize("backend", ["cpu", "openvino"])
def test_a_batch_larger_than_the_holdout_and_the_timing_samples(backend: str, b16_run: Path, tmp_path: Path) -> None:
    """A fixed batch of 16: the layout timing (8 samples), the speed check and the layer SQNR (4 held out) fill
    their last batch by repetition instead of failing or measuring nothing."""
    result = quantize_run(b16_run, QuantizeOptions(backend=backend, output=tmp_path / "q", num_samples=16, holdout=4))
    q = result.manifest["stages"]["quantize"]
    assert q["layout"]["how"] in ("measured", "rule") and q["speed"]["batch"] == 16
    assert result.fidelity.layer_samples == 4 and result.fidelity.worst_layers
    assert all(np.isfinite(w.sqnr_db) for w in result.fidelity.worst_layers)


def test_keep_float_by_names_and_op_types(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "kf"
    code, stdout, _ = cli("quantize", s2_run, "--backend", "cpu", "-o", out, "--keep-float",
                          "LayerNormalization,/head/*", *FAST)
    assert code == 0, stdout
    kept = _manifest(out)["stages"]["quantize"]["keep_float"]["nodes"]
    model = onnx.load(str(out / "model.onnx"))
    q_out = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    fake_quantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_out}
    kept_nodes = [n for n in model.graph.node if n.name in kept]
    assert {n.op_type for n in kept_nodes} >= {"LayerNormalization", "Gemm"}
    assert not any(i in fake_quantized for n in kept_nodes for i in n.input), "kept nodes read float activations"
    code, _, err = cli("quantize", s2_run, "--backend", "cpu", "-o", tmp_path / "bad", "--keep-float", "NoSuchOp",
                       *FAST)
    assert code == 2 and "NoSuchOp" in err and not (tmp_path / "bad").exists()
    code, stdout, err = cli("quantize", s2_run, "--backend", "cpu", "-o", tmp_path / "all", "--keep-float", "*",
                            *FAST)
    assert code == 0 and "no layer is quantized" in stdout + err and "∞ dB" in stdout, err
    code, stdout, _ = cli("runs", "--root", tmp_path)
    line = next(line for line in stdout.splitlines() if line.startswith("all "))
    assert "SQNR ∞ dB" in line and "unreadable" not in line


def test_keep_float_auto_searches_within_its_budget(tmp_path: Path) -> None:
    """1000 near-tied classes make top-1 fragile, so full INT8 misses the target and the search runs (weights
    marked trained: on random ones the search declines, below)."""
    torch.manual_seed(0)
    module = create_model("s2mlpv2_small", tiny=True, num_classes=1000)
    d = module.vmlp_cfg.data
    lm = LoadedModel(module, "s2mlpv2_small", module.vmlp_cfg,
                     Recipe(d.input_size, d.mean, d.std, d.crop_pct, d.interpolation), False, None)
    export_model(lm, tmp_path / "k", ExportOptions())
    result = quantize_run(tmp_path / "k", QuantizeOptions(backend="cpu", output=tmp_path / "auto", num_samples=24,
                                                          holdout=8, keep_float=("auto",), sensitivity_rounds=3,
                                                          gate=False))
    s = result.sensitivity
    assert s is not None and s.ranking and s.history[0][1] < 0.99 and s.layers >= len(s.ranking)
    assert len(s.history) <= 1 + 3
    assert s.kept == result.keep_float
    ranked = {r["node"] for r in s.ranking}
    assert set(s.kept) <= ranked
    search_info = _manifest(tmp_path / "auto")["stages"]["quantize"]["keep_float"]
    assert search_info["mode"] == "auto" and search_info["search"]["history"][0]["float_layers"] == 0
    if not s.met:
        assert any("did not reach" in w for w in result.warnings)
    assert any("mostly float" in w for w in result.warnings) == (2 * len(s.kept) > s.layers)


def test_keep_float_auto_declines_on_random_weights(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    """Near-tied logits: agreement would keep layer after layer in float for nothing (all of them, seen)."""
    code, stdout, _ = cli("quantize", s2_run, "--backend", "cpu", "-o", tmp_path / "r", "--keep-float", "auto",
                          *FAST)
    assert code == 0, stdout
    q = _manifest(tmp_path / "r")["stages"]["quantize"]
    assert q["keep_float"]["nodes"] == [] and q["keep_float"]["search"] is None
    assert "random weights have near-tied logits" in " ".join(q["warnings"])


def test_search_doubles_then_bisects() -> None:
    order = [f"n{i}" for i in range(20)]
    calls: list[int] = []

    def measure(prefix: list[str]) -> float:
        calls.append(len(prefix))
        return 1.0 if len(prefix) >= 5 else 0.5

    r = search(order, 0.5, measure, 0.99, rounds=8)
    assert r.met and r.kept == order[:5] and calls == [1, 2, 4, 8, 6, 5]
    calls.clear()
    r = search(order, 0.5, measure, 0.99, rounds=2)
    assert not r.met and calls == [1, 2] and r.kept == []
    assert search(order, 1.0, measure, 0.99, rounds=8).kept == []


def test_logits_metrics_on_known_values() -> None:
    ref = np.array([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    same = compare_logits(ref, ref)
    assert same.top1_agreement == 1.0 and same.cosine_min == pytest.approx(1.0) and same.sqnr_db == float("inf")
    flipped = ref.copy()
    flipped[1] = [0.0, 1.0, 2.0, 0.0, 0.0, 0.0]
    r = compare_logits(ref, flipped)
    assert r.top1_agreement == 0.5 and r.top5_agreement == 1.0
    assert sqnr_db(np.ones(100), np.ones(100) * 1.1) == pytest.approx(20.0)


def test_bad_input_is_one_clear_line_and_writes_nothing(s2_run: Path, cpu_run: Path, cli: Cli, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    cases = [
        ((empty, "--backend", "cpu", "-o", out), "no manifest.json and no .onnx model"),
        ((cpu_run, "--backend", "cpu", "-o", out), "already quantized"),
        ((s2_run, "--backend", "cpu", "-o", out, "--calibration-data", empty), "no images"),
        ((s2_run, "--backend", "cpu", "-o", out, "--num-samples", "0"), "--num-samples must be at least 1"),
        ((s2_run, "--backend", "cpu", "-o", out, "--smooth-quant-alpha", "0.5"), "openvino (NNCF) only"),
        ((s2_run, "--backend", "cpu", "-o", out, "--eval-data", empty), "no class folders"),
    ]
    for args, message in cases:
        code, stdout, err = cli("quantize", *args)
        assert code == 2 and message in err and "Traceback" not in err + stdout, (args, err)
        assert err.count("\n") == 1 and not out.exists()
    monkeypatch.setitem(sys.modules, "nncf", None)
    code, _, err = cli("quantize", s2_run, "--backend", "openvino", "-o", out)
    assert code == 5 and "pip install --force-reinstall nncf" in err and not out.exists()
    assert not _leftovers(tmp_path) and not _leftovers(s2_run.parent)


def test_all_calibration_images_too_small_is_an_error(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "small"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (30, 30), (i, 0, 0)).save(data / f"{i}.png")
    code, _, err = cli("quantize", s2_run, "--backend", "cpu", "--calibration-data", data, "-o", tmp_path / "o")
    assert code == 2 and "smaller than the model's 56x56 crop" in err and "--allow-upscale" in err
    code, stdout, _ = cli("quantize", s2_run, "--backend", "cpu", "--calibration-data", data, "-o", tmp_path / "o",
                          "--allow-upscale")
    assert code == 0, stdout


def test_eval_images_smaller_than_the_crop_are_left_out_and_counted(s2_run: Path, cli: Cli, tmp_path: Path) -> None:
    """An enlarged 30-px image says little about accuracy at 56 px: it is left out (and counted) unless asked."""
    mixed, small = tmp_path / "mixed", tmp_path / "small"
    for label in ("a", "b"):
        for root in (mixed, small):
            (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (i, 0, 0)).save(mixed / label / f"big{i}.png")
            Image.new("RGB", (30, 30), (i, 0, 0)).save(mixed / label / f"small{i}.png")
            Image.new("RGB", (30, 30), (i, 0, 0)).save(small / label / f"{i}.png")
    fast = ("--backend", "cpu", "--num-samples", "8", "--holdout", "4", "--layout", "as-given")
    code, stdout, err = cli("quantize", s2_run, *fast, "--eval-data", mixed, "-o", tmp_path / "o")
    assert code == 0, err
    accuracy = json.loads((tmp_path / "o" / "manifest.json").read_text())["stages"]["quantize"]["accuracy"]
    assert (accuracy["images"], accuracy["too_small"], accuracy["skipped"]) == (4, 4, 0)
    assert "4 smaller than the crop left out" in (tmp_path / "o" / "quantize.md").read_text()
    assert "top-1 is measured on 4 of the 8 --eval-data images" in stdout + err
    code, _, err = cli("quantize", s2_run, *fast, "--eval-data", small, "-o", tmp_path / "o2")
    assert code == 2 and "--eval-data" in err and "smaller than the model's 56x56 crop" in err
    assert "--allow-upscale" in err and not (tmp_path / "o2").exists()
