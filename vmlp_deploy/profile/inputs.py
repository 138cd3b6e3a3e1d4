"""What `profile` can be pointed at: a run directory (export/quantize), a bare ``.onnx``, an OpenVINO
``.xml``, or a zoo model name (exported on the fly into a cache). Each becomes a :class:`ModelInput` with
the file to load, its declared input shape and its work per image (params, MACs).

MACs count the multiply-accumulates of Conv/Gemm/MatMul, as the papers and ``vmlp-deploy models`` do.
For a zoo model (directly, or named by a run directory's manifest) they are measured on the PyTorch
model, so a graph rewrite (shift -> grouped conv) does not inflate the "useful work"; otherwise they are
counted from the graph's shapes after ONNX shape inference.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import __version__
from ..backends.base import cache_root
from ..backends.onnxruntime import graph_input
from ..errors import UserError
from ..progress import Progress, Quiet
from ..records import Artifacts, ModelInfo, RunManifest
from ..rundir import MANIFEST, load_manifest, load_model_manifest
from ..targets import DEFAULT_TARGET

#: Where the MACs of a run directory's zoo model come from.
ZOO_MACS = "PyTorch FLOP counter on the zoo model (manifest)"
_CONV = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3, "NhwcConv": 1}
_MATMUL = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "FusedMatMul": 0, "Gemm": 0}
_WEIGHT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                 onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class ModelInput:
    spec: str
    label: str
    path: Path
    kind: str
    model_name: str | None
    params: int | None
    macs: int | None
    macs_source: str
    declared_shape: tuple[int | str, ...]
    quantized: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "label": self.label, "path": str(self.path), "kind": self.kind,
            "model_name": self.model_name, "params": self.params, "macs": self.macs,
            "macs_source": self.macs_source, "declared_shape": list(self.declared_shape),
            "quantized": self.quantized,
        }


def zoo_cache_dir(name: str, tiny: bool, batch: int | None, target: str = DEFAULT_TARGET) -> Path:
    """One cached export per zoo name and options (batch, layout target, opset 18, this vmlp-deploy version)."""
    shape = "dynbatch" if batch is None else f"b{batch}"
    return cache_root() / "zoo" / f"{name}{'-tiny' if tiny else ''}-opset18-{shape}-{target}-v{__version__}"


def _export_zoo(name: str, tiny: bool, batch: int | None, progress: Progress, target: str = DEFAULT_TARGET) -> Path:
    """Export a zoo name once. A single batch size gets a fixed-batch export, because the shift rewrite needs
    static shapes; several batch sizes need a dynamic batch, which the rewrite leaves naive (said in a note)."""
    from ..export import ExportOptions, export_model
    from ..model import load_model

    out = zoo_cache_dir(name, tiny, batch, target)
    if not (out / MANIFEST).is_file():
        options = (ExportOptions(dynamic_batch=True) if batch is None  # naive either way: no layout to choose
                   else ExportOptions(batch=batch, target=target))
        with progress.step(f"Exporting {name}{' (tiny)' if tiny else ''} (--target {target}) into the cache {out}"):
            export_model(load_model(name, tiny=tiny), out, options, overwrite=True)
    return out


#: Why a zoo name profiled at several batch sizes runs the naive graph (a warning of every such run).
NAIVE_DYNAMIC_BATCH = ("several batch sizes need a dynamic-batch export, which the shift rewrite leaves naive (it "
                       "needs static shapes), so zoo names ran their naive graph: profile one batch size at a time "
                       "for rewritten graphs")


def zoo_complexity(name: str, tiny: bool, input_size: Sequence[int] | None = None,
                   num_classes: int | None = None) -> tuple[int, int]:
    """(params, MACs per image) of a zoo model, measured with PyTorch's FLOP counter on the meta device."""
    from .. import complexity
    from ..models import resolve

    overrides: dict[str, Any] = {}
    if input_size is not None and tuple(input_size) != tuple(resolve(name, tiny=tiny).input_size):
        overrides["img_size"] = tuple(input_size)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    counts = complexity.zoo_complexity(name, tiny=tiny, **overrides)
    return counts.params, counts.macs


def _dims(value: onnx.ValueInfoProto) -> list[int] | None:
    shape = value.type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]
    return None if not dims or min(dims) < 0 else dims


