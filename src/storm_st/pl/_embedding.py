"""Scatter of a precomputed 2-D embedding (UMAP, ...) coloured by domains or a value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import get_adata
from storm_st.pl._docs import fill_doc
from storm_st.pl._utils import as_categories, category_colors, finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes


def _values(adata: AnnData, color: str, layer: str | None) -> pd.Series:
    if color in adata.obs:
        return adata.obs[color]
    if color in adata.var_names:
        X = adata.layers[layer] if layer is not None else adata.X
        col = X[:, adata.var_names.get_loc(color)]
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        return pd.Series(np.ravel(col).astype(float), index=adata.obs_names, name=color)
    how = " (run storm_st.tl.domains(adata) first)" if color == Keys.DOMAIN else ""
    raise KeyError(f"color {color!r} is neither an obs column nor a gene of adata{how}.")


@fill_doc
def embedding(
    adata: Any,
    *,
    basis: str = "umap",
    color: str | Sequence[str] = Keys.DOMAIN,
    layer: str | None = None,
    palette: Any = None,
    cmap: str = "viridis",
    size: float | None = None,
    legend: bool = True,
    table_key: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Scatter plot of a 2-D embedding, e.g. a UMAP of the STORM embedding. Computes nothing.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``).
    basis
        ``obsm["X_" + basis]`` (or ``obsm[basis]``) is drawn; compute it first, e.g.
        ``sc.pp.neighbors(adata, use_rep="X_storm"); sc.tl.umap(adata)``.
    color
        One or several obs columns or genes; categorical columns get a legend, numeric ones a colour bar.
    layer
        Layer for gene colours; default ``X``.
    palette
        Colours of categories: a list, dict or colormap name.
    cmap
        Colormap of numeric colours.
    size
        Marker size (points²); default ``120000 / n_spots`` clipped to [1, 60].
    legend
        Draw legends / colour bars.
    {table_key}
    ax
        Axes (one per colour); default: a new figure.
    {show_return_fig}

    Returns
    -------
    The Figure with ``return_fig=True``; the Axes (a list for several colours) with ``show=False``; else ``None``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    adata = get_adata(adata, table_key)
    key = basis if basis in adata.obsm else f"X_{basis}"
    if key not in adata.obsm:
        hint = (
            'run sc.pp.neighbors(adata, use_rep="X_storm"); sc.tl.umap(adata) first'
            if basis in ("umap", "X_umap")
            else "compute it first"
        )
        raise KeyError(f"adata.obsm[{key!r}] not found; {hint}.")
    xy = np.asarray(adata.obsm[key])[:, :2]
    colors = [color] if isinstance(color, str) else list(color)
    vals = [_values(adata, c, layer) for c in colors]  # validate all before drawing
    s = size if size is not None else float(np.clip(120000 / max(adata.n_obs, 1), 1, 60))

    if ax is None:
        fig, axs = plt.subplots(1, len(colors), figsize=(4.8 * len(colors), 4), squeeze=False, layout="constrained")
        axes = list(axs.ravel())
    else:
        axes = list(np.ravel(ax))
        if len(axes) != len(colors):
            raise ValueError(f"ax must hold one Axes per colour ({len(colors)}), got {len(axes)}.")
        fig = axes[0].figure
    name = basis.removeprefix("X_").upper()
    for a, c, v in zip(axes, colors, vals, strict=True):
        numeric = pd.api.types.is_numeric_dtype(v) and not isinstance(v.dtype, pd.CategoricalDtype)
        if numeric:
            sc_ = a.scatter(xy[:, 0], xy[:, 1], c=v.to_numpy(dtype=float), s=s, cmap=cmap, linewidths=0)
            if legend:
                fig.colorbar(sc_, ax=a, fraction=0.046, pad=0.02)
        else:
            lab, cats = as_categories(v)
            cmap_ = category_colors(adata, c, cats, palette)
            cols = [cmap_.get(x, "#d3d3d3") if x is not None else "#d3d3d3" for x in lab]
            a.scatter(xy[:, 0], xy[:, 1], c=cols, s=s, linewidths=0)
            if legend:
                handles = [
                    Line2D([], [], marker="o", linestyle="", markerfacecolor=cmap_[k], markeredgewidth=0, label=k)
                    for k in cats
                ]
                a.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        a.set_title(c)
        a.set_xlabel(f"{name}1")
        a.set_ylabel(f"{name}2")
        a.set_xticks([])
        a.set_yticks([])
    out = axes[0] if len(axes) == 1 else axes
    return finish(fig, out, show=show, return_fig=return_fig, ax_given=ax is not None)
