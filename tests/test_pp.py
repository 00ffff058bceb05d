import numpy as np
import pytest
from _helpers import GENES, hex_coords, synthetic_slide

import storm_st as st
from storm_st.io import slide_views
from storm_st.pp import align_genes, expression_input, extract_patches, knn_window


def test_knn_window_hex_interior_and_edges():
    xy = hex_coords(10, 10, 100.0)
    nb = knn_window(xy, 25)
    assert nb.shape == (100, 25)
    assert (nb[:, 0] == np.arange(100)).all()  # self first
    centre = 5 * 10 + 5
    assert (nb[centre] >= 0).all()  # interior: full window
    d = np.linalg.norm(xy[nb[centre]] - xy[centre], axis=1)
    assert d.max() <= 3.0 * 100.0 + 1e-6
    assert np.all(np.diff(d) >= -1e-9)  # sorted by distance
    corner = nb[0]
    assert (corner == -1).sum() > 0  # edge: padded, not filled with far spots


def test_knn_window_square_lattice_is_5x5():
    g = np.stack(np.meshgrid(np.arange(9), np.arange(9)), -1).reshape(-1, 2) * 200.0
    nb = knn_window(g, 25)
    c = 4 * 9 + 4
    rel = (g[nb[c]] - g[c]) / 200.0
    assert set(map(tuple, rel.astype(int))) == {(i, j) for i in range(-2, 3) for j in range(-2, 3)}


def test_knn_window_small_slide_and_cells():
    xy = np.random.default_rng(0).uniform(0, 100, size=(5, 2))
    nb = knn_window(xy, 9, radius_factor=None)
    assert nb.shape == (5, 9) and (nb[:, 5:] == -1).all() and (nb[:, :5] >= 0).all()


def test_neighbor_windows_writes_and_respects_slides():
    a = synthetic_slide(library_id="a")
    b = synthetic_slide(library_id="b", seed=1)
    both = st.io.concat_slides([a, b])
    st.pp.neighbor_windows(both)
    nb = both.obsm["storm_neighbors"]
    lib = both.obs["library_id"].to_numpy()
    for i in range(both.n_obs):
        js = nb[i][nb[i] >= 0]
        assert (lib[js] == lib[i]).all()  # never crosses slides
    assert both.obsm["storm_neighbors_offsets"].shape == (both.n_obs, 50)


def test_neighbor_windows_copy_leaves_input():
    a = synthetic_slide()
    b = st.pp.neighbor_windows(a, copy=True)
    assert "storm_neighbors" not in a.obsm and "storm_neighbors" in b.obsm


def test_patch_matches_crop_at_scale():
    a = synthetic_slide(mpp=5.0)
    view = slide_views(a)[0]
    img = a.uns["spatial"]["s1"]["images"]["hires"]
    # fov 55 µm at 5 µm/px = 11 px crop; ask for 11 px output -> exact crop
    p = extract_patches(view, np.array([24]), fov_um=55.0, size=11)[0]
    x, y = view.coords_px[24]
    x0, y0 = int(round(x - 5.5)), int(round(y - 5.5))
    np.testing.assert_array_equal(p, img[y0 : y0 + 11, x0 : x0 + 11])


def test_patch_pyramid_level_choice_and_padding():
    a = synthetic_slide(mpp=5.0)
    lib = a.uns["spatial"]["s1"]
    lib["images"]["lowres"] = lib["images"]["hires"][::2, ::2]
    lib["scalefactors"]["tissue_lowres_scalef"] = 0.5
    view = slide_views(a)[0]
    assert view.best_level(10.0).name == "lowres"
    assert view.best_level(6.0).name == "hires"
    # a spot at the image corner: the outside part is white padding
    view.coords_px[0] = [0.0, 0.0]
    p = extract_patches(view, np.array([0]), fov_um=55.0, size=11)[0]
    assert (p[:4, :4] == 255).all()


