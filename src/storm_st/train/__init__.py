"""Training: masked multimodal pretraining (Lightning) and the expression head."""

from ._pretrain import StormPretraining, cosine_with_warmup, sample_visible
from ._runner import pretrain

__all__ = ["StormPretraining", "cosine_with_warmup", "pretrain", "sample_visible"]
