"""Slides prepared for the network, neighbour-window batches and the typed batch object."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from storm_st._constants import Platform
from storm_st.io._slide import SlideView, slide_views
from storm_st.pp._genes import ExpressionRows, align_genes, expression_rows
from storm_st.pp._neighbors import knn_window, window_offsets
from storm_st.pp._patches import extract_patches
from storm_st.pp._stain import StainParams, normalize_stains, slide_stains

if TYPE_CHECKING:
    from anndata import AnnData

    from storm_st.models import StormConfig


@dataclass
class PreparedSlide:
    """One slide in the form the network consumes.

    Attributes
    ----------
    library_id
        Slide name.
    obs_indices
        Rows of the source AnnData.
    neighbors
        ``(n, K)`` window table in local rows (``-1`` = padding), centre first.
    rel_pos
        ``(n, K, 2)`` neighbour offsets from the centre in lattice pitches.
    pitch_um
        Spot pitch (median nearest-neighbour distance) in µm.
    view
        The slide view (image access), or ``None``.
    expr
        ``(n, V)`` log-normalised expression over the model vocabulary, or ``None``: an
        :class:`~storm_st.pp.ExpressionRows` (rows computed when indexed) or a dense array.
    present
        ``(V,)`` bool, vocabulary genes measured on the slide, or ``None``.
    patches
        Optional cache ``(n, S, S, 3)`` uint8 of spot patches.
    fov_um
        Field of view of the patches in µm.
    patch_px
        Side of the patches the backbone reads, in pixels (``config.patch_px(fov_um)``).
    gene_feats
        ``(n, D)`` float32 per-spot embedding read by a model whose ``gene_input`` names an
        ``obsm`` key (e.g. NOVAE), or ``None``.
    stains
        ``(slide, reference)`` :class:`~storm_st.pp.StainParams` when the model normalises stains
        (``config.stain_reference``): every patch read is normalised from the first to the second.
    """

    library_id: str
    obs_indices: np.ndarray
    neighbors: np.ndarray
    rel_pos: np.ndarray
    pitch_um: float
    view: SlideView | None
    expr: ExpressionRows | np.ndarray | None
    present: np.ndarray | None
    patches: np.ndarray | None
    fov_um: float
    gene_feats: np.ndarray | None = None
    patch_px: int = 0
    stains: tuple[StainParams, StainParams] | None = None

    @property
    def n(self) -> int:
        """Number of spots."""
        return len(self.obs_indices)

    @property
    def has_he(self) -> bool:
        """Whether patches can be read."""
        return self.patches is not None or (self.view is not None and self.view.has_image)

    @property
    def has_gene(self) -> bool:
        """Whether expression is available."""
        return self.expr is not None

    def read_patches(self, rows: np.ndarray, size: int | None = None) -> np.ndarray:
        """``(len(rows), size, size, 3)`` uint8 patches of ``rows`` (``size`` default: ``patch_px``).

        From the cache if present; stain-normalised when ``stains`` is set.
        """
        size = int(size or self.patch_px)
        if size < 1:
            raise ValueError(f"No patch size for slide {self.library_id!r}: pass size or set patch_px.")
        if self.patches is not None and self.patches.shape[1] == size:
            return self.patches[rows]  # normalised when cached
        if self.view is None or not self.view.has_image:
            raise ValueError(f"Slide {self.library_id!r} has no image.")
        x = extract_patches(self.view, rows, fov_um=self.fov_um, size=size)
        return x if self.stains is None else normalize_stains(x, *self.stains)


def _pitch(coords_um: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(coords_um) < 2:
        return 1.0
    d = cKDTree(coords_um).query(coords_um, k=2)[0][:, 1]
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 1.0


def prepare_slides(
    adata: AnnData,
    config: StormConfig,
    *,
    use_he: bool,
    use_gene: bool,
    library_key: str | None = None,
    layer: str | None = None,
    window: int | None = None,
    cache_patches: int | bool | None = None,
    min_gene_overlap: int = 1,
) -> list[PreparedSlide]:
    """Turn ``adata`` (one or several slides) into :class:`PreparedSlide` objects.

    Parameters
    ----------
    adata
        AnnData in the storm_st / squidpy Visium layout.
    config
        Model configuration (vocabulary, patch geometry, window size).
    use_he, use_gene
        Which modalities to prepare; an image / expression is then required.
    library_key
        ``obs`` column naming each spot's slide.
    layer
        Layer holding raw counts (default ``layers['counts']`` or ``X``).
    window
        Window size; default 25 for spot platforms and 9 for cell-level platforms.
    cache_patches
        If given, read all patches once and keep them in memory (training): at this size, or with ``True`` at
        each slide's own patch size (``config.patch_px``).
    min_gene_overlap
        Minimum number of vocabulary genes that must be measured.
    """
    if adata.n_obs == 0:
        raise ValueError("adata has no spots (n_obs == 0): nothing to embed.")
    views = slide_views(adata, library_key=library_key, require_image=use_he, require_scale=use_he)
    expr_all = present = feats_all = None
    if use_gene:
        if not config.gene_vocab:
            raise ValueError("The model has no gene vocabulary; it cannot encode expression (use modalities='he').")
        if adata.n_vars == 0:
            raise ValueError("adata has no genes (n_vars == 0); use modalities='he' for H&E-only data.")
        al = align_genes(adata, config.gene_vocab, min_genes=min_gene_overlap)
        expr_all = expression_rows(adata, al, layer=layer)  # rows computed per batch: flat memory
        present = al.present
        feats_all = gene_features(adata, config) if config.gene_obsm_key else None
    reference = StainParams.from_dict(config.stain_reference) if use_he and config.stain_reference else None
    out = []
    for view in views:
        if view.n_spots < 1:
            continue
        k = window or (9 if view.platform in Platform.CELL_LEVEL else config.window)
        coords = view.coords_um if np.isfinite(view.mpp) else view.coords_px
        pitch = _pitch(coords)
        nb = knn_window(coords, k, pitch=pitch, radius_factor=config.window_radius)
        rel = window_offsets(coords / pitch, nb)  # in lattice pitches
        fov = config.patch_fov_um(view.spot_diameter_um, cell_level=view.platform in Platform.CELL_LEVEL)
        ps = PreparedSlide(
            library_id=view.library_id,
            obs_indices=view.obs_indices,
            neighbors=nb,
            rel_pos=rel,
            pitch_um=pitch,
            view=view if use_he else None,
            expr=expr_all.take(view.obs_indices) if expr_all is not None else None,
            present=present,
            patches=None,
            fov_um=float(fov),
            patch_px=config.patch_px(fov),
            gene_feats=feats_all[view.obs_indices] if feats_all is not None else None,
        )
        if reference is not None and view.has_image:  # reference is None unless use_he
            ps.stains = (slide_stains(view, ps.fov_um), reference)
        if use_he and cache_patches:  # True: at the slide's own patch size
            ps.patches = ps.read_patches(np.arange(ps.n), None if cache_patches is True else cache_patches)
        out.append(ps)
    if not out:
        raise ValueError("adata has no spots to embed.")
    return out


def gene_features(adata: AnnData, config: StormConfig) -> np.ndarray:
    """The ``obsm`` embedding a model's gene encoder reads (``config.gene_input = "obsm:<key>"``), checked.

    Raises a clear error when the key is missing, has the wrong width, or holds non-finite values.
    """
    key = config.gene_obsm_key
    if key not in adata.obsm:
        hint = (
            "compute it with storm_st.pp.novae_embeddings(adata, model=...) (needs the novae package and its weights)"
            if "novae" in key
            else "compute it with the model that produced the pretraining embeddings"
        )
        raise KeyError(f"This model's gene encoder reads adata.obsm[{key!r}], which is missing: {hint}.")
    x = np.asarray(adata.obsm[key], dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != int(config.gene_input_dim):
        raise ValueError(
            f"adata.obsm[{key!r}] has shape {x.shape}; this model expects ({adata.n_obs}, {config.gene_input_dim})."
        )
    if not np.isfinite(x).all():
        raise ValueError(f"adata.obsm[{key!r}] holds NaN or infinite values ({int((~np.isfinite(x)).any(1).sum())} spots).")
    return x


@dataclass
class SpotBatch:
    """A batch of neighbour windows over a table of unique spots.

    Attributes
    ----------
    patches
        ``(U, 3, S, S)`` uint8 patches of the unique spots, or ``None``.
    expr
        ``(U, V)`` log-normalised expression, or ``None``.
    present
        ``(U, V)`` bool measured-gene mask, or ``None``.
    has_he, has_gene
        ``(U,)`` bool modality availability.
    window_index
        ``(B, K)`` rows of the unique-spot table (``-1`` = padding); column 0 = centre.
    rel_pos
        ``(B, K, 2)`` offsets in lattice pitches.
    centre_rows
        ``(B,)`` rows of the centres in their slide (for writing results back).
    gene_feats
        ``(U, D)`` ``obsm`` embeddings for a model whose gene encoder reads one, or ``None``.
    """

    patches: torch.Tensor | None
    expr: torch.Tensor | None
    present: torch.Tensor | None
    has_he: torch.Tensor
    has_gene: torch.Tensor
    window_index: torch.Tensor
    rel_pos: torch.Tensor
    centre_rows: torch.Tensor
    gene_feats: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> SpotBatch:
        """Move every tensor to ``device``."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return SpotBatch(**kw)


