from __future__ import annotations

import os
import shutil
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.testing.compare import compare_images

from storm_st import pl

IMAGES = Path(__file__).parent / "_images"
DPI = 40
TOL = 15


@pytest.fixture(autouse=True)
def _mpl_defaults():
    matplotlib.rcdefaults()
    plt.rcParams.update({"font.family": "DejaVu Sans", "figure.dpi": DPI, "savefig.dpi": DPI, "axes.grid": False})
    yield
    plt.close("all")


@pytest.fixture
def shown(monkeypatch):
    calls = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: calls.append(1))
    return calls


def check_image(fig: Figure, name: str, tmp_path: Path) -> None:
    """Compare with tests/_images/<name>.png; write the baseline when STORM_ST_UPDATE_IMAGES=1."""
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=DPI)
    expected = IMAGES / f"{name}.png"
    if os.environ.get("STORM_ST_UPDATE_IMAGES") == "1":
        IMAGES.mkdir(exist_ok=True)
        shutil.copyfile(actual, expected)
    if not expected.exists():
        pytest.fail(f"Baseline {expected} missing; run with STORM_ST_UPDATE_IMAGES=1 to create it.")
    res = compare_images(str(expected), str(actual), tol=TOL)
    assert res is None, res


def _slide(n_rows=10, n_cols=12):
    """Deterministic Visium-like slide: hex grid, a smooth synthetic 'H&E' image, three band domains."""
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = (cols.ravel() * 2 + rows.ravel() % 2) * 50.0 + 100
    y = rows.ravel() * 86.6 + 100
    n = x.size
    yy, xx = np.mgrid[0:160, 0:180]
    img = np.stack([0.85 - 0.2 * yy / 160, 0.6 + 0.2 * xx / 180, 0.8 * np.ones_like(xx, dtype=float)], axis=-1)
    dom = np.where(x < 500, "0", np.where(x < 900, "1", "2"))
    genes = ["GA", "GB", "GC"]
    base = np.column_stack([x / x.max(), y / y.max(), np.sin(x / 200)])
    a = ad.AnnData(
        X=(base * 10).astype(np.float32),
        obs=pd.DataFrame({"storm_domain": pd.Categorical(dom), "score": x / 100}, index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=genes),
    )
    a.layers["storm_virtual"] = (base * 10 + 0.3 * np.cos(np.arange(n))[:, None]).astype(np.float32)
    a.obsm["spatial"] = np.column_stack([x, y])
    a.obsm["X_umap"] = np.column_stack(
        [np.cos(np.arange(n) / 7) + (dom == "1") * 3, np.sin(np.arange(n) / 5) + (dom == "2") * 3]
    )
    a.uns["spatial"] = {
        "lib1": {
            "images": {"hires": img},
            "scalefactors": {"tissue_hires_scalef": 0.125, "spot_diameter_fullres": 80.0},
        }
    }
    return a


def _enrichment_table():
    return pd.DataFrame(
        {
            "domain": ["0", "0", "1", "2", "2", "1"],
            "term": [
                "HALLMARK_HYPOXIA",
                "HALLMARK_GLYCOLYSIS",
                "HALLMARK_HYPOXIA",
                "HALLMARK_APOPTOSIS",
                "HALLMARK_GLYCOLYSIS",
                "HALLMARK_MYC_TARGETS_V1",
            ],
            "overlap": [10, 8, 4, 6, 3, 2],
            "set_size": [200] * 6,
            "n_query": [100] * 6,
            "odds_ratio": [5.0, 3.0, 2.0, 8.0, 1.5, 1.1],
            "pvalue": [1e-6, 1e-3, 1e-2, 1e-8, 0.02, 0.5],
            "fdr": [1e-5, 5e-3, 0.04, 1e-7, 0.06, 0.9],
            "genes": ["A;B"] * 6,
        }
    )


