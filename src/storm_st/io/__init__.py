"""Readers: Visium / Space Ranger, legacy ST (HER2ST), SpatialData, whole-slide H&E images."""

from ._readers import concat_slides, read_dlpfc, read_her2st, read_her2st_section, read_visium, validate_slide
from ._slide import ImageLevel, SlideView, library_ids, resolve_mpp, slide_views

__all__ = [
    "ImageLevel",
    "SlideView",
    "concat_slides",
    "library_ids",
    "read_dlpfc",
    "read_her2st",
    "read_her2st_section",
    "read_visium",
    "resolve_mpp",
    "slide_views",
    "validate_slide",
]
