"""NOVAE spot embeddings, the paper's frozen ST encoder, as an optional input of the gene encoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from storm_st._constants import Keys
from storm_st.io._slide import slide_views
from storm_st.pp._genes import _counts_matrix, gene_symbols

if TYPE_CHECKING:
    from anndata import AnnData


def _load_novae(model: Any):
    try:
        import novae
    except ImportError as e:
        raise ImportError(
            "storm_st.pp.novae_embeddings needs the optional 'novae' package: pip install novae "
            "(storm_st itself does not require it)."
        ) from e
    if isinstance(model, novae.Novae):
        return novae, model
    path = Path(str(model)).expanduser()
    try:
        return novae, novae.Novae.from_pretrained(str(path) if path.exists() else str(model))
    except Exception as e:  # a hub name while offline, or a folder that is not a saved NOVAE model
        raise ValueError(
            f"Could not load a NOVAE model from {str(model)!r} ({type(e).__name__}: {e}). Give a local folder written "
            "by Novae.save_pretrained (or a downloaded Hugging Face snapshot such as MICS-Lab/novae-human-0), "
            "or a novae.Novae instance."
        ) from e


def novae_embeddings(
    adata: AnnData,
    model: Any,
    *,
    key_added: str = Keys.NOVAE_LATENT,
    library_key: str | None = None,
    layer: str | None = None,
    radius_pitches: float = 1.6,
    zero_shot: bool = False,
    accelerator: str = "cpu",
) -> None:
    """Compute NOVAE spot embeddings for a STORM model whose gene encoder reads them.

    STORM's paper encodes each spot's expression with a frozen NOVAE model (64-d). A storm_st model
    configured with ``gene_input="obsm:novae_latent"`` reads these embeddings instead of the
    expression itself; the default checkpoint does not, and storm_st does not require ``novae``.

    Each slide gets its own spatial graph (Delaunay, edges shorter than ``radius_pitches`` x the
    median nearest-neighbour distance, coordinates in µm), then NOVAE encodes the spots. Only
    ``adata.obsm[key_added]`` is written; NOVAE runs on a light copy (counts, coordinates), so
    nothing else of ``adata`` changes.

    Parameters
    ----------
    adata
        AnnData in the storm_st / squidpy Visium layout with raw counts (``layer``, else
        ``layers['counts']``, else ``X``); several slides are told apart by ``library_key``.
    model
        A ``novae.Novae`` instance, a local folder written by ``Novae.save_pretrained`` (or a
        downloaded hub snapshot), or, when online, a hub name such as ``"MICS-Lab/novae-human-0"``.
    key_added
        ``obsm`` key written (``(n_obs, 64)`` float32 for the published models).
    library_key
        ``obs`` column naming each spot's slide (default ``'library_id'`` when present).
    layer
        Layer of raw counts.
    radius_pitches
        Longest graph edge, in multiples of the slide's spot pitch (drops edges across tissue gaps).
    zero_shot
        Passed to ``Novae.compute_representations``: ``True`` also re-fits NOVAE's domain prototypes on
        these slides (needs more than 512 spots); the embedding itself does not depend on it.
    accelerator
        ``"cpu"``, ``"cuda"``, ... for NOVAE's Lightning inference.

    Returns
    -------
    Nothing; sets ``adata.obsm[key_added]``.
    """
    import anndata as ad
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata has {adata.n_obs} spots and {adata.n_vars} genes; NOVAE needs expression of spots.")
    if radius_pitches <= 0:
        raise ValueError(f"radius_pitches must be positive, got {radius_pitches}.")
    novae, nv = _load_novae(model)
    counts = _counts_matrix(adata, layer)
    counts = sp.csr_matrix(counts, dtype=np.float32)
    symbols = gene_symbols(adata)
    views = slide_views(adata, library_key=library_key, require_scale=False)
    parts = []
    for v in views:
        xy = v.coords_um if np.isfinite(v.mpp) else v.coords_px
        a = ad.AnnData(X=counts[v.obs_indices], obsm={Keys.SPATIAL: np.asarray(xy, dtype=np.float64)})
        a.var_names = symbols
        a.var_names_make_unique()
        a.obs_names = [f"{v.library_id}-{i}" for i in range(v.n_spots)]
        d = cKDTree(xy).query(xy, k=min(2, len(xy)))[0]
        pitch = float(np.median(d[:, 1])) if len(xy) > 1 else 1.0
        novae.spatial_neighbors(a, radius=radius_pitches * pitch, verbose=False)
        parts.append(a)
    nv.compute_representations(parts, zero_shot=zero_shot, accelerator=accelerator, num_workers=0)
    out = None
    for v, a in zip(views, parts, strict=True):
        z = np.asarray(a.obsm[Keys.NOVAE_LATENT], dtype=np.float32)
        if out is None:
            out = np.zeros((adata.n_obs, z.shape[1]), dtype=np.float32)
        out[v.obs_indices] = z
    if not np.isfinite(out).all():
        raise ValueError(
            "NOVAE returned non-finite embeddings (spots without neighbours within the radius?); "
            "raise radius_pitches or drop isolated spots."
        )
    adata.obsm[key_added] = out
