"""Parameter and MAC counts, measured on the meta device so even the largest variants cost no memory.

MACs come from PyTorch's own FLOP counter (matmul and convolution kernels; FLOPs = 2 x MACs), which counts
what fvcore and the papers count: multiply-accumulates of the linear layers, not norms or activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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
