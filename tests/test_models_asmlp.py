"""AS-MLP: the axial shift's semantics, the official checkpoint layout, and its exact rewrite into grouped convs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vmlp_deploy.export import ExportOptions, export_model
from vmlp_deploy.model import load_model
from vmlp_deploy.models import canonical_name, create_model, list_models
from vmlp_deploy.models.as_mlp import AxialShift

ASMLPS = ["asmlp_base", "asmlp_small", "asmlp_tiny"]


def test_variants_and_family_names() -> None:
    assert list_models("asmlp") == ASMLPS
    assert canonical_name("asmlp") == canonical_name("as_mlp") == "asmlp_tiny"


def _reference_shift(x: np.ndarray, shift_size: int, axis: int) -> np.ndarray:
    """The official CUDA kernel's semantics (svip-lab/AS-MLP ``shift_cuda.py``), written from the paper's
    definition: torch.chunk's groups (ceil(C / shift_size) channels each, the last one shorter), group g reads
    ``in[i + shift_size // 2 - g]`` along ``axis``, zero where that falls outside the map."""
    out = np.zeros_like(x)
    size = math.ceil(x.shape[1] / shift_size)
    n = x.shape[axis]
    for g, start in enumerate(range(0, x.shape[1], size)):
        d = shift_size // 2 - g
        for i in range(n):
            if 0 <= i + d < n:
                src = [slice(None), slice(start, start + size), slice(None), slice(None)]
                dst = list(src)
                src[axis], dst[axis] = i + d, i
                out[tuple(dst)] = x[tuple(src)]
    return out


@pytest.mark.parametrize(("channels", "shift_size"), [(96, 5), (20, 5), (21, 3)])
@pytest.mark.parametrize("axis", [2, 3])
def test_axial_shift_is_the_reference_zero_fill_shift(channels: int, shift_size: int, axis: int) -> None:
    """96 channels make torch.chunk groups of 20, 20, 20, 20, 16, as in AS-MLP-T's first stage."""
    x = torch.randn(2, channels, 7, 9, generator=torch.Generator().manual_seed(0))
    got = AxialShift(channels, shift_size).shift(x, axis).numpy()
    np.testing.assert_array_equal(got, _reference_shift(x.numpy(), shift_size, axis))


def _official_keys(embed_dim: int, depths: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """The state_dict of svip-lab/AS-MLP's ``AS_MLP``, written from its module tree (models/as_mlp.py)."""
    keys: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (embed_dim, 3, 4, 4), "patch_embed.proj.bias": (embed_dim,),
        "patch_embed.norm.weight": (embed_dim,), "patch_embed.norm.bias": (embed_dim,),
    }
    for i, depth in enumerate(depths):
        c = embed_dim * 2**i
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            for norm in ("norm1", "norm2", "axial_shift.norm1", "axial_shift.norm2"):
                keys |= {b + norm + ".weight": (c,), b + norm + ".bias": (c,)}
            for conv in ("conv1", "conv2_1", "conv2_2", "conv3"):
                keys |= {b + f"axial_shift.{conv}.weight": (c, c, 1, 1), b + f"axial_shift.{conv}.bias": (c,)}
            keys |= {b + "mlp.fc1.weight": (4 * c, c, 1, 1), b + "mlp.fc1.bias": (4 * c,),
                     b + "mlp.fc2.weight": (c, 4 * c, 1, 1), b + "mlp.fc2.bias": (c,)}
        if i < len(depths) - 1:
            d = f"layers.{i}.downsample."
            keys |= {d + "norm.weight": (4 * c,), d + "norm.bias": (4 * c,), d + "reduction.weight": (2 * c, 4 * c, 1, 1)}
    last = embed_dim * 2 ** (len(depths) - 1)
    return keys | {"norm.weight": (last,), "norm.bias": (last,), "head.weight": (num_classes, last),
                   "head.bias": (num_classes,)}


@pytest.mark.parametrize("name", ["asmlp_tiny", "asmlp_base"])
def test_official_checkpoint_layout_loads_as_is(name: str) -> None:
    model = create_model(name)
    arch = model.vmlp_cfg.arch
    expected = _official_keys(arch["embed_dim"], tuple(arch["depths"]), 1000)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_export_rewrites_every_axial_shift_exactly(tmp_path: Path) -> None:
    """Both shifts of every block become a one-hot depthwise conv; only PatchMerging's strided Slices remain."""
    lm = load_model("asmlp_tiny", tiny=True)
    result = export_model(lm, tmp_path / "run", ExportOptions())
    blocks = sum(lm.cfg.arch["depths"])
    rewrite = result.record.export.rewrite
    assert rewrite["pattern_counts"] == {"shift/zero NCHW": 2 * blocks}
    assert all(p["check_max_abs_diff"] == 0.0 for p in rewrite["patterns"])
    kernels = [tuple(p["kernel"]) for p in rewrite["patterns"]]  # 1x5 and 5x1 (narrower on maps under 5 px)
    assert sum(k[0] == 1 for k in kernels) == sum(k[1] == 1 for k in kernels) == blocks
    assert kernels[0] == (1, 5) and kernels[1] == (5, 1) and max(max(k) for k in kernels) == 5
    ops = [n.op_type for n in onnx.load(str(result.onnx_path)).graph.node]
    merges = len(lm.cfg.arch["depths"]) - 1
    assert ops.count("Slice") == 4 * merges and ops.count("Concat") == merges
    assert result.record.export.validation["passed"]
