"""Gene vocabulary alignment and normalisation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from storm_st._constants import Keys
from storm_st._utils import check_counts

if TYPE_CHECKING:
    from anndata import AnnData

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "symbol", "gene_name", "feature_name", "gene_short_name")


def _is_ensembl(names: np.ndarray) -> bool:
    if len(names) == 0:
        return False
    sample = names[: min(200, len(names))]
    return np.mean([bool(_ENSEMBL.match(str(n))) for n in sample]) > 0.5


def gene_symbols(adata: AnnData) -> np.ndarray:
    """Upper-case gene symbols of ``adata.var`` (Ensembl ids mapped through a symbol column when present)."""
    names = np.asarray(adata.var_names, dtype=object)
    if _is_ensembl(names):
        for col in _SYMBOL_COLUMNS:
            if col in adata.var:
                sym = adata.var[col].astype(object).to_numpy()
                names = np.array([s if isinstance(s, str) and s else n for s, n in zip(sym, names, strict=True)])
                break
    return np.array([str(n).upper() for n in names], dtype=object)


def _ensembl_ids(adata: AnnData) -> np.ndarray | None:
    names = np.asarray(adata.var_names, dtype=object)
    if _is_ensembl(names):
        return np.array([str(n).split(".")[0].upper() for n in names], dtype=object)
    for col in ("gene_ids", "gene_id", "ensembl_id"):
        if col in adata.var:
            return np.array([str(n).split(".")[0].upper() for n in adata.var[col]], dtype=object)
    return None


@dataclass
class GeneAlignment:
    """Mapping of a slide's genes onto a model vocabulary.

    Attributes
    ----------
    columns
        For each vocabulary gene, the column of ``adata`` holding it, or ``-1`` when absent.
    present
        Boolean mask over the vocabulary (genes measured on this slide).
    n_matched
        Number of vocabulary genes found.
    n_vocab
        Vocabulary size.
    n_var
        Number of genes of the slide.
    """

    columns: np.ndarray
    present: np.ndarray
    n_matched: int
    n_vocab: int
    n_var: int

    @property
    def coverage(self) -> float:
        """Fraction of the vocabulary measured on the slide."""
        return self.n_matched / max(self.n_vocab, 1)

    def summary(self) -> str:
        """One-line description."""
        return (
            f"{self.n_matched} of {self.n_vocab} vocabulary genes matched ({100 * self.coverage:.1f} %) "
            f"among the slide's {self.n_var} genes"
        )


def align_genes(adata: AnnData, vocabulary: list[str] | np.ndarray, *, min_genes: int = 1) -> GeneAlignment:
    """Map ``adata``'s genes onto ``vocabulary`` by symbol (case-insensitive) or Ensembl id.

    Parameters
    ----------
    adata
        The slide(s).
    vocabulary
        Gene names of the model (symbols, or Ensembl ids).
    min_genes
        Raise a :class:`ValueError` when fewer genes match.

    Returns
    -------
    The alignment (columns, presence mask, coverage).
    """
    vocab = np.array([str(g).split(".")[0].upper() if _ENSEMBL.match(str(g)) else str(g).upper() for g in vocabulary])
    lookup: dict[str, int] = {}
    ens = _ensembl_ids(adata)
    if ens is not None:
        for j, g in enumerate(ens):
            lookup.setdefault(g, j)
    for j, g in enumerate(gene_symbols(adata)):
        lookup.setdefault(g, j)
    columns = np.array([lookup.get(g, -1) for g in vocab], dtype=np.int64)
    present = columns >= 0
    al = GeneAlignment(columns, present, int(present.sum()), len(vocab), adata.n_vars)
    if al.n_matched < min_genes:
        example = ", ".join(map(str, adata.var_names[:3]))
        raise ValueError(
            f"No usable gene overlap: {al.summary()} (need at least {min_genes}). The slide's genes look like "
            f"'{example}'; the model expects symbols such as '{vocab[0]}'. Put symbols in var_names or in "
            "var['gene_symbols']."
        )
    return al


def _counts_matrix(adata: AnnData, layer: str | None):
    if layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not in adata.layers ({', '.join(adata.layers) or 'none'}).")
        return adata.layers[layer]
    if Keys.COUNTS_LAYER in adata.layers:
        return adata.layers[Keys.COUNTS_LAYER]
    return adata.X


def expression_source(adata: AnnData, layer: str | None = None):
    """The matrix the expression input is computed from, and whether it is already log-normalised.

    ``layer``, else ``layers['counts']`` when present, else ``X``; ``X`` counts as log-normalised when
    ``uns['log1p']`` says so, and a layer when storm_st's normalisation record names it.
    """
    X = _counts_matrix(adata, layer)
    already_log = layer is None and Keys.COUNTS_LAYER not in adata.layers and ("log1p" in adata.uns)
    if layer is not None and layer == adata.uns.get(Keys.NORMALIZATION, {}).get("layer"):
        already_log = True
    return X, already_log


def log_normalize(X, target_sum: float = 1e4):
    """Library-size normalisation to ``target_sum`` then ``log1p``; dense float32 output."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float32, copy=False)
    tot = X.sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    return np.log1p(X / tot * target_sum).astype(np.float32)


