from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from storm_st.tl._domains import domains
from storm_st.tl._metrics import domain_metrics


def _blobs(n_per=(40, 30, 20), dim=8, seed=0, sep=8.0):
    """Well-separated Gaussian blobs in the embedding, laid out as three vertical bands in space."""
    rng = np.random.default_rng(seed)
    X, lab, xy = [], [], []
    for i, n in enumerate(n_per):
        c = np.zeros(dim)
        c[i] = sep
        X.append(c + rng.normal(size=(n, dim)))
        lab += [f"L{i}"] * n
        xy.append(np.column_stack([rng.uniform(i * 10, i * 10 + 9, n), rng.uniform(0, 30, n)]))
    a = ad.AnnData(
        X=rng.poisson(1.0, size=(sum(n_per), 5)).astype(np.float32),
        obs=pd.DataFrame({"truth": pd.Categorical(lab)}, index=[f"s{i}" for i in range(sum(n_per))]),
    )
    a.obsm["X_storm"] = np.vstack(X)
    a.obsm["spatial"] = np.vstack(xy)
    return a


@pytest.mark.parametrize("method", ["kmeans", "gmm", "leiden"])
def test_domains_recovers_blobs(method):
    a = _blobs()
    if method == "leiden":
        pytest.importorskip("leidenalg")
    domains(a, 3, method=method)
    lab = a.obs["storm_domain"]
    assert isinstance(lab.dtype, pd.CategoricalDtype)
    assert list(lab.cat.categories) == ["0", "1", "2"]
    # "0" is the largest domain
    counts = lab.value_counts()
    assert counts["0"] >= counts["1"] >= counts["2"]
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(a.obs["truth"], lab) == pytest.approx(1.0)
    p = a.uns["storm_domain"]["params"]
    assert p["n_domains"] == 3 and p["method"] == method and p["use_rep"] == "X_storm"
    if method == "leiden":
        assert p["resolution"] > 0


def test_domains_scan_picks_k_by_silhouette(tmp_path):
    a = _blobs(n_per=(30, 30, 30, 30))
    out = domains(a, range(2, 7), key_added="dom", copy=True)
    assert "dom" not in a.obs and "dom" not in a.uns  # copy=True leaves the input alone
    assert out.uns["dom"]["params"]["n_domains"] == 4
    scan = out.uns["dom"]["scan"]
    assert list(scan["n_domains"]) == [2, 3, 4, 5, 6]
    assert np.argmax(scan["silhouette"]) == 2
    assert out.obs["dom"].nunique() == 4
    out.write_h5ad(tmp_path / "a.h5ad")  # uns survives writing
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["dom"]["params"]["n_domains"] == 4


def test_domains_copy_false_returns_none_and_is_deterministic():
    a, b = _blobs(), _blobs()
    assert domains(a, 3, random_state=1) is None
    domains(b, 3, random_state=1)
    assert (a.obs["storm_domain"] == b.obs["storm_domain"]).all()


def test_domains_and_metrics_spatialdata_table():
    spatialdata = pytest.importorskip("spatialdata")
    a = _blobs()
    sdata = spatialdata.SpatialData(tables={"table": a})
    assert domains(sdata, 3, table_key="table") is None
    assert "storm_domain" in sdata.tables["table"].obs
    df = domain_metrics(sdata, "truth", table_key="table")
    assert df["ARI"].iloc[0] == pytest.approx(1.0)
    out = domains(sdata, 3, key_added="d2", copy=True)  # single table: table_key may be omitted
    assert "d2" in out.obs and "d2" not in sdata.tables["table"].obs


def _snapshot(a):
    return set(a.obs.columns), set(a.uns.keys())


def test_domains_missing_rep_names_embed():
    a = _blobs()
    del a.obsm["X_storm"]
    before = _snapshot(a)
    with pytest.raises(KeyError, match=r"storm_st\.tl\.embed"):
        domains(a, 3)
    assert _snapshot(a) == before


def test_domains_too_many_or_too_few():
    a = _blobs(n_per=(5, 5))
    before = _snapshot(a)
    with pytest.raises(ValueError, match="smaller than the number of spots"):
        domains(a, 50)
    with pytest.raises(ValueError, match="at least 2"):
        domains(a, 1)
    with pytest.raises(ValueError, match="smaller than the number of spots"):
        domains(a, [3, 10])
    assert _snapshot(a) == before


