"""Spatial plots over the H&E image: domains, measured vs virtual expression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from storm_st._constants import Keys
from storm_st._utils import get_adata
from storm_st.pl._docs import fill_doc
from storm_st.pl._utils import as_categories, category_colors, draw_spots, finish, new_axes, slide_view

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes


@fill_doc
def domains(
    adata: Any,
    *,
    key: str = Keys.DOMAIN,
    library_id: str | None = None,
    img: bool = True,
    img_res: str | None = None,
    palette: Any = None,
    groups: Sequence[str] | None = None,
    spot_scale: float = 1.0,
    alpha: float = 1.0,
    legend: bool = True,
    title: str | None = None,
    table_key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Spatial domains drawn as true-size spots over the H&E image.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``) in the
        Visium layout: ``obsm["spatial"]`` in full-resolution pixels and ``uns["spatial"][library_id]`` with
        ``images`` and ``scalefactors``.
    key
        Categorical column of :attr:`~anndata.AnnData.obs` (written by :func:`storm_st.tl.domains`).
    library_id
        Slide to draw; needed when ``uns["spatial"]`` holds several.
    img
        Draw the H&E image under the spots.
    img_res
        ``"hires"`` or ``"lowres"``; default: hires when present.
    palette
        Colours: a list, a dict category → colour or a colormap name; default ``uns[key + "_colors"]`` or tab10/20.
    groups
        Only colour these categories; the other spots are drawn light grey.
    spot_scale
        Factor on the spot diameter (``spot_diameter_fullres``).
    alpha
        Opacity of the spots.
    legend
        Draw a legend right of the panel.
    title
        Panel title; default ``key``.
    {table_key}
    {ax}
    {show_return_fig}

    {returns}
    """
    from matplotlib.patches import Patch

    adata = get_adata(adata, table_key)
    if key not in adata.obs:
        how = "run storm_st.tl.domains(adata) first" if key == Keys.DOMAIN else "pass an existing obs column as key="
        raise KeyError(f"adata.obs[{key!r}] not found; {how}.")
    view = slide_view(adata, library_id, img=img, img_res=img_res)
    labels, cats = as_categories(adata.obs[key])
    labels = labels[view.mask]
    cmap = category_colors(adata, key, cats, palette)
    if groups is not None:
        unknown = [g for g in groups if str(g) not in cats]
        if unknown:
            raise ValueError(f"groups {unknown} are not categories of adata.obs[{key!r}]: {cats}.")
        keep = {str(g) for g in groups}
        cmap = {c: (col if c in keep else "#d3d3d3") for c, col in cmap.items()}
    colors = np.array([cmap.get(v, "#d3d3d3") if v is not None else "#d3d3d3" for v in labels], dtype=object)

    fig, ax_ = new_axes(ax, figsize=(5, 4.5))
    draw_spots(ax_, view, colors=list(colors), spot_scale=spot_scale, alpha=alpha)
    ax_.set_title(key if title is None else title)
    if legend:
        shown = cats if groups is None else [c for c in cats if c in {str(g) for g in groups}]
        handles = [Patch(facecolor=cmap[c], label=c) for c in shown]
        ax_.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=None)
    return finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)


def _gene_index(adata: AnnData, genes: Sequence[str], what: str) -> np.ndarray:
    """Positions of ``genes``: exact ``var_names`` match, else case-insensitive symbol (Ensembl ids via var symbols)."""
    from storm_st.pp import gene_symbols

    exact = {g: i for i, g in enumerate(adata.var_names.astype(str))}
    upper: dict[str, int] = {}
    for i, g in enumerate(gene_symbols(adata)):
        upper.setdefault(str(g), i)
    idx, missing = [], []
    for g in genes:
        i = exact.get(str(g), upper.get(str(g).upper()))
        if i is None:
            missing.append(g)
        idx.append(i)
    if missing:
        raise KeyError(f"Genes {missing} not found in the {what} expression (var_names or gene symbols).")
    return np.asarray(idx, dtype=int)


def _column(
    adata: AnnData, layer: str | None, genes: Sequence[str], what: str, *, log_counts: bool = False
) -> np.ndarray:
    """Dense spots x genes values; raw counts become log1p(counts per 10k) when ``log_counts``."""
    idx = _gene_index(adata, genes, what)
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"adata.layers[{layer!r}] not found; layers are: {list(adata.layers.keys())}.")
    X = adata.layers[layer] if layer is not None else adata.X
    out = X[:, idx]
    out = np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)
    if log_counts:
        from storm_st.tl._enrichment import _looks_like_counts

        if _looks_like_counts(X):
            total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
            total[total == 0] = 1.0
            out = np.log1p(out / total[:, None] * 1e4)
    return out


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


