"""STORM network: spot encoders, spatial encoder, heads (plain torch modules, no AnnData)."""

from ._config import PRESETS, StormConfig
from ._io import (
    average_models,
    from_pretrained,
    load_backbone_weights,
    load_model,
    save_pretrained,
    set_bn_stats,
    set_stain_normalization,
)
from ._layers import alibi_bias, alibi_slopes
from ._storm import FeatureGeneEncoder, GeneEncoder, HEEncoder, StormModel, WindowTokens

__all__ = [
    "PRESETS",
    "FeatureGeneEncoder",
    "GeneEncoder",
    "HEEncoder",
    "StormConfig",
    "StormModel",
    "WindowTokens",
    "alibi_bias",
    "alibi_slopes",
    "average_models",
    "from_pretrained",
    "load_backbone_weights",
    "load_model",
    "save_pretrained",
    "set_bn_stats",
    "set_stain_normalization",
]
