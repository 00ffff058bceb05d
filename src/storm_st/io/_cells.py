"""Cell-level platforms: Xenium (HEST-style h5ad + H&E), MERFISH and CosMx (Giotto mini layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from storm_st._constants import Keys, Platform
from storm_st._utils import check_counts

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["read_cosmx_giotto", "read_merfish_giotto", "read_xenium_hest"]


def _exists(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; check the path.")
    return path


def read_xenium_hest(
    h5ad: str | Path,
    image: str | Path,
    *,
    mpp: float,
    library_id: str | None = None,
    cell_fov_um: float = Platform.CELL_FOV_UM,
    swap_xy: bool | None = None,
) -> AnnData:
    """Read a HEST-style cell-level sample: an h5ad with ``obs['x_pixel', 'y_pixel']`` plus its H&E image.

    Parameters
    ----------
    h5ad
        Cells x genes counts with the cell centres in pixels of ``image`` in ``obs['x_pixel']`` and
        ``obs['y_pixel']``.
    image
        H&E image (JPEG/PNG) the pixel coordinates refer to.
    mpp
        µm per pixel of ``image`` (HEST crops often do not record it; it must be given).
    library_id
        Name of the slide; default: the h5ad file name without extension.
    cell_fov_um
        Field of view of a per-cell patch, stored as ``spot_diameter_um``.
    swap_xy
        Whether ``x_pixel`` is the image row and ``y_pixel`` the column (as in the DeepSpot example of
        NCBI858). `None`: swap only when the centres fall outside the image unswapped and inside swapped.

    Returns
    -------
    AnnData with raw counts, ``obsm['spatial']`` (image pixels = full resolution), the image as ``hires``
    (``tissue_hires_scalef = 1``) and platform ``'xenium'``.
    """
    import anndata as ad

    from storm_st.io._readers import _read_rgb, _to_csr, validate_slide

    h5ad, image = _exists(h5ad, "h5ad file"), _exists(image, "Image file")
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp (µm per pixel of the H&E image) must be a positive number, got {mpp!r}.")
    adata = ad.read_h5ad(h5ad)
    missing = {"x_pixel", "y_pixel"} - set(adata.obs.columns)
    if missing:
        raise KeyError(f"{str(h5ad)!r} lacks obs columns {sorted(missing)} (cell centres in image pixels).")
    library_id = library_id or h5ad.name.split(".")[0]
    adata.X = _to_csr(adata.X)
    check_counts(adata.X, integer=False, what=f"counts of {str(h5ad)!r}")
    if "gene_symbol" in adata.var and adata.var["gene_symbol"].notna().all():
        adata.var["gene_ids"] = adata.var_names.astype(str)
        adata.var_names = adata.var["gene_symbol"].astype(str).to_numpy()
        adata.var_names_make_unique()
    adata.obs_names = [f"{library_id}_{n}" for n in adata.obs_names]
    adata.obs[Keys.LIBRARY_ID] = pd.Categorical([library_id] * adata.n_obs)
    xy = adata.obs[["x_pixel", "y_pixel"]].to_numpy(np.float64)
    img = _read_rgb(image)
    h, w = img.shape[:2]

    def _inside(c: np.ndarray) -> bool:
        return bool(((c >= 0) & (c < [w, h])).all())

    if swap_xy is None:
        swap_xy = not _inside(xy) and _inside(xy[:, ::-1])
    if swap_xy:
        xy = xy[:, ::-1].copy()
    adata.obsm[Keys.SPATIAL] = xy
    adata.uns[Keys.SPATIAL] = {
        library_id: {
            Keys.IMAGES: {Keys.HIRES: img},
            Keys.SCALEFACTORS: {
                Keys.HIRES_SCALEF: 1.0,
                Keys.MPP: float(mpp),
                Keys.SPOT_DIAMETER_UM: float(cell_fov_um),
                Keys.SPOT_DIAMETER_FULLRES: float(cell_fov_um) / float(mpp),
            },
            Keys.METADATA: {Keys.PLATFORM: "xenium", "source": str(h5ad), "swapped_xy": bool(swap_xy)},
        }
    }
    return validate_slide(adata)


def _counts_table(cell: np.ndarray, gene: np.ndarray, cells: pd.Index) -> tuple[sp.csr_matrix, pd.Index]:
    genes = pd.Index(sorted(pd.unique(gene.astype(str))))
    rows = cells.get_indexer(cell)
    cols = genes.get_indexer(gene.astype(str))
    ok = rows >= 0
    X = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (rows[ok], cols[ok])), shape=(len(cells), len(genes)), dtype=np.float32
    )
    X.sum_duplicates()
    return X, genes


def _table(X: sp.csr_matrix, genes: pd.Index, obs: pd.DataFrame, xy: np.ndarray, region: str, uns: dict) -> AnnData:
    from anndata import AnnData
    from spatialdata.models import TableModel

    obs = obs.copy()
    obs["region"] = pd.Categorical([region] * len(obs))
    obs["cell_id"] = obs.index.astype(str)
    table = AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    table.obsm[Keys.SPATIAL] = np.asarray(xy, dtype=np.float64)
    table.uns[Keys.SPATIAL] = uns
    return TableModel.parse(table, region=region, region_key="region", instance_key="cell_id")


def read_merfish_giotto(path: str | Path, *, z: int = 0, load_images: bool = True) -> SpatialData:
    """Read the Giotto mini Vizgen MERFISH folder into a :class:`spatialdata.SpatialData`.

    Coordinates are in µm (coordinate system ``'global'``). Cell polygons of slice ``z`` are read from
    ``Raw/cell_boundaries/z<z>_polygons.gz`` (Giotto stores them with ``y`` negated; it is flipped back)
    and transcripts of the same slice are assigned to the polygon that contains them.

    Parameters
    ----------
    path
        The ``Vizgen`` folder (containing ``Raw/``).
    z
        z slice of polygons and transcripts.
    load_images
        Add the DAPI image of slice ``z`` (placed on the Giotto extent of the mini dataset).

    Returns
    -------
    SpatialData with points ``'transcripts'`` (x, y, gene, cell_id), shapes ``'cell_boundaries'``
    (polygons), image ``'dapi'`` and table ``'table'`` (cells x genes counts, ``obsm['spatial']`` =
    centroids in µm, platform ``'merfish'``).
    """
    import dask.dataframe as dd
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Polygon
    from spatialdata.models import Image2DModel, PointsModel, ShapesModel

    raw = _exists(path, "Vizgen folder") / "Raw"
    tx = pd.read_csv(_exists(raw / "vizgen_transcripts.gz", "Transcript file"))
    tx = tx[tx["global_z"] == z].rename(columns={"global_x": "x", "global_y": "y"})
    poly = pd.read_csv(_exists(raw / "cell_boundaries" / f"z{z}_polygons.gz", "Polygon file"))
    if (poly["y"] < 0).all() and (tx["y"] > 0).all():
        poly["y"] = -poly["y"]
    poly["poly_ID"] = poly["poly_ID"].astype(str)
    geoms = {pid: Polygon(g[["x", "y"]].to_numpy()) for pid, g in poly.groupby("poly_ID", sort=False)}
    cells = gpd.GeoDataFrame(geometry=list(geoms.values()), index=pd.Index(list(geoms), name="cell_id"))
    cells["geometry"] = cells.buffer(0)  # repair self-intersections
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(tx["x"], tx["y"]), index=tx.index)
    hit = gpd.sjoin(pts, cells.reset_index()[["cell_id", "geometry"]], predicate="within", how="left")
    hit = hit[~hit.index.duplicated()]
    tx["cell_id"] = hit["cell_id"].reindex(tx.index).fillna("").to_numpy()
    inside = tx["cell_id"].to_numpy() != ""
    X, genes = _counts_table(tx["cell_id"].to_numpy()[inside], tx["gene"].to_numpy()[inside], cells.index)
    cen = cells.geometry.centroid
    obs = pd.DataFrame({"area_um2": cells.geometry.area.to_numpy()}, index=cells.index.astype(str))
    uns = {
        "merfish": {
            Keys.IMAGES: {},
            Keys.SCALEFACTORS: {Keys.MPP: 1.0, Keys.SPOT_DIAMETER_UM: Platform.CELL_FOV_UM},
            Keys.METADATA: {Keys.PLATFORM: "merfish", "source": str(raw.parent), "units": "um"},
        }
    }
    table = _table(X, genes, obs, np.c_[cen.x, cen.y], "cell_boundaries", uns)
    points = PointsModel.parse(
        dd.from_pandas(
            tx[["x", "y", "gene", "cell_id"]].reset_index(drop=True).astype({"gene": "category"}), npartitions=1
        ),
        coordinates={"x": "x", "y": "y"},
        feature_key="gene",
    )
    images = {}
    dapi = raw / "images" / f"mini_dataset_dapi_z{z}.jpg"
    if load_images and dapi.exists():
        from PIL import Image
        from spatialdata.transformations import Affine

        with Image.open(dapi) as im:
            arr = np.asarray(im.convert("L"))[None]
        x0, x1, y0, y1 = 6400.029, 6900.037, 4699.967, 5150.007  # Giotto extent of the mini dataset (µm)
        sx, sy = (x1 - x0) / arr.shape[2], (y1 - y0) / arr.shape[1]
        affine = Affine(np.array([[sx, 0, x0], [0, sy, y0], [0, 0, 1]]), input_axes=("x", "y"), output_axes=("x", "y"))
        images["dapi"] = Image2DModel.parse(arr, dims=("c", "y", "x"), transformations={"global": affine})
    return sd.SpatialData(
        images=images,
        points={"transcripts": points},
        shapes={"cell_boundaries": ShapesModel.parse(cells)},
        tables={"table": table},
    )


def read_cosmx_giotto(path: str | Path, *, mpp: float = 0.18, load_images: bool = True) -> SpatialData:
    """Read the Giotto mini NanoString CosMx folder (2 fields of view) into a :class:`spatialdata.SpatialData`.

    Coordinates are global pixels with ``y`` pointing down (``x_global_px``, ``-y_global_px``). Transcripts
    are assigned to cells by their ``cell_ID`` column (0 = outside cells); a cell is ``'<fov>_<cell_ID>'``.

    Parameters
    ----------
    path
        The ``CosMx`` folder (containing ``Raw/``).
    mpp
        µm per pixel of the CosMx coordinates (0.18 for this public Lung12 release).
    load_images
        Add the immunofluorescence composites of each field of view (``'composite_F<fov>'``).

    Returns
    -------
    SpatialData with points ``'transcripts'``, shapes ``'cells'`` (circles: centroid and equivalent
    radius from the cell label masks, else from the transcripts), images and table ``'table'``
    (cells x genes counts, ``obs['fov', 'fov_cell_number']``, platform ``'cosmx'``).
    """
    import dask.dataframe as dd
    import geopandas as gpd
    import spatialdata as sd
    from spatialdata.models import Image2DModel, PointsModel, ShapesModel
    from spatialdata.transformations import Translation

    raw = _exists(path, "CosMx folder") / "Raw"
    tx_files = sorted(raw.glob("*_tx_file.csv"))
    if not tx_files:
        raise FileNotFoundError(f"No '*_tx_file.csv' transcript file in {str(raw)!r}.")
    tx = pd.read_csv(tx_files[0])
    need = {"fov", "cell_ID", "x_global_px", "y_global_px", "x_local_px", "y_local_px", "target"}
    if need - set(tx.columns):
        raise ValueError(f"{str(tx_files[0])!r} lacks columns {sorted(need - set(tx.columns))}.")
    tx["x"] = tx["x_global_px"].astype(float)
    tx["y"] = -tx["y_global_px"].astype(float)
    tx["cell"] = np.where(tx["cell_ID"] > 0, tx["fov"].astype(str) + "_" + tx["cell_ID"].astype(str), "")
    assigned = tx[tx["cell"] != ""]
    cells = pd.Index(sorted(assigned["cell"].unique(), key=lambda c: tuple(int(p) for p in c.split("_"))))
    X, genes = _counts_table(assigned["cell"].to_numpy(), assigned["target"].to_numpy(), cells)
    g = assigned.groupby("cell")
    cx, cy = g["x"].mean().reindex(cells), g["y"].mean().reindex(cells)
    radius = np.sqrt((g["x"].var().fillna(0) + g["y"].var().fillna(0)).reindex(cells).to_numpy() + 1.0)
    # fov offsets: global = local + offset (y up). Image rows run from the top of the 3648-px-high frame.
    offsets = (
        tx.groupby("fov")[["x_global_px", "y_global_px"]].first()
        - tx.groupby("fov")[["x_local_px", "y_local_px"]].first().to_numpy()
    )
    images = {}
    from PIL import Image

    for fov in sorted(tx["fov"].unique()):
        tag = f"F{int(fov):03d}"
        mask_file = raw / "CellLabels" / f"CellLabels_{tag}.tif"
        comp_file = raw / "CellComposite" / f"CellComposite_{tag}.jpg"
        x0, top = _fov_origin(comp_file, offsets.loc[fov])
        if mask_file.exists():
            import tifffile
            from scipy import ndimage as ndi

            mask = tifffile.imread(mask_file).astype(np.int64)
            labels = np.unique(mask[mask > 0])
            com = ndi.center_of_mass(np.ones_like(mask), mask, labels)
            area = ndi.sum(np.ones_like(mask), mask, labels)
            for lab, (r, c), a in zip(labels, com, area, strict=True):
                key = f"{int(fov)}_{int(lab)}"
                if key in cells:
                    i = cells.get_loc(key)
                    cx.iloc[i], cy.iloc[i] = c + x0, r + top
                    radius[i] = np.sqrt(a / np.pi)
        if load_images and comp_file.exists():
            with Image.open(comp_file) as im:
                arr = np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)
            images[f"composite_{tag}"] = Image2DModel.parse(
                arr, dims=("c", "y", "x"), transformations={"global": Translation([x0, top], axes=("x", "y"))}
            )
    fov_of = np.array([int(c.split("_")[0]) for c in cells])
    obs = pd.DataFrame({"fov": fov_of, "fov_cell_number": [int(c.split("_")[1]) for c in cells]}, index=cells)
    shapes = gpd.GeoDataFrame(
        {"radius": radius}, geometry=gpd.points_from_xy(cx.to_numpy(), cy.to_numpy()), index=cells.rename("cell_id")
    )
    uns = {
        "cosmx": {
            Keys.IMAGES: {},
            Keys.SCALEFACTORS: {Keys.MPP: float(mpp), Keys.SPOT_DIAMETER_UM: Platform.CELL_FOV_UM},
            Keys.METADATA: {Keys.PLATFORM: "cosmx", "source": str(raw.parent)},
        }
    }
    table = _table(X, genes, obs, np.c_[cx.to_numpy(), cy.to_numpy()], "cells", uns)
    points = PointsModel.parse(
        dd.from_pandas(
            tx[["x", "y", "target", "cell", "fov"]]
            .rename(columns={"target": "gene", "cell": "cell_id"})
            .astype({"gene": "category"}),
            npartitions=1,
        ),
        coordinates={"x": "x", "y": "y"},
        feature_key="gene",
    )
    return sd.SpatialData(
        images=images,
        points={"transcripts": points},
        shapes={"cells": ShapesModel.parse(shapes)},
        tables={"table": table},
    )


def _fov_origin(comp_file: Path, offset: Any) -> tuple[float, float]:
    """Global (x, y-down) position of the top-left pixel of a field-of-view crop.

    The crop's GDAL side-car (``.aux.xml``) gives its origin in local pixels (y up); without it the crop
    is assumed to start at the local origin of a 3648-px-high frame.
    """
    import re

    ox, oy_top = 0.0, 3648.0
    aux = comp_file.with_name(comp_file.name + ".aux.xml")
    if aux.exists():
        m = re.search(r"<GeoTransform>\s*([^<]+)</GeoTransform>", aux.read_text())
        if m:
            vals = [float(v) for v in m.group(1).split(",")]
            ox, oy_top = vals[0], vals[3]
    x0 = float(offset["x_global_px"]) + ox
    top = -(float(offset["y_global_px"]) + oy_top)
    return x0, top
