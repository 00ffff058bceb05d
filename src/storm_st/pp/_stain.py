"""Stain normalisation of H&E patches (Macenko et al., ISBI 2009).

A slide's haematoxylin and eosin colours and strengths are estimated from its own spot patches; every patch is then
re-expressed with the stain vectors and strengths of a reference (e.g. a model's training slides), so that a model
reads slides of other labs in the colours it was trained on. Whatever the two-stain model does not explain (the
residual optical density) is kept, so a slide normalised to its own parameters comes back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: optical density below which a channel counts as unstained (Macenko's beta)
OD_THRESHOLD = 0.15
#: percentile of the angle distribution taken as the extreme stain directions (Macenko's alpha)
ANGLE_PERCENTILE = 1.0
#: percentile of a stain's concentration taken as its strength
MAX_PERCENTILE = 99.0


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density of 8-bit RGB values (``(..., 3)``); white (255) maps to 0."""
    return -np.log((np.asarray(rgb, dtype=np.float32) + 1.0) / 256.0)


@dataclass(frozen=True)
class StainParams:
    """Stain vectors and strengths of a slide (or of a reference).

    Attributes
    ----------
    stain_matrix
        ``(3, 2)`` unit optical-density vectors of haematoxylin (column 0) and eosin (column 1), RGB rows.
    max_concentration
        ``(2,)`` 99th percentile of each stain's concentration over the stained pixels.
    n_pixels
        Stained pixels the estimate rests on.
    """

    stain_matrix: np.ndarray
    max_concentration: np.ndarray
    n_pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (stored in a model's config as ``stain_reference``)."""
        return {
            "stain_matrix": np.round(self.stain_matrix, 6).tolist(),
            "max_concentration": np.round(self.max_concentration, 6).tolist(),
            "n_pixels": int(self.n_pixels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainParams:
        """Inverse of :meth:`to_dict`, checked."""
        try:
            m = np.asarray(d["stain_matrix"], dtype=np.float64)
            c = np.asarray(d["max_concentration"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"A stain reference needs 'stain_matrix' (3 x 2) and 'max_concentration' (2); got {d!r}.") from e
        if m.shape != (3, 2) or c.shape != (2,) or not (np.isfinite(m).all() and np.isfinite(c).all()) or (c <= 0).any():
            raise ValueError(
                f"A stain reference needs a finite 3 x 2 stain_matrix and 2 positive max_concentration values; got "
                f"shapes {m.shape} and {c.shape}."
            )
        return cls(m, c, int(d.get("n_pixels", 0)))


def estimate_stains(patches: np.ndarray, *, max_pixels: int = 200_000, seed: int = 0) -> StainParams:
    """Estimate haematoxylin and eosin vectors and strengths from H&E pixels (Macenko et al., 2009).

    Parameters
    ----------
    patches
        ``(..., 3)`` uint8 RGB pixels, e.g. ``(n, S, S, 3)`` spot patches of one slide.
    max_pixels
        Stained pixels sampled for the estimate.
    seed
        Seed of that sample.

    Returns
    -------
    The slide's :class:`StainParams`.
    """
    x = np.asarray(patches)
    if x.dtype != np.uint8 or x.ndim < 2 or x.shape[-1] != 3:
        raise ValueError(f"estimate_stains needs uint8 RGB pixels of shape (..., 3); got {x.dtype} {x.shape}.")
    od = _od(x.reshape(-1, 3))
    od = od[(od > OD_THRESHOLD).all(axis=1)]  # background and faint pixels carry no stain direction
    if len(od) < 100:
        raise ValueError(
            f"Only {len(od)} stained pixels: too few to estimate the stains (is this H&E tissue, not background or "
            "a fluorescence image?)."
        )
    if len(od) > max_pixels:
        od = od[np.random.default_rng(seed).choice(len(od), max_pixels, replace=False)]
    od64 = od.astype(np.float64)
    _, vecs = np.linalg.eigh(np.cov(od64, rowvar=False))
    plane = vecs[:, [2, 1]]  # the two largest eigenvectors span the stain plane
    plane *= np.sign(plane.sum(axis=0, keepdims=True) + 1e-12)  # pointing into positive optical density
    proj = od64 @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100.0 - ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)  # haematoxylin absorbs more red
    m = np.stack([h, e], axis=1)
    m = np.abs(m) / np.linalg.norm(m, axis=0, keepdims=True)
    conc = np.linalg.lstsq(m, od64.T, rcond=None)[0]
    cmax = np.percentile(conc, MAX_PERCENTILE, axis=1)
    if not (np.isfinite(m).all() and (cmax > 0).all()):
        raise ValueError("The stain estimate degenerated (one stain absent?); these pixels do not look like H&E.")
    return StainParams(m, cmax, len(od))


def normalize_stains(patches: np.ndarray, source: StainParams, target: StainParams) -> np.ndarray:
    """Re-express H&E pixels estimated as ``source`` with the stains of ``target``.

    Each pixel's haematoxylin and eosin concentrations under ``source`` are rescaled to ``target``'s strengths and
    recomposed with ``target``'s vectors; the optical density the two stains do not explain is kept, so
    ``normalize_stains(x, p, p)`` returns ``x`` (up to rounding).

    Parameters
    ----------
    patches
        ``(..., 3)`` uint8 RGB pixels.
    source
        Stains of the slide the pixels come from (:func:`estimate_stains`).
    target
        Reference stains, e.g. ``StainParams.from_dict(model.config.stain_reference)``.

    Returns
    -------
    uint8 array of the same shape.
    """
    x = np.asarray(patches)
    if x.dtype != np.uint8 or x.shape[-1] != 3:
        raise ValueError(f"normalize_stains needs uint8 RGB pixels of shape (..., 3); got {x.dtype} {x.shape}.")
    od = _od(x.reshape(-1, 3))
    unmix = np.linalg.pinv(source.stain_matrix).astype(np.float32)  # (2, 3)
    scale = (target.max_concentration / source.max_concentration).astype(np.float32)
    # od - C @ Ms^T + (C * scale) @ Mt^T, with C = od @ unmix^T: one 3 x 3 map
    mix = np.eye(3, dtype=np.float32) + unmix.T @ (
        (scale[:, None] * target.stain_matrix.T) - source.stain_matrix.T
    ).astype(np.float32)
    out = np.exp(-(od @ mix)) * 256.0 - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(x.shape)


#: spot patches sampled per slide to estimate its stains, and their side in pixels
SAMPLE_SPOTS, SAMPLE_SIZE = 512, 64


def _sample_patches(view: Any, fov_um: float | None, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`SAMPLE_SPOTS` spot patches of ``view`` at :data:`SAMPLE_SIZE` pixels."""
    from ._patches import extract_patches

    idx = np.sort(rng.choice(view.n_spots, min(SAMPLE_SPOTS, view.n_spots), replace=False))
    return extract_patches(view, idx, fov_um=fov_um, size=SAMPLE_SIZE)


def slide_stains(view: Any, fov_um: float | None = None, seed: int = 0) -> StainParams:
    """Stains of one slide (a :class:`~storm_st.io.SlideView` with an image), from a sample of its spot patches."""
    try:
        return estimate_stains(_sample_patches(view, fov_um, np.random.default_rng(seed)), seed=seed)
    except ValueError as e:
        raise ValueError(
            f"Slide {view.library_id!r}: cannot normalise its stains: {e} To read its patches as they are, switch the "
            "model's stain normalisation off: storm_st.load_model(..., stain_normalize=False)."
        ) from e


def stain_reference(slides: Any, *, table_key: str | None = None, fov_um: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Stain reference of a set of H&E slides, for a model's ``config.stain_reference``.

    Pools spot patches of every slide (up to 512 per slide) and estimates one set of stain vectors and strengths
    (:func:`estimate_stains`). A model whose config holds a reference normalises every slide it reads to it
    (:func:`normalize_stains`; each slide's own stains estimated from a sample of its spot patches) in
    :func:`storm_st.tl.embed`, :func:`storm_st.tl.impute_expression`, :func:`storm_st.tl.fit_expression_head` and
    pretraining alike. Use the slides the model was trained on::

        model.config.stain_reference = st.pp.stain_reference(training_slides)

    Parameters
    ----------
    slides
        An :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData` object with H&E, or a list of them.
    table_key
        Table of SpatialData objects.
    fov_um
        Field of view of the sampled patches in µm (default each slide's spot diameter).
    seed
        Seed of the spot and pixel samples.

    Returns
    -------
    :meth:`StainParams.to_dict` of the pooled estimate.
    """
    from storm_st._utils import get_adata
    from storm_st.io import slide_views

    rng = np.random.default_rng(seed)
    pooled = [
        _sample_patches(view, fov_um, rng)
        for s in (slides if isinstance(slides, (list, tuple)) else [slides])
        for view in slide_views(get_adata(s, table_key))
        if view.has_image and view.n_spots > 0
    ]
    if not pooled:
        raise ValueError("None of the slides has an H&E image with spots to sample; a stain reference needs H&E.")
    return estimate_stains(np.concatenate(pooled), seed=seed).to_dict()
