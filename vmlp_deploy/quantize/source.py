"""The float model to quantize: where it is, what its manifest says, and the preprocessing recipe to feed it.

A run directory from ``export`` (or ``optimize``) carries the recipe in its manifest. A bare ONNX file, or a
directory holding one without a manifest, gets its recipe from flags or a small JSON/TOML file; either way
the recipe used is written into the output manifest so later stages reuse it.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ..errors import UserError
from ..onnx_io import load_checked
from ..preprocess import Recipe
from ..records import MANIFEST_FORMAT, RunManifest
from ..rundir import MANIFEST, load_model_manifest, manifest_beside, metadata_model
from .options import RecipeOverrides

#: Operators that only appear in a model that is already quantized (QDQ or QOperator format).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention",
})


@dataclass
class SourceModel:
    """The float ONNX model, its manifest (as read, or synthesised for a bare ONNX) and its I/O signature."""

    run_dir: Path
    onnx_path: Path
    manifest: RunManifest
    has_manifest: bool
    input_name: str
    input_shape: list[int | str]
    output_name: str
    num_classes: int | None

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None for a symbolic batch dimension."""
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) when static."""
        dims = self.input_shape[1:]
        return tuple(int(d) for d in dims) if all(isinstance(d, int) and d > 0 for d in dims) else None

    @property
    def name(self) -> str:
        model = self.manifest.model
        return str((model.name if model else None) or self.onnx_path.stem)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _find_onnx(path: Path) -> tuple[Path, Path, RunManifest | None]:
    """(run_dir, model path, manifest or None) for a run directory, a bare directory or an .onnx file."""
    if path.is_file():
        if path.suffix != ".onnx":
            raise UserError(f"{path} is not an ONNX model: pass a run directory from `vmlp-deploy export` "
                            "or an .onnx file")
        manifest = manifest_beside(path)
        if manifest is not None:
            return _checked_source_dir(path.parent, manifest)
        return path.parent, path, None
    if not path.is_dir():
        raise UserError(f"{path} does not exist: pass a run directory from `vmlp-deploy export` or an .onnx file")
    if (path / MANIFEST).is_file():
        return _checked_source_dir(path, load_model_manifest(path))
    candidates = sorted(path.glob("*.onnx"))
    if len(candidates) > 1 and (path / "model.onnx").is_file():
        candidates = [path / "model.onnx"]
    if len(candidates) == 1:
        return path, candidates[0], None
    if candidates:
        raise UserError(f"{path} holds several .onnx files and no {MANIFEST}: pass the one to quantize")
    if list(path.glob("*.xml")):
        raise UserError(f"{path} holds an OpenVINO IR but no ONNX model: quantize starts from the float ONNX "
                        "model (the run directory of `vmlp-deploy export`)")
    raise UserError(f"{path} has no {MANIFEST} and no .onnx model: pass a run directory written by "
                    "`vmlp-deploy export` (or an .onnx file)")


def _checked_source_dir(path: Path, manifest: RunManifest) -> tuple[Path, Path, RunManifest]:
    if manifest.quantize is not None:
        raise UserError(f"{path} is already quantized (its manifest has a quantize stage): quantize the float "
                        "model it came from")
    name = manifest.artifacts.onnx if manifest.artifacts else None
    if not name:
        raise UserError(f"{path / MANIFEST} names no ONNX model (artifacts.onnx): quantize needs a float ONNX "
                        "model, re-run `vmlp-deploy export`")
    model = path / name
    if not model.is_file():
        raise UserError(f"{path / MANIFEST} names {name}, which is missing: re-run `vmlp-deploy export`")
    return path, model, manifest


def already_quantized(model: onnx.ModelProto, manifest: RunManifest | None) -> str | None:
    """Why the model counts as quantized already, or None."""
    if manifest is not None and manifest.quantize is not None:
        return "its manifest has a quantize stage"
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear")})
    if ops:
        return f"its graph already holds {', '.join(ops)}"
    return None


def open_source(path: Path) -> SourceModel:
    """Locate and inspect the float model; refuse one that is already quantized."""
    run_dir, onnx_path, manifest = _find_onnx(path)
    model = load_checked(onnx_path, load_external_data=False)
    reason = already_quantized(model, manifest)
    if reason:
        raise UserError(f"{onnx_path} is already quantized ({reason}): quantize the float model it came from")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise UserError(f"{onnx_path} has {len(inputs)} inputs: quantize handles image classifiers with one "
                        "NCHW input")
    shape = _dims(inputs[0])
    if len(shape) != 4:
        raise UserError(f"{onnx_path} input {inputs[0].name!r} has shape {shape}: quantize expects one NCHW image input")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise UserError(f"{onnx_path} input {inputs[0].name!r} is {onnx.helper.tensor_dtype_to_np_dtype(elem)}: "
                        "quantize calibrates a float32 input; export the model with a float32 input")
    if shape[0] == 0:
        raise UserError(f"{onnx_path} input {inputs[0].name!r} has a batch of 0 ({shape}): re-export it with a "
                        "batch of 1 or a dynamic batch")
    out_shape = _dims(model.graph.output[0])
    num_classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] > 0 else None
    # Read as if from a file, so the written manifest keeps these keys first, in this order, as it always has.
    record = manifest if manifest is not None else _bare_manifest(onnx_path, model)
    return SourceModel(run_dir, onnx_path, record, manifest is not None, inputs[0].name, shape,
                       model.graph.output[0].name, num_classes)


def _bare_manifest(onnx_path: Path, model: onnx.ModelProto) -> RunManifest:
    """A bare file's manifest: what its ``vmlp.*`` metadata says (random weights, preprocessing), or its name."""
    info, preprocessing = metadata_model(onnx_path, model)
    return RunManifest.from_json({
        "format": MANIFEST_FORMAT,
        "model": {**info, "source_onnx": str(onnx_path.resolve())},
        **({"preprocessing": preprocessing} if preprocessing else {}),
        "artifacts": {"onnx": onnx_path.name, "external_data": None},
        "stages": {},
    })


