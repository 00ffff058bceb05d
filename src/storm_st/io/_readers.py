"""Spot-level readers: legacy ST (HER2ST), Visium / Space Ranger, DLPFC, and multi-slide concatenation.

Every reader returns an AnnData in the scanpy/squidpy Visium layout (see :class:`storm_st._constants.Keys`):
raw counts in ``X``, spot centres in full-resolution pixels in ``obsm['spatial']`` and, per library,
``uns['spatial'][library_id] = {'images', 'scalefactors', 'metadata'}`` with the physical pixel size.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from storm_st._constants import Keys, Platform
from storm_st._utils import check_counts

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = [
    "concat_slides",
    "read_dlpfc",
    "read_her2st",
    "read_her2st_section",
    "read_visium",
    "validate_slide",
]


# ----------------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------------
def _as_path(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; check the path.")
    return path


def _read_rgb(path: str | Path, downscale: int = 1) -> np.ndarray:
    """Read a PNG/JPEG/TIFF as ``uint8`` ``H x W x 3``, optionally reduced by an integer factor."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    path = _as_path(path, "Image file")
    with Image.open(path) as im:
        size = (max(1, round(im.width / downscale)), max(1, round(im.height / downscale)))
        if downscale > 1 and im.format == "JPEG":
            im.draft("RGB", size)  # decode at a reduced scale (at least ``size``)
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.LANCZOS)
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        arr = (arr / max(1, arr.max()) * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _to_csr(X: Any) -> sp.csr_matrix:
    X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    return X


def _make_unique_symbols(names: Sequence[str]) -> pd.Index:
    idx = pd.Index([str(n) for n in names])
    if idx.is_unique:
        return idx
    from anndata.utils import make_index_unique

    return make_index_unique(idx)


def validate_slide(adata: AnnData, *, check_image: bool = True) -> AnnData:
    """Check an AnnData in the storm_st layout and raise a specific error for what is wrong.

    Parameters
    ----------
    adata
        AnnData produced by a storm_st reader (or built by hand in the same layout).
    check_image
        Also check that every slide with an image has a known pixel size and that all spot centres
        fall inside its image.

    Returns
    -------
    The same ``adata``, for chaining.
    """
    from storm_st.io._slide import slide_views

    if adata.n_obs == 0:
        raise ValueError("The slide has 0 spots: no spot is under tissue or the counts and positions do not match.")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Duplicated spot ids {dup}; make obs_names unique (e.g. prefix them with the library id).")
    if adata.n_vars:
        check_counts(adata.X, integer=False, what="adata.X (counts)")
    if Keys.SPATIAL not in adata.obsm:
        raise KeyError("adata.obsm['spatial'] is missing: spot coordinates in full-resolution pixels are needed.")
    xy = np.asarray(adata.obsm[Keys.SPATIAL], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy).all():
        raise ValueError("adata.obsm['spatial'] must be a finite (n_spots, 2) array of (x, y) pixel coordinates.")
    if (xy[:, :2] < 0).any():
        raise ValueError(
            f"{int((xy[:, :2] < 0).any(axis=1).sum())} spot centres have negative pixel coordinates: they lie outside "
            "the image. Check that obsm['spatial'] is (x, y) in full-resolution pixels."
        )
    if check_image:
        spatial = adata.uns.get(Keys.SPATIAL, {}) or {}
        has_image = any(
            (lib.get(Keys.IMAGES) or (lib.get(Keys.METADATA, {}) or {}).get("image_path"))
            for lib in spatial.values()
            if isinstance(lib, dict)
        )
        slide_views(adata, require_scale=bool(spatial), require_image=False)
        if has_image:
            for view in slide_views(adata):
                if not view.has_image:
                    continue
                if not np.isfinite(view.mpp):
                    raise ValueError(f"Slide {view.library_id!r} has an image but no pixel size (microns_per_pixel).")
    return adata


def _spatial_entry(
    *,
    images: dict[str, np.ndarray] | None,
    scalefactors: dict[str, float],
    platform: str,
    source: str,
    **metadata: Any,
) -> dict[str, Any]:
    if platform not in Platform.SPOT_DIAMETER_UM:
        raise ValueError(f"Unknown platform {platform!r}; expected one of {sorted(Platform.SPOT_DIAMETER_UM)}.")
    meta = {Keys.PLATFORM: platform, "source": source}
    meta.update({k: v for k, v in metadata.items() if v is not None})
    return {
        Keys.IMAGES: dict(images or {}),
        Keys.SCALEFACTORS: {k: float(v) for k, v in scalefactors.items() if v is not None},
        Keys.METADATA: meta,
    }


def _build_adata(
    X: Any,
    *,
    obs_names: Sequence[str],
    var: pd.DataFrame,
    coords: np.ndarray,
    library_id: str,
    spatial_entry: dict[str, Any],
    obs: pd.DataFrame | None = None,
    check: bool = True,
) -> AnnData:
    from anndata import AnnData

    X = _to_csr(X)
    check_counts(X, integer=False, what=f"counts of slide {library_id!r}")
    if obs is None:
        obs = pd.DataFrame(index=pd.Index([f"{library_id}_{n}" for n in obs_names]))
    else:
        obs = obs.copy()
    obs[Keys.LIBRARY_ID] = pd.Categorical([library_id] * len(obs))
    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm[Keys.SPATIAL] = np.asarray(coords, dtype=np.float64)[:, :2]
    adata.uns[Keys.SPATIAL] = {library_id: spatial_entry}
    if check:
        validate_slide(adata)
    return adata


# ----------------------------------------------------------------------------------------------------------------------
# legacy ST (HER2ST)
# ----------------------------------------------------------------------------------------------------------------------
def _fit_pixels_per_step(array_xy: np.ndarray, pixel_xy: np.ndarray) -> float:
    """Pixels per array step from a least-squares affine fit of pixel against array coordinates."""
    if len(array_xy) < 3:
        raise ValueError("At least 3 spots are needed to derive the pixel size from the array pitch; pass mpp=.")
    design = np.c_[array_xy, np.ones(len(array_xy))]
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    det = abs(np.linalg.det(coef[:2]))
    if not np.isfinite(det) or det <= 0:
        raise ValueError("Spot pixel coordinates are degenerate (collinear); cannot derive the pixel size, pass mpp=.")
    return float(np.sqrt(det))


def _match_labels(labels: str | Path, spots: pd.DataFrame, px_per_step: float) -> pd.Series:
    """Pathologist label of each spot: the nearest labelled point within half an array step.

    The HER2ST label files give ``x``, ``y`` (the fitted ``new_x``, ``new_y`` of the selection file) and pixel
    coordinates of a differently scaled image, so spots are matched in the array frame when ``x``, ``y`` are
    present, else on ``pixel_x``, ``pixel_y`` against the selection file's pixel coordinates.
    """
    from scipy.spatial import cKDTree

    lab = pd.read_csv(_as_path(labels, "Label file"), sep="\t")
    if "label" not in lab.columns:
        raise ValueError(f"Label file {str(labels)!r} has no 'label' column.")
    if {"x", "y"} <= set(lab.columns):
        ref, query, tol = ["x", "y"], ["new_x", "new_y"], 0.5
    elif {"pixel_x", "pixel_y"} <= set(lab.columns):
        ref, query, tol = ["pixel_x", "pixel_y"], ["pixel_x", "pixel_y"], 0.5 * px_per_step
    else:
        raise ValueError(f"Label file {str(labels)!r} needs columns x, y (array) or pixel_x, pixel_y, and label.")
    lab = lab.dropna(subset=ref)
    if lab.empty:
        raise ValueError(f"Label file {str(labels)!r} has no labelled spot.")
    dist, idx = cKDTree(lab[ref].to_numpy(float)).query(spots[query].to_numpy(float))
    out = np.where(dist <= tol, lab["label"].to_numpy(object)[idx], None)
    unmatched = int(pd.isna(out).sum())
    if unmatched:
        logger.info("%s: %d spots have no label within half an array step", Path(labels).name, unmatched)
    return pd.Series(pd.Categorical(out), index=spots.index)


def read_her2st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path | None = None,
    *,
    labels: str | Path | None = None,
    library_id: str | None = None,
    mpp: float | None = None,
    pitch_um: float = 200.0,
    spot_diameter_um: float = 100.0,
    image_downscale: int = 1,
) -> AnnData:
    """Read one legacy Spatial Transcriptomics section in the HER2ST layout.

    Parameters
    ----------
    counts
        ``<section>.tsv.gz``: spots x genes raw counts, rows named ``<x>x<y>`` (array coordinates).
    spots
        ``<section>_selection.tsv`` with columns ``x, y, new_x, new_y, pixel_x, pixel_y, selected``;
        only ``selected == 1`` spots are kept, joined to the counts on ``x, y``.
    image
        Full-resolution H&E image (``<section>.jpg``), or `None` for a section without image.
    labels
        Optional ``<section>_labeled_coordinates.tsv``; the pathologist region of each spot goes to
        ``obs['label']`` (nearest labelled point within half an array step, matched on the array
        coordinates ``x, y`` of the label file, or on ``pixel_x, pixel_y`` when those are missing).
    library_id
        Name of the slide; default: the counts file name without extensions.
    mpp
        µm per full-resolution pixel; default: derived from ``pitch_um`` by a least-squares fit of
        ``pixel_x, pixel_y`` against ``new_x, new_y``.
    pitch_um
        Centre-to-centre distance of the array (200 µm for ST v1).
    spot_diameter_um
        Spot diameter (100 µm for ST v1).
    image_downscale
        Integer factor by which the image is reduced in memory; ``tissue_hires_scalef`` becomes
        ``1 / image_downscale`` so coordinates stay in full-resolution pixels.

    Returns
    -------
    AnnData with raw counts in ``X``, ``obsm['spatial']``, ``obs['array_row'/'array_col']``,
    ``obs['label']`` (when ``labels`` is given) and ``uns['spatial'][library_id]`` (platform ``'legacy_st'``).
    """
    counts = _as_path(counts, "Counts file")
    spots = _as_path(spots, "Spot selection file")
    if image is not None:
        image = _as_path(image, "Image file")
    if int(image_downscale) < 1:
        raise ValueError(f"image_downscale must be a positive integer, got {image_downscale!r}.")
    library_id = library_id or counts.name.split(".")[0]

    sel = pd.read_csv(spots, sep="\t")
    need = {"x", "y", "new_x", "new_y", "pixel_x", "pixel_y"}
    if need - set(sel.columns):
        raise ValueError(f"Spot file {str(spots)!r} lacks columns {sorted(need - set(sel.columns))}.")
    if "selected" in sel.columns:
        sel = sel[sel["selected"] == 1]
    sel.index = pd.Index(sel["x"].astype(int).astype(str) + "x" + sel["y"].astype(int).astype(str))
    if not sel.index.is_unique:
        raise ValueError(
            f"Duplicated array positions in {str(spots)!r}: {sel.index[sel.index.duplicated()][:5].tolist()}."
        )

    df = pd.read_csv(counts, sep="\t", index_col=0)
    if not df.index.is_unique:
        raise ValueError(f"Duplicated spot ids in {str(counts)!r}: {df.index[df.index.duplicated()][:5].tolist()}.")
    common = df.index.intersection(sel.index, sort=False)
    if len(common) == 0:
        raise ValueError(
            f"No spot of {str(counts)!r} matches a selected spot of {str(spots)!r} (rows must be named '<x>x<y>' "
            "with the array coordinates of the selection file); this slide would have 0 spots."
        )
    if len(common) < len(df):
        logger.info(
            "%s: %d of %d count rows are not selected spots and are dropped", library_id, len(df) - len(common), len(df)
        )
    df = df.loc[common]
    sel = sel.loc[common]
    values = df.to_numpy()
    check_counts(values, integer=False, what=f"counts of {str(counts)!r}")

    px_per_step = _fit_pixels_per_step(
        sel[["new_x", "new_y"]].to_numpy(float), sel[["pixel_x", "pixel_y"]].to_numpy(float)
    )
    derived = pitch_um / px_per_step
    if mpp is None:
        mpp = derived
    elif not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}.")
    scalef: dict[str, float] = {
        Keys.MPP: float(mpp),
        Keys.SPOT_DIAMETER_UM: float(spot_diameter_um),
        Keys.SPOT_DIAMETER_FULLRES: float(spot_diameter_um) / float(mpp),
        "pitch_um": float(pitch_um),
        "pixels_per_array_step": px_per_step,
    }
    images = {}
    if image is not None:
        images[Keys.HIRES] = _read_rgb(image, int(image_downscale))
        scalef[Keys.HIRES_SCALEF] = 1.0 / int(image_downscale)
    entry = _spatial_entry(
        images=images,
        scalefactors=scalef,
        platform="legacy_st",
        source=f"HER2ST {counts.name}",
        image_file=str(image) if image is not None else None,
    )
    obs = pd.DataFrame(
        {
            "array_col": sel["x"].astype(int).to_numpy(),
            "array_row": sel["y"].astype(int).to_numpy(),
        },
        index=pd.Index([f"{library_id}_{i}" for i in common]),
    )
    if labels is not None:
        obs["label"] = _match_labels(labels, sel, px_per_step).to_numpy()
        obs["label"] = obs["label"].astype("category")
    var = pd.DataFrame(index=_make_unique_symbols(df.columns))
    return _build_adata(
        values,
        obs_names=list(common),
        var=var,
        coords=sel[["pixel_x", "pixel_y"]].to_numpy(float),
        library_id=library_id,
        spatial_entry=entry,
        obs=obs,
    )