@fill_doc
def expression(
    adata: Any,
    genes: str | Sequence[str],
    *,
    virtual_key: str = Keys.VIRTUAL,
    virtual: AnnData | None = None,
    layer_measured: str | None = None,
    library_id: str | None = None,
    img: bool = True,
    img_res: str | None = None,
    cmap: str = "viridis",
    spot_scale: float = 1.0,
    share_scale: bool = False,
    table_key: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Measured and virtual (STORM-predicted) expression side by side over the H&E image, one row per gene.

    The title of each virtual panel gives the gene-wise Pearson correlation (PCC) between measured and virtual
    expression over the spots drawn.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``) with the
        measured expression.
    genes
        Gene names: ``var_names``, or symbols matched case-insensitively (Ensembl ``var_names`` through
        ``var["gene_symbols"]``), in both the measured and the virtual expression.
    virtual_key
        Layer of ``adata`` with the virtual expression (written by :func:`storm_st.tl.impute_expression`).
    virtual
        Alternatively, an :class:`~anndata.AnnData` of virtual expression (matched to ``adata`` by obs_names).
    layer_measured
        Layer with the measured expression; default ``X``. Raw counts are shown (and correlated) as
        log1p(counts per 10k), the units of :func:`storm_st.tl.impute_expression`.
    library_id
        Slide to draw; needed when ``uns["spatial"]`` holds several.
    img
        Draw the H&E image under the spots.
    img_res
        ``"hires"`` or ``"lowres"``; default: hires when present.
    cmap
        Colormap of the expression.
    spot_scale
        Factor on the spot diameter.
    share_scale
        Use one colour scale for both panels of a gene (default: each panel its own 1st–99th percentile).
    {table_key}
    ax
        ``2 * len(genes)`` Axes (measured, virtual for each gene); default: a new figure.
    {show_return_fig}

    Returns
    -------
    The Figure with ``return_fig=True``; the list of Axes with ``show=False``; else ``None``.
    """
    import matplotlib.pyplot as plt

    adata = get_adata(adata, table_key)
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("genes is empty; give at least one gene.")
    view = slide_view(adata, library_id, img=img, img_res=img_res)
    meas = _column(adata, layer_measured, genes, "measured", log_counts=True)[view.mask]
    if virtual is not None:
        missing_obs = adata.obs_names.difference(virtual.obs_names)
        if len(missing_obs):
            raise KeyError(
                f"{len(missing_obs)} spots of adata are not in virtual.obs_names (e.g. {list(missing_obs[:3])}); "
                "the virtual AnnData must cover the same spots."
            )
        virt_all = _column(virtual, None, genes, "virtual")
        order = virtual.obs_names.get_indexer(adata.obs_names)
        virt = virt_all[order][view.mask]
    else:
        if virtual_key not in adata.layers:
            raise KeyError(
                f"adata.layers[{virtual_key!r}] not found; run storm_st.tl.impute_expression(adata, model=...) first, "
                "or pass virtual= an AnnData of predicted expression."
            )
        virt = _column(adata, virtual_key, genes, "virtual")[view.mask]

    n = len(genes)
    if ax is None:
        fig, axs = plt.subplots(n, 2, figsize=(8, 3.6 * n), squeeze=False, layout="constrained")
        axes = list(axs.ravel())
    else:
        axes = list(np.ravel(ax))
        if len(axes) != 2 * n:
            raise ValueError(f"ax must hold 2 Axes per gene ({2 * n}), got {len(axes)}.")
        fig = axes[0].figure
    for i, g in enumerate(genes):
        m, v = meas[:, i], virt[:, i]
        r = _pcc(m, v)
        lims = []
        if share_scale:
            both = np.concatenate([m, v])
            lims = [tuple(np.nanpercentile(both, [1, 99]))] * 2
        else:
            lims = [tuple(np.nanpercentile(x, [1, 99])) for x in (m, v)]
        for j, (vals, label) in enumerate(((m, "measured"), (v, f"virtual (PCC={r:.2f})"))):
            a = axes[2 * i + j]
            coll = draw_spots(a, view, values=vals, cmap=cmap, vmin=lims[j][0], vmax=lims[j][1], spot_scale=spot_scale)
            a.set_title(f"{g}: {label}")
            fig.colorbar(coll, ax=a, fraction=0.046, pad=0.02)
    return finish(fig, axes, show=show, return_fig=return_fig, ax_given=ax is not None)
