"""Stage 1 of the pipeline: a zoo model, random or with real weights, plus its preprocessing recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import models as zoo
from .checkpoint import load_into, mismatches, read_state_dict
from .errors import UserError
from .preprocess import Recipe


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    cfg: zoo.ResolvedCfg
    recipe: Recipe
    random_weights: bool
    checkpoint: Path | None

    @property
    def family(self) -> str:
        return self.cfg.variant.family

    @property
    def input_size(self) -> tuple[int, int]:
        return self.cfg.input_size


def check_input_size(name: str, input_size: tuple[int, int], tiny: bool = False) -> None:
    """Reject sizes the architecture cannot take, naming the constraint and a size that works."""
    variant = zoo.get_variant(name)
    h, w = input_size
    default = zoo.resolve(name, tiny=tiny).input_size
    if h <= 0 or w <= 0:
        raise UserError(f"input size must be positive, got {h}x{w}")
    if variant.fixed_input_size and (h, w) != default:
        raise UserError(
            f"{name} has a fixed input size of {default[0]}x{default[1]} (its per-token weights, token-mixing "
            f"layers or position embedding, are sized for that many tokens): drop --input-size"
        )
    d = variant.input_divisor
    if h % d or w % d:
        fix_h, fix_w = max(d, round(h / d) * d), max(d, round(w / d) * d)
        raise UserError(
            f"{name} needs an input size divisible by {d} (its patch embeddings tile the image exactly), "
            f"got {h}x{w}: try --input-size {fix_h} {fix_w}"
        )
    m = variant.min_input_size
    if h < m or w < m:
        raise UserError(f"{name} needs an input of at least {m}x{m}, got {h}x{w}")


def _classifier_key(model: nn.Module) -> str | None:
    clf = model.get_classifier()
    return next((f"{n}.weight" for n, m in model.named_modules() if m is clf), None)


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """Find the zoo variant whose full-size module tree matches a checkpoint's keys and shapes."""
    matches = []
    for name in zoo.list_models():
        variant = zoo.get_variant(name)
        sd = variant.checkpoint_filter(dict(state_dict)) if variant.checkpoint_filter else state_dict
        with torch.device("meta"):
            model = zoo.create_model(name)
        missing, unexpected, shapes = mismatches(model, sd)
        clf = _classifier_key(model)
        shapes = [s for s in shapes if clf is None or not s.startswith(clf[: -len("weight")])]
        if not (missing or unexpected or shapes):
            matches.append(name)
    if len(matches) != 1:
        found = f"it matches {', '.join(matches)}" if matches else "no zoo variant matches its keys"
        raise UserError(f"cannot infer the architecture of this checkpoint ({found}): pass --model NAME")
    return matches[0]


def load_model(
    name: str | None,
    *,
    checkpoint: Path | None = None,
    tiny: bool = False,
    input_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Build ``name`` (random init under ``seed``) and load ``checkpoint`` when given.

    With a checkpoint and no name the architecture is inferred; a checkpoint whose classifier has another
    number of classes (a fine-tuned model) rebuilds the head to fit.
    """
    state_dict = read_state_dict(checkpoint) if checkpoint is not None else None
    if name is None:
        if state_dict is None:
            raise UserError("nothing to build: pass --model NAME or --checkpoint PATH")
        name = infer_variant(state_dict)
    variant = zoo.get_variant(name)
    name = variant.name
    if input_size is not None:
        check_input_size(name, input_size, tiny)
    overrides: dict = {} if input_size is None else {"img_size": input_size}
    if state_dict is not None and variant.checkpoint_filter is not None:
        state_dict = variant.checkpoint_filter(dict(state_dict))
    if state_dict is not None:
        with torch.device("meta"):
            probe = zoo.create_model(name, tiny=tiny, **overrides)
        key = _classifier_key(probe)
        if key and key in state_dict and state_dict[key].shape[0] != probe.get_classifier().out_features:
            overrides["num_classes"] = int(state_dict[key].shape[0])
    torch.manual_seed(seed)
    model = zoo.create_model(name, tiny=tiny, **overrides)
    if state_dict is not None:
        assert checkpoint is not None
        load_into(model, state_dict, checkpoint, name)
    cfg: zoo.ResolvedCfg = model.vmlp_cfg
    data = cfg.data
    recipe = Recipe(data.input_size, data.mean, data.std, data.crop_pct, data.interpolation)
    return LoadedModel(model.eval(), name, cfg, recipe, state_dict is None, checkpoint)
