from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from storm_st import io as sio
from storm_st._constants import Keys


# ----------------------------------------------------------------------------------------------------------------------
# synthetic helpers
# ----------------------------------------------------------------------------------------------------------------------
def _synthetic(n=30, n_genes=6, *, lib="s1", mpp=1.0, scalef=0.5, size=200, rng=None):
    rng = rng or np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(2, (n, n_genes)).astype(np.float32))
    obs = pd.DataFrame(index=[f"{lib}_{i}" for i in range(n)])
    obs[Keys.LIBRARY_ID] = pd.Categorical([lib] * n)
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    a.obsm[Keys.SPATIAL] = rng.uniform(10, size / scalef - 10, (n, 2))
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    a.uns[Keys.SPATIAL] = {
        lib: {
            Keys.IMAGES: {Keys.HIRES: img},
            Keys.SCALEFACTORS: {Keys.HIRES_SCALEF: scalef, Keys.MPP: mpp, Keys.SPOT_DIAMETER_FULLRES: 55.0 / mpp},
            Keys.METADATA: {Keys.PLATFORM: "visium", "source": "synthetic"},
        }
    }
    return a


def _check_views(adata, n_levels_min=1):
    views = sio.slide_views(adata, require_image=True, require_scale=True)
    for v in views:
        assert np.isfinite(v.mpp) and v.mpp > 0
        assert len(v.levels) >= n_levels_min
    return views


# ----------------------------------------------------------------------------------------------------------------------
# HER2ST (legacy ST)
# ----------------------------------------------------------------------------------------------------------------------
def test_her2st_c6_scale_and_coordinates(shared_data):
    a = sio.read_her2st_section(shared_data / "her2st", "C6", image_downscale=4)
    assert a.n_obs == 178 and a.n_vars > 15000
    sf = a.uns[Keys.SPATIAL]["C6"][Keys.SCALEFACTORS]
    assert abs(sf[Keys.MPP] - 0.688) / 0.688 < 0.02
    assert sf[Keys.HIRES_SCALEF] == 0.25
    assert sf[Keys.SPOT_DIAMETER_UM] == 100.0
    assert sf[Keys.SPOT_DIAMETER_FULLRES] == pytest.approx(100.0 / sf[Keys.MPP])
    # a known spot: array (18, 9) at pixel (4905.52, 2362.53) in the selection file
    i = a.obs_names.get_loc("C6_18x9")
    np.testing.assert_allclose(a.obsm[Keys.SPATIAL][i], [4905.52, 2362.53])
    assert a.obs[Keys.LIBRARY_ID].dtype == "category"
    assert a.uns[Keys.SPATIAL]["C6"][Keys.METADATA][Keys.PLATFORM] == "legacy_st"
    assert np.allclose(a.X.data, np.round(a.X.data))
    (view,) = _check_views(a)
    h, w = view.levels[0].shape
    assert abs(h - 9907 / 4) <= 1 and abs(w - 9288 / 4) <= 1
    assert view.levels[0].array.dtype == np.uint8


def test_her2st_mpp_override(shared_data):
    root = shared_data / "her2st"
    a = sio.read_her2st(root / "counts" / "C6.tsv.gz", root / "spots" / "C6_selection.tsv", mpp=0.7)
    sf = a.uns[Keys.SPATIAL]["C6"][Keys.SCALEFACTORS]
    assert sf[Keys.MPP] == 0.7
    assert abs(sf["pixels_per_array_step"] - 290) < 5


def test_her2st_labels_a1_without_image(shared_data):
    a = sio.read_her2st_section(shared_data / "her2st", "A1")
    assert a.obs["label"].notna().all()
    assert a.obs.loc["A1_9x21", "label"] == "invasive cancer"
    assert {"invasive cancer", "adipose tissue"} <= set(a.obs["label"].cat.categories)
    lib = a.uns[Keys.SPATIAL]["A1"]
    assert not lib[Keys.IMAGES]
    # A1's (unshipped) image was scanned at another resolution: the scale is still derived from the pitch
    sf = lib[Keys.SCALEFACTORS]
    assert 0.5 < sf[Keys.MPP] < 1.2 and sf[Keys.MPP] == pytest.approx(200.0 / sf["pixels_per_array_step"])
    (view,) = sio.slide_views(a, require_scale=True)
    assert not view.has_image
    with pytest.raises(ValueError, match="no image"):
        sio.slide_views(a, require_image=True)