def read_her2st_section(root: str | Path, section: str, **kwargs: Any) -> AnnData:
    """Read section ``section`` (e.g. ``'C2'``) from a folder laid out like almaan/her2st ``data/``.

    Parameters
    ----------
    root
        Folder with ``counts/``, ``spots/``, and optionally ``images/`` and ``labels/``.
    section
        Section name; its image and labels are used when present.
    **kwargs
        Passed to :func:`read_her2st`.

    Returns
    -------
    See :func:`read_her2st`.
    """
    root = _as_path(root, "HER2ST folder")
    counts = root / "counts" / f"{section}.tsv.gz"
    if not counts.exists():
        known = sorted(p.name.split(".")[0] for p in (root / "counts").glob("*.tsv.gz"))
        raise FileNotFoundError(f"No counts for section {section!r} in {str(root / 'counts')!r}; sections: {known}.")
    image = root / "images" / f"{section}.jpg"
    labels = root / "labels" / f"{section}_labeled_coordinates.tsv"
    kwargs.setdefault("library_id", section)
    kwargs.setdefault("labels", labels if labels.exists() else None)
    return read_her2st(counts, root / "spots" / f"{section}_selection.tsv", image if image.exists() else None, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Visium / Space Ranger
# ----------------------------------------------------------------------------------------------------------------------
_POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _read_positions(spatial: Path) -> pd.DataFrame:
    for name, header in (("tissue_positions.csv", 0), ("tissue_positions_list.csv", None)):
        path = spatial / name
        if path.exists():
            pos = pd.read_csv(path, header=header)
            if header is None:
                if pos.shape[1] != 6:
                    raise ValueError(
                        f"{str(path)!r} should have 6 columns ({', '.join(_POS_COLS)}), got {pos.shape[1]}."
                    )
                pos.columns = _POS_COLS
            if set(_POS_COLS) - set(pos.columns):
                raise ValueError(f"{str(path)!r} lacks columns {sorted(set(_POS_COLS) - set(pos.columns))}.")
            return pos.set_index("barcode")
    raise FileNotFoundError(
        f"No tissue_positions.csv or tissue_positions_list.csv in {str(spatial)!r}: pass the Space Ranger 'outs' folder."
    )


def read_visium(
    path: str | Path,
    *,
    library_id: str | None = None,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    load_images: bool = True,
) -> AnnData:
    """Read a Space Ranger output folder (Visium, 55 µm spots).

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder with ``spatial/`` and the counts (``counts_file`` or the
        ``filtered_feature_bc_matrix/`` mtx folder).
    library_id
        Name of the slide; default: the folder name.
    counts_file
        Name of the h5 counts file; when absent the mtx folder of the same stem is read.
    load_images
        Load ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` (either may be missing).

    Returns
    -------
    AnnData of the in-tissue spots: raw counts in ``X``, gene symbols as ``var_names`` with Ensembl ids in
    ``var['gene_ids']``, ``obs['in_tissue', 'array_row', 'array_col']``, ``obsm['spatial']`` and
    ``uns['spatial'][library_id]`` (platform ``'visium'``, ``microns_per_pixel = 55 / spot_diameter_fullres``).
    """
    import scanpy as sc

    path = _as_path(path, "Space Ranger folder")
    library_id = library_id or path.name
    h5 = path / counts_file
    mtx = path / counts_file.removesuffix(".h5")
    if h5.exists():
        adata = sc.read_10x_h5(h5)
    elif mtx.is_dir():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = sc.read_10x_mtx(mtx, var_names="gene_symbols", make_unique=False)
    else:
        raise FileNotFoundError(f"Neither {str(h5)!r} nor the mtx folder {str(mtx)!r} exists; pass counts_file=.")
    var = adata.var.copy()
    var.index = _make_unique_symbols(adata.var_names)
    spatial = path / "spatial"
    pos = _read_positions(spatial)
    missing = adata.obs_names.difference(pos.index)
    if len(missing):
        raise ValueError(f"{len(missing)} barcodes of the counts have no position (e.g. {missing[:3].tolist()}).")
    pos = pos.loc[adata.obs_names]
    keep = pos["in_tissue"].to_numpy() == 1
    pos = pos[keep]
    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.exists():
        raise FileNotFoundError(f"{str(sf_path)!r} is missing: the pixel size of the slide cannot be known.")
    scalef = json.loads(sf_path.read_text())
    spot_px = scalef.get(Keys.SPOT_DIAMETER_FULLRES)
    if spot_px is None or not np.isfinite(spot_px) or spot_px <= 0:
        raise ValueError(f"{str(sf_path)!r} has no valid 'spot_diameter_fullres' ({spot_px!r}).")
    scalef[Keys.SPOT_DIAMETER_UM] = Platform.SPOT_DIAMETER_UM["visium"]
    scalef[Keys.MPP] = Platform.SPOT_DIAMETER_UM["visium"] / spot_px
    images = {}
    if load_images:
        for res in (Keys.HIRES, Keys.LOWRES):
            f = spatial / f"tissue_{res}_image.png"
            if f.exists():
                if f"tissue_{res}_scalef" not in scalef:
                    raise ValueError(f"{str(sf_path)!r} lacks 'tissue_{res}_scalef' for the image {str(f)!r}.")
                images[res] = _read_rgb(f)
    entry = _spatial_entry(images=images, scalefactors=scalef, platform="visium", source=str(path))
    obs = pos[["in_tissue", "array_row", "array_col"]].copy()
    obs.index = pd.Index([f"{library_id}_{b}" for b in pos.index])
    coords = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    return _build_adata(
        adata.X[keep],
        obs_names=list(pos.index),
        var=var,
        coords=coords,
        library_id=library_id,
        spatial_entry=entry,
        obs=obs,
    )


def read_dlpfc(path: str | Path, *, symbols_csv: str | Path | None = None) -> AnnData:
    """Read a DLPFC (spatialLIBD) section stored as h5ad with Ensembl ``var_names``.

    Parameters
    ----------
    path
        ``DLPFC_<sample>.h5ad``.
    symbols_csv
        CSV with columns ``gene_id, gene_name``; default: ``ensg_to_symbol_from_HumanPilot.csv`` next
        to ``path`` when present.

    Returns
    -------
    AnnData with Ensembl ids as ``var_names`` (also in ``var['gene_ids']``), symbols where known in
    ``var['gene_symbols']`` (else the Ensembl id), ``obs['layer']`` (manual annotation), ``obs['library_id']``
    and the scale (``microns_per_pixel = 55 / spot_diameter_fullres``, platform ``'visium'``).
    """
    import anndata as ad

    path = _as_path(path, "DLPFC h5ad")
    adata = ad.read_h5ad(path)
    spatial = adata.uns.get(Keys.SPATIAL, {})
    if len(spatial) != 1:
        raise ValueError(f"{str(path)!r} should hold exactly one library in uns['spatial'], found {list(spatial)}.")
    library_id = str(next(iter(spatial)))
    lib = spatial[library_id]
    sf = dict(lib.get(Keys.SCALEFACTORS, {}))
    spot_px = sf.get(Keys.SPOT_DIAMETER_FULLRES)
    if spot_px is None or not np.isfinite(spot_px) or spot_px <= 0:
        raise ValueError(f"{str(path)!r}: uns['spatial'][{library_id!r}]['scalefactors'] lacks spot_diameter_fullres.")
    sf[Keys.SPOT_DIAMETER_UM] = 55.0
    sf[Keys.MPP] = 55.0 / float(spot_px)
    meta = dict(lib.get(Keys.METADATA, {}) or {})
    meta[Keys.PLATFORM] = "visium"
    meta.setdefault("source", str(path))
    adata.uns[Keys.SPATIAL] = {
        library_id: {Keys.IMAGES: dict(lib.get(Keys.IMAGES, {})), Keys.SCALEFACTORS: sf, Keys.METADATA: meta}
    }
    adata.var["gene_ids"] = adata.var_names.astype(str)
    symbols_csv = Path(symbols_csv) if symbols_csv is not None else path.parent / "ensg_to_symbol_from_HumanPilot.csv"
    if symbols_csv.exists():
        table = pd.read_csv(symbols_csv)
        if not {"gene_id", "gene_name"} <= set(table.columns):
            raise ValueError(f"{str(symbols_csv)!r} must have columns gene_id, gene_name.")
        mapping = dict(zip(table["gene_id"].astype(str), table["gene_name"].astype(str), strict=False))
        adata.var["gene_symbols"] = [mapping.get(g, g) for g in adata.var_names]
    else:
        adata.var["gene_symbols"] = adata.var_names.astype(str)
    if not str(adata.obs_names[0]).startswith(f"{library_id}_"):
        adata.obs_names = [f"{library_id}_{b}" for b in adata.obs_names]
    adata.obs[Keys.LIBRARY_ID] = pd.Categorical([library_id] * adata.n_obs)
    adata.X = _to_csr(adata.X)
    validate_slide(adata)
    return adata


# ----------------------------------------------------------------------------------------------------------------------
# several slides
# ----------------------------------------------------------------------------------------------------------------------
def concat_slides(adatas: Sequence[AnnData], *, join: str = "outer") -> AnnData:
    """Concatenate slides into one AnnData with ``obs['library_id']`` and merged ``uns['spatial']``.

    Parameters
    ----------
    adatas
        Slides in the storm_st layout, each with one or more libraries.
    join
        ``'outer'`` (union of genes, absent genes are zero) or ``'inner'`` (shared genes only).

    Returns
    -------
    One AnnData; ``uns['spatial']`` holds every library's images and scale factors.
    """
    import anndata as ad

    adatas = list(adatas)
    if not adatas:
        raise ValueError("concat_slides needs at least one AnnData.")
    seen: dict[str, int] = {}
    for i, a in enumerate(adatas):
        if Keys.LIBRARY_ID not in a.obs:
            raise KeyError(f"Slide {i} has no obs['library_id']; read it with a storm_st.io reader.")
        for lib in a.obs[Keys.LIBRARY_ID].astype(str).unique():
            if lib in seen:
                raise ValueError(
                    f"Library id {lib!r} appears in slides {seen[lib]} and {i}; give each slide a unique library_id."
                )
            seen[lib] = i
    names = pd.Index(np.concatenate([a.obs_names.to_numpy() for a in adatas]))
    if not names.is_unique:
        raise ValueError(
            f"Duplicated spot ids across slides, e.g. {names[names.duplicated()][:5].tolist()}; prefix them with the library id."
        )
    spatial: dict[str, Any] = {}
    for a in adatas:
        spatial.update(a.uns.get(Keys.SPATIAL, {}) or {})
    # uns is merged by hand (image arrays do not compare well); the rest goes through anndata.concat
    stripped = [ad.AnnData(X=a.X, obs=a.obs, var=a.var, obsm=dict(a.obsm), layers=dict(a.layers)) for a in adatas]
    out = ad.concat(stripped, join=join, merge="first", uns_merge="unique", fill_value=0)
    out.obs[Keys.LIBRARY_ID] = pd.Categorical(out.obs[Keys.LIBRARY_ID].astype(str), categories=list(seen))
    out.uns[Keys.SPATIAL] = spatial
    if out.n_vars and sp.issparse(out.X):
        out.X = _to_csr(out.X)
    return out
