"""Training: masked multimodal pretraining (Lightning) and the expression head."""

from ._pretrain import StormPretraining, cosine_with_warmup, sample_visible

__all__ = ["StormPretraining", "cosine_with_warmup", "sample_visible"]