def test_her2st_missing_image(shared_data, tmp_path):
    root = shared_data / "her2st"
    with pytest.raises(FileNotFoundError, match="Image file"):
        sio.read_her2st(root / "counts" / "C6.tsv.gz", root / "spots" / "C6_selection.tsv", tmp_path / "nope.jpg")


def _write_st(tmp_path, counts, spots):
    cpath, spath = tmp_path / "S1.tsv.gz", tmp_path / "S1_selection.tsv"
    counts.to_csv(cpath, sep="\t")
    spots.to_csv(spath, sep="\t", index=False)
    return cpath, spath


def _st_frames():
    gx, gy = np.meshgrid(np.arange(1, 3), np.arange(1, 3))
    xs, ys = gx.ravel(), gy.ravel()
    spots = pd.DataFrame(
        {
            "x": xs,
            "y": ys,
            "new_x": xs + 0.01,
            "new_y": ys - 0.01,
            "pixel_x": 290.0 * xs + 100,
            "pixel_y": 290.0 * ys + 50,
            "selected": 1,
        }
    )
    counts = pd.DataFrame(
        np.arange(len(xs) * 3).reshape(len(xs), 3),
        index=[f"{x}x{y}" for x, y in zip(spots.x, spots.y)],
        columns=["A", "B", "C"],
    )
    return counts, spots


