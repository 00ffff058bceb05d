from __future__ import annotations

import re
import shutil
import tarfile
from importlib.resources import files
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import storm_st as st
from storm_st._constants import Keys
from storm_st.datasets import _registry


@pytest.fixture
def no_network(monkeypatch):
    import pooch

    def _fail(*args, **kwargs):
        raise AssertionError("the network must not be used in tests")

    monkeypatch.setattr(pooch, "retrieve", _fail)


def test_embedded_size():
    root = Path(str(files("storm_st.datasets") / "_data"))
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 25e6
    for name in ("NOVAE_LICENSE", "SOURCE.txt"):
        assert (root / "genesets" / name).exists()


def test_demo_c6(no_network):
    a = st.datasets.demo()
    assert a.n_obs == 178 and a.n_vars > 15000
    lib = a.uns[Keys.SPATIAL]["C6"]
    assert lib[Keys.SCALEFACTORS][Keys.HIRES_SCALEF] == 0.5
    assert abs(lib[Keys.SCALEFACTORS][Keys.MPP] - 0.688) / 0.688 < 0.02
    img = lib[Keys.IMAGES][Keys.HIRES]
    assert img.dtype == np.uint8 and img.shape[2] == 3 and abs(img.shape[0] - 9907 / 2) <= 1
    (view,) = st.io.slide_views(a, require_image=True, require_scale=True)
    assert view.levels[0].mpp == pytest.approx(2 * view.mpp)
    assert np.allclose(a.X.data, np.round(a.X.data))
    np.testing.assert_allclose(a.obsm[Keys.SPATIAL][a.obs_names.get_loc("C6_18x9")], [4905.52, 2362.53])


def test_demo_matches_shared(shared_data):
    a = st.datasets.demo()
    b = st.io.read_her2st_section(shared_data / "her2st", "C6", image_downscale=8)
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    np.testing.assert_allclose(a.obsm[Keys.SPATIAL], b.obsm[Keys.SPATIAL])
    assert (a.X != b.X).nnz == 0


def test_dlpfc_embedded(no_network):
    a = st.datasets.dlpfc()
    assert a.shape == (3639, 5000)
    assert a.obs["layer"].notna().mean() > 0.95
    assert {"L1", "L6", "WM"} <= set(a.obs["layer"].astype(str))
    assert "gene_symbols" in a.var
    (view,) = st.io.slide_views(a, require_image=True, require_scale=True)
    assert view.mpp == pytest.approx(0.5705, rel=1e-3)


def test_dlpfc_shared(shared_data):
    a = st.datasets.dlpfc("151674")
    assert a.obs[Keys.LIBRARY_ID].iloc[0] == "151674" and "layer" in a.obs
    with pytest.raises(FileNotFoundError, match="999"):
        st.datasets.dlpfc("999")


def test_her2st_shared(shared_data):
    a = st.datasets.her2st("C2", image_downscale=8)
    assert a.obs[Keys.LIBRARY_ID].iloc[0] == "C2" and a.n_obs > 150
    st.io.slide_views(a, require_image=True, require_scale=True)
    with pytest.raises(FileNotFoundError, match="Z9"):
        st.datasets.her2st("Z9")


def test_her2st_missing_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("STORM_ST_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="STORM_ST_DATA"):
        st.datasets.her2st("C2")


@pytest.mark.parametrize("organism", ["human", "mouse"])
def test_hallmarks(organism):
    sets = st.datasets.hallmarks(organism)
    assert len(sets) == 50 and "HALLMARK_HYPOXIA" in sets
    genes = sets["HALLMARK_HYPOXIA"]
    assert isinstance(genes, list) and len(genes) > 100
    assert ("VEGFA" in genes) if organism == "human" else ("Vegfa" in genes)
    genes.clear()  # callers get a copy
    assert st.datasets.hallmarks(organism)["HALLMARK_HYPOXIA"]


def test_hallmarks_bad_organism():
    with pytest.raises(ValueError, match="organism"):
        st.datasets.hallmarks("yeast")


def test_registry_entries_pinned():
    assert st.datasets.REGISTRY
    for name, entry in st.datasets.REGISTRY.items():
        assert entry.kind in {"h5ad", "image", "visium"}, name
        for url, sha in entry.files.values():
            assert url.startswith("https://"), name
            assert re.fullmatch(r"[0-9a-f]{64}", sha), name


def test_fetch_unknown_name(no_network):
    with pytest.raises(KeyError, match="visium_hne_adata"):
        st.datasets.fetch("not_a_dataset")


def test_fetch_local_h5ad(no_network, tmp_path, rng):
    import scipy.sparse as sp

    a = ad.AnnData(sp.csr_matrix(rng.poisson(1, (5, 3)).astype(np.float32)))
    a.obsm["spatial"] = rng.uniform(0, 100, (5, 2))
    a.uns["spatial"] = {"V1": {"images": {}, "scalefactors": {"spot_diameter_fullres": 110.0}, "metadata": {}}}
    a.write_h5ad(tmp_path / "x.h5ad")
    b = st.datasets.fetch("visium_hne_adata_crop", path=tmp_path / "x.h5ad")
    assert b.obs[Keys.LIBRARY_ID].iloc[0] == "V1"
    assert b.uns["spatial"]["V1"]["scalefactors"][Keys.MPP] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError):
        st.datasets.fetch("visium_hne_adata", path=tmp_path / "missing.h5ad")


def test_fetch_local_visium_folder(no_network, shared_data, tmp_path):
    src = shared_data / "fixtures" / "scanpy_visium" / "1.0.0"
    dst = tmp_path / "bc"
    dst.mkdir()
    shutil.copyfile(src / "filtered_feature_bc_matrix.h5", dst / "filtered_feature_bc_matrix.h5")
    with tarfile.open(dst / "spatial.tar.gz", "w:gz") as tf:
        tf.add(src / "spatial", arcname="spatial")
    a = st.datasets.fetch("V1_Breast_Cancer_Block_A_Section_1", path=dst)
    assert a.obs[Keys.LIBRARY_ID].iloc[0] == "V1_Breast_Cancer_Block_A_Section_1"
    st.io.slide_views(a, require_image=True, require_scale=True)
    with pytest.raises(ValueError, match="several files"):
        st.datasets.fetch("V1_Breast_Cancer_Block_A_Section_1", path=dst / "spatial.tar.gz")


def test_fetch_image_path_and_cache_dir(no_network, tmp_path, monkeypatch):
    img = tmp_path / "img.tiff"
    img.write_bytes(b"II*\x00")
    assert st.datasets.fetch("visium_hne_image_crop", path=img) == img
    monkeypatch.setenv("STORM_ST_CACHE", str(tmp_path / "cache"))
    assert _registry._cache_dir(None) == tmp_path / "cache"
    assert _registry._cache_dir(tmp_path / "other") == tmp_path / "other"
