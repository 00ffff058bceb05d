"""One internal view of a slide, whatever it was read from.

Readers put data in the scanpy/squidpy Visium layout; :func:`slide_views` turns an AnnData (one or
several slides) into :class:`SlideView` objects: spot coordinates in pixels and µm, the physical
scale, and the image levels as lazily sliceable arrays. Nothing here reads a whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from storm_st._constants import Keys, Platform

if TYPE_CHECKING:
    from anndata import AnnData

_SCALE_TOL = 0.05  # relative disagreement tolerated between two sources of the pixel size


@dataclass
class ImageLevel:
    """One resolution level of a slide image.

    Attributes
    ----------
    array
        ``(H, W, C)`` or ``(H, W)`` array-like supporting slicing (numpy, zarr, dask, ...).
    scale
        Pixels of this level per full-resolution pixel (``tissue_hires_scalef`` for ``hires``).
    mpp
        µm per pixel at this level.
    name
        Name of the level (``"hires"``, ``"lowres"``, ``"level0"``, ...).
    """

    array: Any
    scale: float
    mpp: float
    name: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return int(self.array.shape[0]), int(self.array.shape[1])


@dataclass
class SlideView:
    """Spots of one slide with their geometry and image.

    Attributes
    ----------
    library_id
        Name of the slide.
    obs_indices
        Integer positions of this slide's spots in the AnnData it came from.
    coords_px
        ``(n, 2)`` spot centres in full-resolution pixels, ``(x, y)`` = (column, row).
    mpp
        µm per full-resolution pixel (``nan`` when unknown and no image is needed).
    spot_diameter_um
        Platform spot diameter in µm (the default patch field of view).
    platform
        Platform name (keys of :class:`storm_st._constants.Platform`).
    levels
        Image levels, finest first; empty when the slide has no image.
    """

    library_id: str
    obs_indices: np.ndarray
    coords_px: np.ndarray
    mpp: float
    spot_diameter_um: float
    platform: str
    levels: list[ImageLevel] = field(default_factory=list)

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return len(self.obs_indices)

    @property
    def coords_um(self) -> np.ndarray:
        """Spot centres in µm."""
        return self.coords_px * self.mpp

    @property
    def has_image(self) -> bool:
        """Whether an image is available."""
        return len(self.levels) > 0

    def best_level(self, target_mpp: float) -> ImageLevel:
        """Coarsest level still at least as fine as ``target_mpp`` (else the finest available)."""
        if not self.levels:
            raise ValueError(f"Slide {self.library_id!r} has no image.")
        fine_enough = [lv for lv in self.levels if lv.mpp <= target_mpp * 1.0001]
        if fine_enough:
            return max(fine_enough, key=lambda lv: lv.mpp)
        return min(self.levels, key=lambda lv: lv.mpp)


def library_ids(adata: AnnData, library_key: str | None = None) -> list[str]:
    """Library ids of ``adata``, in order of first appearance."""
    if library_key is not None:
        if library_key not in adata.obs:
            raise KeyError(f"library_key {library_key!r} is not a column of adata.obs.")
        return list(dict.fromkeys(adata.obs[library_key].astype(str)))
    spatial = adata.uns.get(Keys.SPATIAL, {})
    if isinstance(spatial, dict) and len(spatial) > 1 and Keys.LIBRARY_ID in adata.obs:
        return list(dict.fromkeys(adata.obs[Keys.LIBRARY_ID].astype(str)))
    if isinstance(spatial, dict) and len(spatial) == 1:
        return [str(next(iter(spatial)))]
    if Keys.LIBRARY_ID in adata.obs:
        return list(dict.fromkeys(adata.obs[Keys.LIBRARY_ID].astype(str)))
    return ["slide"]


def _resolve_library_key(adata: AnnData, library_key: str | None) -> str | None:
    if library_key is not None:
        return library_key
    spatial = adata.uns.get(Keys.SPATIAL, {})
    if Keys.LIBRARY_ID in adata.obs and (not isinstance(spatial, dict) or len(spatial) != 1):
        return Keys.LIBRARY_ID
    if Keys.LIBRARY_ID in adata.obs and adata.obs[Keys.LIBRARY_ID].nunique() > 1:
        return Keys.LIBRARY_ID
    return None


def _open_image_path(path: str | Path, series: int = 0) -> list[tuple[Any, str]]:
    """Open a TIFF pyramid or a flat image lazily; returns ``[(array, name), ...]`` finest first."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Image file {str(path)!r} recorded in uns['spatial'][...]['metadata'] does not exist.")
    if path.suffix.lower() in {".tif", ".tiff", ".svs", ".ndpi", ".btf"}:
        import tifffile
        import zarr

        store = tifffile.imread(path, aszarr=True, series=series)
        group = zarr.open(store, mode="r")
        if hasattr(group, "shape"):  # single level
            return [(group, "level0")]
        keys = sorted(group.array_keys(), key=int)
        return [(group[k], f"level{k}") for k in keys]
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return [(arr, "level0")]


