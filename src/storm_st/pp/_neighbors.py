"""Neighbour windows: each spot's k nearest spots of the same slide (KD-tree, no dense distances)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from storm_st._constants import DEFAULT_RADIUS_FACTOR, Keys, Platform
from storm_st.io._slide import slide_views

if TYPE_CHECKING:
    from anndata import AnnData


def knn_window(
    coords: np.ndarray, k: int, *, radius_factor: float | None = DEFAULT_RADIUS_FACTOR, pitch: float | None = None
) -> np.ndarray:
    """Indices of the ``k`` nearest points of each point (itself first), ``-1`` where padded.

    Parameters
    ----------
    coords
        ``(n, 2)`` coordinates of one slide (any unit).
    k
        Window size (25 for a 5 x 5 Visium window, 9 for cells).
    radius_factor
        Neighbours farther than ``radius_factor`` x the lattice pitch are dropped (padded with ``-1``),
        so spots at tissue edges get partial windows rather than far-away spots. ``None`` keeps all k.
    pitch
        Lattice pitch; default the median nearest-neighbour distance.

    Returns
    -------
    ``(n, k)`` int64 array of row indices into ``coords``.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = len(coords)
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0:
        return out
    kk = min(k, n)
    tree = cKDTree(coords)
    dist, idx = tree.query(coords, k=kk)
    dist = np.asarray(dist).reshape(n, kk)
    idx = np.asarray(idx).reshape(n, kk)
    # put each point first even when it has exact duplicates at distance 0
    self_pos = np.argmax(idx == np.arange(n)[:, None], axis=1)
    has_self = (idx == np.arange(n)[:, None]).any(axis=1)
    rows = np.arange(n)[has_self]
    first = idx[rows, 0].copy()
    idx[rows, self_pos[has_self]] = first
    idx[rows, 0] = rows
    if radius_factor is not None and n > 1:
        if pitch is None:
            nn = tree.query(coords, k=2)[0][:, 1]
            nn = nn[nn > 0]
            pitch = float(np.median(nn)) if len(nn) else 0.0
        if pitch > 0:
            idx = np.where(dist <= radius_factor * pitch * (1 + 1e-6), idx, -1)
    out[:, :kk] = idx
    return out


def window_offsets(xy: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """``(n, k, 2)`` float32 offsets of each window member from its centre spot (0 for padding ``-1``)."""
    d = xy[np.clip(windows, 0, None)] - xy[:, None, :]
    d[windows < 0] = 0
    return d.astype(np.float32)


def neighbor_windows(
    adata: AnnData,
    *,
    k: int | None = None,
    library_key: str | None = None,
    radius_factor: float | None = DEFAULT_RADIUS_FACTOR,
    key_added: str = Keys.NEIGHBORS,
    copy: bool = False,
) -> AnnData | None:
    """Neighbour window of every spot: its ``k`` nearest spots on the same slide.

    Hexagonal Visium, square legacy-ST / Visium HD lattices and irregular cells are all handled by
    physical distance, not by array indices. Scales to millions of spots (KD-tree queries only).

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']``; several slides are kept apart by ``library_key``.
    k
        Window size; default 25 (5 x 5) for spot platforms and 9 for cell-level platforms.
    library_key
        Column of ``obs`` naming the slide of each spot (default ``'library_id'`` when present).
    radius_factor
        Neighbours farther than this many lattice pitches are padded (``-1``).
    key_added
        Key in :attr:`~anndata.AnnData.obsm` for the index table.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None`` (or the copy), with

    - ``obsm[key_added]``: ``(n_spots, k)`` int64 indices into ``adata`` (self first, ``-1`` = padding);
    - ``obsm[key_added + '_offsets']``: ``(n_spots, 2k)`` float32 offsets ``(dx, dy)`` in µm of each
      neighbour from the centre spot (0 for padding; pixels when the scale is unknown);
    - ``uns[key_added]``: parameters.
    """
    views = slide_views(adata, library_key=library_key)
    if adata.n_obs == 0:
        raise ValueError("adata has no spots (n_obs == 0).")
    table = None
    offsets = None
    ks = []
    for view in views:
        kv = k if k is not None else Platform.WINDOW.get(view.platform, 25)
        ks.append(kv)
    kmax = max(ks)
    table = np.full((adata.n_obs, kmax), -1, dtype=np.int64)
    offsets = np.zeros((adata.n_obs, kmax, 2), dtype=np.float32)
    for view, kv in zip(views, ks, strict=True):
        scale = view.mpp if np.isfinite(view.mpp) else 1.0
        xy = view.coords_px * scale
        local = knn_window(xy, kv, radius_factor=radius_factor)
        glob = np.where(local >= 0, view.obs_indices[np.clip(local, 0, None)], -1)
        table[view.obs_indices, :kv] = glob
        offsets[view.obs_indices, :kv] = window_offsets(xy, local)
    # compute first, write last
    if copy:
        adata = adata.copy()
    adata.obsm[key_added] = table
    adata.obsm[key_added + "_offsets"] = offsets.reshape(adata.n_obs, -1)
    adata.uns[key_added] = {"params": {"k": int(kmax), "radius_factor": radius_factor, "library_key": library_key}}
    return adata if copy else None


#: immediate neighbours: within this many lattice pitches (8 on a square grid, 6 on a hexagonal one)
RING_RADIUS_PITCHES = 1.6


def ring_mean_operator(adata: AnnData, *, library_key: str | None = None) -> sparse.csr_matrix:
    """Sparse ``(n_obs, n_obs)`` operator averaging each spot's immediate neighbours on its own slide.

    Immediate neighbours are the spots within :data:`RING_RADIUS_PITCHES` lattice pitches (physical
    distance, so square and hexagonal lattices and irregular layouts all work); the pitch is each slide's
    median nearest-neighbour distance. A spot without neighbours maps to itself.
    """
    rows, cols = [], []
    for view in slide_views(adata, library_key=library_key):
        xy = view.coords_px * (view.mpp if np.isfinite(view.mpp) else 1.0)
        local = knn_window(xy, min(13, max(len(xy), 1)), radius_factor=RING_RADIUS_PITCHES)[:, 1:]
        centre, slot = np.nonzero(local >= 0)
        lonely = np.setdiff1d(np.arange(len(xy)), centre)
        rows.append(view.obs_indices[np.concatenate([centre, lonely])])
        cols.append(view.obs_indices[np.concatenate([local[centre, slot], lonely])])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    a = sparse.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(adata.n_obs, adata.n_obs))
    deg = np.asarray(a.sum(axis=1)).ravel()
    return sparse.diags((1.0 / np.maximum(deg, 1)).astype(np.float32)) @ a


def smooth_with_neighbors(values: np.ndarray, operator: sparse.spmatrix, weight: float) -> np.ndarray:
    """``(1 - weight) * values + weight * operator @ values`` (float32, new array)."""
    values = np.asarray(values, dtype=np.float32)
    if weight == 0:
        return values.copy()
    return ((1.0 - weight) * values + weight * np.asarray(operator @ values)).astype(np.float32, copy=False)