def test_domains_nan_embedding():
    a = _blobs()
    a.obsm["X_storm"][[3, 7], 0] = np.nan
    before = _snapshot(a)
    with pytest.raises(ValueError, match="NaN or infinite values in 2 of"):
        domains(a, 3)
    assert _snapshot(a) == before


def test_domains_bad_method():
    with pytest.raises(ValueError, match="method must be one of"):
        domains(_blobs(), 3, method="dbscan")


@pytest.mark.data
def test_domains_on_dlpfc_pca(shared_data):
    """Real slide: K-means on PCA of DLPFC 151673 vs the manual layers (expression only, no STORM)."""
    import scanpy as sc

    path = shared_data / "dlpfc" / "DLPFC_151673.h5ad"
    if not path.exists():
        pytest.skip("DLPFC_151673.h5ad not staged")
    a = ad.read_h5ad(path)
    a = a[a.obs["layer"].notna()].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=30, random_state=0)
    domains(a, 7, use_rep="X_pca")
    df = domain_metrics(a, "layer", use_rep="X_pca")
    # expression-only K-means on DLPFC is known to be weak (ARI ~0.2-0.35 in the literature)
    assert 0.05 < df["ARI"].iloc[0] < 0.8
    assert 0 < df["NMI"].iloc[0] < 1


# --------------------------------------------------------------------------------------------------
# domain_metrics: each metric against a small hand-computed case
# --------------------------------------------------------------------------------------------------
from storm_st.tl._metrics import asw_score, chaos_score, pas_score  # noqa: E402


def _line(truth, pred, x=None, emb=None):
    n = len(truth)
    x = np.arange(n, dtype=float) if x is None else np.asarray(x, dtype=float)
    a = ad.AnnData(
        obs=pd.DataFrame({"truth": truth, "storm_domain": pd.Categorical(pred)}, index=[f"s{i}" for i in range(n)])
    )
    a.obsm["spatial"] = np.column_stack([x, np.zeros(n)])
    a.obsm["X_storm"] = (np.asarray(emb, dtype=float) if emb is not None else x)[:, None]
    return a


def test_partition_metrics_hand_computed():
    # truth a a b b ; domains 0 0 0 1  -> contingency [[2, 0], [1, 1]]
    a = _line(["a", "a", "b", "b"], ["0", "0", "0", "1"])
    with pytest.warns(UserWarning, match="PAS uses all 3"):
        df = domain_metrics(a, "truth")
    assert list(df.columns) == ["NMI", "ARI", "FMI", "HOM", "COM", "CHAOS", "PAS", "ASW"]
    assert df.shape == (1, 8)
    r = df.iloc[0]
    # pairs: same in both = 1, same domain = C(3,2) = 3, same truth = 2, all = 6
    # ARI = (1 - 2*3/6) / ((2+3)/2 - 2*3/6) = 0
    assert r["ARI"] == pytest.approx(0.0, abs=1e-12)
    assert r["FMI"] == pytest.approx(1 / np.sqrt(3 * 2))
    h_c = np.log(2)  # H(truth)
    h_k = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))  # H(domains)
    h23 = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    h_c_given_k = 0.75 * h23  # domain 0 holds {a, a, b}; domain 1 pure
    h_k_given_c = 0.5 * np.log(2)  # class a pure; class b split 1/1
    assert r["HOM"] == pytest.approx(1 - h_c_given_k / h_c)
    assert r["COM"] == pytest.approx(1 - h_k_given_c / h_k)
    mi = h_c - h_c_given_k
    assert r["NMI"] == pytest.approx(2 * mi / (h_c + h_k))


def test_chaos_hand_computed():
    # line x = 0 1 2 | 10 12 14 ; y constant (only centred). sample SD of x: sqrt(191.5 / 5) = sqrt(38.3)
    # domain a: NN distances 1, 1, 1 ; domain b: 2, 2, 2 -> sum 9 (raw) -> 9 / sd / 6 spots
    x = [0, 1, 2, 10, 12, 14]
    lab = np.array(list("aaabbb"))
    coords = np.column_stack([x, np.zeros(6)])
    assert chaos_score(lab, coords) == pytest.approx(9 / np.sqrt(38.3) / 6)
    # a single-spot domain adds nothing: "c" alone at 14 -> b has 10<->12 (2, 2): sum 3 + 4 = 7
    lab2 = np.array(list("aaabbc"))
    assert chaos_score(lab2, coords) == pytest.approx(7 / np.sqrt(38.3) / 6)
    # scale-free: multiplying coordinates does not change CHAOS
    assert chaos_score(lab, coords * 37.0) == pytest.approx(chaos_score(lab, coords))