def _levels_from_uns(lib: dict, mpp: float) -> list[ImageLevel]:
    levels: list[ImageLevel] = []
    scalef = lib.get(Keys.SCALEFACTORS, {})
    meta = lib.get(Keys.METADATA, {}) or {}
    for name, arr in (lib.get(Keys.IMAGES, {}) or {}).items():
        scale = scalef.get(f"tissue_{name}_scalef")
        if scale is None:
            if name in ("fullres", "full", "level0"):
                scale = 1.0
            else:
                raise ValueError(
                    f"Image {name!r} has no scale factor 'tissue_{name}_scalef' in uns['spatial'][...]['scalefactors']; "
                    "add it (pixels of this image per full-resolution pixel)."
                )
        scale = float(scale)
        levels.append(ImageLevel(array=arr, scale=scale, mpp=mpp / scale, name=name))
    image_path = meta.get("image_path")
    if image_path:
        base = None
        for arr, name in _open_image_path(image_path, int(meta.get("image_series", 0))):
            if base is None:
                base = arr.shape[0]
                scale = float(meta.get("image_path_scalef", 1.0))
            else:
                scale = float(meta.get("image_path_scalef", 1.0)) * arr.shape[0] / base
            levels.append(ImageLevel(array=arr, scale=scale, mpp=mpp / scale, name=name))
    levels.sort(key=lambda lv: lv.mpp)
    return levels


def resolve_mpp(lib: dict, platform: str | None = None) -> tuple[float, float]:
    """Full-resolution µm/px and spot diameter (µm) of one ``uns['spatial'][library_id]`` entry.

    The pixel size comes from ``scalefactors['microns_per_pixel']`` or, failing that, from
    ``spot_diameter_fullres`` and the platform's spot diameter. When both exist and disagree by
    more than 5 % a :class:`ValueError` explains the contradiction.
    """
    scalef = lib.get(Keys.SCALEFACTORS, {}) or {}
    meta = lib.get(Keys.METADATA, {}) or {}
    platform = platform or meta.get(Keys.PLATFORM, "visium")
    spot_um = scalef.get(Keys.SPOT_DIAMETER_UM, Platform.SPOT_DIAMETER_UM.get(platform))
    mpp = scalef.get(Keys.MPP)
    spot_px = scalef.get(Keys.SPOT_DIAMETER_FULLRES)
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"scalefactors['{Keys.MPP}'] must be a positive number, got {mpp!r}.")
    if spot_px is not None and not (np.isfinite(spot_px) and spot_px > 0):
        raise ValueError(f"scalefactors['{Keys.SPOT_DIAMETER_FULLRES}'] must be a positive number, got {spot_px!r}.")
    derived = spot_um / spot_px if (spot_px is not None and spot_um) else None
    if mpp is not None and derived is not None and platform not in Platform.CELL_LEVEL:
        if abs(derived - mpp) / mpp > _SCALE_TOL:
            raise ValueError(
                f"Contradictory pixel size: scalefactors['{Keys.MPP}'] = {mpp:.4g} µm/px but "
                f"'{Keys.SPOT_DIAMETER_FULLRES}' = {spot_px:.4g} px for a {spot_um:g} µm {platform} spot implies "
                f"{derived:.4g} µm/px. Fix one of them (or pass the platform's spot diameter)."
            )
    if mpp is None:
        mpp = derived
    if mpp is None:
        mpp = float("nan")
    return float(mpp), float(spot_um) if spot_um else float("nan")


