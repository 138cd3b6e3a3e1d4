"""argparse value types the verbs share, so a bad value is a usage error (exit 2) and never an internal one."""

from __future__ import annotations

import argparse

#: numpy's and torch's seeds are unsigned 32-bit in places (``np.random.seed``): one range for every verb.
SEED_MAX = 2**32 - 1


def seed(text: str) -> int:
    """A seed in 0..2**32-1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to {SEED_MAX}, got {text!r}")
    return value