# --------------------------------------------------------------------------------------------------
# image comparisons
# --------------------------------------------------------------------------------------------------
def test_domains_image(tmp_path):
    fig = pl.domains(_slide(), return_fig=True)
    assert isinstance(fig, Figure)
    check_image(fig, "domains", tmp_path)


def test_domain_metrics_image(tmp_path):
    df = pd.DataFrame(
        {
            "NMI": [0.62, 0.41],
            "ARI": [0.60, 0.32],
            "FMI": [0.7, 0.5],
            "HOM": [0.68, 0.5],
            "COM": [0.6, 0.45],
            "CHAOS": [0.05, 0.07],
            "PAS": [0.02, 0.1],
            "ASW": [0.55, 0.52],
        },
        index=["STORM", "HVG"],
    )
    fig = pl.domain_metrics(df, return_fig=True)
    check_image(fig, "domain_metrics", tmp_path)


def test_pcc_image(tmp_path):
    rng = np.random.default_rng(0)
    res = pd.DataFrame({"STORM": rng.normal(0.5, 0.1, 200), "UNI": rng.normal(0.3, 0.15, 200)})
    fig = pl.pcc(res, return_fig=True)
    check_image(fig, "pcc_box", tmp_path)


def test_enrichment_image(tmp_path):
    a = _slide()
    a.uns["storm_hallmark"] = _enrichment_table()
    fig = pl.enrichment(a, return_fig=True)
    check_image(fig, "enrichment", tmp_path)


# --------------------------------------------------------------------------------------------------
# smoke tests: return types and show
# --------------------------------------------------------------------------------------------------
def test_domains_return_types(shown):
    a = _slide()
    ax = pl.domains(a, show=False)
    assert isinstance(ax, Axes) and not shown
    assert len(ax.collections) == 1 and len(ax.images) == 1
    # spots are in hires pixels: x * 0.125
    np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 0], a.obsm["spatial"][:, 0] * 0.125)
    assert pl.domains(a) is None and shown == [1]
    fig, axs = plt.subplots(1, 2)
    out = pl.domains(a, ax=axs[1], show=False, img=False, groups=["1"])
    assert out is axs[1] and not out.images


def test_domains_without_image_or_uns():
    a = _slide()
    del a.uns["spatial"]
    ax = pl.domains(a, show=False)
    assert isinstance(ax, Axes) and not ax.images


def test_domains_errors():
    a = _slide()
    with pytest.raises(KeyError, match="existing obs column"):
        pl.domains(a, key="nope", show=False)
    del a.obs["storm_domain"]
    with pytest.raises(KeyError, match=r"storm_st\.tl\.domains"):
        pl.domains(a, show=False)
    b = _slide()
    b.uns["spatial"]["lib2"] = b.uns["spatial"]["lib1"]
    with pytest.raises(ValueError, match="library_id"):
        pl.domains(b, show=False)
    assert isinstance(pl.domains(b, library_id="lib2", show=False), Axes)
    with pytest.raises(ValueError, match="not categories"):
        pl.domains(_slide(), groups=["9"], show=False)


def test_embedding(shown):
    a = _slide()
    ax = pl.embedding(a, show=False)
    assert isinstance(ax, Axes) and not shown
    axs = pl.embedding(a, color=["storm_domain", "score", "GA"], show=False)
    assert isinstance(axs, list) and len(axs) == 3
    assert isinstance(pl.embedding(a, return_fig=True), Figure)
    with pytest.raises(KeyError, match="neither an obs column nor a gene"):
        pl.embedding(a, color="nope", show=False)
    del a.obsm["X_umap"]
    with pytest.raises(KeyError, match=r'sc\.pp\.neighbors\(adata, use_rep="X_storm"\); sc\.tl\.umap'):
        pl.embedding(a, show=False)


