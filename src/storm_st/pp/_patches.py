"""Spot patches at physical scale, read from the best image level and resized for the encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from storm_st.io._slide import SlideView, slide_views

if TYPE_CHECKING:
    from anndata import AnnData

PAD_VALUE = 255  # tissue-edge padding: white, like the glass around tissue in H&E


def _to_uint8_rgb(crop: np.ndarray) -> np.ndarray:
    if crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, axis=-1)
    elif crop.ndim == 3 and crop.shape[0] in (1, 3, 4) and crop.shape[-1] not in (1, 3, 4):
        crop = np.moveaxis(crop, 0, -1)
    if crop.shape[-1] == 1:
        crop = np.repeat(crop, 3, axis=-1)
    crop = crop[..., :3]
    if crop.dtype != np.uint8:
        crop = np.asarray(crop, dtype=np.float32)
        if crop.size and crop.max() <= 1.0:
            crop = crop * 255.0
        crop = np.clip(crop, 0, 255).astype(np.uint8)
    return crop


def _read_region(array, x0: int, y0: int, c: int) -> np.ndarray:
    """``c x c`` crop with top-left ``(x0, y0)``, padded with white outside the image."""
    h, w = int(array.shape[0]), int(array.shape[1])
    out = np.full((c, c, 3), PAD_VALUE, dtype=np.uint8)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + c, w), min(y0 + c, h)
    if xa < xb and ya < yb:
        region = np.asarray(array[ya:yb, xa:xb])
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = _to_uint8_rgb(region)
    return out


def extract_patches(
    view: SlideView,
    indices: np.ndarray | None = None,
    *,
    fov_um: float | None = None,
    size: int = 224,
    chunk: int = 256,
) -> np.ndarray:
    """Square patches centred on spots, covering ``fov_um`` µm, resized to ``size`` pixels.

    The image level is the coarsest one still at least as fine as ``fov_um / size`` µm/px, so a
    pyramid is never read at a finer level than needed; crops are resized in batches with
    antialiasing. Parts of a patch outside the image are white.

    Parameters
    ----------
    view
        The slide (from :func:`storm_st.io.slide_views`).
    indices
        Rows of ``view`` to extract (default all).
    fov_um
        Field of view in µm (default the platform's spot diameter).
    size
        Output side in pixels.
    chunk
        Spots resized together.

    Returns
    -------
    ``(n, size, size, 3)`` uint8 array.
    """
    import torch
    import torch.nn.functional as F

    if not view.has_image:
        raise ValueError(f"Slide {view.library_id!r} has no image to cut patches from.")
    if not np.isfinite(view.mpp):
        raise ValueError(f"Slide {view.library_id!r} has no known pixel size (µm/px); patches need the physical scale.")
    fov_um = float(fov_um if fov_um is not None else view.spot_diameter_um)
    if not (np.isfinite(fov_um) and fov_um > 0):
        raise ValueError(f"fov_um must be a positive number of µm, got {fov_um!r}.")
    indices = np.arange(view.n_spots) if indices is None else np.asarray(indices)
    level = view.best_level(fov_um / size)
    c = max(int(round(fov_um / level.mpp)), 1)
    centres = view.coords_px[indices] * level.scale
    tops = np.round(centres - c / 2.0).astype(np.int64)
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    for s in range(0, len(indices), chunk):
        crops = np.stack([_read_region(level.array, int(x), int(y), c) for x, y in tops[s : s + chunk]])
        if c == size:
            out[s : s + chunk] = crops
            continue
        t = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=c > size, align_corners=False)
        out[s : s + chunk] = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def spot_patches(
    adata: AnnData, *, fov_um: float | None = None, size: int = 224, library_key: str | None = None
) -> np.ndarray:
    """Patches of every spot of ``adata`` (all slides), in ``obs`` order.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` and an image in ``uns['spatial']``.
    fov_um
        Field of view in µm (default each slide's spot diameter: 55 µm Visium, 100 µm legacy ST).
    size
        Output side in pixels.
    library_key
        Column of ``obs`` naming each spot's slide.

    Returns
    -------
    ``(n_obs, size, size, 3)`` uint8 array (not stored in ``adata``: patches are large).
    """
    out = np.empty((adata.n_obs, size, size, 3), dtype=np.uint8)
    for view in slide_views(adata, library_key=library_key, require_image=True, require_scale=True):
        out[view.obs_indices] = extract_patches(view, fov_um=fov_um, size=size)
    return out
