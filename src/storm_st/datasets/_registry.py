"""Registry of public datasets users fetch when online (hash-pinned, cached with pooch).

Nothing here is downloaded at import or in the tests: :func:`fetch` downloads on demand, or loads a local
copy given with ``path=``.

Provenance of the entries: URLs and sha256 hashes are those of the squidpy dataset registry
(scverse/squidpy ``src/squidpy/datasets/datasets.yaml``, squidpy 1.8.2, BSD-3-Clause), served from
``https://exampledata.scverse.org/squidpy/``. Only entries with a published hash are included.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from storm_st._constants import Keys, Platform

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["REGISTRY", "DatasetEntry", "fetch"]

_SQUIDPY_S3 = "https://exampledata.scverse.org/squidpy/"


@dataclass(frozen=True)
class DatasetEntry:
    """One public dataset: its files (name -> (url, sha256)), how to load it, and a description."""

    kind: Literal["h5ad", "image", "visium"]
    files: dict[str, tuple[str, str]]
    description: str
    citation: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sq(key: str) -> str:
    return _SQUIDPY_S3 + key


_BC1 = "10x_genomics/V1_Breast_Cancer_Block_A_Section_1/V1_Breast_Cancer_Block_A_Section_1"

REGISTRY: dict[str, DatasetEntry] = {
    # squidpy datasets.yaml: visium_hne_adata
    "visium_hne_adata": DatasetEntry(
        kind="h5ad",
        files={
            "visium_hne_adata.h5ad": (
                _sq("visium_hne_adata.h5ad"),
                "3571e6b84dd32c73ece8ae0bebbd4758e77c6fdd321b2bbe0d4ffa8ed56e1cbe",
            )
        },
        description="10x Visium H&E, adult mouse brain (V1_Adult_Mouse_Brain), pre-processed by squidpy; 2,688 spots.",
        citation="10x Genomics; Palla et al., Nat Methods 2022 (squidpy).",
    ),
    # squidpy datasets.yaml: visium_hne_adata_crop
    "visium_hne_adata_crop": DatasetEntry(
        kind="h5ad",
        files={
            "visium_hne_adata_crop.h5ad": (
                _sq("visium_hne_adata_crop.h5ad"),
                "9c9b277bde9f34a022df7f3e35b35ce7ecc80f006d6640b0786f4ace6f6eb5dd",
            )
        },
        description="Cropped subset of visium_hne_adata; 684 spots.",
        citation="10x Genomics; Palla et al., Nat Methods 2022 (squidpy).",
    ),
    # squidpy datasets.yaml: visium_fluo_adata_crop
    "visium_fluo_adata_crop": DatasetEntry(
        kind="h5ad",
        files={
            "visium_fluo_adata_crop.h5ad": (
                _sq("visium_fluo_adata_crop.h5ad"),
                "ea8776c281a364e8c30a8de55a17479aa6d3c9eb90fe756c55f02ffd79e053ec",
            )
        },
        description="Cropped 10x Visium fluorescence, mouse brain coronal section 2; 704 spots (no H&E).",
        citation="10x Genomics; Palla et al., Nat Methods 2022 (squidpy).",
    ),
    # squidpy datasets.yaml: visium_hne_image_crop
    "visium_hne_image_crop": DatasetEntry(
        kind="image",
        files={
            "visium_hne_image_crop.tiff": (
                _sq("visium_hne_image_crop.tiff"),
                "56d379d96da859ea963c4349bbc8de07da9b68ce133839ebef5fe1b033c9e7bb",
            )
        },
        description="Cropped full-resolution H&E of V1_Adult_Mouse_Brain (3,527 x 3,527 px); returns the file path.",
        citation="10x Genomics.",
    ),
    # squidpy datasets.yaml: visium_hne_image
    "visium_hne_image": DatasetEntry(
        kind="image",
        files={
            "visium_hne_image.tiff": (
                _sq("visium_hne_image.tiff"),
                "39d0a85a7cecb0bde9ad2566260d571bb49834d26fc443cb32b96475f30668b2",
            )
        },
        description="Full-resolution H&E of V1_Adult_Mouse_Brain (11,757 x 11,291 px); returns the file path.",
        citation="10x Genomics.",
    ),
    # squidpy datasets.yaml: V1_Breast_Cancer_Block_A_Section_1 (visium_10x, three files)
    "V1_Breast_Cancer_Block_A_Section_1": DatasetEntry(
        kind="visium",
        files={
            "filtered_feature_bc_matrix.h5": (
                _sq(f"{_BC1}_filtered_feature_bc_matrix.h5"),
                "b3cbb6ead60afad848ebcc07a34835613d9d2d79e416ad8300b210d9de584b65",
            ),
            "spatial.tar.gz": (
                _sq(f"{_BC1}_spatial.tar.gz"),
                "415530a9d31172f63fd358d5d1cefb0798698ef9c0e614f52825894cd45c61bf",
            ),
            "image.tif": (
                _sq(f"{_BC1}_image.tif"),
                "73a94ca956d1b5c027dcaf1ac42c15fed4d4a12eefee4b4b597e62f34cc5959e",
            ),
        },
        description="10x Visium human breast cancer (block A section 1), Space Ranger 1.1.0 with full-resolution H&E.",
        citation="10x Genomics.",
    ),
}


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("STORM_ST_CACHE")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("storm_st"))


def _visium_layout(adata: AnnData) -> AnnData:
    """Add storm_st's keys (library_id, µm/px, platform) to an AnnData already in the scanpy Visium layout."""
    import pandas as pd

    spatial = adata.uns.get(Keys.SPATIAL, {}) or {}
    if len(spatial) != 1:
        return adata
    lib_id = str(next(iter(spatial)))
    lib = spatial[lib_id]
    sf = lib.setdefault(Keys.SCALEFACTORS, {})
    spot_px = sf.get(Keys.SPOT_DIAMETER_FULLRES)
    if spot_px and Keys.MPP not in sf:
        sf[Keys.SPOT_DIAMETER_UM] = Platform.SPOT_DIAMETER_UM["visium"]
        sf[Keys.MPP] = Platform.SPOT_DIAMETER_UM["visium"] / float(spot_px)
    meta = lib.setdefault(Keys.METADATA, {})
    if not isinstance(meta, dict):
        lib[Keys.METADATA] = meta = {}
    meta.setdefault(Keys.PLATFORM, "visium")
    if Keys.LIBRARY_ID not in adata.obs:
        adata.obs[Keys.LIBRARY_ID] = pd.Categorical([lib_id] * adata.n_obs)
    return adata


