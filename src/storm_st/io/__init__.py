"""Readers: Visium / Space Ranger, legacy ST (HER2ST), SpatialData, whole-slide H&E images."""

from ._cells import read_cosmx_giotto, read_merfish_giotto, read_xenium_hest
from ._readers import concat_slides, read_dlpfc, read_her2st, read_her2st_section, read_visium, validate_slide
from ._sdata import read_spatialdata, to_spatialdata
from ._slide import ImageLevel, SlideView, library_ids, resolve_mpp, slide_views
from ._wsi import read_wsi, tissue_mask

__all__ = [
    "ImageLevel",
    "SlideView",
    "concat_slides",
    "library_ids",
    "read_cosmx_giotto",
    "read_dlpfc",
    "read_her2st",
    "read_her2st_section",
    "read_merfish_giotto",
    "read_spatialdata",
    "read_visium",
    "read_wsi",
    "read_xenium_hest",
    "resolve_mpp",
    "slide_views",
    "tissue_mask",
    "to_spatialdata",
    "validate_slide",
]