def make_batch(
    slide: PreparedSlide,
    centres: np.ndarray,
    *,
    image_size: int | None,
    use_he: bool,
    use_gene: bool,
    patch_size: int | None = None,
) -> SpotBatch:
    """Collate the windows of ``centres`` (rows of ``slide``) into a :class:`SpotBatch`.

    Every spot that appears in any window is read and encoded once.
    """
    nb = slide.neighbors[centres]
    uniq, inv = np.unique(nb[nb >= 0], return_inverse=True)
    window_index = np.full(nb.shape, -1, dtype=np.int64)
    window_index[nb >= 0] = inv
    U = len(uniq)
    patches = expr = present = None
    he = use_he and slide.has_he
    ge = use_gene and slide.has_gene
    if he:
        size = patch_size or image_size  # None: the slide's own patch size
        patches = torch.from_numpy(slide.read_patches(uniq, size)).permute(0, 3, 1, 2).contiguous()
    if ge:
        expr = torch.from_numpy(slide.expr[uniq])
        present = torch.from_numpy(np.broadcast_to(slide.present, (U, len(slide.present))).copy())
    return SpotBatch(
        patches=patches,
        expr=expr,
        present=present,
        has_he=torch.full((U,), he, dtype=torch.bool),
        has_gene=torch.full((U,), ge, dtype=torch.bool),
        window_index=torch.from_numpy(window_index),
        rel_pos=torch.from_numpy(slide.rel_pos[centres]),
        centre_rows=torch.from_numpy(np.asarray(centres, dtype=np.int64)),
        gene_feats=torch.from_numpy(slide.gene_feats[uniq]) if ge and slide.gene_feats is not None else None,
    )


