"""Shared plumbing of the model-based verbs: model resolution, modalities, per-slide encoding."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from storm_st._constants import Platform
from storm_st._inference import D4, encode_slide
from storm_st._utils import check_batch_size, resolve_device
from storm_st.data import prepare_slides
from storm_st.io._slide import slide_views

if TYPE_CHECKING:
    from anndata import AnnData

    from storm_st.models import StormModel

logger = logging.getLogger("storm_st")

MODALITY_CHOICES = ("auto", "he+st", "he", "st")


@lru_cache(maxsize=1)
def _default_model():
    from storm_st.models import load_model

    return load_model("default")


def resolve_model(model: StormModel | str | None) -> StormModel:
    """``None`` -> the embedded default (cached), a name or path -> :func:`storm_st.load_model`."""
    from storm_st.models import StormModel, load_model

    if model is None:
        return _default_model()
    if isinstance(model, StormModel):
        return model
    return load_model(model)


#: ``'auto'`` leaves H&E out when the finest image is this many times coarser than the patches need
MAX_UPSAMPLING = 4.0


def _image_too_coarse(view, model: StormModel | None) -> bool:
    if model is None or not view.has_image or not np.isfinite(view.mpp):
        return False
    fov = model.config.patch_fov_um(view.spot_diameter_um, cell_level=view.platform in Platform.CELL_LEVEL)
    need = fov / model.config.patch_px(fov)
    return min(lv.mpp for lv in view.levels) > MAX_UPSAMPLING * need


def resolve_modalities(
    adata: AnnData, modalities: str, library_key: str | None, model: StormModel | None = None
) -> tuple[bool, bool]:
    """Which modalities to feed.

    ``'auto'`` uses what the object has; an image far too coarse for morphology (finest level more
    than 4x coarser than the patch resolution, e.g. a 12 µm/px Visium low-res image) is left out with
    a warning, and the expression is used alone.
    """
    if modalities not in MODALITY_CHOICES:
        raise ValueError(f"modalities must be one of {MODALITY_CHOICES}, got {modalities!r}.")
    if modalities == "he+st":
        return True, True
    if modalities == "he":
        return True, False
    if modalities == "st":
        return False, True
    views = slide_views(adata, library_key=library_key)
    has_img = all(v.has_image for v in views)
    has_gene = adata.n_vars > 0
    if has_img and has_gene and any(_image_too_coarse(v, model) for v in views):
        import warnings

        warnings.warn(
            "The H&E image is too coarse for spot morphology (finest level "
            f"{min(lv.mpp for v in views for lv in v.levels):.1f} µm/px); modalities='auto' uses expression only. "
            "Pass modalities='he+st' to use it anyway, or provide the full-resolution image.",
            UserWarning,
            stacklevel=3,
        )
        has_img = False
    if not has_img and not has_gene:
        raise ValueError("adata has neither an image (uns['spatial'][...]['images']) nor genes: nothing to embed.")
    return has_img, has_gene


#: Spots with fewer total counts than this get a warning from ``tl.embed`` (expression path).
LOW_COUNTS = 10


def warn_low_count_spots(adata: AnnData, layer: str | None, threshold: int = LOW_COUNTS) -> None:
    """Warn when some spots have almost no counts: normalised, one or two reads become an extreme profile.

    Reads the matrix the expression input is built from (``pp._genes.expression_source``); data
    already log-normalised have no library size to check.
    """
    from storm_st.pp._genes import expression_source

    if adata.n_vars == 0:
        return
    X, already_log = expression_source(adata, layer)
    if X is None or already_log:
        return
    libs = np.asarray(X.sum(axis=1)).ravel()
    low = int((libs < threshold).sum())
    if low:
        import warnings

        warnings.warn(
            f"{low} of {adata.n_obs} spots have fewer than {threshold} counts (minimum {libs.min():g}); after "
            "library-size normalisation a spot with one or two reads is an extreme expression profile, and such "
            "spots tend to form a domain of their own. Filter them first, e.g. "
            f"sc.pp.filter_cells(adata, min_counts={threshold}), or embed with modalities='he'.",
            UserWarning,
            stacklevel=3,
        )


#: ``tl.embed`` warns when fewer than this share of the model's vocabulary genes are measured on the slide
LOW_VOCAB_COVERAGE = 0.25


def vocab_coverage(adata: AnnData, model: StormModel, threshold: float = LOW_VOCAB_COVERAGE) -> float | None:
    """Share of the model's gene vocabulary measured on ``adata``; warns below ``threshold``.

    The gene encoder reads only vocabulary genes, so a slide of another tissue or panel that measures few of them is
    embedded from those few (of the default checkpoint's 2000 HER2ST genes, 266–278 are measured on the DLPFC
    sections, 13–14 %, and none of the cortical layer markers; design experiment 20 found that extending the
    vocabulary did not improve DLPFC domains). ``None`` for a model whose gene input is an ``obsm`` embedding.
    """
    from storm_st.pp import align_genes

    vocab = model.config.gene_vocab
    if model.config.gene_obsm_key or not vocab or adata.n_vars == 0:
        return None
    al = align_genes(adata, vocab, min_genes=0)
    if al.coverage < threshold:
        import warnings

        warnings.warn(
            f"Only {al.n_matched} of the model's {al.n_vocab} vocabulary genes are measured on this slide "
            f"({100 * al.coverage:.1f} %); its expression embedding reads those genes alone, and the slide's other "
            "genes are not used. If the genes that matter here are outside the vocabulary, a model pretrained on slides "
            "of this tissue or panel, with a vocabulary chosen from them (storm-st pretrain), reads them.",
            UserWarning,
            stacklevel=3,
        )
    return round(float(al.coverage), 4)


def model_hash(model: StormModel) -> str | None:
    """sha256 of the checkpoint the model was loaded from, if any."""
    return getattr(model, "checkpoint_sha256", None)


def encode_adata(
    adata: AnnData,
    model: StormModel,
    *,
    use_he: bool,
    use_gene: bool,
    library_key: str | None,
    layer: str | None,
    batch_size: int,
    device: str | None,
    tta: bool = False,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """Encode every spot of ``adata`` (all slides); arrays in ``obs`` order.

    With ``tta`` the H&E embedding is averaged over the 8 flips / 90° rotations of every patch. With H&E, ``"patches"``
    holds each slide's patch geometry as read (:func:`patch_geometry`).
    """
    from tqdm.auto import tqdm

    check_batch_size(batch_size)
    dev = resolve_device(device)
    slides = prepare_slides(adata, model.config, use_he=use_he, use_gene=use_gene, library_key=library_key, layer=layer)
    model = model.to(dev).eval()
    transforms = D4 if (tta and use_he) else [(0, False)]
    out: dict[str, np.ndarray] = {}
    if use_he:
        out["patches"] = patch_geometry(slides)
    with tqdm(total=adata.n_obs * len(transforms), desc="storm embed", disable=not show_progress, unit="spot") as bar:
        for slide in slides:
            acc = None
            for t in transforms:
                enc = encode_slide(
                    model, slide, use_he=use_he, use_gene=use_gene, batch_size=batch_size, device=dev, d4=t,
                    progress=bar.update,
                )
                acc = enc if acc is None else _add(acc, enc)
            parts = {
                "embedding": acc.embedding, "he": acc.he_features, "gene": acc.gene_tokens, "spot_token": acc.spot_token,
            }
            whole = len(slides) == 1 and np.array_equal(slide.obs_indices, np.arange(adata.n_obs))
            for k, v in parts.items():
                if v is None:
                    continue
                if len(transforms) > 1 and k != "gene":
                    v /= len(transforms)  # in place: the encoding is ours
                if whole:  # one slide in obs order: the encoder's array is the result (no copy)
                    out[k] = v
                    continue
                if k not in out:
                    out[k] = np.zeros((adata.n_obs, v.shape[1]), dtype=np.float32)
                out[k][slide.obs_indices] = v
            out.setdefault("neighbors", np.full((adata.n_obs, slide.neighbors.shape[1]), -1, dtype=np.int64))
            if out["neighbors"].shape[1] < slide.neighbors.shape[1]:
                pad = np.full((adata.n_obs, slide.neighbors.shape[1] - out["neighbors"].shape[1]), -1, dtype=np.int64)
                out["neighbors"] = np.concatenate([out["neighbors"], pad], axis=1)
            nb = np.where(slide.neighbors >= 0, slide.obs_indices[np.clip(slide.neighbors, 0, None)], -1)
            out["neighbors"][slide.obs_indices, : nb.shape[1]] = nb
    return out


def patch_geometry(slides) -> dict[str, dict[str, float]]:
    """Field (µm), side (px) and pixel size (µm/px) of the H&E patches of each prepared slide, for provenance."""
    return {
        s.library_id: {"field_um": round(float(s.fov_um), 3), "px": int(s.patch_px),
                       "um_per_px": round(float(s.fov_um) / int(s.patch_px), 4)}
        for s in slides
    }


def _add(a, b):
    a.embedding += b.embedding  # accumulated in place: ``a`` is the running sum owned by the caller
    if a.he_features is not None:
        a.he_features += b.he_features
    if a.spot_token is not None:
        a.spot_token += b.spot_token
    return a
