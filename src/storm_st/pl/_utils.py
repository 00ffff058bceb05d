"""Shared plotting helpers: slide context (image, scale, spot size), colours, show/return logic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_st._constants import Keys

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class SlideView:
    """What a spatial panel needs: spot coordinates in image pixels, their diameter, the image (or None)."""

    xy: np.ndarray  # n_spots x 2 (x = column, y = row) in the frame of ``image``
    diameter: float
    image: np.ndarray | None
    mask: np.ndarray  # boolean mask of the spots of this library within adata
    library_id: str | None


def _libraries(adata: AnnData) -> list[str]:
    sp = adata.uns.get(Keys.SPATIAL, {})
    return list(sp.keys()) if isinstance(sp, dict) else []


def slide_view(
    adata: AnnData, library_id: str | None = None, *, img: bool = True, img_res: str | None = None
) -> SlideView:
    """Resolve the library, its H&E image and the spot geometry in that image's pixel frame.

    Coordinates come from ``obsm["spatial"]`` (full-resolution pixels) times ``tissue_{hires,lowres}_scalef``;
    the spot diameter from ``spot_diameter_fullres`` (or, without it, 90 % of the median nearest-spot distance).
    Without ``uns["spatial"]`` the spots are drawn in their own coordinates, without an image.
    """
    if Keys.SPATIAL not in adata.obsm:
        raise KeyError(
            "adata.obsm['spatial'] (spot coordinates) not found; read the slide with storm_st.io (e.g. "
            "storm_st.io.read_visium) or set it to the spot centres in pixels."
        )
    libs = _libraries(adata)
    mask = np.ones(adata.n_obs, dtype=bool)
    if library_id is None and len(libs) > 1:
        raise ValueError(f"adata holds {len(libs)} libraries ({', '.join(libs)}); pass library_id= one of them.")
    if library_id is not None and libs and library_id not in libs:
        raise KeyError(f"library_id {library_id!r} not in adata.uns['spatial']; libraries are: {libs}.")
    lib = library_id if library_id is not None else (libs[0] if libs else None)
    if lib is not None and Keys.LIBRARY_ID in adata.obs and len(libs) > 1:
        mask = (adata.obs[Keys.LIBRARY_ID].astype(str) == str(lib)).to_numpy()
        if not mask.any():
            raise ValueError(f"No spot has obs['{Keys.LIBRARY_ID}'] == {lib!r}.")
    xy = np.asarray(adata.obsm[Keys.SPATIAL], dtype=np.float64)[mask, :2]

    image, scalef, diam_full = None, 1.0, None
    if lib is not None:
        entry = adata.uns[Keys.SPATIAL][lib]
        sf = entry.get(Keys.SCALEFACTORS, {}) or {}
        diam_full = sf.get(Keys.SPOT_DIAMETER_FULLRES)
        images = entry.get(Keys.IMAGES, {}) or {}
        if img:
            keys = [img_res] if img_res is not None else [Keys.HIRES, Keys.LOWRES]
            for k in keys:
                if k in images:
                    image = np.asarray(images[k])
                    scalef = float(sf.get(f"tissue_{k}_scalef", 1.0))
                    break
            else:
                if img_res is not None:
                    raise KeyError(f"Image {img_res!r} not in adata.uns['spatial'][{lib!r}]['images']: {list(images)}.")
    xy = xy * scalef
    if diam_full is not None:
        diameter = float(diam_full) * scalef
    else:
        diameter = _nn_diameter(xy)
    return SlideView(xy=xy, diameter=diameter, image=image, mask=mask, library_id=lib)


def _nn_diameter(xy: np.ndarray) -> float:
    if xy.shape[0] < 2:
        return 1.0
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(xy)
    med = float(np.median(d[:, 1]))
    return 0.9 * med if med > 0 else 1.0


def draw_spots(
    ax: Axes,
    view: SlideView,
    colors: np.ndarray | None = None,
    values: np.ndarray | None = None,
    *,
    cmap: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    spot_scale: float = 1.0,
    alpha: float = 1.0,
) -> Any:
    """Draw the image (if any) and one true-size circle per spot; return the collection (for colour bars)."""
    from matplotlib.collections import EllipseCollection

    if view.image is not None:
        ax.imshow(view.image, origin="upper", interpolation="nearest")
    d = view.diameter * spot_scale
    n = view.xy.shape[0]
    coll = EllipseCollection(
        np.full(n, d),
        np.full(n, d),
        np.zeros(n),
        units="xy",
        offsets=view.xy,
        offset_transform=ax.transData,
        linewidths=0,
        alpha=alpha,
    )
    if values is not None:
        coll.set_array(np.asarray(values, dtype=float))
        coll.set_cmap(cmap)
        coll.set_clim(vmin, vmax)
    elif colors is not None:
        coll.set_facecolor(colors)
    ax.add_collection(coll)
    pad = d
    x0, y0 = view.xy.min(axis=0) - pad
    x1, y1 = view.xy.max(axis=0) + pad
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return coll


def category_colors(adata: AnnData | None, key: str, categories: list[str], palette: Any = None) -> dict[str, Any]:
    """Colour per category: ``palette`` (list / dict / colormap name), ``uns[key + "_colors"]``, or tab10/tab20."""
    import matplotlib as mpl
    from matplotlib.colors import to_hex

    n = len(categories)
    if isinstance(palette, dict):
        missing = [c for c in categories if c not in palette]
        if missing:
            raise ValueError(f"palette has no colour for categories {missing}.")
        return {c: palette[c] for c in categories}
    if isinstance(palette, list | tuple):
        if len(palette) < n:
            raise ValueError(f"palette has {len(palette)} colours for {n} categories.")
        return dict(zip(categories, palette, strict=False))
    if isinstance(palette, str):
        cm = mpl.colormaps[palette]
        return {
            c: to_hex(cm(i / max(n - 1, 1))) if cm.N > 32 else to_hex(cm(i % cm.N)) for i, c in enumerate(categories)
        }
    stored = adata.uns.get(f"{key}_colors") if adata is not None else None
    if stored is not None and len(stored) >= n:
        return dict(zip(categories, list(stored), strict=False))
    cm = mpl.colormaps["tab10" if n <= 10 else "tab20"]
    if n <= 20:
        return {c: to_hex(cm(i)) for i, c in enumerate(categories)}
    hsv = mpl.colormaps["hsv"]
    return {c: to_hex(hsv(i / n)) for i, c in enumerate(categories)}


def as_categories(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Labels as strings with a stable category order (categorical order, else sorted)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in values.cat.categories if (values == c).any()]
    else:
        cats = sorted({str(v) for v in values.dropna()})
    return values.astype(object).where(values.notna(), None).map(lambda v: None if v is None else str(v)), cats


def new_axes(ax: Axes | None, figsize: tuple[float, float] | None = None) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    return fig, ax


def finish(fig: Figure, axes: Any, *, show: bool | None, return_fig: bool, ax_given: bool) -> Any:
    """Scanpy's convention: ``return_fig`` → Figure; ``show=False`` → Axes (or list); shown otherwise."""
    import matplotlib.pyplot as plt

    if return_fig:
        return fig
    if show is None:
        show = not ax_given
    if show:
        plt.show()
        return None
    return axes
