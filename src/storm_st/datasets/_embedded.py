"""Real data shipped inside the package (no network): HER2ST C6, DLPFC 151673, MSigDB hallmarks."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from storm_st._constants import Keys

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["demo", "embedded_dlpfc", "hallmarks"]

_HALLMARK_FILES = {"human": "hallmarks_pathways_human.json", "mouse": "mouse_hallmarks.json"}


def _data_path(name: str) -> Path:
    path = Path(str(files("storm_st.datasets") / "_data" / name))
    if not path.exists():
        raise FileNotFoundError(
            f"Embedded data file {name!r} is missing from the installed package ({path}); reinstall storm_st or "
            "regenerate it with scripts/make_demo_data.py."
        )
    return path


def demo() -> AnnData:
    """HER2ST section C6 with its H&E image, embedded in the package (no network).

    A HER2-positive breast cancer section (patient C) on the legacy Spatial Transcriptomics platform
    (100 µm spots, 200 µm pitch) from Andersson et al., Nat Commun 2021; it is one of the held-out
    *test* sections (train on C2-C4, test on C5-C6). All genes are kept.

    Returns
    -------
    AnnData with raw counts in ``X`` (178 spots x all genes), ``obsm['spatial']`` in full-resolution pixels
    (≈0.688 µm/px), and ``uns['spatial']['C6']`` whose ``hires`` image is the H&E at half resolution
    (``tissue_hires_scalef = 0.5``, ≈1.38 µm/px).
    """
    import anndata as ad
    from PIL import Image

    adata = ad.read_h5ad(_data_path("her2st_C6.h5ad"))
    lib = adata.uns[Keys.SPATIAL]["C6"]
    with Image.open(_data_path("her2st_C6_hires.jpg")) as im:
        lib.setdefault(Keys.IMAGES, {})[Keys.HIRES] = np.asarray(im.convert("RGB"))
    return adata


def embedded_dlpfc() -> AnnData:
    """DLPFC section 151673 (10x Visium, Maynard et al. 2021) with its manual layers, embedded in the package.

    Returns
    -------
    AnnData of 3,639 spots x 5,000 genes (raw counts, Ensembl ``var_names``, ``var['gene_symbols']``),
    ``obs['layer']`` (L1-L6, WM), ``obsm['spatial']`` and the 600 x 600 low-res image.
    """
    import anndata as ad

    return ad.read_h5ad(_data_path("dlpfc_151673.h5ad"))


@cache
def _hallmarks(organism: str) -> dict[str, tuple[str, ...]]:
    raw = json.loads(_data_path(f"genesets/{_HALLMARK_FILES[organism]}").read_text())
    return {name: tuple(entry["geneSymbols"]) for name, entry in raw.items()}


def hallmarks(organism: Literal["human", "mouse"] = "human") -> dict[str, list[str]]:
    """MSigDB Hallmark gene sets (50 sets), shipped with the package.

    Copied from the documentation of MICS-Lab/novae (BSD-3, see ``_data/genesets/NOVAE_LICENSE`` and
    ``SOURCE.txt``); MSigDB's terms of use apply (Liberzon et al., Cell Systems 2015).

    Parameters
    ----------
    organism
        ``'human'`` (HGNC symbols) or ``'mouse'`` (MGI symbols, orthologs).

    Returns
    -------
    Mapping from set name (e.g. ``'HALLMARK_HYPOXIA'``) to its gene symbols.
    """
    if organism not in _HALLMARK_FILES:
        raise ValueError(f"organism must be one of {sorted(_HALLMARK_FILES)}, got {organism!r}.")
    return {k: list(v) for k, v in _hallmarks(organism).items()}
