"""Every AnnData key storm_st reads or writes, in one place (as in novae and squidpy)."""

from __future__ import annotations

#: neighbour-window radius in lattice pitches (median nearest-neighbour distances); ``StormConfig.window_radius``
DEFAULT_RADIUS_FACTOR = 3.0


class Keys:
    """Names of the AnnData slots used by storm_st.

    Readers write the squidpy/scanpy Visium layout: ``obsm["spatial"]`` holds spot centres in
    pixels of the full-resolution image (x = column, y = row) and ``uns["spatial"][library_id]``
    holds ``images`` and ``scalefactors``. storm_st adds the physical scale to the scalefactors.
    """

    # --- layout shared with scanpy / squidpy ---
    SPATIAL = "spatial"  # obsm: full-resolution pixel coordinates; uns: per-library images + scalefactors
    LIBRARY_ID = "library_id"  # obs column naming the slide of each spot in multi-slide objects
    IMAGES = "images"
    SCALEFACTORS = "scalefactors"
    METADATA = "metadata"
    HIRES = "hires"
    LOWRES = "lowres"
    HIRES_SCALEF = "tissue_hires_scalef"
    LOWRES_SCALEF = "tissue_lowres_scalef"
    SPOT_DIAMETER_FULLRES = "spot_diameter_fullres"

    # --- physical scale (storm_st additions inside scalefactors) ---
    MPP = "microns_per_pixel"  # µm per pixel of the full-resolution coordinate frame
    SPOT_DIAMETER_UM = "spot_diameter_um"  # platform spot diameter (55 Visium, 100 legacy ST)
    PLATFORM = "platform"  # uns["spatial"][lib]["metadata"]["platform"]

    # --- storm_st outputs ---
    X_STORM = "X_storm"
    X_STORM_HE = "X_storm_he"
    X_STORM_GENE = "X_storm_gene"
    NEIGHBORS = "storm_neighbors"  # obsm: n_spots x k neighbour indices, -1 = padding
    NEIGHBOR_OFFSETS = "storm_neighbor_offsets"  # obsm: n_spots x (2k) offsets in µm (dx, dy interleaved)
    VIRTUAL = "storm_virtual"  # layers / new AnnData of virtual expression
    DOMAIN = "storm_domain"  # obs
    HALLMARK = "storm_hallmark"  # uns
    RANK_GENES = "storm_rank_genes"  # uns
    UNS = "storm"  # uns: provenance of the last embedding
    NORMALIZATION = "storm_normalization"  # uns: how X was normalised
    LOG1P_LAYER = "storm_log1p"  # layers: library-size-normalised log1p expression
    COUNTS_LAYER = "counts"  # layers: raw counts when X has been normalised

    # --- optional inputs computed by other packages ---
    NOVAE_LATENT = "novae_latent"  # obsm: NOVAE spot embeddings (pp.novae_embeddings; novae's own key)


class Platform:
    """Spot geometry of the supported platforms: spot diameter (µm) and default window size."""

    SPOT_DIAMETER_UM = {
        "visium": 55.0,
        "visium_hd": 8.0,
        "legacy_st": 100.0,
        "xenium": None,  # cells: field of view set by ``cell_fov_um``
        "cosmx": None,
        "merfish": None,
        "he_only": 55.0,
    }
    WINDOW = {
        "visium": 25,
        "legacy_st": 25,
        "visium_hd": 25,
        "he_only": 25,
        "xenium": 9,
        "cosmx": 9,
        "merfish": 9,
    }
    CELL_FOV_UM = 32.0  # default field of view of a per-cell patch on cell-level platforms
    CELL_LEVEL = frozenset({"xenium", "cosmx", "merfish"})
