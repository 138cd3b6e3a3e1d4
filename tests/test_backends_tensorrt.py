"""The TensorRT backend without TensorRT: everything that does not need the library or a GPU.

Engine cache keys, build configuration, engine-inspector parsing and the install error are plain Python;
building and timing engines needs NVIDIA's libraries and is exercised in docker/tensorrt.Dockerfile.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vmlp_deploy.backends import BACKENDS, RunOptions
from vmlp_deploy.backends.tensorrt import (
    BuildConfig,
    build_config,
    datatype_precision,
    engine_cache_key,
    engine_cache_path,
    engine_precision,
    gpu_index,
    layer_precisions,
    model_digest,
)
from vmlp_deploy.errors import UserError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
Cli = Callable[..., tuple[int, str, str]]


def test_cache_key_changes_with_every_field() -> None:
    base = ("a" * 64, "10.13.3.9", "NVIDIA H100 80GB HBM3", "f16", (1, 3, 224, 224))
    key = engine_cache_key(*base)
    assert key == engine_cache_key(*base) and len(key) == 32
    for i, changed in enumerate(("b" * 64, "11.4.0.106", "NVIDIA L4", "f32", (8, 3, 224, 224))):
        other = list(base)
        other[i] = changed
        assert engine_cache_key(*other) != key, f"field {i} is not part of the key"
    assert engine_cache_key(*base[:2], " NVIDIA H100 80GB HBM3 ", *base[3:]) == key


def test_cache_path_honours_the_cache_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path))
    assert engine_cache_path("k") == tmp_path / "tensorrt" / "k.engine"


def test_model_digest_covers_external_data(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"graph")
    first = model_digest(model)
    (tmp_path / "model.onnx.data").write_bytes(b"weights")
    assert model_digest(model) != first


def test_build_config_for_each_precision() -> None:
    shape = (1, 3, 224, 224)
    f32 = build_config(None, False, "pixel_values", shape)
    assert f32 == BuildConfig(precision="f32", cast_to=None, strongly_typed=True, tf32=False,
                              workspace_bytes=1024 << 20, input_name="pixel_values", input_shape=shape)
    assert json.loads(json.dumps(f32.to_dict()))["input_shape"] == list(shape)
    f16 = build_config("fp16", False, "pixel_values", shape, workspace_mb=512)
    assert (f16.precision, f16.cast_to, f16.workspace_bytes) == ("f16", "f16", 512 << 20)
    assert build_config("bf16", False, "x", shape).cast_to == "bf16"
    qdq = build_config("f32", True, "x", shape)
    assert (qdq.precision, qdq.cast_to) == ("int8", None)
    assert build_config("int8", True, "x", shape).precision == "int8"


def test_build_config_refuses_what_strong_typing_cannot_do() -> None:
    shape = (1, 3, 32, 32)
    with pytest.raises(UserError, match="Q/DQ model"):
        build_config("int8", False, "x", shape)
    with pytest.raises(UserError, match="not supported"):
        build_config("f16", True, "x", shape)
    with pytest.raises(UserError, match="unknown precision"):
        build_config("int4", False, "x", shape)
    with pytest.raises(UserError, match="workspace"):
        build_config("f32", False, "x", shape, workspace_mb=0)


def test_inspector_json_gives_layer_precisions() -> None:
    info = json.dumps({"Layers": [
        {"Name": "Reformat in", "LayerType": "Reformat",
         "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "/q/QuantizeLinear", "LayerType": "Scale",
         "Inputs": [{"Name": "b", "Format/Datatype": "Half"}, {"Name": "s", "Format/Datatype": "Int8"}]},
        {"Name": "shape", "LayerType": "Shape", "Inputs": [{"Name": "c", "Format/Datatype": "Int64"}]},
        "a layer name only (ProfilingVerbosity.LAYER_NAMES_ONLY)",
    ]})
    per_layer = layer_precisions(info)
    assert per_layer == {"Reformat in": "f32", "conv1 + relu": "f16", "/q/QuantizeLinear": "int8"}
    assert engine_precision(per_layer) == "int8"
    assert engine_precision({"a": "f32", "b": "f16"}) == "f16"
    assert engine_precision({}) == "unknown"
    assert (datatype_precision("Row major linear BF16 format"), datatype_precision("Float")) == ("bf16", "f32")


def test_gpu_selection() -> None:
    assert (gpu_index("GPU"), gpu_index("gpu.1"), gpu_index("CPU")) == (0, 1, 0)
    with pytest.raises(UserError, match="NVIDIA GPU"):
        gpu_index("NPU")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    backend = BACKENDS["tensorrt"]
    reason = backend.unavailable_reason()
    assert not backend.available() and reason is not None
    assert 'pip install "vmlp-deploy[tensorrt]"' in reason and "docker/tensorrt.Dockerfile" in reason
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    with pytest.raises(UserError, match="TensorRT is not installed"):
        backend.load(model, RunOptions())
    with pytest.raises(UserError, match="builds engines from .onnx"):
        backend.load(tmp_path / "m.xml", RunOptions())


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_deploy_without_tensorrt_stops_before_any_work(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a user: the export and 70 s of calibration ran before the missing library was reported."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("deploy", "--model", "s2mlpv2", "--tiny", "--backend", "tensorrt")
    assert code == 5 and "TensorRT is not installed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