def test_her2st_synthetic_and_errors(tmp_path):
    counts, spots = _st_frames()
    a = sio.read_her2st(*_write_st(tmp_path, counts, spots))
    assert a.n_obs == 4 and a.uns[Keys.SPATIAL]["S1"][Keys.SCALEFACTORS][Keys.MPP] == pytest.approx(200 / 290, rel=1e-2)
    # no spot in common -> empty slide
    bad = counts.copy()
    bad.index = [f"9{i}x99" for i in range(4)]
    with pytest.raises(ValueError, match="0 spots"):
        sio.read_her2st(*_write_st(tmp_path, bad, spots))
    # negative counts
    neg = counts.copy()
    neg.iloc[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        sio.read_her2st(*_write_st(tmp_path, neg, spots))
    # NaN counts
    nan = counts.astype(float)
    nan.iloc[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sio.read_her2st(*_write_st(tmp_path, nan, spots))
    # duplicated spot ids
    dup = pd.concat([counts, counts.iloc[:1]])
    with pytest.raises(ValueError, match="Duplicated"):
        sio.read_her2st(*_write_st(tmp_path, dup, spots))
    with pytest.raises(ValueError, match="mpp"):
        sio.read_her2st(*_write_st(tmp_path, counts, spots), mpp=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Visium / DLPFC
# ----------------------------------------------------------------------------------------------------------------------
def test_read_visium_mtx_no_hires(shared_data):
    a = sio.read_visium(shared_data / "visium_cytassist_mouse", library_id="mouse")
    assert a.shape == (2898, 19465)
    assert a.var_names.is_unique and "gene_ids" in a.var
    assert (a.obs["in_tissue"] == 1).all()
    lib = a.uns[Keys.SPATIAL]["mouse"]
    assert set(lib[Keys.IMAGES]) == {Keys.LOWRES}
    assert lib[Keys.SCALEFACTORS][Keys.MPP] == pytest.approx(55 / lib[Keys.SCALEFACTORS][Keys.SPOT_DIAMETER_FULLRES])
    assert a.obs_names[0].startswith("mouse_")
    _check_views(a)


@pytest.mark.parametrize("sub", ["fixtures/scanpy_visium/1.0.0", "fixtures/squidpy"])
def test_read_visium_h5(shared_data, sub):
    a = sio.read_visium(shared_data / sub)
    lib_id = a.obs[Keys.LIBRARY_ID].iloc[0]
    lib = a.uns[Keys.SPATIAL][lib_id]
    assert {Keys.HIRES, Keys.LOWRES} <= set(lib[Keys.IMAGES])
    assert lib[Keys.IMAGES][Keys.HIRES].dtype == np.uint8 and lib[Keys.IMAGES][Keys.HIRES].ndim == 3
    (view,) = _check_views(a, 2)
    assert view.mpp == pytest.approx(55 / 89.4275, rel=1e-3)
    # x = column, y = row of the full-resolution image
    pos = pd.read_csv(shared_data / sub / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    bc = a.obs_names[0].removeprefix(f"{lib_id}_")
    np.testing.assert_allclose(a.obsm[Keys.SPATIAL][0], pos.loc[bc, [5, 4]].to_numpy(float))


def test_read_visium_scale_errors(shared_data, tmp_path):
    src = shared_data / "fixtures" / "scanpy_visium" / "1.0.0"
    dst = tmp_path / "vis"
    shutil.copytree(src, dst)
    (dst / "spatial" / "scalefactors_json.json").chmod(0o644)
    sf = json.loads((dst / "spatial" / "scalefactors_json.json").read_text())
    (dst / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(FileNotFoundError, match="scalefactors_json"):
        sio.read_visium(dst)
    (dst / "spatial" / "scalefactors_json.json").write_text(json.dumps({**sf, "spot_diameter_fullres": -3}))
    with pytest.raises(ValueError, match="spot_diameter_fullres"):
        sio.read_visium(dst)
    # hires scale factor wrong by 10x: spots fall outside the hires image
    (dst / "spatial" / "scalefactors_json.json").write_text(json.dumps({**sf, "tissue_hires_scalef": 1.5}))
    with pytest.raises(ValueError, match="outside"):
        sio.read_visium(dst)
    with pytest.raises(FileNotFoundError):
        sio.read_visium(tmp_path / "missing")


def test_read_dlpfc(shared_data):
    a = sio.read_dlpfc(shared_data / "dlpfc" / "DLPFC_151673.h5ad")
    assert a.n_vars == 5000 and "layer" in a.obs
    assert a.var["gene_ids"].str.startswith("ENSG").all()
    assert (a.var["gene_symbols"] != a.var["gene_ids"]).sum() > 2000
    assert a.var.loc["ENSG00000123560", "gene_symbols"] == "PLP1"
    sf = a.uns[Keys.SPATIAL]["151673"][Keys.SCALEFACTORS]
    assert sf[Keys.SPOT_DIAMETER_UM] == 55 and sf[Keys.MPP] == pytest.approx(55 / 96.4008, rel=1e-4)
    assert a.uns[Keys.SPATIAL]["151673"][Keys.METADATA][Keys.PLATFORM] == "visium"
    _check_views(a)


# ----------------------------------------------------------------------------------------------------------------------
# validation and concatenation
# ----------------------------------------------------------------------------------------------------------------------
def test_validate_slide_errors(rng):
    a = _synthetic(rng=rng)
    sio.validate_slide(a)
    b = a.copy()
    b.obsm[Keys.SPATIAL][0] = [1e6, 5]
    with pytest.raises(ValueError, match="outside"):
        sio.validate_slide(b)
    b = a.copy()
    b.obs_names = ["dup"] * b.n_obs
    with pytest.raises(ValueError, match="Duplicated"):
        sio.validate_slide(b)
    b = a.copy()
    b.X = b.X.toarray()
    b.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sio.validate_slide(b)
    b.X[0, 0] = -2
    with pytest.raises(ValueError, match="negative"):
        sio.validate_slide(b)
    with pytest.raises(ValueError, match="0 spots"):
        sio.validate_slide(a[:0].copy())
    b = a.copy()
    b.uns[Keys.SPATIAL]["s1"][Keys.SCALEFACTORS][Keys.MPP] = 2.0  # contradicts spot_diameter_fullres
    with pytest.raises(ValueError, match="Contradictory"):
        sio.validate_slide(b)
    b = a.copy()
    del b.uns[Keys.SPATIAL]["s1"][Keys.SCALEFACTORS][Keys.HIRES_SCALEF]
    with pytest.raises(ValueError, match="tissue_hires_scalef"):
        sio.validate_slide(b)
    b = a.copy()
    del b.uns[Keys.SPATIAL]["s1"][Keys.SCALEFACTORS][Keys.MPP]
    del b.uns[Keys.SPATIAL]["s1"][Keys.SCALEFACTORS][Keys.SPOT_DIAMETER_FULLRES]
    with pytest.raises(ValueError, match="Pixel size"):
        sio.validate_slide(b)


def test_concat_slides(rng):
    a, b = _synthetic(lib="a", rng=rng), _synthetic(lib="b", n_genes=8, rng=rng)
    c = sio.concat_slides([a, b])
    assert c.n_obs == a.n_obs + b.n_obs and c.n_vars == 8
    assert list(c.obs[Keys.LIBRARY_ID].cat.categories) == ["a", "b"]
    assert set(c.uns[Keys.SPATIAL]) == {"a", "b"}
    assert c.X[: a.n_obs, 6:].nnz == 0  # genes absent from slide a are zero
    views = _check_views(c)
    assert [v.library_id for v in views] == ["a", "b"]
    np.testing.assert_allclose(views[1].coords_px, b.obsm[Keys.SPATIAL])
    with pytest.raises(ValueError, match="Library id"):
        sio.concat_slides([a, a])
    b2 = _synthetic(lib="c", rng=rng)
    b2.obs_names = a.obs_names
    with pytest.raises(ValueError, match="Duplicated spot ids"):
        sio.concat_slides([a, b2])


# ----------------------------------------------------------------------------------------------------------------------
# whole-slide images
# ----------------------------------------------------------------------------------------------------------------------
def _pyramid(path, rng):
    import tifffile

    H, W = 1536, 2048
    img = np.full((H, W, 3), 242, np.uint8)
    yy, xx = np.mgrid[:H, :W]
    inside = ((yy - 768) / 500.0) ** 2 + ((xx - 900) / 600.0) ** 2 < 1
    img[inside] = (np.array([170, 80, 150]) + rng.integers(-15, 15, (int(inside.sum()), 3))).astype(np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, subifds=2, tile=(256, 256), photometric="rgb")
        for k in (2, 4):
            tw.write(img[::k, ::k], subfiletype=1, tile=(256, 256), photometric="rgb")
    return inside


def test_read_wsi_pyramid_tiff(tmp_path, rng):
    path = tmp_path / "slide.tif"
    inside = _pyramid(path, rng)
    a = sio.read_wsi(path, mpp=0.5)
    assert a.n_vars == 0 and a.n_obs > 10
    lib = a.uns[Keys.SPATIAL]["slide"]
    assert lib[Keys.METADATA]["image_path"] == str(path.resolve())
    assert lib[Keys.METADATA][Keys.PLATFORM] == "he_only"
    assert lib[Keys.SCALEFACTORS][Keys.SPOT_DIAMETER_FULLRES] == pytest.approx(110.0)
    xy = a.obsm[Keys.SPATIAL].astype(int)
    assert inside[xy[:, 1], xy[:, 0]].mean() > 0.9
    # expected number of hexagonal spots on the ellipse (area / cell area), within 20 %
    expected = inside.sum() * 0.25 / (100 * 100 * np.sqrt(3) / 2)
    assert abs(a.n_obs - expected) / expected < 0.2
    (view,) = _check_views(a, 3)
    assert view.levels[0].shape == (1536, 2048) and view.levels[0].scale == 1.0
    # neighbouring spots are 100 µm apart
    from scipy.spatial import cKDTree

    d, _ = cKDTree(a.obsm[Keys.SPATIAL]).query(a.obsm[Keys.SPATIAL], k=2)
    assert np.median(d[:, 1]) * 0.5 == pytest.approx(100.0, rel=1e-3)
    sq = sio.read_wsi(path, mpp=0.5, lattice="square", tissue_only=False)
    assert sq.n_obs == int(1536 * 0.5 // 100 + (1536 * 0.5 % 100 >= 50)) * int(
        2048 * 0.5 // 100 + (2048 * 0.5 % 100 >= 50)
    )
    with pytest.raises(ValueError, match="lattice"):
        sio.read_wsi(path, mpp=0.5, lattice="triangle")
    with pytest.raises(ValueError, match="mpp"):
        sio.read_wsi(path, mpp=0)
    with pytest.raises(FileNotFoundError):
        sio.read_wsi(tmp_path / "missing.tif", mpp=0.5)


def test_read_wsi_blank_is_empty(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((300, 300, 3), 245, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="0 spots"):
        sio.read_wsi(tmp_path / "blank.png", mpp=1.0)


def test_read_wsi_her2st_jpeg(shared_data):
    a = sio.read_wsi(shared_data / "her2st" / "images" / "C6.jpg", mpp=0.688, pitch_um=200, spot_diameter_um=100)
    # the ST array of C6 has 178 spots under tissue on a 200 µm grid; hex packing is ~15 % denser
    assert 120 < a.n_obs < 320
    (view,) = _check_views(a, 2)
    assert view.levels[0].shape == (9907, 9288)


# ----------------------------------------------------------------------------------------------------------------------
# SpatialData
# ----------------------------------------------------------------------------------------------------------------------
def test_spatialdata_roundtrip_synthetic(rng, tmp_path):
    a = _synthetic(rng=rng, size=600)
    sdata = sio.to_spatialdata(a)
    assert "s1_image" in sdata.images and "s1_spots" in sdata.shapes and "table" in sdata.tables
    shapes = sdata.shapes["s1_spots"]
    assert shapes["radius"].iloc[0] == pytest.approx(27.5)
    b = sio.read_spatialdata(sdata)
    np.testing.assert_allclose(b.obsm[Keys.SPATIAL], a.obsm[Keys.SPATIAL])
    assert (b.X != a.X).nnz == 0 and list(b.obs_names) == list(a.obs_names)
    lib = b.uns[Keys.SPATIAL]["s1"]
    assert lib[Keys.SCALEFACTORS][Keys.MPP] == 1.0
    assert lib[Keys.SCALEFACTORS][Keys.HIRES_SCALEF] == pytest.approx(0.5)
    import dask.array as da

    assert all(isinstance(im, da.Array) for im in lib[Keys.IMAGES].values())
    assert lib[Keys.IMAGES][Keys.HIRES].shape == (600, 600, 3)
    np.testing.assert_array_equal(
        np.asarray(lib[Keys.IMAGES][Keys.HIRES][:5, :5]), a.uns[Keys.SPATIAL]["s1"][Keys.IMAGES][Keys.HIRES][:5, :5]
    )
    views = _check_views(b, 2)
    assert [lv.scale for lv in views[0].levels][:2] == pytest.approx([0.5, 0.25])


def test_spatialdata_roundtrip_visium_zarr(shared_data, tmp_path):
    a = sio.read_visium(shared_data / "fixtures" / "scanpy_visium" / "1.0.0", library_id="v1")
    sdata = sio.to_spatialdata(a)
    sdata.write(tmp_path / "v1.zarr")
    b = sio.read_spatialdata(tmp_path / "v1.zarr")
    np.testing.assert_allclose(b.obsm[Keys.SPATIAL], a.obsm[Keys.SPATIAL])
    assert (b.X != a.X).nnz == 0
    sa, sb = a.uns[Keys.SPATIAL]["v1"][Keys.SCALEFACTORS], b.uns[Keys.SPATIAL]["v1"][Keys.SCALEFACTORS]
    for k in (Keys.MPP, Keys.SPOT_DIAMETER_FULLRES, Keys.HIRES_SCALEF):
        assert sb[k] == pytest.approx(sa[k])
    _check_views(b)
    with pytest.raises(KeyError, match="image_key"):
        sio.read_spatialdata(sdata, image_key="nope")


def test_spatialdata_without_saved_scale(rng):
    """A SpatialData not written by storm_st: the spot diameter comes from the circle radius."""
    a = _synthetic(rng=rng, size=400)
    sdata = sio.to_spatialdata(a)
    sdata.tables["table"].uns.pop(Keys.SPATIAL)
    b = sio.read_spatialdata(sdata, library_id="x")
    sf = b.uns[Keys.SPATIAL]["x"][Keys.SCALEFACTORS]
    assert sf[Keys.SPOT_DIAMETER_FULLRES] == pytest.approx(55.0)
    (view,) = _check_views(b)
    assert view.mpp == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------------------
# cell-level platforms
# ----------------------------------------------------------------------------------------------------------------------
def test_read_xenium_hest(shared_data):
    root = shared_data / "fixtures" / "xenium_lung_ncbi858"
    a = sio.read_xenium_hest(root / "NCBI858.h5ad", root / "NCBI858.jpg", mpp=3.0)
    assert a.shape == (200, 338)
    lib = a.uns[Keys.SPATIAL]["NCBI858"]
    assert lib[Keys.METADATA][Keys.PLATFORM] == "xenium"
    # x_pixel is the image row in this sample: the reader detects it
    assert lib[Keys.METADATA]["swapped_xy"] is True
    np.testing.assert_allclose(a.obsm[Keys.SPATIAL][:, 0], a.obs["y_pixel"])
    (view,) = _check_views(a)
    assert view.mpp == 3.0
    with pytest.raises(ValueError, match="mpp"):
        sio.read_xenium_hest(root / "NCBI858.h5ad", root / "NCBI858.jpg", mpp=None)
    with pytest.raises(ValueError, match="outside"):
        sio.read_xenium_hest(root / "NCBI858.h5ad", root / "NCBI858.jpg", mpp=3.0, swap_xy=False)


def test_read_merfish_giotto(shared_data):
    sdata = sio.read_merfish_giotto(shared_data / "giotto_mini" / "Vizgen")
    table = sdata.tables["table"]
    assert set(sdata.points) == {"transcripts"} and set(sdata.shapes) == {"cell_boundaries"}
    assert table.n_obs == len(sdata.shapes["cell_boundaries"]) > 400
    tx = sdata.points["transcripts"].compute()
    assert table.X.sum() == (tx["cell_id"] != "").sum()
    assert (np.asarray(table.X.sum(1)).ravel() > 0).mean() > 0.8
    assert table.uns[Keys.SPATIAL]["merfish"][Keys.METADATA][Keys.PLATFORM] == "merfish"
    # polygon centroids and transcripts share one frame (Giotto's y flip undone)
    xy = table.obsm[Keys.SPATIAL]
    assert tx["y"].min() - 50 < xy[:, 1].min() and xy[:, 1].max() < tx["y"].max() + 50


def test_read_cosmx_giotto(shared_data):
    sdata = sio.read_cosmx_giotto(shared_data / "giotto_mini" / "CosMx")
    table = sdata.tables["table"]
    tx = sdata.points["transcripts"].compute()
    assert table.X.sum() == (tx["cell_id"] != "").sum()
    assert set(table.obs["fov"]) == {2, 3}
    assert table.n_obs == len(sdata.shapes["cells"])
    # centroids from the label masks agree with the mean of each cell's transcripts (a few pixels)
    mean_xy = tx[tx["cell_id"] != ""].groupby("cell_id")[["x", "y"]].mean().loc[table.obs_names]
    assert np.median(np.abs(table.obsm[Keys.SPATIAL] - mean_xy.to_numpy())) < 10
    assert {"composite_F002", "composite_F003"} <= set(sdata.images)


def test_read_wsi_flat_tiff_and_planar_warning(tmp_path):
    import tifffile

    img = np.full((2600, 4200, 3), 240, np.uint8)
    img[400:2200, 800:3400] = (170, 80, 150)
    tifffile.imwrite(tmp_path / "flat.tif", img, tile=(512, 512), photometric="rgb")
    a = sio.read_wsi(tmp_path / "flat.tif", mpp=1.0)  # no pyramid: the mask comes from a strided read
    lib = a.uns[Keys.SPATIAL]["flat"]
    assert max(lib[Keys.IMAGES][Keys.LOWRES].shape[:2]) <= 2048
    xy = a.obsm[Keys.SPATIAL]
    assert (xy[:, 0] > 700).all() and (xy[:, 0] < 3500).all() and (xy[:, 1] > 300).all() and (xy[:, 1] < 2300).all()
    _check_views(a, 2)
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(img[:600, :800], -1, 0), photometric="rgb", planarconfig="separate"
    )
    with pytest.warns(UserWarning, match="interleaved"):
        sio.read_wsi(tmp_path / "planar.tif", mpp=1.0, tissue_only=False)


def test_her2st_labels_by_pixels(tmp_path):
    counts, spots = _st_frames()
    cpath, spath = _write_st(tmp_path, counts, spots)
    lab = pd.DataFrame(
        {"pixel_x": spots["pixel_x"] + 20, "pixel_y": spots["pixel_y"] - 10, "label": ["a", "b", "c", "d"]}
    )
    lab.iloc[3, :2] = [5000, 5000]  # far from every spot: unlabelled
    lab.to_csv(tmp_path / "lab.tsv", sep="\t", index=False)
    a = sio.read_her2st(cpath, spath, labels=tmp_path / "lab.tsv")
    assert a.obs["label"].iloc[:3].tolist() == ["a", "b", "c"] and pd.isna(a.obs["label"].iloc[3])
