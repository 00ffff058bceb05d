"""Benchmark figures: gene-wise PCC distributions, domain metrics, hallmark enrichment dot plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import get_adata
from storm_st.pl._docs import fill_doc
from storm_st.pl._utils import category_colors, finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_LOWER_IS_BETTER = {"CHAOS", "PAS"}


def _as_long(results: Any) -> dict[str, np.ndarray]:
    if isinstance(results, pd.Series):  # e.g. storm_st.tl.expression_pcc: one method
        results = {str(results.name) if results.name is not None else "PCC": results.to_numpy(dtype=float)}
    if isinstance(results, pd.DataFrame):
        data = {str(c): results[c].to_numpy(dtype=float) for c in results.columns}
    elif isinstance(results, Mapping):
        data = {str(k): np.asarray(v, dtype=float).ravel() for k, v in results.items()}
    else:
        raise TypeError(
            f"results must be a DataFrame (genes x methods) or a dict method -> values, got {type(results).__name__}."
        )
    data = {k: v[np.isfinite(v)] for k, v in data.items()}
    empty = [k for k, v in data.items() if v.size == 0]
    if not data or empty:
        raise ValueError(f"No finite PCC values for methods {empty or 'at all'}.")
    return data


@fill_doc
def pcc(
    results: pd.DataFrame | Mapping[str, Sequence[float]],
    *,
    kind: Literal["box", "violin"] = "box",
    order: Sequence[str] | None = None,
    palette: Any = None,
    ylabel: str = "gene-wise PCC",
    title: str | None = None,
    show_median: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Distribution of gene-wise Pearson correlations (measured vs predicted expression) per method.

    Parameters
    ----------
    results
        A :class:`~pandas.DataFrame` genes × methods, a dict method → PCC values, or one
        :class:`~pandas.Series` (e.g. from :func:`storm_st.tl.expression_pcc`; its name labels the box). NaN
        values (e.g. genes constant in a slide) are dropped per method.
    kind
        ``"box"`` or ``"violin"``.
    order
        Methods to show, in this order; default: the given order.
    palette
        Colours per method (list, dict or colormap name).
    ylabel
        Label of the y axis.
    title
        Panel title.
    show_median
        Write each method's median above its box.
    {ax}
    {show_return_fig}

    {returns}
    """
    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}.")
    data = _as_long(results)
    methods = list(data) if order is None else [str(m) for m in order]
    unknown = [m for m in methods if m not in data]
    if unknown:
        raise KeyError(f"Methods {unknown} not in results: {list(data)}.")
    colors = category_colors(None, "", methods, palette)
    vals = [data[m] for m in methods]
    pos = np.arange(1, len(methods) + 1)

    fig, ax_ = new_axes(ax, figsize=(max(3.0, 0.9 * len(methods) + 1.5), 3.5))
    if kind == "box":
        bp = ax_.boxplot(vals, positions=pos, widths=0.6, patch_artist=True, showfliers=False)
        for patch, m in zip(bp["boxes"], methods, strict=True):
            patch.set_facecolor(colors[m])
            patch.set_alpha(0.85)
        for med in bp["medians"]:
            med.set_color("black")
    else:
        vp = ax_.violinplot(vals, positions=pos, widths=0.8, showmedians=True, showextrema=False)
        for body, m in zip(vp["bodies"], methods, strict=True):
            body.set_facecolor(colors[m])
            body.set_alpha(0.85)
        vp["cmedians"].set_color("black")
    if show_median:
        top = max(float(np.max(v)) for v in vals)
        for p, v in zip(pos, vals, strict=True):
            ax_.text(p, top, f"{np.median(v):.2f}", ha="center", va="bottom", fontsize="small")
    ax_.set_xticks(pos)
    ax_.set_xticklabels(methods, rotation=45 if len(methods) > 4 else 0, ha="right" if len(methods) > 4 else "center")
    ax_.set_ylabel(ylabel)
    ax_.axhline(0, color="grey", linewidth=0.5, zorder=0)
    if title:
        ax_.set_title(title)
    return finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)


@fill_doc
def domain_metrics(
    df: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    palette: Any = None,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Grouped bar chart of domain metrics: one group per metric, one bar per method (row of ``df``).

    Parameters
    ----------
    df
        Rows = methods, columns = metrics, e.g. ``pd.concat`` of :func:`storm_st.tl.domain_metrics` results.
        CHAOS and PAS (lower is better) are marked with ``↓`` in the axis labels.
    metrics
        Columns to draw; default: all numeric columns.
    palette
        Colours per method (list, dict or colormap name).
    title
        Panel title.
    {ax}
    {show_return_fig}

    {returns}
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a DataFrame (rows = methods, columns = metrics), got {type(df).__name__}.")
    cols = list(df.select_dtypes("number").columns) if metrics is None else list(metrics)
    unknown = [c for c in cols if c not in df.columns]
    if unknown:
        raise KeyError(f"Metrics {unknown} not in df.columns: {list(df.columns)}.")
    if not cols or df.empty:
        raise ValueError("df has no numeric metric to draw.")
    methods = [str(i) for i in df.index]
    colors = category_colors(None, "", methods, palette)
    n_m = len(methods)
    width = 0.8 / n_m
    x = np.arange(len(cols))

    fig, ax_ = new_axes(ax, figsize=(max(4.0, 0.7 * len(cols) + 1.5), 3.2))
    for i, (m, (_, row)) in enumerate(zip(methods, df.iterrows(), strict=True)):
        ax_.bar(x - 0.4 + width * (i + 0.5), row[cols].to_numpy(dtype=float), width, color=colors[m], label=m)
    ax_.set_xticks(x)
    ax_.set_xticklabels([f"{c} ↓" if c in _LOWER_IS_BETTER else c for c in cols])
    ax_.set_ylabel("score")
    ax_.axhline(0, color="grey", linewidth=0.5)
    ax_.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        ax_.set_title(title)
    return finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)


