"""Checkpoint loading: .pth/.pt (bare, or wrapped in ``model``/``state_dict``/``model_ema``) and .safetensors.

Foreign key layouts (timm, the official repositories) are mapped by each family's ``checkpoint_filter``;
whatever still does not fit is reported as one readable line listing the keys.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError, first_line

_WRAPPERS = ("state_dict", "model", "model_ema", "state_dict_ema", "module")
_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, unwrapping common containers."""
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file: pass a .pth, .pt or .safetensors file")
    if path.suffix not in _SUFFIXES:
        raise UserError(f"checkpoint {path} has an unknown suffix {path.suffix!r}: expected one of {', '.join(_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot read safetensors checkpoint {path}: {e}") from None
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(
            f"cannot read checkpoint {path} ({first_line(e, 160)}): expected a PyTorch state_dict saved with torch.save"
        ) from None
    for _ in range(3):
        if isinstance(obj, dict) and not _is_flat_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_flat_tensor_dict(obj):
        raise UserError(
            f"checkpoint {path} holds no state_dict (found {type(obj).__name__}): "
            "save `model.state_dict()` or a dict with a 'model'/'state_dict' entry"
        )
    return {_strip_prefix(k): v for k, v in obj.items()}


def _is_flat_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _strip_prefix(key: str) -> str:
    """DistributedDataParallel and torch.compile prefixes never belong to the module tree."""
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _short_list(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and shape mismatches (as ``key ckpt-shape!=model-shape``)."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)}!={tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    )
    return missing, unexpected, shapes


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: Path, model_name: str) -> None:
    """Strict load with one clear error line listing what does not fit."""
    missing, unexpected, shapes = mismatches(model, state_dict)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_short_list(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {_short_list(shapes, 3)}")
        raise UserError(
            f"checkpoint {source} does not fit {model_name} ({'; '.join(parts)}): "
            "check --model (and --input-size/--tiny) matches the checkpoint"
        )
    model.load_state_dict(state_dict, strict=True)
