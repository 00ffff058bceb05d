"""Marker genes of spatial domains and their MSigDB hallmark over-representation (paper, Methods)."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import data_dir, get_adata

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

_HALLMARK_FILES = {"human": "hallmarks_pathways_human.json", "mouse": "mouse_hallmarks.json"}
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "symbol", "feature_name")
RESULT_COLUMNS = ("domain", "term", "overlap", "set_size", "n_query", "odds_ratio", "pvalue", "fdr", "genes")


# ---------------------------------------------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------------------------------------------
def _check_groupby(adata: AnnData, groupby: str) -> pd.Series:
    if groupby not in adata.obs:
        how = "run storm_st.tl.domains(adata) first" if groupby == Keys.DOMAIN else "pass an existing obs column"
        raise KeyError(f"adata.obs[{groupby!r}] not found; {how}. Columns are: {list(adata.obs.columns)}.")
    col = adata.obs[groupby]
    n_na = int(col.isna().sum())
    if n_na:
        raise ValueError(
            f"{n_na} of {adata.n_obs} spots have no group (NaN) in adata.obs[{groupby!r}]; subset first, "
            f"e.g. adata = adata[adata.obs[{groupby!r}].notna()].copy()."
        )
    counts = col.astype(str).value_counts()
    small = counts[counts < 2]
    if len(counts) < 2:
        raise ValueError(f"adata.obs[{groupby!r}] has {len(counts)} group; at least 2 are needed to rank genes.")
    if len(small):
        raise ValueError(
            f"Groups of adata.obs[{groupby!r}] with fewer than 2 spots cannot be tested: {list(small.index)}."
        )
    return col


def _looks_like_counts(X: Any) -> bool:
    """Non-negative integers with values above what log1p-normalised data reach."""
    import scipy.sparse as sp

    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if vals.size == 0:
        return False
    vals = vals[:1_000_000]
    return bool((vals >= 0).all() and np.allclose(vals, np.round(vals)) and vals.max() > 20)


def _log_normalised_view(adata: AnnData, groupby: str, layer: str | None) -> tuple[AnnData, bool]:
    """A light AnnData (groupby + expression) holding log-normalised values; never touches ``adata``."""
    import anndata as ad
    import scanpy as sc

    if layer is not None and layer not in adata.layers:
        raise KeyError(f"adata.layers[{layer!r}] not found; layers are: {list(adata.layers.keys())}.")
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise ValueError("adata.X is empty; pass layer= with the expression to test.")
    tmp = ad.AnnData(
        X=X.copy(),
        obs=pd.DataFrame(
            {groupby: adata.obs[groupby].astype(str).astype("category").to_numpy()}, index=adata.obs_names
        ),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    normalised = _looks_like_counts(tmp.X)
    if normalised:
        tmp.X = tmp.X.astype(np.float32)
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    return tmp, normalised


def _rank(tmp: AnnData, groupby: str, method: str, key: str) -> dict[str, Any]:
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        sc.tl.rank_genes_groups(
            tmp, groupby, method=method, corr_method="benjamini-hochberg", use_raw=False, key_added=key, pts=True
        )
    return tmp.uns[key]


# ---------------------------------------------------------------------------------------------------------------
# rank_domain_genes
# ---------------------------------------------------------------------------------------------------------------
def rank_domain_genes(
    adata: Any,
    groupby: str = Keys.DOMAIN,
    *,
    method: Literal["wilcoxon", "t-test", "t-test_overestim_var", "logreg"] = "wilcoxon",
    layer: str | None = None,
    key_added: str = Keys.RANK_GENES,
    table_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Rank the genes up-regulated in each spatial domain against all other spots.

    A thin wrapper of :func:`scanpy.tl.rank_genes_groups` (Wilcoxon rank-sum test, Benjamini–Hochberg
    correction, as in the STORM paper) on log-normalised expression. If the expression looks like raw counts
    (non-negative integers above 20), a copy is normalised to 10,000 counts per spot and ``log1p``-transformed;
    the user's ``X`` and layers are never modified.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``).
    groupby
        Column of :attr:`~anndata.AnnData.obs` with the groups (:func:`storm_st.tl.domains` writes
        ``"storm_domain"``).
    method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    layer
        Layer with the expression to test instead of ``X``.
    key_added
        Key of :attr:`~anndata.AnnData.uns` for the results.
    table_key
        Table of a SpatialData object.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or with ``copy=True`` the modified :class:`~anndata.AnnData`. Writes ``uns[key_added]`` in the
    layout of :func:`scanpy.tl.rank_genes_groups` (``names``, ``scores``, ``logfoldchanges``, ``pvals``,
    ``pvals_adj``, ``pts``, ``pts_rest``, ``params``), readable with
    ``sc.get.rank_genes_groups_df(adata, group, key=key_added)``; ``params["storm_normalized"]`` says whether
    counts were normalised on the fly.
    """
    adata = get_adata(adata, table_key)
    _check_groupby(adata, groupby)
    tmp, normalised = _log_normalised_view(adata, groupby, layer)
    res = _rank(tmp, groupby, method, key_added)
    res["params"]["layer"] = layer if layer is not None else "X"
    res["params"]["storm_normalized"] = bool(normalised)
    if copy:
        adata = adata.copy()
    adata.uns[key_added] = res
    return adata if copy else None


