"""What an edge NPU compiler would still reject: ops outside a conservative core set, and N-D MatMuls.

Edge NPU toolchains differ, but the operators they all map onto their fixed-function units are few:
convolutions, fully connected layers, elementwise arithmetic, pooling, padding and the layout ops that
only re-index. Everything else (ScatterND, roll-style gathers, Erf, LayerNormalization, MatMul on more
than two axes, ...) falls back to a slower engine or fails to compile. ``--target npu`` lowers the
graph channels-first (:mod:`.channels_first`) and lists what is left outside :data:`NPU_CORE_OPS`, so a
user knows what to check against their vendor's support table before compiling.
"""

from __future__ import annotations

import dataclasses

import onnx

#: Operators the common edge NPU compilers accept natively (data movement and arithmetic building blocks).
NPU_CORE_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "ConvTranspose", "Div", "Flatten",
    "Gemm", "GlobalAveragePool", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "MatMul", "Max",
    "MaxPool", "Mean", "Min", "Mul", "PRelu", "Pad", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize",
    "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})


@dataclasses.dataclass
class NpuReport:
    """Ops outside :data:`NPU_CORE_OPS` (type -> count) and MatMuls on more than two axes."""

    unsupported: dict[str, int]
    nd_matmuls: int

    @property
    def clean(self) -> bool:
        return not self.unsupported and not self.nd_matmuls

    def to_dict(self) -> dict:
        return {"core_ops": sorted(NPU_CORE_OPS), "unsupported": self.unsupported, "nd_matmuls": self.nd_matmuls}

    def summary(self) -> str:
        if self.clean:
            return "npu: every op is in the core NPU op set"
        parts = [f"{op} x{n}" for op, n in self.unsupported.items()]
        if self.nd_matmuls:
            parts.append(f"MatMul on >2 axes x{self.nd_matmuls}")
        return "npu: outside the core NPU op set: " + ", ".join(parts)


def npu_report(model: onnx.ModelProto) -> NpuReport:
    """Count the main graph's ops that an edge NPU compiler may not take natively."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim)
             for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
             if vi.type.tensor_type.HasField("shape")}
    ranks.update({init.name: len(init.dims) for init in model.graph.initializer})
    unsupported: dict[str, int] = {}
    nd = 0
    for node in model.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if op == "Constant":
            continue
        if op not in NPU_CORE_OPS:
            unsupported[op] = unsupported.get(op, 0) + 1
        elif op == "MatMul" and any(ranks.get(name, 3) > 2 for name in node.input):
            nd += 1
    return NpuReport(dict(sorted(unsupported.items(), key=lambda kv: -kv[1])), nd)