def onnx_complexity(path: Path, sample_shape: Sequence[int] | None = None) -> tuple[int, int, bool]:
    """(params, MACs per image, complete) counted from the graph after shape inference with batch 1
    (and ``sample_shape`` for the other input dims, where given).

    Params are the elements of weight-like initializers (float or 8-bit, more than one element);
    ``complete`` is False when some Conv/Gemm/MatMul shape could not be inferred (those count 0).
    """
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                 if t.data_type in _WEIGHT_TYPES and int(np.prod(t.dims)) > 1)
    inp = next(i for i in model.graph.input if i.name not in inits)
    first = inp.type.tensor_type.shape.dim
    batch = 1
    if first:
        if first[0].HasField("dim_value") and first[0].dim_value > 0:
            batch = first[0].dim_value
        else:
            first[0].Clear()
            first[0].dim_value = 1
    if sample_shape is not None and len(sample_shape) == len(first) - 1:
        for dim, value in zip(first[1:], sample_shape, strict=True):
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = value
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference failure only makes the count incomplete
        inferred = model
    shapes: dict[str, list[int]] = dict(inits)
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = _dims(v)
        if dims is not None:
            shapes[v.name] = dims
    macs, complete = 0, True
    for node in inferred.graph.node:
        if node.op_type not in _CONV and node.op_type not in _MATMUL:
            continue
        out = shapes.get(node.output[0])
        if node.op_type in _CONV:
            w = shapes.get(node.input[_CONV[node.op_type]])
            if out is None or w is None:
                complete = False
                continue
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        else:
            a = shapes.get(node.input[_MATMUL[node.op_type]])
            if out is None or a is None:
                complete = False
                continue
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if node.op_type == "Gemm" and trans_a else a[-1]
            macs += int(np.prod(out)) * k
    return params, macs // batch, complete


def openvino_complexity(path: Path) -> tuple[int, int]:
    """(params, MACs per image) of an OpenVINO IR from its static op shapes (batch taken as the input's)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    shape = model.inputs[0].get_partial_shape()
    if shape.is_dynamic:
        static = [d.get_length() if d.is_static else 1 for d in shape]
        model.reshape({model.inputs[0].get_any_name(): static})
    batch = model.inputs[0].get_shape()[0] or 1
    params, macs = 0, 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant" and op.get_output_element_type(0).is_real():
            size = int(np.prod(list(op.get_output_shape(0)))) if op.get_output_partial_shape(0).is_static else 0
            params += size if size > 1 else 0
        elif kind in ("Convolution", "GroupConvolution"):
            out = list(op.get_output_shape(0))
            w = list(op.input(1).get_shape())
            macs += int(np.prod(out)) * int(np.prod(w[1:] if kind == "Convolution" else w[2:]))
        elif kind == "MatMul":
            a = list(op.input(0).get_shape())
            transpose_a = op.get_attributes().get("transpose_a", False)
            k = a[-2] if transpose_a else a[-1]
            macs += int(np.prod(list(op.get_output_shape(0)))) * k
    return params, macs // batch


def _ir_shape(path: Path) -> tuple[tuple[int | str, ...], bool]:
    import openvino as ov

    from ..backends.openvino import read_model

    model = read_model(ov.Core(), path)
    if len(model.inputs) != 1:
        raise UserError(f"{path.name} has {len(model.inputs)} inputs; vmlp-deploy feeds one image tensor")
    dims = tuple(d.get_length() if d.is_static else "?" for d in model.inputs[0].get_partial_shape())
    quantized = any(op.get_type_name() in ("FakeQuantize", "FakeConvert") for op in model.get_ordered_ops())
    return dims, quantized


def _zoo_model(manifest: RunManifest | None) -> tuple[str, int, int] | None:
    """(name, params, MACs) when the manifest names a zoo model, counted on the PyTorch model at the manifest's
    size; None otherwise (the work is counted from the graph)."""
    from ..models import list_models

    info = manifest.model if manifest and manifest.model else ModelInfo()
    if not (isinstance(info.name, str) and info.name in list_models()):
        return None
    return info.name, *zoo_complexity(info.name, bool(info.tiny), info.input_size, info.num_classes)


def _from_onnx(spec: str, path: Path, kind: str, label: str, manifest: RunManifest | None,
               sample_shape: Sequence[int] | None) -> ModelInput:
    _, declared, quantized = graph_input(path)
    macs: int | None
    name: str | None
    zoo = _zoo_model(manifest)
    if zoo is not None:
        name, params, macs = zoo
        source = ZOO_MACS
    else:
        params, counted, complete = onnx_complexity(path, sample_shape)
        macs = counted if complete else None
        source = ("ONNX graph: Conv/Gemm/MatMul shapes after shape inference" if complete
                  else "unknown: some Conv/Gemm/MatMul shapes could not be inferred")
        name = None
    return ModelInput(spec, label, path, kind, name, params, macs, source, tuple(declared), quantized)


def _from_ir(spec: str, path: Path, kind: str, label: str, manifest: RunManifest | None) -> ModelInput:
    """An OpenVINO IR (bare, or the model of a `quantize --backend openvino` run): MACs from the zoo model when
    the manifest names one, else from the IR's Convolution/MatMul shapes."""
    if not path.with_suffix(".bin").is_file():
        raise UserError(f"{path} has no weights file {path.with_suffix('.bin').name} beside it: copy both")
    declared, quantized = _ir_shape(path)
    zoo = _zoo_model(manifest)
    if zoo is not None:
        name, params, macs = zoo
        return ModelInput(spec, label, path, kind, name, params, macs, ZOO_MACS, declared, quantized)
    params, macs = openvino_complexity(path)
    return ModelInput(spec, label, path, kind, None, params, macs, "OpenVINO IR: Convolution/MatMul shapes",
                      declared, quantized)