# ---------------------------------------------------------------------------------------------------------------
# gene sets
# ---------------------------------------------------------------------------------------------------------------
def _hallmark_file(organism: str) -> Path:
    if organism not in _HALLMARK_FILES:
        raise ValueError(f"organism must be one of {list(_HALLMARK_FILES)}, got {organism!r}.")
    name = _HALLMARK_FILES[organism]
    packaged = Path(__file__).resolve().parents[1] / "datasets" / "_data" / "genesets" / name
    if packaged.is_file():
        return packaged
    shared = data_dir() / "genesets" / name
    if shared.is_file():
        return shared
    raise FileNotFoundError(
        f"MSigDB hallmark gene sets for {organism!r} not found (looked for {packaged} and {shared}); pass "
        "gene_sets= as a dict, a GMT file or a source/target DataFrame."
    )


def _load_hallmarks(organism: str) -> dict[str, list[str]]:
    """MSigDB hallmark collection: ``storm_st.datasets.hallmarks`` when available, else the bundled JSON."""
    if organism not in _HALLMARK_FILES:
        raise ValueError(f"organism must be one of {list(_HALLMARK_FILES)}, got {organism!r}.")
    try:
        from storm_st.datasets import hallmarks  # provided by the datasets module

        return _normalise_sets(hallmarks(organism))
    except (ImportError, AttributeError, FileNotFoundError):
        pass
    with open(_hallmark_file(organism)) as f:
        return _normalise_sets(json.load(f))


def _read_gmt(path: Path) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n\r").split("\t")
            if len(parts) >= 3 and parts[0]:
                sets[parts[0]] = [g for g in parts[2:] if g]
    if not sets:
        raise ValueError(f"No gene sets read from GMT file {path} (expected: name<TAB>description<TAB>genes...).")
    return sets


def _normalise_sets(obj: Any) -> dict[str, list[str]]:
    """``{name: [genes]}`` from a dict (lists or MSigDB ``{"geneSymbols": [...]}`` entries) or a long DataFrame."""
    if isinstance(obj, pd.DataFrame):
        if not {"source", "target"} <= set(obj.columns):
            raise ValueError(
                f"A gene-set DataFrame needs 'source' and 'target' columns (decoupler layout); got {list(obj.columns)}."
            )
        return {str(k): [str(g) for g in v] for k, v in obj.groupby("source", observed=True)["target"]}
    if isinstance(obj, Mapping):
        out: dict[str, list[str]] = {}
        for name, genes in obj.items():
            if isinstance(genes, Mapping):
                if "geneSymbols" not in genes:
                    raise ValueError(f"Gene set {name!r} is a mapping without 'geneSymbols' (MSigDB JSON layout).")
                genes = genes["geneSymbols"]
            if isinstance(genes, str):
                raise TypeError(f"Gene set {name!r} must be a list of genes, got a string.")
            out[str(name)] = [str(g) for g in genes]
        return out
    raise TypeError(f"Unsupported gene_sets of type {type(obj).__name__}.")


