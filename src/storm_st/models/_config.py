"""Configuration of a STORM model (serialised to ``config.json`` next to the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from storm_st._constants import DEFAULT_RADIUS_FACTOR

#: smallest patch side (px) ``patch_mpp`` can give: below it a CNN's feature map vanishes
MIN_PATCH_PX = 32

#: what the expression head can read (see ``StormConfig.head_input``)
HEAD_INPUTS = ("centre", "centre+spot", "spot")


def check_head_input(value: str) -> str:
    """``value`` if it is one of :data:`HEAD_INPUTS`, else a clear error."""
    if value not in HEAD_INPUTS:
        raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {value!r}.")
    return value


#: which BatchNorm statistics the H&E backbone uses (see ``StormConfig.bn_stats``)
BN_STATS = ("training", "slide")


def check_bn_stats(value: str) -> str:
    """``value`` if it is one of :data:`BN_STATS`, else a clear error."""
    if value not in BN_STATS:
        raise ValueError(
            f"bn_stats must be one of {BN_STATS} (the training slides' BatchNorm statistics, or each slide's own), "
            f"got {value!r}."
        )
    return value


@dataclass
class StormConfig:
    """Architecture, gene vocabulary and image geometry of a STORM model.

    Attributes
    ----------
    he_backbone
        timm model name of the H&E spot encoder.
    he_backbone_kwargs
        Extra keyword arguments for :func:`timm.create_model` (JSON-serialisable; ``"mlp_layer"``
        and ``"act_layer"`` may name ``"swiglu_packed"`` / ``"silu"``).
    image_size
        Side of the square patch given to the backbone, in pixels.
    fov_um
        Field of view of a spot patch in µm; ``None`` uses ``fov_scale`` x each slide's platform
        spot diameter (cell-level platforms: x a 32 µm cell field).
    fov_scale
        Multiple of the spot diameter a patch covers when ``fov_um`` is ``None``. Context around the
        spot carries signal: on HER2ST (100 µm spots, 200 µm pitch; train C2-C3, validate C4) a
        from-scratch CNN reached a median PCC of 0.21 / 0.25 / 0.27 / 0.29 with 100 / 154 / 220 /
        300 µm patches.
    patch_mpp
        µm per pixel of the patches the backbone reads. ``None`` (default): every patch is ``image_size`` px,
        whatever its field, so a platform with smaller spots is read at a finer pixel size than one with larger
        ones. A number: a patch of field ``F`` µm is ``round(F / patch_mpp)`` px, so the backbone sees tissue at
        the magnification it was trained at on every platform (needs a backbone that takes any input size, e.g.
        a CNN). The default checkpoint sets it to the pixel size it was trained at (200 µm at 112 px on legacy
        ST, 1.79 µm/px): on validation, reading the field of a smaller spot at 112 px instead cost the shipped
        readout 0.03–0.14 in median r on most folds (design experiments 40–41).
    image_mean, image_std
        Per-channel normalisation of RGB values in [0, 1].
    gene_vocab
        Gene symbols (upper case) of the gene encoder and of the ST reconstruction target.
    gene_embed_dim
        Width of the learned per-gene embeddings.
    gene_input
        What the gene spot encoder reads: ``"expression"`` (the panel-agnostic encoder over
        ``gene_vocab``) or ``"obsm:<key>"``, a frozen per-spot embedding computed beforehand by
        another model -- e.g. ``"obsm:novae_latent"`` for NOVAE (64-d, as in the paper; see
        :func:`storm_st.pp.novae_embeddings`) -- projected to ``hidden_dim`` by an MLP. The ST
        reconstruction target stays the expression over ``gene_vocab`` either way.
    gene_input_dim
        Width of the ``obsm`` embedding when ``gene_input`` names one (0 for ``"expression"``).
    hidden_dim
        Width ``h`` of the spatial encoder.
    depth, num_heads, mlp_ratio, dropout
        Spatial encoder blocks.
    window
        Spots per neighbour window (25 = 5 x 5; 9 for cells).
    window_radius
        Neighbours farther than this many lattice pitches (the slide's median nearest-neighbour distance) are left
        out of a window (padded), so spots at a tissue edge get partial windows rather than far-away spots. 3.0 keeps
        the corners of a 5 x 5 square lattice (2.83 pitches) when the lattice is square; on a stretched one (legacy
        ST pixel positions: pitches about 1.0 and 1.1) some corners fall outside it.
    decoder_dim, decoder_depth
        Masked-spot decoders used in pretraining.
    head_genes
        Output genes of the expression head (empty: no head).
    head_hidden
        Hidden width of the expression head MLP.
    head_input
        What the expression head reads: ``"centre"`` (the paper's choice: the spatial encoder's
        output for the centre spot, the embedding of :func:`storm_st.tl.embed`) or
        ``"centre+spot"`` (that output concatenated with the centre spot's own input token, a skip
        connection around the spatial encoder, so the head sees the spot and its context side by side),
        or ``"spot"`` (the spot's own token alone: no spatial context, the ablation of the benchmarks).
    stain_reference
        Stain vectors and strengths (:func:`storm_st.pp.stain_reference`) every slide's H&E patches are normalised
        to before the backbone reads them (Macenko; each slide's own stains estimated from its spot patches), or
        ``None`` (default): patches as read.
    bn_stats
        Which BatchNorm statistics the H&E backbone normalises with when it encodes a slide: ``"training"``
        (default for new configurations) the running statistics of its training slides; ``"slide"`` each slide's
        own, re-estimated on its spot patches before it is encoded (AdaBN; label-free, costs about one more backbone
        pass over up to 1024 spots per slide and flip / rotation; weights unchanged; the default checkpoint uses it).
        A backbone without BatchNorm (a ViT) is unaffected. See :func:`storm_st.models.set_bn_stats`.
    name
        Free-form model name recorded in provenance.
    """

    he_backbone: str = "resnet18"
    he_backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 112
    fov_um: float | None = None
    fov_scale: float = 1.0
    patch_mpp: float | None = None
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    gene_vocab: list[str] = field(default_factory=list)
    gene_embed_dim: int = 128
    gene_input: str = "expression"
    gene_input_dim: int = 0
    hidden_dim: int = 256
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    window: int = 25
    window_radius: float = DEFAULT_RADIUS_FACTOR
    decoder_dim: int = 128
    decoder_depth: int = 2
    head_genes: list[str] = field(default_factory=list)
    head_hidden: int = 512
    head_input: str = "centre"
    stain_reference: dict[str, Any] | None = None
    bn_stats: str = "training"
    name: str = "storm"

    def __post_init__(self):
        check_head_input(self.head_input)
        check_bn_stats(self.bn_stats)
        if self.patch_mpp is not None and (
            isinstance(self.patch_mpp, bool) or not isinstance(self.patch_mpp, int | float) or not self.patch_mpp > 0
        ):
            raise ValueError(
                f"patch_mpp must be a positive number of µm per pixel (or None: every patch image_size px), "
                f"got {self.patch_mpp!r}."
            )
        if not float(self.window_radius) > 0:
            raise ValueError(
                f"window_radius must be a positive number of lattice pitches (3.0 keeps a 5 x 5 window), "
                f"got {self.window_radius!r}."
            )
        if self.stain_reference is not None:
            from storm_st.pp._stain import StainParams

            self.stain_reference = StainParams.from_dict(self.stain_reference).to_dict()  # checked, JSON-ready
        key = self.gene_obsm_key
        if self.gene_input != "expression" and not key:
            raise ValueError(
                f"gene_input must be 'expression' or 'obsm:<key>' (e.g. 'obsm:novae_latent'), got {self.gene_input!r}."
            )
        if key and int(self.gene_input_dim) < 1:
            raise ValueError(
                f"gene_input {self.gene_input!r} needs gene_input_dim, the width of adata.obsm[{key!r}] (64 for NOVAE)."
            )

    @property
    def gene_obsm_key(self) -> str | None:
        """``adata.obsm`` key the gene encoder reads, or ``None`` when it reads expression."""
        if isinstance(self.gene_input, str) and self.gene_input.startswith("obsm:") and len(self.gene_input) > 5:
            return self.gene_input[5:]
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        d = asdict(self)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    def patch_fov_um(self, spot_diameter_um: float, cell_level: bool = False) -> float:
        """Field of view in µm of the patch of a spot of ``spot_diameter_um`` (see ``fov_um``, ``fov_scale``)."""
        if self.fov_um:
            return float(self.fov_um)
        from storm_st._constants import Platform

        return float(self.fov_scale * (Platform.CELL_FOV_UM if cell_level else spot_diameter_um))

    def patch_px(self, fov_um: float) -> int:
        """Side in pixels of a patch covering ``fov_um`` µm (``image_size``, or ``fov_um / patch_mpp`` when set)."""
        if self.patch_mpp is None:
            return int(self.image_size)
        return max(MIN_PATCH_PX, int(round(float(fov_um) / float(self.patch_mpp))))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StormConfig:
        """Build from :meth:`to_dict` output; unknown keys raise a clear error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"Unknown model config fields {sorted(unknown)}: this checkpoint was written by another version of "
                "storm_st or the config is corrupted."
            )
        d = dict(d)
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


#: Named architectures. ``storm-base`` is the paper-sized model around an H0-mini-like ViT-B/14.
PRESETS: dict[str, dict[str, Any]] = {
    "storm-small": {},
    "storm-base": {
        "he_backbone": "vit_base_patch14_reg4_dinov2",
        "he_backbone_kwargs": {
            "img_size": 224,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
            "init_values": 1e-5,
            "dynamic_img_size": True,
        },
        "image_size": 224,
        "image_mean": (0.707223, 0.578729, 0.703617),
        "image_std": (0.211883, 0.230117, 0.177517),
        "gene_embed_dim": 256,
        "hidden_dim": 768,
        "depth": 6,
        "num_heads": 12,
        "decoder_dim": 512,
        "head_hidden": 1024,
        "name": "storm-base",
    },
}