def test_vocabulary_mapping_symbols_case_and_ensembl():
    a = synthetic_slide()
    al = align_genes(a, ["gene3", "GENE5", "ABSENT"])
    assert list(al.columns) == [3, 5, -1] and al.n_matched == 2
    b = a.copy()
    b.var["gene_symbols"] = b.var_names
    b.var_names = [f"ENSG{i:011d}" for i in range(b.n_vars)]
    al2 = align_genes(b, ["GENE3", "ENSG00000000007"])
    assert list(al2.columns) == [3, 7]
    with pytest.raises(ValueError, match="0 of 2 vocabulary genes matched"):
        align_genes(a, ["FOO", "BAR"])


def test_expression_input_and_normalize_record():
    a = synthetic_slide()
    al = align_genes(a, GENES[:5] + ["MISSING"])
    x = expression_input(a, al)
    assert x.shape == (a.n_obs, 6) and (x[:, 5] == 0).all()
    counts = a.X.toarray()
    expected = np.log1p(counts[:, :5] / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(x[:, :5], expected, rtol=1e-5)
    st.pp.normalize(a)
    assert a.uns["storm_normalization"]["log1p"] is True and "storm_log1p" in a.layers


def test_expression_rows_match_the_dense_input_without_copying_counts():
    a = synthetic_slide()
    al = align_genes(a, ["MISSING", *GENES[:7]])
    dense = expression_input(a, al)
    rows = st.pp.expression_rows(a, al)
    assert rows.shape == dense.shape and len(rows) == a.n_obs
    assert rows._X is a.X  # the CSR counts are referenced, not copied
    np.testing.assert_array_equal(rows[3:11], dense[3:11])
    pick = np.array([7, 0, 7, 2])
    np.testing.assert_array_equal(rows[pick], dense[pick])
    sub = rows.take(np.array([5, 1, 9]))
    assert len(sub) == 3
    np.testing.assert_array_equal(sub[[2, 0]], dense[[9, 5]])
    np.testing.assert_array_equal(sub.take([1])[:], dense[[1]])
    # dense counts and already-normalised data take the same path
    b = a.copy()
    b.X = b.X.toarray()
    np.testing.assert_allclose(st.pp.expression_rows(b, al).to_array(block=4), dense, rtol=1e-6)
    st.pp.normalize(b)
    logged = st.pp.expression_rows(b, al, layer="storm_log1p")[:]
    np.testing.assert_allclose(logged, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: a.X.data.__setitem__(0, np.nan), "NaN"),
        (lambda a: a.X.data.__setitem__(0, -1), "negative"),
        (lambda a: a.X.data.__setitem__(0, 0.5), "non-integer"),
    ],
)
def test_bad_counts_raise_and_leave_object(mutate, match):
    a = synthetic_slide()
    mutate(a)
    before = a.copy()
    with pytest.raises(ValueError, match=match):
        st.pp.normalize(a)
    assert set(a.layers) == set(before.layers) and set(a.uns) == set(before.uns)


def test_missing_and_contradictory_scale():
    a = synthetic_slide()
    a.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"] = 30.0  # 55/30 != 5 µm/px
    with pytest.raises(ValueError, match="Contradictory pixel size"):
        slide_views(a)
    b = synthetic_slide()
    del b.uns["spatial"]["s1"]["scalefactors"]["microns_per_pixel"]
    del b.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"]
    with pytest.raises(ValueError, match="Pixel size of slide"):
        slide_views(b, require_scale=True)


def test_coordinates_outside_image():
    a = synthetic_slide()
    a.obsm["spatial"] = a.obsm["spatial"] * 10
    with pytest.raises(ValueError, match="fall outside"):
        slide_views(a)


def test_real_demo_patch_geometry():
    a = st.datasets.demo()
    view = slide_views(a)[0]
    assert view.platform == "legacy_st" and abs(view.mpp - 0.688) / 0.688 < 0.02
    p = st.pp.spot_patches(a, size=64)
    assert p.shape == (a.n_obs, 64, 64, 3) and p.dtype == np.uint8
    assert p.std() > 10  # real tissue, not padding


