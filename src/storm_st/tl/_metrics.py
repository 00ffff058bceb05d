"""Agreement and spatial-coherence metrics of spatial domains (paper, Methods "spatial domain discovery")."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import get_adata

if TYPE_CHECKING:
    from anndata import AnnData

METRICS = ("NMI", "ARI", "FMI", "HOM", "COM", "CHAOS", "PAS", "ASW")
_PAS_K = 10  # neighbours looked at by PAS
_PAS_THRESHOLD = 6  # a spot is abnormal when MORE than this many of them carry another label
_ASW_MAX_SPOTS = 20000  # beyond this many spots the silhouette is estimated on a random subsample


def _labels(adata: AnnData, key: str, what: str, how: str) -> np.ndarray:
    if key not in adata.obs:
        raise KeyError(f"adata.obs[{key!r}] ({what}) not found; {how}. Columns are: {list(adata.obs.columns)}.")
    col = adata.obs[key]
    n_na = int(col.isna().sum())
    if n_na:
        raise ValueError(
            f"{n_na} of {adata.n_obs} spots have no label (NaN) in adata.obs[{key!r}]; metrics are only defined "
            f"on labelled spots. Subset first, e.g. adata = adata[adata.obs[{key!r}].notna()].copy()."
        )
    return col.astype(str).to_numpy()


def _scale(coords: np.ndarray) -> np.ndarray:
    """Z-score each coordinate (sample SD, as R's ``scale``); constant columns are only centred."""
    coords = coords - coords.mean(axis=0)
    sd = coords.std(axis=0, ddof=1) if coords.shape[0] > 1 else np.ones(coords.shape[1])
    sd = np.where(sd > 0, sd, 1.0)
    return coords / sd


def chaos_score(labels: np.ndarray, coords: np.ndarray) -> float:
    """CHAOS of Shang & Zhou (2022): mean within-domain 1-NN distance on z-scored coordinates (lower = smoother).

    For each domain, every spot is linked to its nearest spot of the same domain; the distances of all these
    links are summed over domains and divided by the number of spots. Domains of a single spot add 0.
    """
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    xy = _scale(np.asarray(coords, dtype=np.float64))
    total = 0.0
    for lab in np.unique(labels):
        pts = xy[labels == lab]
        if pts.shape[0] < 2:
            continue
        dist, _ = NearestNeighbors(n_neighbors=2).fit(pts).kneighbors(pts)
        total += float(dist[:, 1].sum())  # column 0 is the spot itself
    return total / labels.shape[0]


def pas_score(labels: np.ndarray, coords: np.ndarray, *, k: int = _PAS_K, threshold: int = _PAS_THRESHOLD) -> float:
    """PAS of Shang & Zhou (2022): fraction of spots with more than ``threshold`` of their ``k`` nearest neighbours in other domains."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    n = labels.shape[0]
    k_eff = min(k, n - 1)
    if k_eff < 1:
        return float("nan")
    _, idx = NearestNeighbors(n_neighbors=k_eff + 1).fit(coords).kneighbors(coords)
    nbr = idx[:, 1:]  # drop the spot itself (distance 0, first)
    n_diff = (labels[nbr] != labels[:, None]).sum(axis=1)
    return float((n_diff > threshold).mean())


def asw_score(X: np.ndarray, labels: np.ndarray, *, random_state: int = 0) -> float:
    """Average silhouette width of ``X`` by ``labels`` (Euclidean), rescaled to [0, 1] as ``(s + 1) / 2``."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    n_lab = len(np.unique(labels))
    if n_lab < 2 or n_lab >= labels.shape[0]:
        return float("nan")
    sample = _ASW_MAX_SPOTS if labels.shape[0] > _ASW_MAX_SPOTS else None
    s = silhouette_score(X, labels, sample_size=sample, random_state=random_state)
    return float((s + 1.0) / 2.0)


def domain_metrics(
    adata: Any,
    labels_key: str,
    *,
    domains_key: str = Keys.DOMAIN,
    use_rep: str | None = Keys.X_STORM,
    spatial_key: str = Keys.SPATIAL,
    table_key: str | None = None,
) -> pd.DataFrame:
    r"""Score spatial domains against annotations and for spatial coherence.

    The eight metrics of the STORM benchmark (paper, Fig. 2D–F), defined as in the spatial clustering
    literature:

    - ``NMI``, ``ARI``, ``FMI``, ``HOM``, ``COM``: agreement of ``obs[domains_key]`` (clusters) with
      ``obs[labels_key]`` (ground truth), from :mod:`sklearn.metrics`:
      :func:`~sklearn.metrics.normalized_mutual_info_score` (arithmetic normalisation),
      :func:`~sklearn.metrics.adjusted_rand_score`, :func:`~sklearn.metrics.fowlkes_mallows_score`,
      :func:`~sklearn.metrics.homogeneity_score` (each domain holds one annotated class) and
      :func:`~sklearn.metrics.completeness_score` (each class falls in one domain). Higher is better.
    - ``CHAOS`` (Shang & Zhou, *Spatially aware dimension reduction for spatial transcriptomics*, Nat Commun
      13, 7203, 2022; SpatialPCA ``fx_CHAOS``): coordinates ``obsm[spatial_key]`` are z-scored per axis
      (sample SD); within each domain every spot is joined to its nearest spot of that domain, and
      :math:`\mathrm{CHAOS} = \frac{1}{n}\sum_k \sum_{i \in k} d_{i, \mathrm{NN}_k(i)}`. Single-spot domains
      add 0. Lower is smoother.
    - ``PAS`` (same reference, ``fx_PAS``): fraction of spots for which more than 6 of their 10 nearest
      spatial neighbours (raw coordinates, the spot itself excluded) belong to another domain. With fewer
      than 11 spots, all other spots are the neighbours. Lower is better.
    - ``ASW``: silhouette width of the embedding ``obsm[use_rep]`` (Euclidean) grouped by the domains,
      averaged over spots (:func:`sklearn.metrics.silhouette_score`; on a random subsample of 20,000 spots
      for larger slides) and rescaled to [0, 1] as :math:`(s + 1) / 2`. ``NaN`` when ``use_rep=None``.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` (then the table ``table_key``).
    labels_key
        Column of :attr:`~anndata.AnnData.obs` with the ground-truth annotation (e.g. pathologist regions).
        Spots without a label (NaN) are an error: subset to the annotated spots first.
    domains_key
        Column of :attr:`~anndata.AnnData.obs` with the domains (written by :func:`storm_st.tl.domains`).
    use_rep
        Embedding for ASW; ``None`` skips ASW.
    spatial_key
        Spot coordinates in :attr:`~anndata.AnnData.obsm` for CHAOS and PAS.
    table_key
        Table of a SpatialData object.

    Returns
    -------
    One-row :class:`~pandas.DataFrame` indexed by ``domains_key`` with columns ``NMI``, ``ARI``, ``FMI``,
    ``HOM``, ``COM``, ``CHAOS``, ``PAS``, ``ASW``. Nothing is written into ``adata``.
    """
    from sklearn import metrics as skm

    adata = get_adata(adata, table_key)
    truth = _labels(adata, labels_key, "ground-truth labels", "pass the annotation column as labels_key")
    pred = _labels(adata, domains_key, "spatial domains", "run storm_st.tl.domains(adata) first")
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{spatial_key!r}] (spot coordinates) not found; read the slide with storm_st.io or pass "
            "spatial_key=."
        )
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    X = None
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise KeyError(
                f"adata.obsm[{use_rep!r}] not found for ASW; run storm_st.tl.embed(adata) first, pass another "
                "use_rep=, or use_rep=None to skip ASW."
            )
        X = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if adata.n_obs <= _PAS_K:
        warnings.warn(
            f"Only {adata.n_obs} spots: PAS uses all {adata.n_obs - 1} other spots instead of 10 neighbours.",
            UserWarning,
            stacklevel=2,
        )

    row = {
        "NMI": skm.normalized_mutual_info_score(truth, pred),
        "ARI": skm.adjusted_rand_score(truth, pred),
        "FMI": skm.fowlkes_mallows_score(truth, pred),
        "HOM": skm.homogeneity_score(truth, pred),
        "COM": skm.completeness_score(truth, pred),
        "CHAOS": chaos_score(pred, coords),
        "PAS": pas_score(pred, coords),
        "ASW": asw_score(X, pred) if X is not None else float("nan"),
    }
    return pd.DataFrame({k: [float(v)] for k, v in row.items()}, index=pd.Index([domains_key], name="domains"))