def test_expression(shown):
    a = _slide()
    axs = pl.expression(a, ["GA", "GC"], show=False)
    assert isinstance(axs, list) and len(axs) == 4 and not shown
    r = np.corrcoef(a.X[:, 0], a.layers["storm_virtual"][:, 0])[0, 1]
    assert f"PCC={r:.2f}" in axs[1].get_title()
    assert axs[0].get_title().startswith("GA: measured")
    # virtual as a separate AnnData (shuffled obs order is re-aligned)
    v = ad.AnnData(a.layers["storm_virtual"].copy(), obs=a.obs[[]].copy(), var=a.var.copy())[::-1].copy()
    axs2 = pl.expression(a, "GA", virtual=v, show=False)
    assert axs2[1].get_title() == axs[1].get_title()
    assert isinstance(pl.expression(a, "GA", return_fig=True), Figure)


def test_expression_errors():
    a = _slide()
    with pytest.raises(KeyError, match="not found in the measured"):
        pl.expression(a, ["GA", "NOPE"], show=False)
    with pytest.raises(ValueError, match="2 Axes per gene"):
        pl.expression(a, ["GA"], ax=plt.subplots(1, 3)[1], show=False)
    del a.layers["storm_virtual"]
    with pytest.raises(KeyError, match=r"storm_st\.tl\.impute_expression"):
        pl.expression(a, "GA", show=False)


