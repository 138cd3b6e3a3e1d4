"""Variant registry: one source of truth per zoo variant (architecture, data recipe, paper figures).

Mirrors timm's habits: variants are data, one builder per family, ``create_model(name, **overrides)``. Every
family file declares one ``Family`` and a ``VARIANTS: dict[str, VariantSpec]`` table and calls
``register_family(FAMILY, VARIANTS)``.
The data recipe (input size, mean/std, crop, interpolation) is what export writes into the ONNX metadata
and what calibration preprocessing reads back, so it lives here beside the architecture.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Paper:
    """Figures as printed by the paper (or the source named), for the `models` table and the zoo tests."""

    params_m: float
    macs_g: float | None
    top1: float | None
    source: str
    params_exclude_head: bool = False
    note: str = ""


@dataclass(frozen=True)
class DataCfg:
    """Preprocessing recipe: resize the shorter side to size/crop_pct, center-crop to size, normalise."""

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"


StateDict = dict[str, Any]


@dataclass(frozen=True)
class Variant:
    """A registered model variant.

    ``arch`` holds the builder's keyword arguments; ``tiny`` overrides them (and ``img_size``) for fast tests.
    ``checkpoint_filter`` maps foreign key layouts (timm, official repos) onto this module tree.
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    arch: Mapping[str, Any]
    paper: Paper
    data: DataCfg = field(default_factory=DataCfg)
    fixed_input_size: bool = False
    input_divisor: int = 1
    min_input_size: int = 1
    tiny: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_filter: Callable[[StateDict], StateDict] | None = None
    timm_name: str | None = None


@dataclass(frozen=True)
class ResolvedCfg:
    """What one ``create_model`` call built: the variant, the final arch kwargs and the data recipe."""

    variant: Variant
    arch: Mapping[str, Any]
    data: DataCfg
    tiny: bool

    @property
    def input_size(self) -> tuple[int, int]:
        return self.data.input_size


@dataclass(frozen=True)
class VariantSpec:
    """One row of a family's ``VARIANTS`` table: what differs between the variants of one family."""

    arch: Mapping[str, Any]
    paper: Paper
    data: DataCfg = field(default_factory=DataCfg)
    timm_name: str | None = None


@dataclass(frozen=True)
class Family:
    """What every variant of one family shares; ``register_family`` pairs it with the family's ``VARIANTS``.

    ``default`` is the variant the family's name (and each of ``aliases``) stands for wherever a model name is
    accepted; ``input_divisor`` and ``min_input_size`` hold for every variant at its default architecture.
    """

    name: str
    builder: Callable[..., nn.Module]
    default: str
    tiny: Mapping[str, Any]
    aliases: tuple[str, ...] = ()
    fixed_input_size: bool = False
    input_divisor: int = 1
    min_input_size: int = 1
    checkpoint_filter: Callable[[StateDict], StateDict] | None = None


_REGISTRY: dict[str, Variant] = {}
#: family name (and short aliases such as ``mixer``) -> the family's default variant
_FAMILY_DEFAULTS: dict[str, str] = {}


def register_family(family: Family, variants: Mapping[str, VariantSpec]) -> None:
    """Register every row of ``variants`` as a ``Variant`` of ``family``, then its name and aliases."""
    if family.default not in variants:
        raise ValueError(f"family {family.name!r}: default variant {family.default!r} is not in its table")
    for name, spec in variants.items():
        if name in _REGISTRY:
            raise ValueError(f"model variant {name!r} is registered twice")
        _REGISTRY[name] = Variant(
            name=name,
            family=family.name,
            builder=family.builder,
            arch=spec.arch,
            paper=spec.paper,
            data=spec.data,
            fixed_input_size=family.fixed_input_size,
            input_divisor=family.input_divisor,
            min_input_size=family.min_input_size,
            tiny=family.tiny,
            checkpoint_filter=family.checkpoint_filter,
            timm_name=spec.timm_name,
        )
    for name in (family.name, *family.aliases):
        if name in _REGISTRY or name in _FAMILY_DEFAULTS:
            raise ValueError(f"family name {name!r} is already taken")
        _FAMILY_DEFAULTS[name] = family.default


def family_defaults() -> dict[str, str]:
    """Family names and aliases -> default variant, e.g. ``{"s2mlpv2": "s2mlpv2_small", ...}``."""
    return dict(_FAMILY_DEFAULTS)


def canonical_name(name: str) -> str:
    """The variant a name means: itself, or the default variant of the family it names."""
    return get_variant(name).name


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, v in _REGISTRY.items() if family is None or v.family == family)


class UnknownModelError(KeyError):
    """Raised for a name that is not in the zoo; the message suggests close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_variant(name: str) -> Variant:
    """A registered variant by its name, or a family's default variant by the family's name."""
    try:
        return _REGISTRY[_FAMILY_DEFAULTS.get(name, name)]
    except KeyError:
        close = difflib.get_close_matches(name, [*_REGISTRY, *_FAMILY_DEFAULTS], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `vmlp-deploy models` to list them"
        raise UnknownModelError(f"unknown model {name!r}: {hint}") from None


def _as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def resolve(name: str, *, tiny: bool = False, **overrides: Any) -> ResolvedCfg:
    """Merge a variant's arch with the tiny config and user overrides; ``img_size`` also sets the data recipe."""
    variant = get_variant(name)
    arch: dict[str, Any] = dict(variant.arch)
    if tiny:
        arch.update(variant.tiny)
    arch.update(overrides)
    img_size = _as_hw(arch.pop("img_size", variant.data.input_size))
    data = replace(variant.data, input_size=img_size)
    return ResolvedCfg(variant=variant, arch={**arch, "img_size": img_size}, data=data, tiny=tiny)


def create_model(name: str, *, tiny: bool = False, **overrides: Any) -> nn.Module:
    """Build a zoo model with random weights. ``tiny=True`` gives the family's fast test configuration.

    The resolved configuration is attached as ``model.vmlp_cfg`` so later stages know the recipe.
    """
    cfg = resolve(name, tiny=tiny, **overrides)
    model = cfg.variant.builder(**cfg.arch)
    model.vmlp_cfg = cfg
    return model.eval()
