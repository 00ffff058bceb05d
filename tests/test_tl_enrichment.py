from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from storm_st.tl._enrichment import hallmark_enrichment, load_gene_sets, rank_domain_genes

pytestmark = pytest.mark.filterwarnings("ignore:Only .* genes of adata are in the gene sets")

SETS = {
    "SET_UP_A": [f"GA{i}" for i in range(12)],  # up in domain "a"
    "SET_UP_B": [f"GB{i}" for i in range(12)],  # up in domain "b"
    "SET_NONE": [f"GN{i}" for i in range(12)],  # flat genes
    "SET_ABSENT": ["NOT_MEASURED1", "NOT_MEASURED2"],
}


def _toy(seed=0, n_per=30, lower=False):
    """Raw counts: 12 genes up in each of domains a, b, c (same library sizes); 24 flat genes."""
    rng = np.random.default_rng(seed)
    genes = [f"G{d}{i}" for d in "ABC" for i in range(12)] + [f"GN{i}" for i in range(24)]
    groups = np.repeat(["a", "b", "c"], n_per)
    mu = np.full((len(groups), len(genes)), 5.0)
    for j, d in enumerate("abc"):
        mu[groups == d, 12 * j : 12 * (j + 1)] = 40.0
    X = rng.poisson(mu).astype(np.float32)
    a = ad.AnnData(
        X=X,
        obs=pd.DataFrame({"storm_domain": pd.Categorical(groups)}, index=[f"s{i}" for i in range(len(groups))]),
        var=pd.DataFrame(index=[g.lower() if lower else g for g in genes]),
    )
    return a


def _untouched(a, X0):
    return np.array_equal(a.X, X0)


# --------------------------------------------------------------------------------------------------
# rank_domain_genes
# --------------------------------------------------------------------------------------------------
def test_rank_domain_genes_counts_are_normalised_on_a_copy():
    a = _toy()
    X0 = a.X.copy()
    assert rank_domain_genes(a) is None
    assert _untouched(a, X0)
    res = a.uns["storm_rank_genes"]
    assert res["params"]["storm_normalized"] is True
    assert res["params"]["method"] == "wilcoxon" and res["params"]["corr_method"] == "benjamini-hochberg"
    top_a = list(res["names"]["a"][:12])
    assert set(top_a) == {f"GA{i}" for i in range(12)}
    import scanpy as sc

    df = sc.get.rank_genes_groups_df(a, "b", key="storm_rank_genes")
    assert df["names"].iloc[0].startswith("GB")
    assert (df["pvals_adj"] >= df["pvals"]).all()


def test_rank_domain_genes_lognormalised_input_and_copy():
    import scanpy as sc

    a = _toy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    out = rank_domain_genes(a, key_added="rk", copy=True)
    assert "rk" not in a.uns
    assert out.uns["rk"]["params"]["storm_normalized"] is False


def test_rank_domain_genes_layer():
    a = _toy()
    a.layers["counts"] = a.X.copy()
    a.X = np.zeros_like(a.X)
    rank_domain_genes(a, layer="counts")
    assert set(a.uns["storm_rank_genes"]["names"]["a"][:12]) == {f"GA{i}" for i in range(12)}
    with pytest.raises(KeyError, match="layers"):
        rank_domain_genes(a, layer="nope")


def test_rank_domain_genes_missing_groupby_names_domains():
    a = _toy()
    del a.obs["storm_domain"]
    with pytest.raises(KeyError, match=r"storm_st\.tl\.domains"):
        rank_domain_genes(a)
    with pytest.raises(KeyError, match="existing obs column"):
        rank_domain_genes(a, "cluster")
    assert "storm_rank_genes" not in a.uns


# --------------------------------------------------------------------------------------------------
# gene sets
# --------------------------------------------------------------------------------------------------
def test_load_gene_sets_formats(tmp_path):
    gmt = tmp_path / "s.gmt"
    gmt.write_text("".join(f"{k}\tdesc\t" + "\t".join(v) + "\n" for k, v in SETS.items()))
    js = tmp_path / "s.json"
    js.write_text(json.dumps({k: {"geneSymbols": v, "collection": "H"} for k, v in SETS.items()}))
    long = pd.DataFrame([(k, g) for k, v in SETS.items() for g in v], columns=["source", "target"])
    for spec in (SETS, str(gmt), gmt, js, long, {k: {"geneSymbols": v} for k, v in SETS.items()}):
        got = load_gene_sets(spec)
        assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in SETS.items()}
    with pytest.raises(FileNotFoundError, match="neither 'hallmark' nor an existing file"):
        load_gene_sets("no_such_file.gmt")
    with pytest.raises(ValueError, match="'source' and 'target'"):
        load_gene_sets(pd.DataFrame({"a": [1]}))


