"""Readers: Visium / Space Ranger, legacy ST (HER2ST), SpatialData, whole-slide H&E images."""

from ._slide import ImageLevel, SlideView, library_ids, resolve_mpp, slide_views

__all__ = ["ImageLevel", "SlideView", "library_ids", "resolve_mpp", "slide_views"]