def slide_views(
    adata: AnnData,
    *,
    library_key: str | None = None,
    require_image: bool = False,
    require_scale: bool = False,
) -> list[SlideView]:
    """Split ``adata`` into per-slide :class:`SlideView` objects.

    Parameters
    ----------
    adata
        AnnData in the scanpy/squidpy Visium layout (``obsm['spatial']`` and ``uns['spatial']``).
    library_key
        Column of ``obs`` naming each spot's slide; default ``'library_id'`` when present.
    require_image
        Raise when a slide has no image.
    require_scale
        Raise when the pixel size of a slide cannot be determined.

    Returns
    -------
    One view per slide, in order of first appearance.
    """
    if Keys.SPATIAL not in adata.obsm:
        raise KeyError(
            "adata.obsm['spatial'] is missing: spot coordinates are needed. Read the slide with a storm_st.io "
            "reader, or set adata.obsm['spatial'] to full-resolution pixel coordinates (x, y)."
        )
    coords = np.asarray(adata.obsm[Keys.SPATIAL], dtype=np.float64)[:, :2]
    if not np.isfinite(coords).all():
        raise ValueError("adata.obsm['spatial'] contains NaN or infinite coordinates.")
    key = _resolve_library_key(adata, library_key)
    spatial = adata.uns.get(Keys.SPATIAL, {}) or {}
    libs = library_ids(adata, key)
    views = []
    for lib_id in libs:
        if key is None:
            idx = np.arange(adata.n_obs)
        else:
            idx = np.flatnonzero(adata.obs[key].astype(str).to_numpy() == lib_id)
        lib = spatial.get(lib_id)
        if lib is None and len(spatial) == 1 and len(libs) == 1:
            lib = next(iter(spatial.values()))
        if lib is None:
            if require_image or require_scale:
                known = ", ".join(map(repr, spatial)) or "none"
                raise KeyError(
                    f"No entry uns['spatial'][{lib_id!r}] for library {lib_id!r} (libraries with images: {known}). "
                    "Check library_key / library_id, or read the slide with its image."
                )
            lib = {}
        platform = (lib.get(Keys.METADATA, {}) or {}).get(Keys.PLATFORM, "visium")
        mpp, spot_um = resolve_mpp(lib, platform)
        if require_scale and not np.isfinite(mpp):
            raise ValueError(
                f"Pixel size of slide {lib_id!r} is unknown: set uns['spatial'][{lib_id!r}]['scalefactors']"
                f"['{Keys.MPP}'] (µm per full-resolution pixel) or '{Keys.SPOT_DIAMETER_FULLRES}'."
            )
        levels = _levels_from_uns(lib, mpp if np.isfinite(mpp) else 1.0)
        if require_image and not levels:
            raise ValueError(
                f"Slide {lib_id!r} has no image in uns['spatial'][{lib_id!r}]['images'] (nor an image_path). "
                "An H&E image is needed for this step; use modalities='st' to work from expression only."
            )
        view = SlideView(
            library_id=lib_id,
            obs_indices=idx,
            coords_px=coords[idx],
            mpp=mpp,
            spot_diameter_um=spot_um,
            platform=platform,
            levels=levels,
        )
        if levels:
            _check_inside(view)
        views.append(view)
    return views


def _check_inside(view: SlideView) -> None:
    lv = view.levels[0]
    h, w = lv.shape
    xy = view.coords_px * lv.scale
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} of {view.n_spots} spot centres of slide {view.library_id!r} fall outside its "
            f"{lv.name!r} image ({w} x {h} px at scale {lv.scale:.4g}). Coordinates and scale factors do not match: "
            "check that obsm['spatial'] is in full-resolution pixels and the tissue_*_scalef values."
        )
