"""The README's "Bad input and exit codes" table as a battery: each bad input gets its documented exit code,
exactly one ``error:`` line naming the problem and the fix, no traceback, and no partial artifact (no output
directory, no hidden ``.tmp-`` staging directory). Images that only look unusual (grayscale, RGBA, 16-bit,
CMYK, mixed sizes) must work.

Everything runs in-process through ``cli.main`` on a tiny model exported once per module, so the battery
takes seconds; the interruption tests (``test_interrupt.py``) need real processes and signals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from vmlp_deploy import cli
from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.models import create_model

MODEL = "s2mlpv2_small"


@dataclass(frozen=True)
class Files:
    """Inputs shared by every case: a good tiny export and bad things made from it."""

    root: Path
    run: Path

    @property
    def onnx(self) -> Path:
        return self.run / "model.onnx"

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _png_with_declared_size(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming ``width`` x ``height`` with almost no data: the decompression-bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _images(folder: Path, make: Callable[[int], Image.Image], suffix: str = ".png", n: int = 4) -> Path:
    folder.mkdir()
    for i in range(n):
        make(i).save(folder / f"{i}{suffix}")
    return folder


def _rgb(size: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _dynamic_hw_model(path: Path) -> None:
    """Conv -> global pool -> flatten with symbolic H and W: runs, but has no static input size."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"])],
        "dynamic_hw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _conv_model(path: Path, *, channels: int = 3, weight_channels: int | None = None, batch: int = 1,
                elem_type: int = TensorProto.FLOAT, op: tuple[str, str] = ("Conv", "")) -> None:
    """A 32x32 image model ``op`` -> global pool -> flatten: the odd ones users bring (one channel, an integer or
    fp16 input, a zero batch, a Conv whose weight disagrees with its input, an operator no runtime knows)."""
    c = weight_channels or channels
    weight = helper.make_tensor("w", elem_type, [4, c, 3, 3], np.ones(36 * c).tolist())
    kind, domain = op
    graph = helper.make_graph(
        [helper.make_node(kind, ["x", "w"], ["c"], domain=domain), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"])],
        "odd", [helper.make_tensor_value_info("x", elem_type, [batch, channels, 32, 32])],
        [helper.make_tensor_value_info("y", elem_type, [batch, 4])], [weight])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    export_model(load_model(MODEL, tiny=True), run, ExportOptions())
    f = Files(root, run)
    good = f.onnx.read_bytes()
    (f / "empty.onnx").write_bytes(b"")
    (f / "garbage.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (f / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (f / "notes.txt").write_text("not a model\n")
    (f / "readme.onnx").write_text("# a text file named .onnx\n")
    onnx.save(helper.make_model(helper.make_graph([], "empty", [], [])), str(f / "nograph.onnx"))
    ext = f / "external"
    ext.mkdir()
    onnx.save_model(onnx.load(str(f.onnx)), str(ext / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    (ext / "model.onnx.data").unlink()
    _dynamic_hw_model(f / "dynamic_hw.onnx")
    _conv_model(f / "gray.onnx", channels=1)
    _conv_model(f / "fp16.onnx", elem_type=TensorProto.FLOAT16)
    _conv_model(f / "zero_batch.onnx", batch=0)
    _conv_model(f / "bad_shape.onnx", weight_channels=4)
    _conv_model(f / "custom_op.onnx", op=("Foo", "com.weird"))
    Image.fromarray(_rgb((8, 8), 0)).save(f / "png.json", format="PNG")
    precious = f / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work\n")

    import openvino as ov

    ir = f / "ir"
    ir.mkdir()
    ov.save_model(ov.convert_model(str(f.onnx)), str(ir / "model.xml"))
    no_bin = f / "ir_no_bin"
    no_bin.mkdir()
    shutil.copy(ir / "model.xml", no_bin / "model.xml")
    broken_ir = f / "ir_broken"
    broken_ir.mkdir()
    (broken_ir / "model.xml").write_text("not an IR\n")
    shutil.copy(ir / "model.bin", broken_ir / "model.bin")

    torch.save(create_model("convnext_tiny", tiny=True).state_dict(), f / "convnext.pth")
    torch.save(create_model(MODEL, tiny=True, num_classes=10).state_dict(), f / "ten_classes.pth")
    (f / "junk.pth").write_bytes(b"not a checkpoint" * 16)
    (f / "a_file").write_text("a regular file, not a directory\n")

    def manifest_variant(name: str, text: str) -> None:
        d = f / name
        shutil.copytree(run, d)
        (d / "manifest.json").write_text(text)

    manifest = json.loads((run / "manifest.json").read_text())
    manifest_variant("manifest_invalid", "{\"model\": ")
    manifest_variant("manifest_list", "[1, 2, 3]\n")
    manifest_variant("manifest_no_artifacts", json.dumps({k: v for k, v in manifest.items() if k != "artifacts"}))
    manifest_variant("manifest_artifacts_str", json.dumps({**manifest, "artifacts": "model.onnx"}))
    manifest_variant("manifest_onnx_int", json.dumps({**manifest, "artifacts": {"onnx": 5}}))
    manifest_variant("manifest_missing_model", json.dumps({**manifest, "artifacts": {"onnx": "gone.onnx"}}))
    manifest_variant("manifest_preprocessing_str", json.dumps({**manifest, "preprocessing": "imagenet"}))
    manifest_variant("manifest_stages_list", json.dumps({**manifest, "stages": ["export"]}))
    manifest_variant("profile_run", json.dumps({"format": manifest["format"], "stages": {"profile": {"records": 2}},
                                                "artifacts": {"json": "profile.json"}}))
    no_manifest = f / "no_manifest"
    no_manifest.mkdir()
    (no_manifest / "notes.txt").write_text("x\n")

    # calibration data
    (f / "cal_empty").mkdir()
    broken = f / "cal_broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
        (broken / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 20)
    non_images = f / "cal_non_images"
    non_images.mkdir()
    for name in ("a.txt", "b.csv", "c.json"):
        (non_images / name).write_text("1,2,3\n")
    _images(f / "cal_1px", lambda i: Image.new("RGB", (1, 1), (i, i, i)))
    huge = f / "cal_huge"
    huge.mkdir()
    for i in range(3):
        _png_with_declared_size(huge / f"{i}.png", 60000, 60000)
    _images(f / "cal_gray", lambda i: Image.fromarray(_rgb((80, 72), i)[..., 0], "L"))
    _images(f / "cal_rgba", lambda i: Image.fromarray(np.dstack([_rgb((80, 72), i), _rgb((80, 72), i)[..., :1]]),
                                                      "RGBA"))
    _images(f / "cal_16bit", lambda i: Image.fromarray(_rgb((80, 72), i)[..., 0].astype(np.uint16) * 257))
    _images(f / "cal_cmyk", lambda i: Image.fromarray(_rgb((80, 72), i)).convert("CMYK"), ".jpg")
    _images(f / "cal_mixed", lambda i: Image.fromarray(_rgb((60 + 37 * i, 300 - 50 * i), i)))
    npy = f / "npy_shape"
    npy.mkdir()
    np.save(npy / "x.npy", np.zeros((4, 3, 17, 17), np.float32))
    npz = f / "npz_shape"
    npz.mkdir()
    np.savez(npz / "x.npz", a=np.zeros((4, 1, 56, 56), np.float32))
    strings = f / "npy_dtype"
    strings.mkdir()
    np.save(strings / "x.npy", np.full((4, 3, 56, 56), "a", dtype="<U1"))
    raw = f / "npy_uint8"
    raw.mkdir()
    np.save(raw / "x.npy", np.full((4, 3, 56, 56), 200, np.uint8))
    for name, value in (("npy_nan", np.nan), ("npy_inf", np.inf)):
        d = f / name
        d.mkdir()
        x = np.zeros((4, 3, 56, 56), np.float32)
        x[1, 0, 3, 3] = value
        np.save(d / "x.npy", x)
    return f


@dataclass(frozen=True)
class Case:
    """One bad input: the command (``{x}`` placeholders filled from ``Files``), exit code, and what the one
    error line must say (a regex over the problem and the fix)."""

    id: str
    argv: str
    code: int
    says: str
    output: str = "out"


Q = "quantize {run} --backend cpu --num-samples 4 --holdout 2 --layout as-given -o {out}"

CASES = [
    # names
    Case("unknown-model", "export --model resnet50 -o {out}", 2, r"resnet50.*(models|did you mean)"),
    Case("misspelt-model", "export --model s2mlpv2_smal -o {out}", 2, r"s2mlpv2_smal.*s2mlpv2_small"),
    Case("unknown-family", "models --family transformer", 2, r"no family named 'transformer'.*vmlp-deploy models"),
    Case("unknown-deploy-model", "deploy --model vit_base --root {out}", 2, r"vit_base"),
    Case("unknown-profile-model", "profile vit_tiny --backend cpu -o {out}", 2, r"vit_tiny"),
    Case("unknown-quantize-backend", "quantize {run} --backend tpu -o {out}", 2, r"tpu.*cpu"),
    Case("unknown-profile-backend", "profile {onnx} --backend tpu -o {out}", 2, r"tpu.*cpu"),
    Case("unknown-deploy-backend", "deploy --model s2mlpv2_small --tiny --backend gpu --root {out}", 2, r"gpu.*cpu"),
    Case("unknown-target-cpu", "quantize {run} --backend cpu --target-cpu pentium -o {out}", 2, r"pentium"),
    # files given to optimize
    Case("optimize-0-byte", "optimize {empty.onnx} -o {out}", 2, r"empty.onnx.*(empty|0 bytes).*re-export"),
    Case("optimize-garbage", "optimize {garbage.onnx} -o {out}", 2, r"garbage.onnx.*not .*ONNX"),
    Case("optimize-truncated", "optimize {truncated.onnx} -o {out}", 2, r"truncated.onnx.*ONNX"),
    Case("optimize-text-as-onnx", "optimize {readme.onnx} -o {out}", 2, r"readme.onnx.*ONNX"),
    Case("optimize-no-graph", "optimize {nograph.onnx} -o {out}", 2, r"nograph.onnx.*(no nodes|no inputs|empty)"),
    Case("optimize-non-onnx", "optimize {notes.txt} -o {out}", 2, r"notes.txt.*not an .onnx"),
    Case("optimize-ir", "optimize {ir/model.xml} -o {out}", 2, r"model.xml.*(not an .onnx|OpenVINO IR)"),
    Case("optimize-missing-file", "optimize {nothere.onnx} -o {out}", 2, r"nothere.onnx does not exist"),
    Case("optimize-external-data-missing", "optimize {external/model.onnx} -o {out}", 2,
         r"model.onnx.data.*(missing|not found)"),
    # files given to quantize
    Case("quantize-0-byte", "quantize {empty.onnx} --backend cpu -o {out}", 2, r"empty.onnx.*(empty|0 bytes)"),
    Case("quantize-garbage", "quantize {garbage.onnx} --backend cpu -o {out}", 2, r"garbage.onnx.*ONNX"),
    Case("quantize-truncated", "quantize {truncated.onnx} --backend cpu -o {out}", 2, r"truncated.onnx.*ONNX"),
    Case("quantize-ir", "quantize {ir/model.xml} --backend cpu -o {out}", 2, r"model.xml.*ONNX"),
    Case("quantize-ir-dir", "quantize {ir} --backend cpu -o {out}", 2, r"OpenVINO IR but no ONNX"),
    Case("quantize-external-data-missing", "quantize {external/model.onnx} --backend cpu -o {out}", 2,
         r"model.onnx.data.*(missing|not found)"),
    Case("quantize-dynamic-hw", "quantize {dynamic_hw.onnx} --backend cpu --mean .5 .5 .5 --std .5 .5 .5 -o {out}",
         2, r"dynamic input size.*--input-size"),
    Case("quantize-one-channel", "quantize {gray.onnx} --backend cpu --mean .5 .5 .5 --std .5 .5 .5 -o {out}", 2,
         r"takes \(1, 32, 32\).*\(3, 32, 32\).*\.npy"),
    Case("quantize-fp16-input", "quantize {fp16.onnx} --backend cpu --mean .5 .5 .5 --std .5 .5 .5 -o {out}", 2,
         r"fp16.onnx.*float16.*float32"),
    Case("quantize-zero-batch", "quantize {zero_batch.onnx} --backend openvino --mean .5 .5 .5 --std .5 .5 .5 "
         "-o {out}", 2, r"zero_batch.*batch of 0"),
    Case("quantize-inconsistent-graph", "quantize {bad_shape.onnx} --backend cpu --mean .5 .5 .5 --std .5 .5 .5 "
         "-o {out}", 2, r"ONNX Runtime cannot run .*bad_shape.onnx"),
    Case("quantize-unknown-op", "quantize {custom_op.onnx} --backend tensorrt --mean .5 .5 .5 --std .5 .5 .5 "
         "-o {out}", 2, r"ONNX Runtime cannot run .*custom_op.onnx"),
    # files given to profile
    Case("profile-zero-batch", "profile {zero_batch.onnx} --backend cpu -o {out}", 2, r"zero_batch.*batch of 0"),
    Case("profile-inconsistent-graph", "profile {bad_shape.onnx} --backend cpu -o {out}", 2, r"bad_shape.onnx"),
    Case("profile-0-byte", "profile {empty.onnx} --backend cpu -o {out}", 2, r"empty.onnx.*(empty|0 bytes)"),
    Case("profile-garbage", "profile {garbage.onnx} --backend openvino -o {out}", 2, r"garbage.onnx.*ONNX"),
    Case("profile-truncated", "profile {truncated.onnx} --backend cpu -o {out}", 2, r"truncated.onnx.*ONNX"),
    Case("profile-xml-without-bin", "profile {ir_no_bin/model.xml} --backend openvino -o {out}", 2,
         r"model.bin.*copy both"),
    Case("profile-broken-ir", "profile {ir_broken/model.xml} --backend openvino -o {out}", 2,
         r"OpenVINO cannot read model.xml"),
    Case("profile-broken-ir-capped", "profile {ir_broken/model.xml} --backend openvino --target-cpu avx2 -o {out}",
         2, r"OpenVINO cannot read model.xml"),
    Case("profile-ir-on-onnxruntime", "profile {ir/model.xml} --backend cpu -o {out}", 2, r"xml.*openvino"),
    Case("profile-non-model", "profile {notes.txt} --backend cpu -o {out}", 2, r"notes.txt"),
    Case("profile-external-data-missing", "profile {external/model.onnx} --backend cpu -o {out}", 2,
         r"model.onnx.data.*(missing|not found)"),
    Case("profile-dynamic-hw", "profile {dynamic_hw.onnx} --backend cpu -o {out}", 2, r"dynamic.*--input-shape"),
    # checkpoints
    Case("checkpoint-other-model", "export --model s2mlpv2_small --tiny --checkpoint {convnext.pth} -o {out}", 2,
         r"does not fit s2mlpv2_small.*check --model"),
    Case("checkpoint-junk", "export --model s2mlpv2_small --tiny --checkpoint {junk.pth} -o {out}", 2,
         r"cannot read checkpoint.*state_dict"),
    Case("checkpoint-missing", "export --model s2mlpv2_small --tiny --checkpoint {nothere.pth} -o {out}", 2,
         r"nothere.pth"),
    # calibration data
    Case("calibration-empty-dir", Q + " --calibration-data {cal_empty}", 2, r"no images.*cal_empty"),
    Case("calibration-broken-images", Q + " --calibration-data {cal_broken}", 2, r"none of the 6 files.*corrupt"),
    Case("calibration-non-images", Q + " --calibration-data {cal_non_images}", 2, r"no images.*cal_non_images"),
    Case("calibration-1-pixel", Q + " --calibration-data {cal_1px}", 2, r"smaller than.*--allow-upscale"),
    Case("calibration-huge-declared", Q + " --calibration-data {cal_huge}", 2, r"(too large|decompression)"),
    Case("calibration-missing-dir", Q + " --calibration-data {nothere}", 2, r"nothere does not exist"),
    Case("npy-wrong-shape", Q + " --calibration-data {npy_shape}", 2, r"shape \(4, 3, 17, 17\).*model takes"),
    Case("npz-wrong-channels", Q + " --calibration-data {npz_shape}", 2, r"shape \(4, 1, 56, 56\).*model takes"),
    Case("npy-wrong-dtype", Q + " --calibration-data {npy_dtype}", 2, r"dtype.*<U1.*float"),
    Case("npy-raw-pixels", Q + " --calibration-data {npy_uint8}", 2, r"uint8 tensors, which look like raw pixels.*float32"),
    Case("npy-nan", Q + " --calibration-data {npy_nan}", 2, r"NaN or infinite"),
    Case("npy-inf", Q + " --calibration-data {npy_inf}", 2, r"NaN or infinite"),
    # outputs
    Case("export-output-under-file", "export --model s2mlpv2_small --tiny -o {a_file}/sub", 2,
         r"a_file.*not a directory", output="a_file/sub"),
    Case("optimize-output-under-file", "optimize {onnx} -o {a_file}/sub", 2, r"a_file.*not a directory",
         output="a_file/sub"),
    Case("quantize-output-under-file", "quantize {run} --backend cpu -o {a_file}/sub", 2, r"a_file.*not a directory",
         output="a_file/sub"),
    Case("profile-output-under-file", "profile {onnx} --backend cpu -n 2 --no-peak -o {a_file}/sub", 2,
         r"a_file.*not a directory", output="a_file/sub"),
    Case("output-is-a-file", "optimize {onnx} -o {a_file}", 2, r"a_file exists and is not a directory",
         output="-"),
    Case("overwrite-a-folder-that-is-no-run", "export --model s2mlpv2_small --tiny -o {precious} --overwrite", 2,
         r"--overwrite replaces only a vmlp-deploy run directory.*precious", output="-"),
    Case("output-is-the-working-folder", "export --model s2mlpv2_small --tiny -o . --overwrite", 2,
         r"current directory", output="-"),
    Case("deploy-bad-quantize-option", "deploy --model s2mlpv2_small --tiny --num-samples 0 --root {out}", 2,
         r"--num-samples must be at least 1"),
    Case("recipe-is-an-image", "quantize {run} --backend cpu --recipe {png.json} -o {out}", 2, r"png.json is not text"),
    Case("recipe-is-a-folder", "quantize {run} --backend cpu --recipe {cal_gray} -o {out}", 2, r"is a folder"),
    Case("no-rewrite-with-a-target", "export --model s2mlpv2_small --tiny --no-rewrite --target openvino -o {out}", 2,
         r"--target openvino.*--no-rewrite"),
    Case("percentile-without-its-method", Q + " --percentile 50", 2, r"--percentile applies to --method percentile"),
    Case("ort-flag-without-ort", "profile {onnx} --backend openvino --spinning off -o {out}", 2,
         r"--spinning is read by --backend cpu only.*add it, or drop --spinning"),
    Case("tiny-for-a-file", "profile {onnx} --backend cpu --tiny --target openvino -o {out}", 2,
         r"--tiny and --target openvino choose how a zoo name is exported.*drop them"),
    Case("streams-in-latency-mode", "profile {onnx} --backend cpu --streams 4 -o {out}", 2,
         r"--streams .*--mode throughput"),
    Case("runs-root-is-a-file", "runs --root {a_file}", 2, r"a_file is a file", output="-"),
    Case("negative-seed", "export --model s2mlpv2_small --tiny --seed -1 -o {out}", 2, r"seed"),
    Case("huge-seed", "quantize {run} --backend cpu --seed 99999999999999999999 -o {out}", 2, r"seed"),
    # manifests
    Case("manifest-missing", "optimize {no_manifest} -o {out}", 2, r"no manifest.json"),
    Case("manifest-invalid-json", "quantize {manifest_invalid} --backend cpu -o {out}", 2, r"not valid JSON"),
    Case("manifest-a-list", "optimize {manifest_list} -o {out}", 2, r"manifest.json.*(object|hand-edited)"),
    Case("manifest-no-artifacts", "optimize {manifest_no_artifacts} -o {out}", 2, r"artifacts"),
    Case("manifest-artifacts-string", "quantize {manifest_artifacts_str} --backend cpu -o {out}", 2, r"artifacts"),
    Case("manifest-onnx-int", "profile {manifest_onnx_int} --backend cpu -o {out}", 2, r"artifacts"),
    Case("manifest-names-missing-model", "optimize {manifest_missing_model} -o {out}", 2, r"gone.onnx"),
    Case("manifest-preprocessing-string", "quantize {manifest_preprocessing_str} --backend cpu -o {out}", 2,
         r"preprocessing"),
    Case("manifest-stages-list", "quantize {manifest_stages_list} --backend cpu -o {out}", 2, r"stages"),
    Case("optimize-a-profile-run", "optimize {profile_run} -o {out}", 2, r"profile run .*export or quantize run"),
    Case("quantize-a-profile-run", "quantize {profile_run} --backend cpu -o {out}", 2, r"profile run"),
    Case("profile-a-profile-run", "profile {profile_run} --backend cpu -o {out}", 2, r"profile run"),
    # backends
    Case("backend-unavailable", "profile {onnx} --backend tensorrt -o {out}", 5, r"TensorRT.*pip install"),
]

WORKS = [
    Case("calibration-grayscale", Q + " --calibration-data {cal_gray}", 0, ""),
    Case("calibration-rgba", Q + " --calibration-data {cal_rgba}", 0, ""),
    Case("calibration-16-bit", Q + " --calibration-data {cal_16bit}", 0, ""),
    Case("calibration-cmyk", Q + " --calibration-data {cal_cmyk}", 0, ""),
    Case("calibration-mixed-sizes", Q + " --calibration-data {cal_mixed}", 0, ""),
    Case("checkpoint-other-class-count", "export --model s2mlpv2_small --tiny --checkpoint {ten_classes.pth} "
         "-o {out}", 0, ""),
]


def _argv(case: Case, f: Files, work: Path) -> list[str]:
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "run":
            return str(f.run)
        if key == "onnx":
            return str(f.onnx)
        if key == "out":
            return str(work / "out")
        return str(f / key)

    return [re.sub(r"\{([^}]+)\}", fill, word) for word in case.argv.split()]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: usage errors
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _leftovers(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder (and zoo cache) per case, so leftovers are this case's own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VMLP_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files: Files, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(_argv(case, files, work), capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == case.code, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err
    assert len(errors) == 1, err
    assert re.search(case.says, errors[0]), errors[0]
    if case.output != "-":
        assert not (work / case.output).exists() and not (files.root / case.output).exists()
    assert not _leftovers(work, files.root), _leftovers(work, files.root)
    assert (files / "precious" / "thesis.tex").read_text() == "years of work\n"


@pytest.mark.parametrize("case", WORKS, ids=[c.id for c in WORKS])
def test_unusual_but_valid_input(case: Case, files: Files, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(_argv(case, files, work), capsys)
    assert code == 0, (out[-2000:], err[-2000:])
    assert "error:" not in err and (work / "out" / "manifest.json").is_file()
    assert not _leftovers(work)


def test_internal_error_says_where_to_report(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A bug (not bad input) exits 1 with where to report it and the run's facts; --debug shows the traceback."""
    def broken(family: str | None) -> list[dict[str, object]]:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("vmlp_deploy.zoo_table.zoo_rows", broken)
    code, _, err = _run(["models"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "internal error: ZeroDivisionError: division by zero" in err
    assert "report it" in err and "command: vmlp-deploy models" in err and "Python" in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "models"])


def test_usage_error_exit_code() -> None:
    """argparse's usage errors keep exit code 2, from the real entry point."""
    proc = subprocess.run(["vmlp-deploy", "export", "--opset"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a full disk for a model of ~100 KB. Skips where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the disk-full case needs one")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("read_only", [False, True], ids=["disk-full", "read-only-fs"])
def test_unwritable_file_system(read_only: bool, files: Files, small_tmpfs: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk mid-write or a read-only file system: exit 2, one error line, nothing left on the device."""
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code, out, err = _run(["optimize", str(files.onnx), "-o", str(small_tmpfs / "out")], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in out + err and len(errors) == 1, (out[-2000:], err[-2000:])
    assert re.search(r"(No space left|Read-only file system|cannot write).*(free space|choose)", errors[0]), errors[0]
    assert list(small_tmpfs.iterdir()) == []


def test_unreadable_model_and_manifest(files: Files, tmp_path: Path) -> None:
    """Files without read permission: one line each, not an internal error (as root, with the capability that
    bypasses permissions dropped: root reads everything otherwise)."""
    prefix: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced here")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                  "-dac_override,-dac_read_search"]
    locked = tmp_path / "locked.onnx"
    locked.write_bytes(files.onnx.read_bytes())
    run = tmp_path / "run"
    shutil.copytree(files.run, run)
    for path in (locked, run / "manifest.json"):
        path.chmod(0)
    for argv, says in ((["profile", str(locked), "--backend", "cpu", "-o", str(tmp_path / "p")], "cannot be read"),
                       (["quantize", str(run), "--backend", "cpu", "-o", str(tmp_path / "q")], "cannot read")):
        proc = subprocess.run([*prefix, "vmlp-deploy", *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(("raised", "code", "says"), [
    (PermissionError(13, "Permission denied", "out"), 1, "internal error: PermissionError"),
    (OSError(28, "No space left on device", "out/x"), 2, "error: cannot write (out/x): No space left on device"),
])
def test_os_errors_that_escape_a_stage(raised: OSError, code: int, says: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk is the machine's (exit 2, one line); any other OSError that escapes is a bug (exit 1, where to
    report it), never a bare traceback."""
    def broken(family: str | None) -> list[dict[str, object]]:
        raise raised

    monkeypatch.setattr("vmlp_deploy.zoo_table.zoo_rows", broken)
    got, _, err = _run(["models"], capsys)
    assert got == code and says in err and "Traceback" not in err


@pytest.mark.parametrize("shell", ["vmlp-deploy models >&- 2>&-", "PYTHONIOENCODING=ascii vmlp-deploy models",
                                   "vmlp-deploy runs > /dev/full"])
def test_odd_output_streams(shell: str, tmp_path: Path) -> None:
    """Closed streams and an ASCII-only terminal print what they can; a full stdout is one line, exit 2."""
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    full = "/dev/full" in shell
    assert proc.returncode == (2 if full else 0), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and ("No space left" in proc.stderr) == full


def test_full_scratch_folder_is_named(files: Files, small_tmpfs: Path, work: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A full TMPDIR is not a full -o: the error says which to free or move."""
    import tempfile

    (small_tmpfs / "filler").write_bytes(b"\0" * 60_000)
    monkeypatch.setattr(tempfile, "tempdir", str(small_tmpfs))
    code, out, err = _run(_argv(Case("q", Q, 2, ""), files, work), capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out + err, (out[-2000:], err[-2000:])
    assert "scratch" in errors[0] and "TMPDIR" in errors[0], errors[0]
    assert not (work / "out").exists() and not _leftovers(work)