def _label(path: Path) -> str:
    return path.parent.name if path.stem in ("model", "openvino_model") and path.parent.name else path.stem


def resolve_input(spec: str, *, tiny: bool = False, sample_shape: Sequence[int] | None = None,
                  batches: Sequence[int] | None = None, progress: Progress | None = None,
                  target: str = DEFAULT_TARGET) -> ModelInput:
    """Turn one command-line argument into a :class:`ModelInput`; every failure is one clear line.

    ``sample_shape`` (``--input-shape``) fixes dynamic non-batch dims for counting MACs from the graph."""
    from ..models import family_defaults, list_models

    progress = progress or Quiet()
    path = Path(spec)
    if path.is_dir():
        manifest = load_model_manifest(path)
        artifacts = manifest.artifacts or Artifacts()
        xml = artifacts.openvino_xml
        artifact = xml or artifacts.onnx or "model.onnx"
        model_path = path / artifact
        if not model_path.is_file():
            raise UserError(f"{path} names {artifact} in its manifest but the file is missing: re-run the stage")
        if xml:
            return _from_ir(spec, model_path, "run-dir", path.name, manifest)
        return _from_onnx(spec, model_path, "run-dir", path.name, manifest, sample_shape)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise UserError(f"no such ONNX file: {path}")
        return _from_onnx(spec, path, "onnx", _label(path), None, sample_shape)
    if path.suffix == ".xml":
        if not path.is_file():
            raise UserError(f"no such OpenVINO IR file: {path}")
        if not path.with_suffix(".bin").is_file():
            raise UserError(f"{path} has no weights file {path.with_suffix('.bin').name} beside it: copy both")
        return _from_ir(spec, path, "openvino-ir", _label(path), None)
    if path.exists():
        raise UserError(f"{path} is not a run directory, .onnx or OpenVINO .xml file: pass one of those or a zoo name")
    names = list_models()
    defaults = family_defaults()
    if spec in defaults:
        progress.note(f"{spec} -> {defaults[spec]} (the family's default variant)")
        spec = defaults[spec]
    if spec in names:
        batch = batches[0] if batches is not None and len(set(batches)) == 1 else (None if batches else 1)
        out = _export_zoo(spec, tiny, batch, progress, target)
        model_path = out / load_manifest(out).artifacts.onnx
        _, dims, quantized = graph_input(model_path)
        params, macs = zoo_complexity(spec, tiny)
        return ModelInput(spec, spec + ("-tiny" if tiny else ""), model_path, "zoo", spec, params, macs,
                          "PyTorch FLOP counter on the zoo model", tuple(dims), quantized)
    close = difflib.get_close_matches(spec, [*names, *defaults], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (`vmlp-deploy models` lists the zoo)"
    raise UserError(f"{spec}: no such file or directory, and not a zoo model name{hint}")


def resolve_inputs(specs: Sequence[str], *, tiny: bool = False, sample_shape: Sequence[int] | None = None,
                   batches: Sequence[int] | None = None, progress: Progress | None = None,
                   target: str = DEFAULT_TARGET) -> list[ModelInput]:
    """Resolve every input; labels are made unique (``name``, ``name#2``) so reports never merge two models."""
    resolved: list[ModelInput] = []
    seen: dict[str, int] = {}
    for spec in specs:
        m = resolve_input(spec, tiny=tiny, sample_shape=sample_shape, batches=batches, progress=progress,
                          target=target)
        seen[m.label] = seen.get(m.label, 0) + 1
        if seen[m.label] > 1:
            m = ModelInput(**{**m.__dict__, "label": f"{m.label}#{seen[m.label]}"})
        resolved.append(m)
    return resolved
