"""The vmlp-deploy model zoo: vision MLPs and MetaFormers in plain PyTorch, one file per family.

Importing this package registers every variant. Installed, it is importable as ``vmlp_deploy.models``.
"""

from . import as_mlp, convnext, deit, gmlp, mlp_mixer, poolformer, resmlp, s2mlp, s2mlpv2  # noqa: F401  (registers variants)
from ._registry import (
    DataCfg,
    Paper,
    ResolvedCfg,
    UnknownModelError,
    Variant,
    canonical_name,
    create_model,
    family_defaults,
    get_variant,
    list_models,
    resolve,
)

__all__ = [
    "DataCfg",
    "Paper",
    "ResolvedCfg",
    "UnknownModelError",
    "Variant",
    "canonical_name",
    "create_model",
    "family_defaults",
    "get_variant",
    "list_models",
    "resolve",
]