def load_gene_sets(gene_sets: Any = "hallmark", *, organism: str = "human") -> dict[str, list[str]]:
    """Resolve ``gene_sets`` to ``{name: [gene symbols]}``.

    Parameters
    ----------
    gene_sets
        ``"hallmark"`` (MSigDB hallmark collection of ``organism``), a path to a ``.gmt`` or MSigDB ``.json``
        file, a dict ``{name: [genes]}`` or a decoupler-style DataFrame with ``source`` and ``target`` columns.
    organism
        ``"human"`` or ``"mouse"``, for ``"hallmark"``.

    Returns
    -------
    Dict of gene set name to list of genes.
    """
    if isinstance(gene_sets, str) and gene_sets.lower() in ("hallmark", "hallmarks"):
        return _load_hallmarks(organism)
    if isinstance(gene_sets, str | Path):
        path = Path(gene_sets)
        if not path.is_file():
            raise FileNotFoundError(f"gene_sets {str(gene_sets)!r} is neither 'hallmark' nor an existing file.")
        if path.suffix.lower() == ".json":
            with open(path) as f:
                return _normalise_sets(json.load(f))
        return _read_gmt(path)
    return _normalise_sets(gene_sets)


def _symbols(adata: AnnData, gene_symbols: str | None) -> pd.Index:
    """Gene symbols of ``adata.var``: a column when asked for (or when var_names are Ensembl IDs), else var_names.

    Genes without a symbol (missing, or still an Ensembl ID) are returned as ``""`` and kept out of the universe.
    """
    col = gene_symbols
    if col is not None:
        if col not in adata.var:
            raise KeyError(f"adata.var[{col!r}] not found; columns are: {list(adata.var.columns)}.")
    elif np.mean(adata.var_names.astype(str).str.upper().str.startswith("ENS")) > 0.5:
        col = next((c for c in _SYMBOL_COLUMNS if c in adata.var), None)
    if col is None:
        return pd.Index(adata.var_names.astype(str))
    sym = adata.var[col].astype(object).where(adata.var[col].notna(), "").astype(str)
    sym = sym.where(~sym.str.fullmatch(r"ENS[A-Z]*G\d+(\.\d+)?", case=False), "")
    return pd.Index(sym.to_numpy())


# ---------------------------------------------------------------------------------------------------------------
# hallmark_enrichment
# ---------------------------------------------------------------------------------------------------------------
def _select_up(df: pd.DataFrame, fdr: float, logfc_min: float, n_top: int | None) -> pd.DataFrame:
    if n_top is not None:
        return df[df["scores"] > 0].nlargest(n_top, "scores")
    return df[(df["pvals_adj"] < fdr) & (df["logfoldchanges"] > logfc_min)]