def test_select_hvgs_real_slide_prefers_variable_expressed_genes():
    a = st.datasets.demo()
    genes = st.pp.select_hvgs(a, 50)
    assert len(genes) == 50 and len(set(genes)) == 50 and all(g == g.upper() for g in genes)
    x = expression_input(a, align_genes(a, genes))
    allx = expression_input(a, align_genes(a, list(st.pp.gene_symbols(a))))
    detected = (allx > 0).mean(0)
    assert (x > 0).mean(0).mean() > detected[detected > 0].mean()  # not dominated by rare, noisy genes
    assert genes == st.pp.select_hvgs(a, 50)  # deterministic
    with pytest.raises(ValueError, match="No slide with genes"):
        st.pp.select_hvgs(a[:, :0].copy(), 10)


def test_novae_embeddings_needs_the_optional_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "novae", None)  # import novae -> ImportError
    a = synthetic_slide()
    with pytest.raises(ImportError, match="pip install novae"):
        st.pp.novae_embeddings(a, "some/folder")
    assert "novae_latent" not in a.obsm


def test_novae_embeddings_with_a_novae_model(tmp_path):
    """Runs where novae is installed (benchmarks/.venv-peers); storm_st does not depend on it."""
    novae = pytest.importorskip("novae")
    a = st.datasets.demo()
    before = {k: set(getattr(a, k)) for k in ("obs", "obsm", "obsp", "uns", "layers")}
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    from scipy.spatial import cKDTree

    work = a.copy()  # a NOVAE model trained for one epoch (the pretrained weights need the Hugging Face hub)
    work.var_names = st.pp.gene_symbols(work)
    work.var_names_make_unique()
    pitch = float(np.median(cKDTree(work.obsm["spatial"]).query(work.obsm["spatial"], k=2)[0][:, 1]))
    novae.spatial_neighbors(work, radius=1.6 * pitch, verbose=False)
    nv = novae.Novae(work)
    nv.fit(work, max_epochs=1, accelerator="cpu", num_workers=0)
    nv.save_pretrained(tmp_path / "novae_model")
    st.pp.novae_embeddings(a, tmp_path / "novae_model", key_added="nv")  # loaded from the local folder
    z = a.obsm["nv"]
    assert z.shape == (a.n_obs, 64) and z.dtype == np.float32 and np.isfinite(z).all()
    assert z.std(0).mean() > 0
    after = {k: set(getattr(a, k)) for k in ("obs", "obsm", "obsp", "uns", "layers")}
    after["obsm"].discard("nv")
    assert after == before  # only obsm['nv'] was written


def test_ring_mean_operator_hex_square_and_slides_apart():
    import anndata as ad

    from storm_st.pp._neighbors import ring_mean_operator, smooth_with_neighbors

    a = synthetic_slide(nx=6, ny=6)
    b = synthetic_slide(nx=6, ny=6, library_id="s2")  # same coordinates, another slide
    both = ad.concat([a, b], uns_merge="unique")
    op = ring_mean_operator(both, library_key="library_id").tocsr()
    n = a.n_obs
    assert op.shape == (2 * n, 2 * n)
    assert op[:n, n:].nnz == 0 and op[n:, :n].nnz == 0  # never across slides
    np.testing.assert_allclose(np.asarray(op.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    deg = np.diff(op.indptr)
    assert deg.max() == 6 and deg.min() >= 2  # hexagonal: 6 inside, fewer at the edges
    assert op.diagonal().sum() == 0
    # a square grid: 8 neighbours inside (the diagonals at 1.41 pitches are included)
    sq = synthetic_slide(nx=5, ny=5)
    gx, gy = np.meshgrid(np.arange(5), np.arange(5))
    sq = sq[:25].copy()
    sq.obsm["spatial"] = np.c_[gx.ravel(), gy.ravel()].astype(float) * 20 + 40
    deg = np.diff(ring_mean_operator(sq).tocsr().indptr)
    assert deg.reshape(5, 5)[1:-1, 1:-1].min() == 8 and deg.reshape(5, 5)[0, 0] == 3
    v = np.arange(2 * n, dtype=np.float32)[:, None] * [1.0, -2.0]
    out = smooth_with_neighbors(v, op, 0.25)
    np.testing.assert_allclose(out, 0.75 * v + 0.25 * (op @ v), rtol=1e-6)
    np.testing.assert_array_equal(smooth_with_neighbors(v, op, 0.0), v)