def test_pcc_variants(shown):
    res = {"A": [0.1, 0.5, np.nan, 0.3], "B": [0.2, 0.4, 0.6]}
    ax = pl.pcc(res, kind="violin", show=False)
    assert isinstance(ax, Axes) and not shown
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    ax = pl.pcc(res, order=["B", "A"], show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["B", "A"]
    ax = pl.pcc(pd.Series([0.2, 0.5, np.nan], name="STORM"), show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["STORM"]
    with pytest.raises(ValueError, match="No finite PCC values"):
        pl.pcc({"A": [np.nan]})
    with pytest.raises(ValueError, match="kind"):
        pl.pcc(res, kind="bar")
    with pytest.raises(KeyError, match="not in results"):
        pl.pcc(res, order=["C"])
    with pytest.raises(TypeError):
        pl.pcc([0.1, 0.2])


def test_domain_metrics_plot_smoke(shown):
    df = pd.DataFrame({"NMI": [0.5], "PAS": [0.1]}, index=["storm_domain"])
    ax = pl.domain_metrics(df, show=False)
    assert isinstance(ax, Axes) and not shown
    assert [t.get_text() for t in ax.get_xticklabels()] == ["NMI", "PAS ↓"]
    with pytest.raises(KeyError, match="not in df.columns"):
        pl.domain_metrics(df, metrics=["XYZ"])


def test_enrichment_smoke_and_errors(shown):
    a = _slide()
    with pytest.raises(KeyError, match=r"storm_st\.tl\.hallmark_enrichment"):
        pl.enrichment(a, show=False)
    a.uns["storm_hallmark"] = _enrichment_table()
    ax = pl.enrichment(a, show=False)
    assert isinstance(ax, Axes) and not shown
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "MYC_TARGETS_V1" not in labels  # never significant
    assert labels[-1] == "APOPTOSIS"  # most significant on top
    with pytest.raises(ValueError, match="No gene set has FDR < 1e-09"):
        pl.enrichment(a, fdr=1e-9, show=False)
    assert isinstance(pl.enrichment(_enrichment_table(), show=False), Axes)


@pytest.mark.data
def test_plots_on_real_enrichment(shared_data, tmp_path):
    """Dot plot from a real hallmark_enrichment run on DLPFC 151673 layers (smoke)."""
    from storm_st.tl._enrichment import hallmark_enrichment

    path = shared_data / "dlpfc" / "DLPFC_151673.h5ad"
    if not path.exists():
        pytest.skip("DLPFC not staged")
    a = ad.read_h5ad(path)
    a = a[a.obs["layer"].notna()].copy()
    m = pd.read_csv(shared_data / "dlpfc" / "ensg_to_symbol_from_HumanPilot.csv", index_col=0)["gene_name"]
    a.var["gene_symbols"] = m.reindex(a.var_names).to_numpy()
    hallmark_enrichment(a, "layer")
    fig = pl.enrichment(a, return_fig=True)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["L1", "L2", "L3", "L4", "L5", "L6", "WM"]
    fig2 = pl.domains(a, key="layer", return_fig=True)
    assert fig2.axes[0].images  # lowres H&E drawn
    fig2.savefig(tmp_path / "dlpfc_layers.png", dpi=DPI)


def test_expression_counts_are_log_normalised_and_names_case_insensitive():
    a = _slide()
    rng = np.random.default_rng(1)
    counts = rng.poisson(20, size=a.shape).astype(np.float32) * (1 + (a.obsm["spatial"][:, :1] > 500))
    a.X = counts
    a.var_names = ["ga", "gb", "gc"]
    logn = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    v = ad.AnnData(
        logn + 0.01 * rng.normal(size=a.shape), obs=a.obs[[]].copy(), var=pd.DataFrame(index=["GA", "GB", "GC"])
    )
    axs = pl.expression(a, "GA", virtual=v, show=False)
    r = np.corrcoef(logn[:, 0], v.X[:, 0])[0, 1]
    assert f"PCC={r:.2f}" in axs[1].get_title()


@pytest.mark.data
def test_spatial_plots_on_embedded_demo(tmp_path):
    """Real H&E (HER2ST C6, embedded): domains of a K-means on PCA and measured vs noisy 'virtual' ERBB2."""
    import scanpy as sc

    import storm_st as st
    from storm_st.tl._domains import domains as tl_domains

    try:
        a = st.datasets.demo()
    except (FileNotFoundError, AttributeError) as e:  # the embedded demo is shipped by storm_st.datasets
        pytest.skip(f"embedded demo not available: {e}")
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=10, random_state=0)
    a.obsm["X_pca"] = b.obsm["X_pca"]
    tl_domains(a, 4, use_rep="X_pca")
    fig = pl.domains(a, return_fig=True)
    ax = fig.axes[0]
    assert ax.images and ax.images[0].get_array().shape[:2] == a.uns["spatial"]["C6"]["images"]["hires"].shape[:2]
    sf = a.uns["spatial"]["C6"]["scalefactors"]
    widths = ax.collections[0]._widths  # EllipseCollection stores half-widths in data units
    np.testing.assert_allclose(2 * widths[0], sf["spot_diameter_fullres"] * sf["tissue_hires_scalef"], rtol=1e-6)
    a.layers["storm_virtual"] = b.X.copy()
    a.layers["storm_virtual"].data += 0.1
    figs = pl.expression(a, ["ERBB2"], return_fig=True)
    assert "PCC=" in figs.axes[1].get_title()
    figs.savefig(tmp_path / "erbb2.png", dpi=DPI)


def test_plots_accept_spatialdata(shown):
    spatialdata = pytest.importorskip("spatialdata")
    a = _slide()
    a.uns["storm_hallmark"] = _enrichment_table()
    sdata = spatialdata.SpatialData(tables={"table": a})
    assert isinstance(pl.domains(sdata, table_key="table", show=False), Axes)
    assert isinstance(pl.embedding(sdata, show=False), Axes)
    assert isinstance(pl.enrichment(sdata, show=False), Axes)
    assert len(pl.expression(sdata, "GA", show=False)) == 2
    assert not shown


def test_docstrings_have_no_unfilled_fragments():
    import re

    for name in pl.__all__:
        if not callable(getattr(pl, name)):
            continue
        doc = getattr(pl, name).__doc__ or ""
        assert not re.search(r"^\s*\{\w+\}\s*$", doc, re.M), name
        if "show" in doc:
            assert "return_fig" in doc and "Returns\n-------" in doc, name
