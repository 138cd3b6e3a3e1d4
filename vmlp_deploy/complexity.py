"""Parameter and MAC counts, measured on the meta device so even the largest variants cost no memory.

MACs come from PyTorch's own FLOP counter (matmul and convolution kernels; FLOPs = 2 x MACs), which counts
what fvcore and the papers count: multiply-accumulates of the linear layers, not norms or activations.
Counting runs every op of a forward pass through Python (0.3-2 s per full-size variant, 20 s for the zoo), so a
zoo model's counts are kept under ``$VMLP_DEPLOY_CACHE/complexity``, keyed by its resolved architecture and the
source of the code that builds and counts it: `vmlp-deploy models` measures once per code version, not per call.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import __version__
from .rundir import write_text


@dataclass(frozen=True)
class Complexity:
    params: int
    params_without_head: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def macs_g(self) -> float:
        return self.macs / 1e9


def count_params(model: nn.Module, exclude_head: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_head:
        total -= sum(p.numel() for p in model.get_classifier().parameters())
    return total


def count_macs(model: nn.Module, input_size: tuple[int, int], in_chans: int = 3) -> int:
    """MACs of one forward pass on a single image; runs on the meta device when the model lives there."""
    device = next(model.parameters()).device
    x = torch.empty(1, in_chans, *input_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def measure(model: nn.Module, input_size: tuple[int, int]) -> Complexity:
    return Complexity(
        params=count_params(model),
        params_without_head=count_params(model, exclude_head=True),
        macs=count_macs(model, input_size),
    )


def _sources(builder: Any) -> list[Path]:
    """The files whose code decides a zoo model's counts: its family's module, the shared zoo code, this one."""
    family = Path(inspect.getsourcefile(builder) or "")
    return [family, family.with_name("_layers.py"), family.with_name("_registry.py"), Path(__file__)]


@functools.cache
def _source_digest(path: Path) -> str:
    """Read once per process: the zoo table keys every variant by the same few files."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_file(name: str, arch: dict[str, Any], builder: Any) -> Path:
    from .backends.base import cache_root

    key = {"name": name, "arch": arch, "torch": torch.__version__, "vmlp_deploy": __version__,
           "sources": [_source_digest(p) for p in _sources(builder) if p.is_file()]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_root() / "complexity" / f"{name}-{digest}.json"


def zoo_complexity(name: str, *, tiny: bool = False, **overrides: Any) -> Complexity:
    """Params and MACs of ``create_model(name, tiny=tiny, **overrides)`` on one image, from the cache when this
    code measured them before; writing the cache is best-effort (a read-only home costs time, not the result)."""
    from .models import create_model, resolve

    cfg = resolve(name, tiny=tiny, **overrides)
    path = _cache_file(name, dict(cfg.arch), cfg.variant.builder)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Complexity(**{k: int(v) for k, v in json.loads(path.read_text()).items()})
    with torch.device("meta"):
        model = create_model(name, tiny=tiny, **overrides)
    result = measure(model, cfg.input_size)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(asdict(result)) + "\n")
    return result
