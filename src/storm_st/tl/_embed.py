"""``tl.embed``: multimodal STORM embeddings of every spot from its neighbour window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storm_st._constants import Keys
from storm_st._utils import get_adata

from ._common import (
    encode_adata,
    model_hash,
    resolve_modalities,
    resolve_model,
    vocab_coverage,
    warn_low_count_spots,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from storm_st.models import StormModel


def embed(
    adata: AnnData | Any,
    model: StormModel | str | None = None,
    *,
    modalities: str = "auto",
    key_added: str = Keys.X_STORM,
    library_key: str | None = None,
    layer: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    tta: bool = False,
    table_key: str | None = None,
    show_progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Embed every spot with STORM, from its 5 x 5 neighbour window (9 neighbours for cells).

    The H&E backbone runs once per spot; the spatial encoder then fuses each spot's window of
    H&E and gene tokens (shared attention, modality experts, 2-D ALiBi on physical distances).

    Parameters
    ----------
    adata
        AnnData in the scanpy/squidpy Visium layout (``obsm['spatial']``, ``uns['spatial']``), or a
        SpatialData object (with ``table_key``). Raw counts in ``X`` (or ``layer``). Filter spots with
        almost no counts first (``sc.pp.filter_cells(adata, min_counts=10)``): when expression is used,
        spots under 10 counts draw a warning, as their normalised profile is extreme.
    model
        A :class:`~storm_st.models.StormModel`, a checkpoint path, or ``None`` for the embedded default.
    modalities
        ``'auto'`` (what the object has; an image far too coarse for morphology, such as a Visium
        low-res image alone, is left out with a warning), ``'he+st'``, ``'he'`` (H&E only) or ``'st'``
        (expression only).
    key_added
        Key of the embedding in :attr:`~anndata.AnnData.obsm`.
    library_key
        ``obs`` column naming the slide of each spot (windows never cross slides).
    layer
        Layer of raw counts (default ``layers['counts']`` if present, else ``X``).
    batch_size
        Spots per forward pass.
    device
        ``'cpu'``, ``'cuda'``...; default: a GPU when there is one.
    tta
        Average H&E embeddings over the 8 flips / rotations of each patch.
    table_key
        Table of a SpatialData object.
    show_progress
        Show a progress bar.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    - ``obsm[key_added]``: ``(n_spots, h)`` multimodal spatial embedding;
    - ``obsm['X_storm_he']``: H&E backbone features of each spot (when H&E is used);
    - ``obsm['X_storm_gene']``: gene-encoder tokens of each spot (when expression is used);
    - ``obsm['storm_neighbors']``: the neighbour windows used (``-1`` = padding);
    - ``uns['storm']``: provenance (model name and checkpoint hash, modalities, parameters, version; with H&E the
      field, side and pixel size of each slide's patches, ``patches``; with expression the share of the model's
      gene vocabulary measured on the slide, ``vocab_coverage``: below 25 % a warning says the embedding rests on
      few genes).
    """
    from storm_st import __version__

    ad = get_adata(adata, table_key)
    model = resolve_model(model)
    use_he, use_gene = resolve_modalities(ad, modalities, library_key, model)
    coverage = None
    if use_gene:
        warn_low_count_spots(ad, layer)
        coverage = vocab_coverage(ad, model)
    out = encode_adata(
        ad, model, use_he=use_he, use_gene=use_gene, library_key=library_key, layer=layer,
        batch_size=batch_size, device=device, tta=tta, show_progress=show_progress,
    )
    # compute first, write last
    if copy:
        ad = ad.copy()
    ad.obsm[key_added] = out["embedding"]
    if "he" in out:
        ad.obsm[Keys.X_STORM_HE] = out["he"]
    if "gene" in out:
        ad.obsm[Keys.X_STORM_GENE] = out["gene"]
    ad.obsm[Keys.NEIGHBORS] = out["neighbors"]
    ad.uns[Keys.UNS] = {
        "model": getattr(model, "name", model.config.name),
        "model_sha256": model_hash(model) or "",
        "modalities": "+".join(m for m, u in (("he", use_he), ("st", use_gene)) if u),
        "stain_normalized": use_he and model.config.stain_reference is not None,
        **({"bn_stats": model.config.bn_stats} if use_he else {}),
        **({"patches": out["patches"]} if use_he else {}),
        **({"vocab_coverage": coverage} if coverage is not None else {}),
        "key_added": key_added,
        "params": {"library_key": library_key or "", "layer": layer or "", "tta": tta, "batch_size": batch_size},
        "version": __version__,
    }
    return ad if copy else None