def test_load_hallmarks(shared_data):
    hm = load_gene_sets("hallmark")
    assert len(hm) == 50
    assert "HALLMARK_OXIDATIVE_PHOSPHORYLATION" in hm
    assert "COX5A" in hm["HALLMARK_OXIDATIVE_PHOSPHORYLATION"]
    mouse = load_gene_sets("hallmark", organism="mouse")
    assert len(mouse) == 50
    with pytest.raises(ValueError, match="organism"):
        load_gene_sets("hallmark", organism="zebrafish")


# --------------------------------------------------------------------------------------------------
# hallmark_enrichment
# --------------------------------------------------------------------------------------------------
def test_enrichment_recovers_planted_sets(tmp_path):
    from scipy.stats import false_discovery_control, fisher_exact

    a = _toy()
    X0 = a.X.copy()
    hallmark_enrichment(a, gene_sets=SETS)
    assert _untouched(a, X0)
    df = a.uns["storm_hallmark"]
    assert list(df.columns) == [
        "domain",
        "term",
        "overlap",
        "set_size",
        "n_query",
        "odds_ratio",
        "pvalue",
        "fdr",
        "genes",
    ]
    sig = df[df["fdr"] < 0.05]
    assert set(zip(sig["domain"], sig["term"], strict=True)) == {("a", "SET_UP_A"), ("b", "SET_UP_B")}
    # ranking was computed and stored
    assert a.uns["storm_rank_genes"]["params"]["groupby"] == "storm_domain"
    params = a.uns["storm_hallmark_params"]
    assert params["n_sets_tested"] == 3  # SET_ABSENT shares no gene with the universe
    assert params["universe_size"] == 60
    # p-value = one-sided Fisher's exact test on the 2x2 table (independent check against scipy)
    row = df[(df["domain"] == "a") & (df["term"] == "SET_UP_A")].iloc[0]
    k, x, m, n = row["n_query"], row["overlap"], row["set_size"], 60
    table = [[x, k - x], [m - x, n - m - k + x]]
    assert row["pvalue"] == pytest.approx(fisher_exact(table, alternative="greater").pvalue, rel=1e-6)
    assert row["overlap"] == 12 and row["set_size"] == 12
    assert row["genes"].split(";") == sorted(f"GA{i}" for i in range(12))
    # FDR: Benjamini-Hochberg over all 3 tested sets of the domain (absent ones count with p = 1)
    da = df[df["domain"] == "a"].set_index("term")
    p = pd.Series(1.0, index=["SET_UP_A", "SET_UP_B", "SET_NONE"])
    p.loc[da.index] = da["pvalue"]
    q = pd.Series(false_discovery_control(p.to_numpy(), method="bh"), index=p.index)
    np.testing.assert_allclose(da["fdr"].to_numpy(), q.loc[da.index].to_numpy())
    # survives h5ad writing
    a.write_h5ad(tmp_path / "e.h5ad")
    back = ad.read_h5ad(tmp_path / "e.h5ad")
    pd.testing.assert_frame_equal(back.uns["storm_hallmark"].reset_index(drop=True), df, check_dtype=False)


def test_enrichment_case_insensitive_and_n_top_and_copy():
    a = _toy(lower=True)
    out = hallmark_enrichment(a, gene_sets=SETS, n_top=12, key_added="hm", copy=True)
    assert "hm" not in a.uns and "storm_rank_genes" not in a.uns
    df = out.uns["hm"]
    top = df[df["domain"] == "a"].iloc[0]
    assert top["term"] == "SET_UP_A" and top["overlap"] == 12 and top["n_query"] == 12
    assert top["genes"].split(";")[0] == "ga0"  # reported with the dataset's own spelling


def test_enrichment_ensembl_ids_use_gene_symbols():
    a = _toy()
    a.var["gene_symbols"] = a.var_names.to_numpy()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    a.var.loc[a.var_names[-1], "gene_symbols"] = np.nan  # an unmapped gene leaves the universe
    hallmark_enrichment(a, gene_sets=SETS)
    assert a.uns["storm_hallmark_params"]["universe_size"] == 59
    sig = a.uns["storm_hallmark"].query("fdr < 0.05")
    assert set(sig["term"]) == {"SET_UP_A", "SET_UP_B"}


def test_enrichment_reuses_existing_ranking():
    a = _toy()
    rank_domain_genes(a)
    a.uns["storm_rank_genes"]["params"]["marker"] = "kept"
    hallmark_enrichment(a, gene_sets=SETS)
    assert a.uns["storm_rank_genes"]["params"]["marker"] == "kept"


