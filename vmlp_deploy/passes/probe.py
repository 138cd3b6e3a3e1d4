"""Measure exactly which input element each output element of a region copies.

The region model is run on index-encoded inputs: input element ``j`` holds the digits of ``j`` in a base
small enough for the element type to store them exactly (one run per digit, values ``digit + 1``), plus a
run with the first digit negated (a copied element flips sign, a constant does not) and a run on random
values (which must be reproduced exactly). The result is a :class:`CopyMap`; any output element that is
neither an exact copy nor the same constant in every run means the region is not pure data movement, and
no map is returned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import onnx

from ..onnx_io import cpu_session

#: Largest base whose digits (+1) a dtype stores exactly, with room to spare.
_BASES = {np.dtype(np.float16): 1 << 10, np.dtype(np.float32): 1 << 22, np.dtype(np.float64): 1 << 40}


@dataclasses.dataclass(frozen=True)
class CopyMap:
    """``out[o] = in.flat[src[o]]`` where ``src[o] >= 0``, else ``out[o] = fill[o]``."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    src: np.ndarray  # int64, out_shape
    fill: np.ndarray  # float64, out_shape (NaN where src >= 0)

    @property
    def n_const(self) -> int:
        return int((self.src < 0).sum())


def probe_region(
    model: onnx.ModelProto, in_shape: Sequence[int], dtype: np.dtype, *, seed: int = 0
) -> CopyMap | None:
    """Run ``model`` (one input, one output) on probes and decode its copy map; None if it is not one."""
    dtype = np.dtype(dtype)
    base = _BASES.get(dtype)
    if base is None:
        return None
    in_shape = tuple(int(d) for d in in_shape)
    numel = int(np.prod(in_shape, dtype=np.int64))
    if numel == 0:
        return None
    n_digits = max(1, math.ceil(math.log(numel, base) + 1e-12)) if numel > 1 else 1
    while base**n_digits < numel:
        n_digits += 1

    session = cpu_session(model, threads=1, optimize=False)
    name = session.get_inputs()[0].name

    def run(arr: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: arr.astype(dtype).reshape(in_shape)})[0])

    idx = np.arange(numel, dtype=np.int64)
    digits = [(idx // base**k) % base + 1 for k in range(n_digits)]
    outs = [run(d) for d in digits]
    out_neg = run(-digits[0])
    rng = np.random.default_rng(seed)
    rand = rng.standard_normal(numel).astype(dtype)
    out_rand = run(rand)

    out_shape = tuple(int(d) for d in outs[0].shape)
    if out_neg.shape != out_shape or out_rand.shape != out_shape or outs[0].dtype != dtype:
        return None
    o0 = outs[0].astype(np.float64)
    neg = out_neg.astype(np.float64)
    const = o0 == neg
    copy = ~const
    # Copies: every digit an integer in [1, base], the negated run flips the sign, the random run matches.
    src = np.zeros(out_shape, dtype=np.int64)
    for k, out in enumerate(outs):
        val = out.astype(np.float64)
        ok = (val == np.round(val)) & (val >= 1) & (val <= base)
        if not ok[copy].all():
            return None
        src += np.where(copy, val.astype(np.int64) - 1, 0) * base**k
    if not (neg[copy] == -o0[copy]).all() or not (src[copy] < numel).all():
        return None
    if not (out_rand.astype(np.float64)[copy] == rand.astype(np.float64)[src[copy]]).all():
        return None
    # Constants: the same value in every run.
    for out in (*outs[1:], out_rand):
        if not (out.astype(np.float64)[const] == o0[const]).all():
            return None
    src = np.where(copy, src, -1)
    fill = np.where(const, o0, np.nan)
    return CopyMap(in_shape=in_shape, out_shape=out_shape, src=src, fill=fill)
