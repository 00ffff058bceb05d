"""Run one spatial-domain peer on an AnnData of raw counts; write labels (+ embedding) to an .npz.

    python run_peer.py NAME input.h5ad K out.npz [--seed 0]

Runs in the peers' environment (benchmarks/requirements.txt), in its own process, so a peer that fails to
import or crashes is reported as an error by the harness instead of breaking it. Settings follow each
tool's documented defaults / tutorials; deviations (R's mclust is not available here) are recorded in
``info``.
"""

from __future__ import annotations

import argparse
import json
import random
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def _scipy_sparse_array_getnnz() -> None:
    """pynndescent 0.7 returns scipy sparse *arrays*, on which scipy >= 1.14 has no ``getnnz``; scanpy's
    ``pp.neighbors`` (SpaGCN's louvain initialisation) still calls it on slides of >= 4096 spots.
    Benchmark-only shim: the arrays' own ``_getnnz`` under the old name."""
    import scipy.sparse as sp

    for cls in (sp.csr_array, sp.csc_array, sp.coo_array):
        if not hasattr(cls, "getnnz") and hasattr(cls, "_getnnz"):
            cls.getnnz = cls._getnnz


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    try:
        import torch

        torch.manual_seed(s)
    except ImportError:
        pass


def graphst(adata, k, seed):
    import torch
    from GraphST import GraphST
    from GraphST.utils import clustering

    model = GraphST.GraphST(adata, device=torch.device("cpu"), random_seed=41 + seed)  # epochs=600 default
    adata = model.train()
    # the tutorial clusters with R's mclust (not installed here); GraphST's own leiden option, searched to K
    how = "leiden searched to K by GraphST.utils.clustering (mclust needs R)"
    try:
        clustering(adata, n_clusters=k, method="leiden", start=0.1, end=2.0, increment=0.01, refinement=False)
        lab = adata.obs["domain"].astype(str).to_numpy()
    except AssertionError:  # no leiden resolution gives exactly K clusters
        from sklearn.cluster import KMeans

        lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(adata.obsm["emb_pca"]).astype(str)
        how = "KMeans(K) on GraphST's 20 PCs (no leiden resolution gave K clusters; mclust needs R)"
    return lab, np.asarray(adata.obsm["emb"]), {"epochs": 600, "hvg": "seurat_v3 3000 (GraphST.preprocess)", "clustering": how}


def spagcn(adata, k, seed):
    import scanpy as sc
    import SpaGCN as spg
    import torch

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adj = spg.calculate_adj_matrix(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), histology=False)
    adata.var_names_make_unique()
    spg.prefilter_genes(adata, min_cells=3)
    spg.prefilter_specialgenes(adata)
    sc.pp.normalize_per_cell(adata)
    sc.pp.log1p(adata)
    # SpaGCN 1.2.7 calls the removed scipy ``.A`` on sparse X: give it a dense matrix (same numbers)
    adata.X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    p = 0.5
    l_ = spg.search_l(p, adj, start=0.01, end=1000, tol=0.01, max_run=100)
    res = spg.search_res(adata, adj, l_, k, start=0.7, step=0.1, tol=5e-3, lr=0.05, max_epochs=20,
                         r_seed=100 + seed, t_seed=100 + seed, n_seed=100 + seed)
    clf = spg.SpaGCN()
    clf.set_l(l_)
    random.seed(100 + seed)
    torch.manual_seed(100 + seed)
    np.random.seed(100 + seed)
    clf.train(adata, adj, init_spa=True, init="louvain", res=res, tol=5e-3, lr=0.05, max_epochs=200)
    y_pred, prob = clf.predict()
    return np.asarray(y_pred).astype(str), None, {"p": p, "l": float(l_), "res": float(res), "histology": False, "refine": False}