@pytest.mark.parametrize(
    ("n_a", "expected"),
    [
        (3, 3 / 11),  # an "a" spot sees 2 a + 8 b -> 8 > 6 abnormal; a "b" spot sees 3 different -> fine
        (4, 4 / 11),  # "a" sees 3 a + 7 b -> 7 > 6 abnormal; "b" sees 4 -> fine
        (5, 0.0),  # "a" sees 4 a + 6 b -> 6 is not > 6; "b" sees 5 -> fine
    ],
)
def test_pas_hand_computed(n_a, expected):
    # 11 spots: the 10 nearest neighbours of any spot are all the other spots (no ties to break)
    lab = np.array(["a"] * n_a + ["b"] * (11 - n_a))
    coords = np.column_stack([np.arange(11.0), np.zeros(11)])
    assert pas_score(lab, coords) == pytest.approx(expected)


def test_pas_uses_ten_nearest():
    # 30 spots on a line, domains in blocks of 15: only spots whose 10-NN window reaches >6 into the other
    # block are abnormal. Irregular spacing avoids ties. Block boundary between x[14] and x[15].
    x = np.cumsum(np.linspace(1.0, 1.3, 30))
    lab = np.array(["a"] * 15 + ["b"] * 15)
    coords = np.column_stack([x, np.zeros(30)])
    # a spot right at the boundary has at most 5 of 10 neighbours on the other side (5 on each side)
    assert pas_score(lab, coords) == 0.0
    # interleaved labels: every spot's neighbours alternate -> ~5 different, still below the threshold
    lab_alt = np.array(["a", "b"] * 15)
    assert pas_score(lab_alt, coords) == 0.0
    # singletons: every spot differs from all its neighbours
    assert pas_score(np.arange(30).astype(str), coords) == 1.0


def test_asw_hand_computed():
    # embedding 0, 1 | 10, 11. s(0) = 1 - 1/10.5, s(1) = 1 - 1/9.5 (symmetric for the other pair)
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    lab = np.array(list("aabb"))
    s = np.mean([1 - 1 / 10.5, 1 - 1 / 9.5])
    assert asw_score(X, lab) == pytest.approx((s + 1) / 2)
    assert np.isnan(asw_score(X, np.array(list("aaaa"))))


def test_domain_metrics_public_matches_parts():
    rng = np.random.default_rng(3)
    n = 40
    truth = np.array(["x"] * 20 + ["y"] * 20)
    pred = truth.copy()
    pred[:3] = "y"
    a = _line(truth, pred, x=rng.uniform(0, 100, n), emb=rng.normal(size=n))
    df = domain_metrics(a, "truth")
    assert df.index.tolist() == ["storm_domain"]
    coords = a.obsm["spatial"]
    assert df["CHAOS"].iloc[0] == pytest.approx(chaos_score(pred, coords))
    assert df["PAS"].iloc[0] == pytest.approx(pas_score(pred, coords))
    assert df["ASW"].iloc[0] == pytest.approx(asw_score(a.obsm["X_storm"], pred))
    assert np.isnan(domain_metrics(a, "truth", use_rep=None)["ASW"].iloc[0])


def test_domain_metrics_nan_labels_error():
    a = _line(["a", "a", None, "b", None, "b"] * 2, ["0", "0", "1", "1", "1", "1"] * 2)
    with pytest.raises(ValueError, match=r"4 of 12 spots have no label \(NaN\).*notna"):
        domain_metrics(a, "truth")


def test_domain_metrics_missing_keys():
    a = _line(list("aabbaabbaabb"), list("001100110011"))
    with pytest.raises(KeyError, match=r"storm_st\.tl\.domains"):
        domain_metrics(a, "truth", domains_key="nope")
    with pytest.raises(KeyError, match="labels_key"):
        domain_metrics(a, "nope")
    del a.obsm["X_storm"]
    with pytest.raises(KeyError, match=r"storm_st\.tl\.embed"):
        domain_metrics(a, "truth")
