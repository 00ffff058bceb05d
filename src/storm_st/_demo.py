"""The main job on the embedded data: ``storm-st demo``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def run_demo(
    output: str | Path = "storm_demo",
    *,
    model: Any = None,
    n_domains: int | range = range(3, 9),
    device: str | None = None,
    show_progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Run the whole storm_st workflow on the embedded real data, offline.

    1. HER2ST section C6 (H&E + ST, a held-out test section of the default model): STORM embedding
       → spatial domains → differential expression → MSigDB hallmark enrichment → H&E-only virtual
       expression with gene-wise PCC against the measured expression.
    2. DLPFC 151673 (Visium, manual layers): embedding → 7 domains → the 8 agreement metrics.

    Figures (PNG), the annotated slides (``.h5ad``) and ``summary.json`` go to ``output``.

    Parameters
    ----------
    output
        Output folder (created).
    model
        Model or checkpoint path; default the embedded checkpoint.
    n_domains
        Number of domains on C6, or a range to choose from by silhouette.
    device
        Torch device.
    show_progress
        Progress bars.
    log
        Where progress lines go.

    Returns
    -------
    The summary (also written to ``summary.json``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    import storm_st as st
    from storm_st.tl._common import resolve_model

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    summary: dict[str, Any] = {}

    def step(msg: str) -> None:
        log(f"[{time.time() - t0:6.1f} s] {msg}")

    model = resolve_model(model)
    step(f"model: {getattr(model, 'name', model.config.name)} ({model.config.he_backbone} backbone, "
         f"{len(model.config.gene_vocab)}-gene vocabulary, head of {len(model.config.head_genes)} genes)")

    # ---------------------------------------------------------------- HER2ST C6
    adata = st.datasets.demo()
    step(f"HER2ST C6: {adata.n_obs} spots x {adata.n_vars} genes, H&E at "
         f"{adata.uns['spatial'][adata.obs['library_id'].iloc[0]]['scalefactors']['microns_per_pixel']:.3f} µm/px")
    n_raw = adata.n_obs
    sc.pp.filter_cells(adata, min_counts=10)  # QC: a spot with one or two reads is an extreme profile
    step(f"QC: kept {adata.n_obs} of {n_raw} spots with at least 10 counts")
    st.tl.embed(adata, model, device=device, show_progress=show_progress)
    st.tl.domains(adata, n_domains=n_domains)
    k = adata.obs["storm_domain"].nunique()
    step(f"embedded (H&E + ST) and clustered into {k} domains")
    sc.pp.neighbors(adata, use_rep="X_storm")
    sc.tl.umap(adata, random_state=0)
    st.tl.rank_domain_genes(adata)
    # the 100 most up-regulated genes per domain: with ~180 spots few genes pass an FDR cut-off
    st.tl.hallmark_enrichment(adata, n_top=100)
    hall = adata.uns["storm_hallmark"]
    import pandas as pd

    hall = hall if isinstance(hall, pd.DataFrame) else pd.DataFrame(hall)
    fdr_col = next(c for c in hall.columns if c.lower() in ("fdr", "adjusted p-value", "padj"))
    sig = hall[hall[fdr_col] < 0.05]
    step(f"hallmark enrichment: {len(sig)} significant (domain, hallmark) pairs at FDR < 0.05")
    virtual = st.tl.impute_expression(adata, model, device=device, show_progress=show_progress)
    if virtual is None:
        virtual_ad = None
        pcc = st.tl.expression_pcc(adata)
    else:
        virtual_ad = virtual
        pcc = st.tl.expression_pcc(adata, virtual)
    top50 = [g for g in model.config.head_genes[:50] if g in pcc.index]
    med50 = float(np.nanmedian(pcc[top50])) if top50 else float("nan")
    med_all = float(np.nanmedian(pcc))
    step(f"H&E-only virtual expression of {len(model.config.head_genes)} genes: median gene-wise PCC "
         f"{med50:.3f} over the top-50 HVGs of the training sections, {med_all:.3f} over all {pcc.notna().sum()}")
    best = pcc.dropna().sort_values(ascending=False).index[:4].tolist()

    fig, axs = plt.subplots(1, 2, figsize=(11, 5))
    st.pl.domains(adata, ax=axs[0], show=False, title="STORM domains (H&E + ST), HER2ST C6")
    st.pl.embedding(adata, ax=axs[1], show=False)
    fig.tight_layout()
    fig.savefig(out / "c6_domains.png", dpi=120)
    plt.close(fig)
    if len(sig):
        fig = st.pl.enrichment(adata, return_fig=True, max_terms=20)
        fig.savefig(out / "c6_hallmarks.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    fig = st.pl.expression(adata, best, virtual=virtual_ad, return_fig=True)
    fig.savefig(out / "c6_virtual_expression.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig = st.pl.pcc({"STORM (H&E only)": pcc[top50].to_numpy()}, return_fig=True, title="HER2ST C6, top-50 HVGs")
    fig.savefig(out / "c6_pcc.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    adata.write_h5ad(out / "her2st_c6.h5ad")
    if virtual_ad is not None:
        virtual_ad.write_h5ad(out / "her2st_c6_virtual.h5ad")
    summary["her2st_c6"] = {
        "n_spots": int(adata.n_obs),
        "n_domains": int(k),
        "significant_hallmarks": int(len(sig)),
        "virtual_median_pcc_top50": round(med50, 4),
        "virtual_median_pcc_all": round(med_all, 4),
        "best_predicted_genes": {g: round(float(pcc[g]), 3) for g in best},
    }

    # ---------------------------------------------------------------- DLPFC 151673
    dl = st.datasets.dlpfc()
    dl = dl[dl.obs["layer"].notna()].copy()
    n_layers = int(dl.obs["layer"].nunique())
    st.tl.embed(dl, model, device=device, show_progress=show_progress)
    st.tl.domains(dl, n_domains=n_layers)
    metrics = st.tl.domain_metrics(dl, "layer")
    metrics.index = [f"STORM ({dl.uns['storm']['modalities']})"]
    step(f"DLPFC 151673: {dl.n_obs} annotated spots, {n_layers} domains; ARI {metrics['ARI'].iloc[0]:.3f}, "
         f"NMI {metrics['NMI'].iloc[0]:.3f} against the manual layers")
    fig, axs = plt.subplots(1, 3, figsize=(16, 5))
    st.pl.domains(dl, key="layer", ax=axs[0], show=False, title="manual layers")
    st.pl.domains(dl, ax=axs[1], show=False, title="STORM domains")
    st.pl.domain_metrics(metrics, ax=axs[2], show=False)
    fig.tight_layout()
    fig.savefig(out / "dlpfc_domains.png", dpi=120)
    plt.close(fig)
    dl.write_h5ad(out / "dlpfc_151673.h5ad")
    summary["dlpfc_151673"] = {k: round(float(v), 4) for k, v in metrics.iloc[0].items()}
    summary["wall_time_s"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    step(f"done: figures, .h5ad files and summary.json in {out.resolve()}")
    return summary