def _read_recipe_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"recipe file {path} is a folder: pass a .json or .toml file")
    if not path.is_file():
        raise UserError(f"recipe file {path} does not exist")
    if path.suffix not in (".json", ".toml"):
        raise UserError(f"recipe file {path} must be .json or .toml")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError:
        raise UserError(f"recipe file {path} is not text: pass a .json or .toml recipe") from None
    except OSError as e:
        raise UserError(f"cannot read recipe file {path}: {e.strerror}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot parse recipe file {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe file {path} must hold a table of keys (input_size, mean, std, ...), "
                        f"not a {type(data).__name__}")
    if "preprocessing" in data and isinstance(data["preprocessing"], dict):
        data = data["preprocessing"]
    known = {"input_size", "mean", "std", "resize", "crop_pct", "interpolation"}
    unknown = sorted(set(data) - known - {"resize_shorter_to", "resize_to", "center_crop", "layout",
                                          "channel_order", "scale"})
    if unknown:
        raise UserError(f"recipe file {path} has unknown keys {', '.join(unknown)}: use {', '.join(sorted(known))}")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3 or not all(_number(v) for v in value):
        raise UserError(f"{what} must be three finite numbers (R, G, B), got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _size(value: Any) -> tuple[int, int]:
    """An input size: one integer (square) or two, positive, as H W."""
    items = [value] * 2 if not isinstance(value, list | tuple) else list(value)
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in items):
        raise UserError(f"input size must be two positive integers H W, got {value!r}")
    return int(items[0]), int(items[1])


def _crop_pct(input_size: tuple[int, int], resize: int) -> float:
    """timm's crop_pct for 'resize the shorter side to ``resize``, crop ``input_size``', exact under floor()."""
    short = min(input_size)
    if resize < short:
        raise UserError(f"--resize {resize} is smaller than the {input_size[0]}x{input_size[1]} crop: "
                        f"pass --resize {short} or more")
    pct = short / resize
    while math.floor(short / pct) < resize:
        pct = math.nextafter(pct, 0.0)
    return pct


def resolve_recipe(source: SourceModel, overrides: RecipeOverrides) -> tuple[Recipe | None, str]:
    """The preprocessing recipe and where it came from ('manifest', 'flags', 'file', ...); None if unknown.

    Flags beat the recipe file, which beats the manifest. Without mean/std from anywhere the recipe is unknown;
    that is only an error once images have to be preprocessed (``.npy`` calibration tensors need none).
    """
    base = source.manifest.preprocessing
    fields: dict[str, Any] = {}
    origin: list[str] = []
    if base:
        fields.update(Recipe.from_dict(base).__dict__)
        origin.append("manifest" if source.has_manifest else "ONNX metadata")
    if overrides.recipe_file is not None:
        data = _read_recipe_file(overrides.recipe_file)
        fields.update({k: v for k, v in data.items() if k in ("input_size", "mean", "std", "crop_pct", "interpolation",
                                                               "resize")})
        origin.append(f"file {overrides.recipe_file}")
    flags = {k: v for k, v in (("input_size", overrides.input_size), ("mean", overrides.mean), ("std", overrides.std),
                               ("resize", overrides.resize), ("interpolation", overrides.interpolation))
             if v is not None}
    if flags:
        fields.update(flags)
        origin.append("flags")
    static = source.sample_shape
    if "input_size" not in fields and static is not None:
        fields["input_size"] = static[1:]
    if "mean" not in fields or "std" not in fields:
        return None, "none"
    if "input_size" not in fields:
        raise UserError(f"{source.onnx_path} has a dynamic input size: pass --input-size H W")
    size = _size(fields["input_size"])
    if static is not None and tuple(static[1:]) != size:
        raise UserError(f"the recipe's input size {size[0]}x{size[1]} does not match the model's input "
                        f"{static[1]}x{static[2]}: drop --input-size or fix the recipe")
    resize = fields.pop("resize", None)
    if resize is not None:
        if not (isinstance(resize, int) and not isinstance(resize, bool) and 0 < resize <= 65536):
            raise UserError(f"resize must be a positive integer (the shorter side before the crop), got {resize!r}")
        fields["crop_pct"] = _crop_pct(size, resize)
    crop_pct = fields.get("crop_pct", 0.875)
    if not _number(crop_pct):
        raise UserError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    interpolation = fields.get("interpolation", "bicubic")
    if not isinstance(interpolation, str):
        raise UserError(f"interpolation must be a name (nearest, bilinear, bicubic, lanczos), got {interpolation!r}")
    recipe = Recipe(
        input_size=size,
        mean=_triple(fields["mean"], "mean"),
        std=_triple(fields["std"], "std"),
        crop_pct=float(crop_pct),
        interpolation=interpolation,
    )
    if any(s <= 0 for s in recipe.std):
        raise UserError(f"std must be positive, got {recipe.std}")
    return recipe, " + ".join(origin)