@fill_doc
def enrichment(
    adata: Any,
    *,
    key: str = Keys.HALLMARK,
    fdr: float = 0.05,
    terms: Sequence[str] | None = None,
    max_terms: int | None = 30,
    strip_prefix: bool = True,
    cmap: str = "Reds",
    table_key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Dot plot of gene-set enrichment: domains × gene sets, colour −log10 FDR, size odds ratio.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` (or :class:`~spatialdata.SpatialData` with ``table_key``) holding the table
        of :func:`storm_st.tl.hallmark_enrichment` in ``uns[key]``; a result DataFrame is also accepted.
    key
        Key of the table in :attr:`~anndata.AnnData.uns`.
    fdr
        Show the gene sets with FDR below this in at least one domain; only such cells get a dot.
    terms
        Gene sets to show (overrides the FDR selection of rows).
    max_terms
        At most this many gene sets, the most significant first.
    strip_prefix
        Drop ``"HALLMARK_"`` from the names.
    cmap
        Colormap of −log10 FDR.
    {table_key}
    {ax}
    {show_return_fig}

    {returns}
    """
    if isinstance(adata, pd.DataFrame):
        table, order = adata, None
    else:
        ad_ = get_adata(adata, table_key)
        if key not in ad_.uns:
            raise KeyError(f"adata.uns[{key!r}] not found; run storm_st.tl.hallmark_enrichment(adata) first.")
        table = ad_.uns[key]
        if isinstance(table, Mapping) and "results" in table:
            table = table["results"]
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"adata.uns[{key!r}] is not an enrichment table (DataFrame).")
        params = ad_.uns.get(f"{key}_params", {})
        order = [str(g) for g in params.get("group_order", [])] or None
    need = {"domain", "term", "fdr", "odds_ratio"}
    if not need <= set(table.columns):
        raise ValueError(f"The enrichment table needs columns {sorted(need)}; it has {list(table.columns)}.")
    t = table.copy()
    t["domain"] = t["domain"].astype(str)
    t["term"] = t["term"].astype(str)
    if terms is not None:
        keep = [str(x) for x in terms]
        missing = [x for x in keep if x not in set(t["term"])]
        if missing:
            raise KeyError(f"Gene sets {missing} are not in the table.")
    else:
        best = t[t["fdr"] < fdr].groupby("term")["fdr"].min().sort_values()
        if best.empty:
            raise ValueError(f"No gene set has FDR < {fdr} in any domain; nothing to draw (raise fdr=).")
        keep = list(best.index)
    if max_terms is not None:
        keep = keep[:max_terms]
    domains_ = order if order is not None else sorted(t["domain"].unique(), key=lambda s: (len(s), s))
    domains_ = [d for d in domains_ if d in set(t["domain"])] or sorted(t["domain"].unique())
    sub = t[t["term"].isin(keep) & t["domain"].isin(domains_) & (t["fdr"] < fdr if terms is None else True)]
    xi = {d: i for i, d in enumerate(domains_)}
    yi = {term: i for i, term in enumerate(keep[::-1])}  # most significant on top
    logq = -np.log10(np.clip(sub["fdr"].to_numpy(dtype=float), 1e-300, 1))
    orr = np.clip(sub["odds_ratio"].to_numpy(dtype=float), 0, None)
    cap = max(float(np.nanpercentile(orr, 95)) if orr.size else 1.0, 1.0)
    sizes = 20 + 180 * np.clip(orr, 0, cap) / cap

    label = [k.removeprefix("HALLMARK_") if strip_prefix else k for k in keep[::-1]]
    fig, ax_ = new_axes(ax, figsize=(3.0 + 0.45 * len(domains_) + 2.0, max(2.5, 0.8 + 0.28 * len(keep))))
    scat = ax_.scatter(
        [xi[d] for d in sub["domain"]],
        [yi[term] for term in sub["term"]],
        s=sizes,
        c=logq,
        cmap=cmap,
        vmin=0,
        edgecolors="black",
        linewidths=0.3,
    )
    ax_.set_xticks(range(len(domains_)))
    ax_.set_xticklabels(domains_)
    ax_.set_yticks(range(len(keep)))
    ax_.set_yticklabels(label, fontsize="small")
    ax_.set_xlim(-0.6, len(domains_) - 0.4)
    ax_.set_ylim(-0.6, len(keep) - 0.4)
    ax_.set_xlabel("domain")
    ax_.grid(True, linewidth=0.3, alpha=0.5)
    ax_.set_axisbelow(True)
    cb = fig.colorbar(scat, ax=ax_, fraction=0.05, pad=0.02)
    cb.set_label("−log10 FDR")
    if orr.size:
        ref = [v for v in (1.0, cap / 2, cap) if v > 0]
        handles = [
            ax_.scatter([], [], s=20 + 180 * v / cap, color="grey", edgecolors="black", linewidths=0.3) for v in ref
        ]
        ax_.legend(
            handles,
            [f"{v:.3g}" for v in ref],
            title="odds ratio",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            ncol=len(ref),
            frameon=False,
            fontsize="small",
        )
    return finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)
