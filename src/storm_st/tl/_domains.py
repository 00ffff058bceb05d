"""Spatial domains: clustering of the STORM embedding (paper, Methods "spatial domain discovery")."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import get_adata

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

_METHODS = ("kmeans", "leiden", "gmm")
_SILHOUETTE_SAMPLE = 5000  # silhouette is O(n^2): subsample beyond this many spots


def _get_embedding(adata: AnnData, use_rep: str) -> np.ndarray:
    """Return ``adata.obsm[use_rep]`` as a finite 2-D float array, or raise a message naming the missing call."""
    if use_rep not in adata.obsm:
        hint = (
            "run storm_st.tl.embed(adata) first"
            if use_rep.startswith(Keys.X_STORM)
            else "compute it first (e.g. storm_st.tl.embed or sc.pp.pca)"
        )
        raise KeyError(
            f"adata.obsm[{use_rep!r}] not found; {hint}, or pass use_rep= one of {sorted(adata.obsm.keys())}."
        )
    X = adata.obsm[use_rep]
    X = X.to_numpy() if isinstance(X, pd.DataFrame) else X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"adata.obsm[{use_rep!r}] must be 2-D (spots x features), got shape {X.shape}.")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has NaN or infinite values in {int(bad.sum())} of {X.shape[0]} spots; "
            "subset to the finite spots (e.g. adata[np.isfinite(adata.obsm[use_rep]).all(1)].copy()) first."
        )
    return X


def _check_k(ks: list[int], n_obs: int) -> None:
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise TypeError(f"n_domains must be an int or an iterable of ints, got {k!r}.")
        if k < 2:
            raise ValueError(f"n_domains must be at least 2, got {k}.")
        if k >= n_obs:
            raise ValueError(f"n_domains={k} must be smaller than the number of spots ({n_obs}).")


def _silhouette(X: np.ndarray, labels: np.ndarray, random_state: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    sample = _SILHOUETTE_SAMPLE if X.shape[0] > _SILHOUETTE_SAMPLE else None
    return float(silhouette_score(X, labels, sample_size=sample, random_state=random_state))


def _kmeans(X: np.ndarray, k: int, random_state: int, kwargs: dict[str, Any]) -> np.ndarray:
    from sklearn.cluster import KMeans

    opts = {"n_init": 10} | kwargs
    return KMeans(n_clusters=k, random_state=random_state, **opts).fit_predict(X)


def _gmm(X: np.ndarray, k: int, random_state: int, kwargs: dict[str, Any]) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    # diagonal covariances: full ones are unstable for embeddings with hundreds of dimensions
    opts = {"covariance_type": "diag", "n_init": 1, "reg_covar": 1e-5} | kwargs
    return GaussianMixture(n_components=k, random_state=random_state, **opts).fit_predict(X)


class _Leiden:
    """Leiden clustering on one kNN graph; :meth:`__call__` bisects the resolution to hit ``k`` clusters."""

    def __init__(self, X: np.ndarray, random_state: int, kwargs: dict[str, Any]) -> None:
        import anndata as ad
        import scanpy as sc

        try:
            import igraph  # noqa: F401
            import leidenalg  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "method='leiden' needs the igraph and leidenalg packages: pip install igraph leidenalg."
            ) from e
        kwargs = dict(kwargs)
        self.max_iter = int(kwargs.pop("max_iter", 40))
        self.n_neighbors = int(kwargs.pop("n_neighbors", 15))
        self.leiden_kwargs = kwargs
        self.random_state = random_state
        self.tmp = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(X.shape[0])]))
        self.tmp.obsm["X_rep"] = X
        sc.pp.neighbors(
            self.tmp, n_neighbors=min(self.n_neighbors, X.shape[0] - 1), use_rep="X_rep", random_state=random_state
        )
        self.resolution: float = float("nan")

    def _run(self, resolution: float) -> np.ndarray:
        import scanpy as sc

        opts = {"flavor": "igraph", "n_iterations": 2, "directed": False} | self.leiden_kwargs
        sc.tl.leiden(self.tmp, resolution=resolution, random_state=self.random_state, key_added="_leiden", **opts)
        return self.tmp.obs["_leiden"].astype(int).to_numpy()

    def __call__(self, k: int) -> np.ndarray:
        lo, hi = 0.0, 1.0
        labels = self._run(hi)
        while len(np.unique(labels)) < k and hi < 64:  # grow the bracket until it holds k clusters
            lo, hi = hi, hi * 2
            labels = self._run(hi)
        best = (abs(len(np.unique(labels)) - k), hi, labels)
        for _ in range(self.max_iter):
            n = len(np.unique(labels))
            if n == k:
                break
            mid = (lo + hi) / 2
            labels = self._run(mid)
            n = len(np.unique(labels))
            if abs(n - k) < best[0]:
                best = (abs(n - k), mid, labels)
            if n > k:
                hi = mid
            elif n < k:
                lo = mid
            else:
                best = (0, mid, labels)
                break
        gap, self.resolution, labels = best
        if gap:
            warnings.warn(
                f"Leiden: no resolution gave exactly {k} clusters; using resolution={self.resolution:.4g} "
                f"with {len(np.unique(labels))} clusters.",
                UserWarning,
                stacklevel=3,
            )
        return labels


def _relabel_by_size(labels: np.ndarray) -> pd.Categorical:
    """Labels ``"0".."K-1"``, ``"0"`` the largest cluster (ties: smaller original label first)."""
    uniq, counts = np.unique(labels, return_counts=True)
    order = sorted(range(len(uniq)), key=lambda i: (-counts[i], i))
    mapping = {uniq[i]: str(rank) for rank, i in enumerate(order)}
    cats = [str(i) for i in range(len(uniq))]
    return pd.Categorical([mapping[v] for v in labels], categories=cats)


def domains(
    adata: Any,
    n_domains: int | Iterable[int] = 7,
    *,
    use_rep: str = Keys.X_STORM,
    method: Literal["kmeans", "leiden", "gmm"] = "kmeans",
    key_added: str = Keys.DOMAIN,
    random_state: int = 0,
    method_kwargs: dict[str, Any] | None = None,
    table_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Cluster the STORM embedding into spatial domains.

    STORM clusters its multimodal spot embeddings with K-means (paper, Methods "spatial domain discovery");
    Leiden and a Gaussian mixture are offered as alternatives. When ``n_domains`` is an iterable (e.g.
    ``range(3, 11)``), every K is clustered and the one with the highest silhouette score of the embedding
    (Euclidean, :func:`sklearn.metrics.silhouette_score`, on at most 5,000 randomly sampled spots) is kept.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``).
    n_domains
        Number of domains K, or an iterable of candidate K values scanned by silhouette score.
    use_rep
        Embedding in :attr:`~anndata.AnnData.obsm` to cluster (written by :func:`storm_st.tl.embed`).
    method
        ``"kmeans"`` (:class:`sklearn.cluster.KMeans`, 10 initialisations), ``"gmm"``
        (:class:`sklearn.mixture.GaussianMixture`, diagonal covariances) or ``"leiden"``
        (:func:`scanpy.tl.leiden` on a 15-nearest-neighbour graph of ``use_rep``; the resolution giving K
        clusters is found by bisection).
    key_added
        Column of :attr:`~anndata.AnnData.obs` for the labels and key of :attr:`~anndata.AnnData.uns` for
        the parameters.
    random_state
        Seed of the clustering (and of the silhouette subsample). K-means can settle in another local optimum of
        similar inertia after the smallest change of the embedding: on HER2ST A1, two embeddings computed with one
        and two torch threads, differing by less than 1e-6, gave ARI 0.288 and 0.229 with the same seed. Compare
        domain results over several seeds rather than one.
    method_kwargs
        Extra keyword arguments of the estimator (``KMeans``, ``GaussianMixture`` or ``scanpy.tl.leiden``;
        for Leiden also ``n_neighbors`` of the kNN graph and ``max_iter`` of the bisection).
    table_key
        Table of a SpatialData object.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or with ``copy=True`` the modified :class:`~anndata.AnnData` (for SpatialData input: a copy of
    the table). Writes

    - ``obs[key_added]``: categorical domain labels ``"0"`` … ``"K-1"``, ``"0"`` the largest domain.
    - ``uns[key_added]["params"]``: ``n_domains`` (chosen K), ``method``, ``use_rep``, ``random_state``,
      ``silhouette`` (of the chosen clustering) and, for Leiden, ``resolution``.
    - ``uns[key_added]["scan"]``: only when several K were given: ``n_domains`` and ``silhouette`` arrays.
    """
    adata = get_adata(adata, table_key)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    X = _get_embedding(adata, use_rep)
    if isinstance(n_domains, Iterable) and not isinstance(n_domains, str):
        ks = sorted({int(k) if isinstance(k, np.integer) else k for k in n_domains})
        scan = True
        if not ks:
            raise ValueError("n_domains is an empty iterable; give at least one K.")
    else:
        ks, scan = [n_domains], False
    _check_k(ks, adata.n_obs)
    kwargs = dict(method_kwargs or {})

    runner = _Leiden(X, random_state, kwargs) if method == "leiden" else None
    results: dict[int, tuple[np.ndarray, float, float]] = {}
    for k in ks:
        if method == "kmeans":
            labels = _kmeans(X, k, random_state, kwargs)
        elif method == "gmm":
            labels = _gmm(X, k, random_state, kwargs)
        else:
            labels = runner(k)
        sil = _silhouette(X, labels, random_state) if scan or len(ks) == 1 else float("nan")
        results[k] = (labels, sil, runner.resolution if runner is not None else float("nan"))
        logger.info("domains: K=%d silhouette=%.4f", k, sil)

    if scan:
        sils = np.array([results[k][1] for k in ks])
        if np.isnan(sils).all():
            raise ValueError("No candidate K produced at least two clusters; cannot choose K by silhouette.")
        best_k = ks[int(np.nanargmax(sils))]
    else:
        best_k = ks[0]
    labels, sil, resolution = results[best_k]
    cat = _relabel_by_size(labels)

    params: dict[str, Any] = {
        "n_domains": int(best_k),
        "method": method,
        "use_rep": use_rep,
        "random_state": int(random_state),
        "silhouette": float(sil),
    }
    if method == "leiden":
        params["resolution"] = float(resolution)
    uns: dict[str, Any] = {"params": params}
    if scan:
        uns["scan"] = {"n_domains": np.asarray(ks, dtype=np.int64), "silhouette": sils.astype(np.float64)}

    # compute first, write last
    if copy:
        adata = adata.copy()
    adata.obs[key_added] = cat
    adata.uns[key_added] = uns
    return adata if copy else None