def banksy(adata, k, seed):
    import scanpy as sc
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    adata.var_names_make_unique()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=min(2000, adata.n_vars))
    adata = adata[:, adata.var["highly_variable"]].copy()
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.obs["xcoord"] = xy[:, 0]
    adata.obs["ycoord"] = xy[:, 1]
    adata.obsm["coord_xy"] = xy
    coord_keys = ("xcoord", "ycoord", "coord_xy")
    bd = initialize_banksy(adata, coord_keys, num_neighbours=15, nbr_weight_decay="scaled_gaussian", max_m=1,
                           plt_edge_hist=False, plt_nbr_weights=False, plt_agf_angles=False, plt_theta=False)
    lam = 0.8  # BANKSY's recommended lambda for domain segmentation
    bd, bm = generate_banksy_matrix(adata, bd, [lam], max_m=1, verbose=False)
    M = bd["scaled_gaussian"][lam]["adata"].X
    M = M.toarray() if hasattr(M, "toarray") else np.asarray(M)
    Z = PCA(n_components=20, random_state=seed).fit_transform(M)
    lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(Z)
    return lab.astype(str), Z, {"lambda": lam, "k_geom": 15, "max_m": 1, "pca": 20, "hvg": 2000,
                                "clustering": "KMeans(K) on BANKSY PCs (mclust needs R; leiden does not fix K)"}


def cellcharter(adata, k, seed):
    import cellcharter as cc
    import scanpy as sc
    import squidpy as sq

    adata.var_names_make_unique()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=min(3000, adata.n_vars))
    sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=seed)
    sq.gr.spatial_neighbors(adata, coord_type="generic", delaunay=True)
    cc.gr.remove_long_links(adata)
    cc.gr.aggregate_neighbors(adata, n_layers=3, use_rep="X_pca", out_key="X_cellcharter")
    gmm = cc.tl.Cluster(n_clusters=k, random_state=seed)
    gmm.fit(adata, use_rep="X_cellcharter")
    lab = np.asarray(gmm.predict(adata, use_rep="X_cellcharter")).astype(str)
    return lab, np.asarray(adata.obsm["X_cellcharter"]), {
        "representation": "PCA 30 of HVG 3000 (the tutorials use scVI; not installed)", "n_layers": 3,
        "graph": "Delaunay + remove_long_links", "clustering": "cc.tl.Cluster (GMM) with K",
    }


def novae_peer(adata, k, seed):
    import novae
    from scipy.spatial import cKDTree

    adata.var_names_make_unique()
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    pitch = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    # Delaunay graph (novae's default for generic coordinates) without the long edges across tissue gaps
    novae.spatial_neighbors(adata, radius=1.6 * pitch, verbose=False)
    model = novae.Novae(adata)  # trained on this slide: the pretrained weights (Hugging Face) cannot be downloaded here
    model.fit(adata, accelerator="cpu", num_workers=0)  # documented defaults: <= 20 epochs, early stopping
    model.compute_representations(adata, accelerator="cpu", num_workers=0)
    key = model.assign_domains(adata, n_domains=k)
    return adata.obs[key].astype(str).to_numpy(), np.asarray(adata.obsm["novae_latent"]), {
        "weights": "none (trained on the slide; pretrained novae-human-0 needs the Hugging Face hub)",
        "graph": f"Delaunay, edges <= 1.6 x median NN distance ({1.6 * pitch:.1f} px)",
        "fit": "Novae(adata).fit() defaults (max_epochs 20, early stopping)", "clustering": "assign_domains(n_domains=K)",
    }


def stagate(adata, k, seed):
    import STAGATE  # noqa: F401  (GitHub-only; the TF1 original / pyG port are not on PyPI)

    raise RuntimeError("unreachable")


METHODS = {
    "GraphST": graphst, "SpaGCN": spagcn, "BANKSY": banksy, "CellCharter": cellcharter, "NOVAE": novae_peer,
    "STAGATE": stagate,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(METHODS))
    ap.add_argument("input")
    ap.add_argument("k", type=int)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import anndata as ad

    _seed(a.seed)
    _scipy_sparse_array_getnnz()
    adata = ad.read_h5ad(a.input)
    labels, emb, info = METHODS[a.name](adata, a.k, a.seed)
    from importlib.metadata import version

    pkg = {"GraphST": "GraphST", "SpaGCN": "SpaGCN", "BANKSY": "pybanksy", "CellCharter": "cellcharter", "NOVAE": "novae"}[a.name]
    info["version"] = version(pkg)
    arrays = {"labels": np.asarray(labels).astype(str), "info": np.asarray(json.dumps(info))}
    if emb is not None:
        arrays["embedding"] = np.asarray(emb, dtype=np.float32)
    np.savez(a.out, **arrays)


if __name__ == "__main__":
    main()