def hallmark_enrichment(
    adata: Any,
    groupby: str = Keys.DOMAIN,
    *,
    gene_sets: Any = "hallmark",
    organism: Literal["human", "mouse"] = "human",
    fdr: float = 0.05,
    logfc_min: float = 0.25,
    n_top: int | None = None,
    universe: Sequence[str] | None = None,
    gene_symbols: str | None = None,
    layer: str | None = None,
    rank_key: str = Keys.RANK_GENES,
    key_added: str = Keys.HALLMARK,
    table_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Over-representation of MSigDB hallmark gene sets among each domain's up-regulated genes.

    As in the STORM paper: genes up-regulated in each group (Wilcoxon rank-sum test with Benjamini–Hochberg
    correction, :func:`rank_domain_genes`; reused from ``uns[rank_key]`` when it was computed for the same
    ``groupby``, otherwise computed and written there too) are tested for over-representation in each gene set
    with a one-sided Fisher's exact test (hypergeometric upper tail, :func:`gseapy.enrich` run offline with the
    gene sets as a dict). FDR: Benjamini–Hochberg over all gene sets tested for that group
    (:func:`scipy.stats.false_discovery_control`; sets sharing no gene with the query enter with p = 1, so
    the correction is not limited to the sets that happen to overlap).

    Genes are matched to the gene sets case-insensitively; with Ensembl IDs as ``var_names`` the symbols are
    taken from ``var[gene_symbols]`` (auto-detected: ``gene_symbols``, ``gene_name``, ``symbol``, ...).

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``).
    groupby
        Column of :attr:`~anndata.AnnData.obs` with the groups (default: domains of :func:`storm_st.tl.domains`).
    gene_sets
        ``"hallmark"`` (MSigDB hallmark collection, Liberzon et al., Cell Systems 2015), a path to a GMT or
        MSigDB JSON file, a dict ``{name: [genes]}`` or a decoupler-style DataFrame (``source``, ``target``).
    organism
        ``"human"`` or ``"mouse"``: which hallmark collection.
    fdr
        Up-regulated genes: adjusted p-value below ``fdr`` …
    logfc_min
        … and log2 fold change above ``logfc_min``.
    n_top
        Instead of the two thresholds, take the ``n_top`` genes with the highest test statistic.
    universe
        Background genes (symbols). Default: all genes of ``adata`` (those that were tested).
    gene_symbols
        Column of :attr:`~anndata.AnnData.var` with gene symbols; default: auto-detected for Ensembl IDs.
    layer
        Expression layer for the ranking (see :func:`rank_domain_genes`).
    rank_key
        Key of the :func:`rank_domain_genes` results in :attr:`~anndata.AnnData.uns`.
    key_added
        Key of :attr:`~anndata.AnnData.uns` for the result table.
    table_key
        Table of a SpatialData object.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or with ``copy=True`` the modified :class:`~anndata.AnnData`. Writes

    - ``uns[key_added]``: tidy :class:`~pandas.DataFrame`, one row per (group, gene set) sharing at least one
      gene, columns ``domain``, ``term``, ``overlap`` (query genes in the set), ``set_size`` (set genes in the
      universe), ``n_query`` (up-regulated genes of the group in the universe), ``odds_ratio`` (gseapy's,
      Haldane–Anscombe corrected), ``pvalue``, ``fdr``, ``genes`` (``;``-separated), sorted by group and p-value.
    - ``uns[key_added + "_params"]``: the parameters, gene-matching counts and the number of sets tested.
    - ``uns[rank_key]``: the ranking, when it had to be computed.
    """
    import gseapy
    from scipy.stats import false_discovery_control

    adata = get_adata(adata, table_key)
    _check_groupby(adata, groupby)
    if not 0 < fdr <= 1:
        raise ValueError(f"fdr must be in (0, 1], got {fdr}.")
    if n_top is not None and n_top < 1:
        raise ValueError(f"n_top must be a positive integer, got {n_top}.")
    sets = load_gene_sets(gene_sets, organism=organism)

    symbols = _symbols(adata, gene_symbols)
    sym_upper = symbols.str.upper()
    uni = set(sym_upper) if universe is None else {str(g).upper() for g in universe}
    uni.discard("NAN")
    uni.discard("")
    sets_u = {name: sorted({g.upper() for g in genes} & uni) for name, genes in sets.items()}
    sets_u = {k: v for k, v in sets_u.items() if v}
    set_genes = set().union(*sets_u.values()) if sets_u else set()
    n_matched = len(set(sym_upper) & set_genes)
    if not sets_u:
        all_set_genes = {g.upper() for genes in sets.values() for g in genes}
        raise ValueError(
            f"No gene overlap with the gene sets: 0 of {adata.n_vars} genes of adata match any of the "
            f"{len(all_set_genes)} genes in {len(sets)} gene sets (case-insensitive). "
            f"First var_names: {list(adata.var_names[:3])}. If they are Ensembl IDs, put symbols in "
            "adata.var['gene_symbols'] (or pass gene_symbols=); check organism= too."
        )
    if n_matched < 50:
        warnings.warn(
            f"Only {n_matched} of {adata.n_vars} genes of adata are in the gene sets; enrichment has little power.",
            UserWarning,
            stacklevel=2,
        )

    # differential expression: reuse when computed for the same grouping, else compute (written at the end)
    rank_res = adata.uns.get(rank_key)
    computed_rank = False
    if not (isinstance(rank_res, Mapping) and rank_res.get("params", {}).get("groupby") == groupby):
        tmp, normalised = _log_normalised_view(adata, groupby, layer)
        rank_res = _rank(tmp, groupby, "wilcoxon", rank_key)
        rank_res["params"]["layer"] = layer if layer is not None else "X"
        rank_res["params"]["storm_normalized"] = bool(normalised)
        computed_rank = True

    name_to_symbol = dict(zip(adata.var_names.astype(str), symbols, strict=True))
    upper_to_symbol = {s.upper(): s for s in symbols}
    groups = [str(g) for g in rank_res["names"].dtype.names]
    background = sorted(uni)
    frames, n_query = [], {}
    for g in groups:
        df = pd.DataFrame({k: rank_res[k][g] for k in ("names", "scores", "logfoldchanges", "pvals_adj")})
        up = _select_up(df, fdr, logfc_min, n_top)
        query = sorted({name_to_symbol.get(str(n), str(n)).upper() for n in up["names"]} & uni)
        n_query[g] = len(query)
        if not query:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enr = gseapy.enrich(
                gene_list=query, gene_sets=sets_u, background=background, outdir=None, cutoff=1.0, no_plot=True
            )
        res = enr.results if enr is not None else None
        if res is None or len(res) == 0:
            continue
        p_all = pd.Series(1.0, index=list(sets_u))
        p_all.loc[res["Term"].to_numpy()] = res["P-value"].to_numpy()
        q_all = pd.Series(false_discovery_control(p_all.to_numpy(), method="bh"), index=p_all.index)
        overlap = res["Overlap"].str.split("/", expand=True).astype(int)
        frames.append(
            pd.DataFrame(
                {
                    "domain": g,
                    "term": res["Term"].astype(str).to_numpy(),
                    "overlap": overlap[0].to_numpy(),
                    "set_size": overlap[1].to_numpy(),
                    "n_query": len(query),
                    "odds_ratio": res["Odds Ratio"].astype(float).to_numpy(),
                    "pvalue": res["P-value"].astype(float).to_numpy(),
                    "fdr": q_all.loc[res["Term"].to_numpy()].to_numpy(),
                    "genes": [
                        ";".join(sorted(upper_to_symbol.get(x.upper(), x) for x in s.split(";")))
                        for s in res["Genes"].astype(str)
                    ],
                }
            )
        )
    if frames:
        table = pd.concat(frames, ignore_index=True)
        order = {g: i for i, g in enumerate(groups)}
        table = table.sort_values(["domain", "pvalue"], key=lambda s: s.map(order) if s.name == "domain" else s)
        table = table.reset_index(drop=True)
    else:
        table = pd.DataFrame(
            {c: pd.Series(dtype=float if c in ("odds_ratio", "pvalue", "fdr") else object) for c in RESULT_COLUMNS}
        )
        warnings.warn(
            f"No group of adata.obs[{groupby!r}] has up-regulated genes in the gene sets (fdr < {fdr}, "
            f"logFC > {logfc_min}); the result table is empty. Try n_top=.",
            UserWarning,
            stacklevel=2,
        )
    for c in ("domain", "term", "genes"):
        table[c] = table[c].astype(str)
    params = {
        "groupby": groupby,
        "gene_sets": gene_sets if isinstance(gene_sets, str) else type(gene_sets).__name__,
        "organism": organism,
        "fdr": float(fdr),
        "logfc_min": float(logfc_min),
        "n_top": -1 if n_top is None else int(n_top),
        "n_sets_tested": len(sets_u),
        "n_genes_matched": int(n_matched),
        "universe_size": len(uni),
        "n_query": {str(k): int(v) for k, v in n_query.items()},
        "test": "one-sided Fisher exact (gseapy.enrich), BH-FDR per group",
        "group_order": np.asarray(groups, dtype=object).astype(str),
        "rank_key": rank_key,
    }
    if copy:
        adata = adata.copy()
    if computed_rank:
        adata.uns[rank_key] = rank_res
    adata.uns[key_added] = table
    adata.uns[f"{key_added}_params"] = params
    return adata if copy else None