def _load(entry: DatasetEntry, paths: dict[str, Path], name: str) -> Any:
    if entry.kind == "h5ad":
        import anndata as ad

        return _visium_layout(ad.read_h5ad(next(iter(paths.values()))))
    if entry.kind == "image":
        return next(iter(paths.values()))
    # visium: a folder with filtered_feature_bc_matrix.h5 and spatial/
    from storm_st.io import read_visium

    folder = paths["filtered_feature_bc_matrix.h5"].parent
    tar = paths.get("spatial.tar.gz")
    if tar is not None and not (folder / "spatial").is_dir():
        with tarfile.open(tar) as tf:
            tf.extractall(folder, filter="data")
    adata = read_visium(folder, library_id=name)
    image = paths.get("image.tif")
    if image is not None and image.exists():
        adata.uns[Keys.SPATIAL][name][Keys.METADATA]["image_path"] = str(image)
    return adata


def fetch(name: str, *, cache_dir: str | Path | None = None, path: str | Path | None = None) -> Any:
    """Load a public dataset of :data:`REGISTRY`, downloading it once (hash-checked) when online.

    Parameters
    ----------
    name
        Registry key, e.g. ``'visium_hne_adata'``; see ``storm_st.datasets.REGISTRY``.
    cache_dir
        Where downloads are kept; default ``$STORM_ST_CACHE`` or ``pooch.os_cache('storm_st')``.
    path
        A local copy to load instead of downloading: the file (``h5ad`` / image entries) or a folder
        holding the entry's files under their registry names.

    Returns
    -------
    An :class:`~anndata.AnnData` in the storm_st layout (``h5ad`` and ``visium`` entries) or the
    :class:`~pathlib.Path` of the image (``image`` entries).
    """
    if name not in REGISTRY:
        raise KeyError(f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(REGISTRY))}.")
    entry = REGISTRY[name]
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"Local copy {str(path)!r} of dataset {name!r} does not exist.")
        if path.is_dir():
            paths = {f: path / f for f in entry.files}
            missing = [f for f, p in paths.items() if not p.exists() and f != "image.tif"]
            if missing:
                raise FileNotFoundError(f"Folder {str(path)!r} lacks files {missing} of dataset {name!r}.")
        else:
            if len(entry.files) != 1:
                raise ValueError(f"Dataset {name!r} has several files ({', '.join(entry.files)}); pass their folder.")
            paths = {next(iter(entry.files)): path}
        return _load(entry, paths, name)
    import pooch

    folder = _cache_dir(cache_dir) / name
    paths = {}
    for fname, (url, sha256) in entry.files.items():
        paths[fname] = Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=fname, path=folder))
    return _load(entry, paths, name)
