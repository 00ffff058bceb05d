"""SpatialData <-> AnnData (storm_st layout), keeping images lazy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_st._constants import Keys

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["read_spatialdata", "to_spatialdata"]

_REGION_KEY = "region"
_INSTANCE_KEY = "spot_id"


def _affine_xy(element: Any, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _image_levels(image: Any) -> list[Any]:
    """Scale levels (``DataArray``, dims c, y, x), finest first."""
    children = getattr(image, "children", None)
    if children:
        names = sorted(children, key=lambda n: int("".join(ch for ch in n if ch.isdigit()) or 0))
        out = []
        for n in names:
            node = image[n]
            var = next(iter(node.data_vars)) if hasattr(node, "data_vars") else "image"
            out.append(node[var])
        return out
    return [image]


def _pick(keys: list[str], key: str | None, what: str, arg: str) -> str | None:
    if key is not None:
        if key not in keys:
            raise KeyError(f"{arg}={key!r} not found; {what} are: {', '.join(keys) or 'none'}.")
        return key
    if len(keys) == 1:
        return keys[0]
    if not keys:
        return None
    raise ValueError(f"This SpatialData object has several {what} ({', '.join(keys)}); pass {arg}=.")


def read_spatialdata(
    sdata_or_path: SpatialData | str | Path,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    library_id: str | None = None,
) -> AnnData:
    """AnnData in the storm_st layout from a SpatialData object or ``.zarr`` store, images kept lazy.

    Spot coordinates come from the circles (or polygon centroids) of ``shapes_key``, mapped into the
    pixel frame of the image: the "full-resolution" frame is the image's coordinate system (``global``
    or the first one shared by image and shapes), and each scale level of the image becomes one entry of
    ``uns['spatial'][library_id]['images']`` (a dask array, ``H x W x C``) with its ``tissue_<name>_scalef``.

    Parameters
    ----------
    sdata_or_path
        A :class:`spatialdata.SpatialData` or the path of a SpatialData zarr store.
    table_key
        Table to use; may be omitted when there is exactly one.
    image_key
        Image element; may be omitted when there is at most one.
    shapes_key
        Shapes element holding the spots; default: the region annotated by the table.
    library_id
        Name of the slide; default: taken from ``table.uns['spatial']`` or the image key.

    Returns
    -------
    A copy of the table with ``obsm['spatial']``, ``obs['library_id']`` and ``uns['spatial'][library_id]``.
    Scale factors stored by :func:`to_spatialdata` (``table.uns['spatial']``) are restored; otherwise the
    spot diameter in pixels comes from the circle radius.
    """
    import dask.array as da
    import spatialdata as sd

    sdata = sdata_or_path
    if isinstance(sdata_or_path, str | Path):
        path = Path(sdata_or_path)
        if not path.exists():
            raise FileNotFoundError(f"SpatialData store {str(path)!r} does not exist.")
        sdata = sd.read_zarr(path)
    table_key = _pick(list(sdata.tables), table_key, "tables", "table_key")
    if table_key is None:
        raise ValueError("The SpatialData object has no table: counts are needed (see SpatialData.tables).")
    table = sdata.tables[table_key]
    attrs = table.uns.get("spatialdata_attrs", {})
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if shapes_key is None:
        region = attrs.get("region")
        regions = [region] if isinstance(region, str) else list(region or [])
        regions = [r for r in regions if r in sdata.shapes]
        shapes_key = _pick(regions or list(sdata.shapes), None, "shapes", "shapes_key")
    else:
        shapes_key = _pick(list(sdata.shapes), shapes_key, "shapes", "shapes_key")
    if shapes_key is None:
        raise ValueError("The SpatialData object has no shapes element with the spot positions; pass shapes_key=.")
    shapes = sdata.shapes[shapes_key]
    image_key = _pick(list(sdata.images), image_key, "images", "image_key")
    adata = table.copy()
    if region_key in adata.obs and adata.obs[region_key].nunique() > 1:
        adata = adata[adata.obs[region_key].astype(str) == shapes_key].copy()
    if adata.n_obs == 0:
        raise ValueError(f"No row of table {table_key!r} annotates shapes {shapes_key!r}: 0 spots.")
    ids = adata.obs[instance_key].to_numpy() if instance_key in adata.obs else adata.obs_names.to_numpy()
    missing = pd.Index(ids).difference(shapes.index)
    if len(missing):
        raise KeyError(f"{len(missing)} table rows have no shape in {shapes_key!r} (e.g. {missing[:3].tolist()}).")
    geo = shapes.loc[ids]
    if "radius" in geo.columns:
        xy = np.c_[geo.geometry.x.to_numpy(), geo.geometry.y.to_numpy()]
        radius = geo["radius"].to_numpy(float)
    else:
        cen = geo.geometry.centroid
        xy = np.c_[cen.x.to_numpy(), cen.y.to_numpy()]
        radius = np.sqrt(geo.geometry.area.to_numpy(float) / np.pi)

    saved = (adata.uns.get(Keys.SPATIAL) or {}) if isinstance(adata.uns.get(Keys.SPATIAL), dict) else {}
    if library_id is None:
        stem = shapes_key.removesuffix("_spots")
        library_id = stem if stem in saved else (next(iter(saved)) if len(saved) == 1 else image_key or shapes_key)
    lib_saved = saved.get(library_id, next(iter(saved.values())) if len(saved) == 1 else {})
    scalef: dict[str, float] = dict(lib_saved.get(Keys.SCALEFACTORS, {}) or {})
    meta: dict[str, Any] = dict(lib_saved.get(Keys.METADATA, {}) or {})
    meta.setdefault(Keys.PLATFORM, "visium")
    meta.setdefault("source", f"SpatialData table {table_key!r}, shapes {shapes_key!r}")
    scalef = {k: v for k, v in scalef.items() if not (k.startswith("tissue_") and k.endswith("_scalef"))}

    shape_cs = set(sd.transformations.get_transformation(shapes, get_all=True))
    images: dict[str, Any] = {}
    if image_key is not None:
        image = sdata.images[image_key]
        levels = _image_levels(image)
        img_cs = set(sd.transformations.get_transformation(levels[0], get_all=True))
        common = sorted(shape_cs & img_cs, key=lambda c: (c != "global", c))
        if not common:
            raise ValueError(f"Image {image_key!r} and shapes {shapes_key!r} share no coordinate system.")
        cs = common[0]
        a_img = _affine_xy(levels[0], cs)  # level-0 pixels -> cs
        a_shp = _affine_xy(shapes, cs)
        if abs(a_img[0, 1]) > 1e-9 or abs(a_img[1, 0]) > 1e-9:
            raise ValueError(f"Image {image_key!r} is rotated in {cs!r}; only scale + translation is supported.")
        xy_cs = xy @ a_shp[:2, :2].T + a_shp[:2, 2]
        xy_img0 = (xy_cs - a_img[:2, 2]) / np.diag(a_img)[:2]
        s0 = 1.0 / float(a_img[0, 0])  # level-0 pixels per cs unit
        xy = xy_img0 / s0  # full-resolution frame = cs units (pixels when cs is a pixel frame)
        radius = radius * float(np.sqrt(abs(np.linalg.det(a_shp[:2, :2]))))
        w0 = int(levels[0].sizes["x"])
        for i, lv in enumerate(levels):
            name = Keys.HIRES if i == 0 else f"scale{i}"
            arr = lv.data if isinstance(lv.data, da.Array) else da.from_array(np.asarray(lv.data))
            images[name] = da.transpose(arr, (1, 2, 0))
            scalef[f"tissue_{name}_scalef"] = s0 * int(lv.sizes["x"]) / w0
    else:
        cs_list = sorted(shape_cs, key=lambda c: (c != "global", c))
        a_shp = _affine_xy(shapes, cs_list[0])
        xy = xy @ a_shp[:2, :2].T + a_shp[:2, 2]
        radius = radius * float(np.sqrt(abs(np.linalg.det(a_shp[:2, :2]))))
    if Keys.SPOT_DIAMETER_FULLRES not in scalef and np.isfinite(radius).all() and len(radius):
        scalef[Keys.SPOT_DIAMETER_FULLRES] = float(2 * np.median(radius))
    adata.obsm[Keys.SPATIAL] = np.asarray(xy, dtype=np.float64)
    if not str(adata.obs_names[0]).startswith(f"{library_id}_"):
        adata.obs_names = [f"{library_id}_{n}" for n in adata.obs_names]
    adata.obs[Keys.LIBRARY_ID] = pd.Categorical([library_id] * adata.n_obs)
    adata.uns.pop("spatialdata_attrs", None)
    adata.uns[Keys.SPATIAL] = {library_id: {Keys.IMAGES: images, Keys.SCALEFACTORS: scalef, Keys.METADATA: meta}}
    return adata


def _image_for_sdata(lib: dict) -> tuple[Any, float] | None:
    """The finest image of one library as a ``(c, y, x)`` array and its scale (pixels per full-res pixel)."""
    import dask.array as da

    from storm_st.io._slide import _levels_from_uns, resolve_mpp

    mpp, _ = resolve_mpp(lib)
    levels = _levels_from_uns(lib, mpp if np.isfinite(mpp) else 1.0)
    if not levels:
        return None
    lv = levels[0]
    arr = lv.array if isinstance(lv.array, da.Array) else da.from_array(lv.array)
    if arr.ndim == 2:
        arr = arr[..., None]
    return da.transpose(arr, (2, 0, 1)), lv.scale


def to_spatialdata(adata: AnnData, *, library_key: str | None = None) -> SpatialData:
    """Convert an AnnData in the storm_st layout into a :class:`spatialdata.SpatialData`.

    Each library gets its own coordinate system (named after it) in full-resolution pixels: an image
    ``'<library>_image'`` (multiscale ``Image2DModel``, scaled into that frame), circles
    ``'<library>_spots'`` (``ShapesModel`` with ``radius`` = half the spot diameter in pixels) and one
    table annotating all circles (``region`` / ``spot_id`` keys) that keeps ``uns['spatial']`` without images.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` and ``uns['spatial']``.
    library_key
        Column of ``obs`` naming each spot's slide; default ``'library_id'`` when present.

    Returns
    -------
    SpatialData with images, shapes and a table ``'table'``.
    """
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Point
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from storm_st.io._slide import resolve_mpp, slide_views

    views = slide_views(adata, library_key=library_key)
    spatial = adata.uns.get(Keys.SPATIAL, {}) or {}
    images, shapes = {}, {}
    region = np.empty(adata.n_obs, dtype=object)
    instance = np.empty(adata.n_obs, dtype=object)
    uns_spatial: dict[str, Any] = {}
    for view in views:
        lib = spatial.get(view.library_id, next(iter(spatial.values())) if len(spatial) == 1 else {})
        mpp, spot_um = resolve_mpp(lib)
        scalef = dict(lib.get(Keys.SCALEFACTORS, {}) or {})
        spot_px = scalef.get(Keys.SPOT_DIAMETER_FULLRES)
        if spot_px is None:
            spot_px = spot_um / mpp if np.isfinite(mpp) and np.isfinite(spot_um) else 1.0
        cs = view.library_id
        img = _image_for_sdata(lib) if lib else None
        if img is not None:
            arr, scale = img
            h, w = int(arr.shape[1]), int(arr.shape[2])
            factors = []
            while max(h, w) // (2 ** (len(factors) + 1)) >= 256 and len(factors) < 4:
                factors.append(2)
            images[f"{cs}_image"] = Image2DModel.parse(
                arr,
                dims=("c", "y", "x"),
                scale_factors=factors or None,
                transformations={cs: Scale([1.0 / scale, 1.0 / scale], axes=("x", "y"))},
            )
        ids = np.asarray(adata.obs_names[view.obs_indices]).astype(str)
        xy = view.coords_px
        gdf = gpd.GeoDataFrame(
            {"radius": np.full(len(ids), float(spot_px) / 2)},
            geometry=[Point(x, y) for x, y in xy],
            index=pd.Index(ids),
        )
        shapes[f"{cs}_spots"] = ShapesModel.parse(gdf, transformations={cs: Identity()})
        region[view.obs_indices] = f"{cs}_spots"
        instance[view.obs_indices] = ids
        uns_spatial[view.library_id] = {
            Keys.IMAGES: {},
            Keys.SCALEFACTORS: {k: v for k, v in scalef.items() if not k.startswith("tissue_")},
            Keys.METADATA: {k: v for k, v in (lib.get(Keys.METADATA, {}) or {}).items() if k != "image_path"},
        }
    table = adata.copy()
    table.uns[Keys.SPATIAL] = uns_spatial
    table.obs[_REGION_KEY] = pd.Categorical(region)
    table.obs[_INSTANCE_KEY] = instance
    table = TableModel.parse(
        table, region=sorted(shapes), region_key=_REGION_KEY, instance_key=_INSTANCE_KEY, overwrite_metadata=True
    )
    return sd.SpatialData(images=images, shapes=shapes, tables={"table": table})
