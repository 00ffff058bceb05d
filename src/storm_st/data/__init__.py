"""Torch-side data: prepared slides, neighbour-window batches, the typed :class:`SpotBatch`."""

from ._dataset import (
    PreparedSlide,
    SpotBatch,
    WindowSampler,
    contiguous_rows,
    iter_slide_batches,
    make_batch,
    prepare_slides,
)

__all__ = ["PreparedSlide", "SpotBatch", "WindowSampler", "contiguous_rows", "iter_slide_batches", "make_batch", "prepare_slides"]