class ExpressionRows:
    """Log-normalised expression over a model vocabulary, computed for the rows asked for.

    Holds a reference to the slide's count matrix (no copy) and its library sizes; indexing
    (``rows[10:20]``, ``rows[np.array([...])]``) returns dense ``float32`` rows ``(k, V)`` with 0 for
    vocabulary genes absent from the slide. This keeps memory flat in the number of spots: only the
    rows of one batch are ever densified. :func:`expression_input` is the dense, whole-slide form.
    """

    def __init__(self, X, alignment: GeneAlignment, *, already_log: bool, target_sum: float = 1e4):
        self._X = X
        self._alignment = alignment
        self._cols = alignment.columns[alignment.present]
        self._already_log = already_log
        self._target_sum = float(target_sum)
        self._rows = None  # positions in X of this object's rows (set by :meth:`take`); None = all, in order
        self._totals = None
        if not already_log:
            tot = np.asarray(X.sum(axis=1), dtype=np.float32).reshape(-1)  # library size over all genes
            tot[tot == 0] = 1.0
            self._totals = tot

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_spots, vocabulary size)``."""
        n = self._X.shape[0] if self._rows is None else len(self._rows)
        return n, len(self._alignment.columns)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows) -> ExpressionRows:
        """The same expression restricted to ``rows`` (positions in this object), without copying counts."""
        rows = np.asarray(rows, dtype=np.int64)
        out = object.__new__(ExpressionRows)
        out.__dict__.update(self.__dict__)
        out._rows = rows if self._rows is None else self._rows[rows]
        return out

    def __getitem__(self, idx) -> np.ndarray:
        pos = np.arange(*idx.indices(len(self))) if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64).reshape(-1)
        src = pos if self._rows is None else self._rows[pos]
        sub = self._X[src][:, self._cols]
        sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
        sub = sub.astype(np.float32, copy=False)
        if not self._already_log:
            sub = np.log1p(sub / self._totals[src, None] * self._target_sum)
        out = np.zeros((len(src), self.shape[1]), dtype=np.float32)
        out[:, self._alignment.present] = sub
        return out

    def to_array(self, block: int = 8192) -> np.ndarray:
        """All rows as one dense ``(n, V)`` float32 array, built block by block."""
        out = np.empty(self.shape, dtype=np.float32)
        for s in range(0, len(self), block):
            out[s : s + block] = self[s : s + block]
        return out


def expression_rows(
    adata: AnnData, alignment: GeneAlignment, *, layer: str | None = None, target_sum: float = 1e4, check: bool = True
) -> ExpressionRows:
    """:class:`ExpressionRows` of ``adata`` over ``alignment``: the lazy form of :func:`expression_input`."""
    X, already_log = expression_source(adata, layer)
    if check:
        check_counts(X, integer=not already_log, what=f"adata.layers[{layer!r}]" if layer else "adata.X")
    if sp.issparse(X):
        X = X if X.format == "csr" else X.tocsr()  # row access; a CSR matrix is used as is, not copied
    else:
        X = np.asarray(X)
    return ExpressionRows(X, alignment, already_log=already_log, target_sum=target_sum)


def expression_input(
    adata: AnnData, alignment: GeneAlignment, *, layer: str | None = None, target_sum: float = 1e4, check: bool = True
) -> np.ndarray:
    """Log-normalised expression of every spot over the model vocabulary (0 for absent genes).

    ``layer`` (default ``layers['counts']`` if present, else ``X``) must hold raw counts, unless
    ``adata.uns['storm_normalization']`` or ``adata.uns['log1p']`` records that it is already
    library-size normalised and log-transformed, in which case it is used as is. Dense ``(n, V)``
    float32; :func:`expression_rows` gives the same values a batch at a time.
    """
    return expression_rows(adata, alignment, layer=layer, target_sum=target_sum, check=check).to_array()


def normalize(
    adata: AnnData,
    *,
    target_sum: float = 1e4,
    layer: str | None = None,
    key_added: str = Keys.LOG1P_LAYER,
    copy: bool = False,
) -> AnnData | None:
    """Library-size normalise raw counts and ``log1p`` them into ``layers[key_added]``.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` (or ``layer``).
    target_sum
        Counts per spot after normalisation.
    layer
        Layer of raw counts; default ``layers['counts']`` when present, else ``X``.
    key_added
        Layer written.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None`` or the copy, with ``layers[key_added]`` (sparse CSR float32) and
    ``uns['storm_normalization']`` recording the parameters.
    """
    X = _counts_matrix(adata, layer)
    check_counts(X, integer=True, what=f"adata.layers[{layer!r}]" if layer else "adata.X")
    Xn = sp.csr_matrix(log_normalize(X, target_sum))
    if copy:
        adata = adata.copy()
    adata.layers[key_added] = Xn
    adata.uns[Keys.NORMALIZATION] = {"target_sum": float(target_sum), "log1p": True, "layer": key_added, "source": layer or "X"}
    return adata if copy else None


def select_hvgs(adatas: AnnData | list[AnnData], n_top_genes: int = 2000, *, layer: str | None = None) -> list[str]:
    """Highly variable genes of one or several slides, as upper-case symbols.

    Scanpy's ``seurat_v3`` flavour on raw counts (variance-stabilised, so lowly expressed noisy genes do
    not dominate), with each slide as a batch: genes are ranked by how many slides call them variable,
    then by their median rank over the slides. Only genes measured on every slide are candidates.

    Parameters
    ----------
    adatas
        Slides with raw counts.
    n_top_genes
        Number of genes returned.
    layer
        Layer of raw counts (default ``layers['counts']`` when present, else ``X``).

    Returns
    -------
    Gene symbols, most variable first.
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    if not isinstance(adatas, list | tuple):
        adatas = [adatas]
    parts = []
    for i, a in enumerate(adatas):
        if a.n_vars == 0 or a.n_obs < 3:
            continue
        X = _counts_matrix(a, layer)
        check_counts(X, integer=True, what="counts")
        b = ad.AnnData(sp.csr_matrix(X, dtype=np.float32))
        b.var_names = pd.Index(gene_symbols(a)).astype(str)
        b = b[:, ~b.var_names.duplicated()].copy()
        b.obs_names = [f"{i}_{j}" for j in range(b.n_obs)]
        parts.append(b)
    if not parts:
        raise ValueError("No slide with genes and at least 3 spots to select highly variable genes from.")
    cat = ad.concat(parts, join="inner", label="slide") if len(parts) > 1 else parts[0]
    cat = cat[:, np.asarray(cat.X.sum(0)).ravel() > 0].copy()
    n = min(n_top_genes, cat.n_vars)
    sc.pp.highly_variable_genes(
        cat, flavor="seurat_v3", n_top_genes=n, batch_key="slide" if len(parts) > 1 else None
    )
    var = cat.var
    if "highly_variable_nbatches" in var:
        var = var.sort_values(["highly_variable_nbatches", "highly_variable_rank"], ascending=[False, True])
    else:
        var = var.sort_values("highly_variable_rank")
    return [str(g) for g in var.index[:n]]