def contiguous_rows(neighbors: np.ndarray, n_spots: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of a spatially contiguous region of about ``n_spots`` spots.

    Grows breadth-first over the window graph (``neighbors``: ``(n, K)`` rows, ``-1`` = none) from a
    random spot, visiting each ring in random order; jumps to another piece of tissue when one is
    exhausted. All rows when the slide has at most ``n_spots`` spots.
    """
    n = len(neighbors)
    if n <= n_spots:
        return np.arange(n)
    seen = np.zeros(n, dtype=bool)
    order: list[int] = []
    frontier = [int(rng.integers(n))]
    seen[frontier[0]] = True
    while frontier and len(order) < n_spots:
        nxt: list[int] = []
        for i in frontier:
            order.append(i)
            for j in neighbors[i]:
                if j >= 0 and not seen[j]:
                    seen[j] = True
                    nxt.append(int(j))
        rng.shuffle(nxt)
        frontier = nxt
        if not frontier and len(order) < n_spots:  # a disconnected piece: jump to another one
            rest = np.flatnonzero(~seen)
            frontier = [int(rng.choice(rest))]
            seen[frontier[0]] = True
    return np.asarray(order[:n_spots])


def _process_rank() -> int:
    """Rank of this process in an initialised ``torch.distributed`` group (0 when not distributed)."""
    dist = torch.distributed
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0


class WindowSampler(torch.utils.data.IterableDataset):
    """Random batches of windows: a slide (weighted by size), then ``windows`` centres in it; step ``i`` is a pure function of ``(seed, i)``.

    With ``contiguous=True`` the centres form a spatially contiguous region
    (``contiguous_rows``) instead of a uniform sample: neighbouring windows share most of their
    spots, so a batch of ``windows`` windows encodes about ``windows`` + a border of spots instead of
    up to 25 x ``windows`` (the backbone runs once per unique spot of the batch) -- several times
    more windows per second of training on a CPU.

    Under DDP (``torch.distributed`` initialised, as Lightning does before iterating) each process draws
    different windows for the same step, so ``n`` processes see ``n`` times the windows of one.

    ``patch_size`` is the side patches are read at; ``None`` (default) reads each slide's own
    (:attr:`PreparedSlide.patch_px`).
    """

    def __init__(
        self,
        slides: list[PreparedSlide],
        *,
        windows: int,
        steps: int,
        patch_size: int | None = None,
        use_he: bool = True,
        use_gene: bool = True,
        seed: int = 0,
        paired_fraction: float | None = None,
        contiguous: bool = False,
        weights: list[float] | None = None,
    ):
        super().__init__()
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(slides):
                raise ValueError(f"weights has {len(weights)} entries for {len(slides)} slides; give one per slide.")
            if not all(np.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
                raise ValueError(f"Slide weights must be finite, >= 0 and not all 0; got {weights}.")
        self.weights = weights
        self.paired_fraction = paired_fraction
        self.contiguous = bool(contiguous)
        self.slides, self.windows, self.steps = slides, windows, steps
        self.patch_size, self.use_he, self.use_gene, self.seed = patch_size, use_he, use_gene, seed
        self.start = 0

    def __len__(self) -> int:
        return self.steps - self.start

    def slide_probabilities(self) -> np.ndarray:
        """Sampling probability of each slide.

        Proportional to its spots (times its ``weight``), with ``paired_fraction`` of the batches drawn from
        slides that have both H&E and expression (when some have and some do not).
        """
        sizes = np.array([s.n for s in self.slides], dtype=np.float64)
        if self.weights is not None:
            sizes = sizes * np.asarray(self.weights, dtype=np.float64)
        paired = np.array([s.has_he and s.has_gene for s in self.slides]) & (sizes > 0)
        if self.paired_fraction is None or paired.all() or not paired.any() or not (sizes[~paired] > 0).any():
            return sizes / sizes.sum()
        f = float(self.paired_fraction)
        p = np.where(paired, f * sizes / sizes[paired].sum(), (1 - f) * sizes / sizes[~paired].sum())
        return p / p.sum()

    def __iter__(self) -> Iterator[SpotBatch]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        p = self.slide_probabilities()
        n_workers = info.num_workers if info is not None else 1
        rank = _process_rank()
        for step in range(self.start + wid, self.steps, n_workers):
            # stateless in the step number, so a resumed run sees exactly the batches it would have seen; under
            # DDP every process draws its own windows (rank 0 draws those of a single-process run)
            rng = np.random.default_rng([self.seed, step] if rank == 0 else [self.seed, step, rank])
            s = self.slides[rng.choice(len(self.slides), p=p)]
            if self.contiguous:
                centres = contiguous_rows(s.neighbors, self.windows, rng)
            else:
                centres = rng.choice(s.n, size=min(self.windows, s.n), replace=False)
            yield make_batch(
                s, centres, image_size=None, use_he=self.use_he, use_gene=self.use_gene, patch_size=self.patch_size
            )


def iter_slide_batches(
    slide: PreparedSlide, *, batch_size: int, use_he: bool, use_gene: bool, image_size: int | None = None
) -> Iterator[SpotBatch]:
    """Deterministic batches covering every spot of ``slide`` once as a centre (inference).

    Patches are ``image_size`` px, or with ``None`` (default) the slide's own ``patch_px``.
    """
    for s in range(0, slide.n, batch_size):
        centres = np.arange(s, min(s + batch_size, slide.n))
        yield make_batch(slide, centres, image_size=image_size, use_he=use_he, use_gene=use_gene)