def test_enrichment_no_overlap_error_and_untouched():
    a = _toy()
    X0 = a.X.copy()
    keys = set(a.uns)
    with pytest.raises(ValueError, match=r"No gene overlap.*0 of 60 genes"):
        hallmark_enrichment(a, gene_sets={"X": ["FOO", "BAR"]})
    assert set(a.uns) == keys and _untouched(a, X0)


def test_enrichment_groupby_errors_and_untouched():
    a = _toy()
    keys = set(a.uns)
    with pytest.raises(KeyError, match=r"storm_st\.tl\.domains"):
        hallmark_enrichment(ad.AnnData(a.X.copy(), var=a.var.copy()), gene_sets=SETS)
    with pytest.raises(KeyError, match=r"adata\.obs\['nope'\] not found"):
        hallmark_enrichment(a, "nope", gene_sets=SETS)
    a.obs["g"] = a.obs["storm_domain"].astype(object)
    a.obs.iloc[:4, a.obs.columns.get_loc("g")] = np.nan
    with pytest.raises(ValueError, match=r"4 of 90 spots have no group"):
        hallmark_enrichment(a, "g", gene_sets=SETS)
    a.obs["g1"] = ["x"] * 89 + ["y"]
    with pytest.raises(ValueError, match="fewer than 2 spots"):
        hallmark_enrichment(a, "g1", gene_sets=SETS)
    assert set(a.uns) == keys


# --------------------------------------------------------------------------------------------------
# real slides
# --------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_hallmarks_dlpfc_layers(shared_data, tmp_path):
    """DLPFC 151673 (Ensembl IDs; symbols from HumanPilot) grouped by the manual layers."""
    path = shared_data / "dlpfc" / "DLPFC_151673.h5ad"
    sym = shared_data / "dlpfc" / "ensg_to_symbol_from_HumanPilot.csv"
    if not (path.exists() and sym.exists()):
        pytest.skip("DLPFC data not staged")
    a = ad.read_h5ad(path)
    a = a[a.obs["layer"].notna()].copy()
    m = pd.read_csv(sym, index_col=0)["gene_name"]
    a.var["gene_symbols"] = m.reindex(a.var_names).to_numpy()
    X0 = a.X.copy()
    hallmark_enrichment(a, "layer")
    assert (a.X != X0).nnz == 0
    df = a.uns["storm_hallmark"]
    params = a.uns["storm_hallmark_params"]
    assert params["universe_size"] == int(a.var["gene_symbols"].notna().sum())
    assert params["n_sets_tested"] == 50
    sig = df[df["fdr"] < 0.05]
    assert len(sig) > 0
    # grey-matter layers are rich in mitochondrial respiration genes relative to white matter
    oxphos = sig[sig["term"] == "HALLMARK_OXIDATIVE_PHOSPHORYLATION"]
    assert set(oxphos["domain"]) & {"L3", "L4", "L5"}
    assert "WM" not in set(oxphos["domain"])
    a.write_h5ad(tmp_path / "dlpfc.h5ad")


@pytest.mark.data
def test_hallmarks_her2st_kmeans(shared_data):
    """HER2ST section C2 (raw counts, gene symbols), K-means groups of the expression PCA."""
    import scanpy as sc
    from sklearn.cluster import KMeans

    path = shared_data / "her2st" / "counts" / "C2.tsv.gz"
    if not path.exists():
        pytest.skip("HER2ST C2 counts not staged")
    d = pd.read_csv(path, sep="\t", index_col=0)
    a = ad.AnnData(
        d.to_numpy().astype(np.float32),
        obs=pd.DataFrame(index=d.index.astype(str)),
        var=pd.DataFrame(index=d.columns.astype(str)),
    )
    a.var_names_make_unique()
    sc.pp.filter_cells(a, min_genes=200)
    b = a.copy()
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=10, random_state=0)
    a.obs["km"] = pd.Categorical(KMeans(2, n_init=10, random_state=0).fit_predict(b.obsm["X_pca"]).astype(str))
    hallmark_enrichment(a, "km")
    df = a.uns["storm_hallmark"]
    assert a.uns["storm_hallmark_params"]["n_genes_matched"] > 3000
    assert (df["fdr"] < 0.05).any()


def test_enrichment_on_spatialdata_table():
    spatialdata = pytest.importorskip("spatialdata")
    a = _toy()
    sdata = spatialdata.SpatialData(tables={"expr": a})
    hallmark_enrichment(sdata, gene_sets=SETS, table_key="expr")
    assert "storm_hallmark" in sdata.tables["expr"].uns
    rank_domain_genes(sdata, key_added="rk", table_key="expr")
    assert "rk" in sdata.tables["expr"].uns
