"""H&E-only whole-slide images: lay a spot lattice on the tissue, read lazily."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from storm_st._constants import Keys

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["read_wsi", "tissue_mask"]

_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".btf"}
_MASK_MAX_SIDE = 2048  # the tissue mask is computed on an image no larger than this


def _to_hwc(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / max(1.0, float(arr.max())) * 255).astype(np.uint8)
    return arr


def _thumbnail(path: Path) -> tuple[np.ndarray, tuple[int, int], str]:
    """A small RGB image, the full-resolution ``(height, width)`` and the axes, without reading level 0 whole."""
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            levels = list(getattr(series, "levels", [series])) or [series]
            axes = series.axes
            shape0 = levels[0].shape
            yi, xi = axes.index("Y"), axes.index("X")
            full_hw = (int(shape0[yi]), int(shape0[xi]))
            # coarsest level that is still at least _MASK_MAX_SIDE/4 wide (or the coarsest there is)
            chosen = levels[-1]
            for lv in levels:
                if max(lv.shape[yi], lv.shape[xi]) <= _MASK_MAX_SIDE:
                    chosen = lv
                    break
            if max(chosen.shape[yi], chosen.shape[xi]) > _MASK_MAX_SIDE:
                # no small level: subsample the zarr view chunk by chunk
                import zarr

                store = chosen.aszarr()
                z = zarr.open(store, mode="r")
                step = int(np.ceil(max(chosen.shape[yi], chosen.shape[xi]) / _MASK_MAX_SIDE))
                index = [slice(None)] * len(chosen.shape)
                index[yi] = slice(None, None, step)
                index[xi] = slice(None, None, step)
                small = np.asarray(z[tuple(index)])
            else:
                small = chosen.asarray()
        return _to_hwc(small), full_hw, axes
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        full_hw = (im.height, im.width)
        factor = max(1, int(np.ceil(max(im.size) / _MASK_MAX_SIDE)))
        if im.format == "JPEG":
            im.draft("RGB", (im.width // factor, im.height // factor))
        im = im.convert("RGB")
        if max(im.size) > _MASK_MAX_SIDE:
            im.thumbnail((_MASK_MAX_SIDE, _MASK_MAX_SIDE))
        return np.asarray(im), full_hw, "YXS"


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Foreground (tissue) mask of a small RGB H&E image: Otsu threshold on saturation, closed and filled.

    Parameters
    ----------
    image
        ``H x W x 3`` ``uint8`` image (a low-resolution level).

    Returns
    -------
    Boolean ``H x W`` mask, `True` on tissue.
    """
    from scipy import ndimage as ndi

    rgb = image.astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    sat = ndi.gaussian_filter(sat, 1.0)
    hist, edges = np.histogram(sat, bins=256, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    thr = max(float(centers[int(np.argmax(between))]), 0.05)
    mask = (sat > thr) & (mx < 0.98)
    mask = ndi.binary_closing(mask, iterations=2)
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_opening(mask, iterations=1)
    return mask


def _lattice(width_um: float, height_um: float, pitch_um: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Spot centres in µm and their (row, col) lattice indices."""
    if kind == "hex":
        dy = pitch_um * np.sqrt(3) / 2
        rows = np.arange(pitch_um / 2, height_um, dy)
        pts, idx = [], []
        for r, y in enumerate(rows):
            xs = np.arange(pitch_um / 2 + (pitch_um / 2 if r % 2 else 0.0), width_um, pitch_um)
            pts.append(np.c_[xs, np.full(len(xs), y)])
            idx.append(np.c_[np.full(len(xs), r), np.arange(len(xs)) * 2 + (r % 2)])
    elif kind == "square":
        ys = np.arange(pitch_um / 2, height_um, pitch_um)
        xs = np.arange(pitch_um / 2, width_um, pitch_um)
        gx, gy = np.meshgrid(xs, ys)
        gc, gr = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)))
        pts, idx = [np.c_[gx.ravel(), gy.ravel()]], [np.c_[gr.ravel(), gc.ravel()]]
    else:
        raise ValueError(f"lattice must be 'hex' or 'square', got {kind!r}.")
    if not pts:
        return np.zeros((0, 2)), np.zeros((0, 2), dtype=int)
    return np.concatenate(pts).astype(float), np.concatenate(idx).astype(int)


def read_wsi(
    path: str | Path,
    *,
    mpp: float,
    spot_diameter_um: float = 55.0,
    pitch_um: float = 100.0,
    lattice: Literal["hex", "square"] = "hex",
    tissue_only: bool = True,
    library_id: str | None = None,
) -> AnnData:
    """Tile an H&E image alone into virtual spots (no expression).

    The image is never read whole at full resolution: the tissue mask is computed on a low-resolution
    pyramid level (TIFF/OME-TIFF) or a reduced decode (JPEG/PNG), and later steps open the image lazily
    from ``uns['spatial'][library_id]['metadata']['image_path']``.

    Parameters
    ----------
    path
        TIFF / OME-TIFF (pyramidal or not), PNG or JPEG file.
    mpp
        µm per pixel of the full-resolution image (e.g. 0.25 at 40x, 0.5 at 20x).
    spot_diameter_um
        Diameter of a virtual spot (its patch field of view); 55 µm like Visium.
    pitch_um
        Centre-to-centre spot distance; 100 µm like Visium.
    lattice
        ``'hex'`` (Visium-like, offset rows) or ``'square'``.
    tissue_only
        Keep only the spots whose centre lies on tissue (Otsu threshold of the saturation).
    library_id
        Name of the slide; default: the file name without extension.

    Returns
    -------
    AnnData with ``n_vars = 0``: ``obsm['spatial']`` (full-resolution pixels), ``obs['array_row',
    'array_col', 'in_tissue']`` and ``uns['spatial'][library_id]`` with a ``lowres`` thumbnail, the scale
    factors and ``metadata['image_path']`` (platform ``'he_only'``).
    """
    import scipy.sparse as sp
    from anndata import AnnData

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist; check the path.")
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp (µm per full-resolution pixel) must be a positive number, got {mpp!r}.")
    if pitch_um <= 0 or spot_diameter_um <= 0:
        raise ValueError("pitch_um and spot_diameter_um must be positive.")
    library_id = library_id or path.name.split(".")[0]
    thumb, (height, width), axes = _thumbnail(path)
    if axes not in ("YXS", "YX"):
        warnings.warn(
            f"{str(path)!r} stores its pixels as {axes!r}, not interleaved RGB ('YXS'); patch extraction reads the "
            "image as height x width x channels. Convert it (e.g. tifffile.imwrite(..., photometric='rgb') of an "
            "H x W x 3 array) if patches look wrong.",
            UserWarning,
            stacklevel=2,
        )
    scale = thumb.shape[1] / width  # thumbnail pixels per full-res pixel
    centres_um, rc = _lattice(width * mpp, height * mpp, pitch_um, lattice)
    centres_px = centres_um / mpp
    mask = tissue_mask(thumb)
    ti = np.clip((centres_px * scale).astype(int), 0, [thumb.shape[1] - 1, thumb.shape[0] - 1])
    in_tissue = mask[ti[:, 1], ti[:, 0]] if len(ti) else np.zeros(0, bool)
    keep = in_tissue if tissue_only else np.ones(len(centres_px), bool)
    if not keep.any():
        raise ValueError(
            f"No spot of {str(path)!r} lies on tissue (0 spots). Check mpp (={mpp}) and the image, or pass tissue_only=False."
        )
    centres_px, rc, in_tissue = centres_px[keep], rc[keep], in_tissue[keep]
    names = [f"{library_id}_{r}x{c}" for r, c in rc]
    obs = pd.DataFrame(
        {"array_row": rc[:, 0], "array_col": rc[:, 1], "in_tissue": in_tissue.astype(int)},
        index=pd.Index(names),
    )
    obs[Keys.LIBRARY_ID] = pd.Categorical([library_id] * len(obs))
    adata = AnnData(X=sp.csr_matrix((len(obs), 0), dtype=np.float32), obs=obs)
    adata.obsm[Keys.SPATIAL] = centres_px
    adata.uns[Keys.SPATIAL] = {
        library_id: {
            Keys.IMAGES: {Keys.LOWRES: np.ascontiguousarray(thumb)},
            Keys.SCALEFACTORS: {
                Keys.LOWRES_SCALEF: float(scale),
                Keys.MPP: float(mpp),
                Keys.SPOT_DIAMETER_UM: float(spot_diameter_um),
                Keys.SPOT_DIAMETER_FULLRES: float(spot_diameter_um) / float(mpp),
                "pitch_um": float(pitch_um),
            },
            Keys.METADATA: {
                Keys.PLATFORM: "he_only",
                "source": str(path),
                "image_path": str(path.resolve()),
                "lattice": lattice,
                "image_axes": axes,
                "full_resolution_shape": [int(height), int(width)],
            },
        }
    }
    return adata
