"""Small synthetic slides and tiny models shared by the tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from storm_st.models import StormConfig, StormModel

GENES = [f"GENE{i}" for i in range(30)]


def hex_coords(nx: int, ny: int, pitch: float = 100.0) -> np.ndarray:
    xy = [(c * pitch + (pitch / 2 if r % 2 else 0.0), r * pitch * np.sqrt(3) / 2) for r in range(ny) for c in range(nx)]
    return np.array(xy)


def synthetic_slide(
    nx: int = 7, ny: int = 7, *, pitch_px: float = 20.0, mpp: float = 5.0, seed: int = 0, library_id: str = "s1"
) -> ad.AnnData:
    """A tiny Visium-like slide: hex lattice, an RGB image with a gradient, Poisson counts."""
    rng = np.random.default_rng(seed)
    xy = hex_coords(nx, ny, pitch_px) + 2 * pitch_px
    n = len(xy)
    h = int(xy[:, 1].max() + 2 * pitch_px)
    w = int(xy[:, 0].max() + 2 * pitch_px)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 128)], -1).astype(np.uint8)
    counts = rng.poisson(3.0, size=(n, len(GENES))).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"{library_id}_{i}" for i in range(n)]))
    a.var_names = GENES
    a.obs["library_id"] = pd.Categorical([library_id] * n)
    a.obsm["spatial"] = xy
    a.uns["spatial"] = {
        library_id: {
            "images": {"hires": img},
            "scalefactors": {
                "tissue_hires_scalef": 1.0,
                "microns_per_pixel": mpp,
                "spot_diameter_fullres": 55.0 / mpp,
                "spot_diameter_um": 55.0,
            },
            "metadata": {"platform": "visium"},
        }
    }
    return a


def tiny_config(**kw) -> StormConfig:
    base = {
        "he_backbone": "resnet10t",
        "image_size": 32,
        "gene_vocab": list(GENES),
        "gene_embed_dim": 16,
        "hidden_dim": 32,
        "depth": 2,
        "num_heads": 4,
        "decoder_dim": 16,
        "decoder_depth": 1,
        "head_hidden": 16,
        "dropout": 0.0,
    }
    base.update(kw)
    return StormConfig(**base)


def tiny_model(**kw) -> StormModel:
    import torch

    torch.manual_seed(0)
    return StormModel(tiny_config(**kw)).eval()
