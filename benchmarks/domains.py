"""Task 2: spatial domains against manual annotations (tl.domain_metrics), STORM vs HVG->PCA->KMeans and peers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, read_slide

log = logging.getLogger("bench")

# A1 is the brief's section; C1, D1, E1, F1 are the other labelled HER2ST sections (one section's ARI varies a lot
# between models of similar quality, so the report also gives the mean over the labelled HER2ST sections)
DEFAULT_SLIDES = ["dlpfc:151673", "A1", "C1", "D1", "E1", "F1"]
PEERS = ["GraphST", "SpaGCN", "BANKSY", "CellCharter", "NOVAE", "STAGATE"]
PEER_TIMEOUT_S = {"quick": 0, "full": 2400}  # GraphST on DLPFC takes ~30 min on 2 cores
DROP_LABELS = {"undetermined", "nan", "none", ""}


def _labelled(a):
    key = next((k for k in ("layer", "label", "domain_annotation", "ground_truth") if k in a.obs), None)
    if key is None:
        raise KeyError(f"No annotation column (layer / label / ground_truth) in obs: {list(a.obs.columns)}")
    lab = a.obs[key].astype(object)
    keep = lab.notna().to_numpy() & ~lab.astype(str).str.strip().str.lower().isin(DROP_LABELS).to_numpy()
    b = a[keep].copy()
    b.obs[key] = b.obs[key].astype(str).astype("category")
    return b, key, int(keep.sum()), int((~keep).sum())


def _has_image(a) -> bool:
    from storm_st.io._slide import slide_views

    try:
        return all(v.has_image for v in slide_views(a))
    except Exception:  # noqa: BLE001
        return False


def _metrics(a, key, dom_key, use_rep):
    import storm_st as st

    df = st.tl.domain_metrics(a, key, domains_key=dom_key, use_rep=use_rep)
    return {k: float(v) for k, v in df.iloc[0].items()}


def baseline_pca_kmeans(a, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scanpy: normalize_total, log1p, HVG 3000 (Seurat flavour), PCA 30, then KMeans(K)."""
    import scanpy as sc
    from sklearn.cluster import KMeans

    from storm_st.pp._genes import _counts_matrix

    b = sc.AnnData(_counts_matrix(a, None).copy())
    b.var_names = a.var_names.astype(str)
    b.var_names_make_unique()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, n_top_genes=min(3000, b.n_vars))
    b = b[:, b.var["highly_variable"]].copy()
    sc.pp.pca(b, n_comps=min(30, b.n_vars - 1, b.n_obs - 1), random_state=seed)
    X = np.asarray(b.obsm["X_pca"])
    lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    return lab, X


def write_peer_input(a, path: Path) -> None:
    """The peers' input: raw counts (gene symbols), coordinates and array rows/cols, nothing else."""
    import anndata as ad
    import scipy.sparse as sp

    import storm_st as st
    from storm_st.pp._genes import _counts_matrix

    X = _counts_matrix(a, None)
    b = ad.AnnData(sp.csr_matrix(X).astype(np.float32), obs=a.obs[[]].copy(), var=a.var[[]].copy())
    b.var_names = [str(s) for s in st.pp.gene_symbols(a)]
    b.var_names_make_unique()
    b.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=np.float64)
    for c in ("array_row", "array_col"):
        if c in a.obs:
            b.obs[c] = a.obs[c].to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    b.write_h5ad(path)


def peer_command(name: str, inp: Path, k: int, out: Path, python: str, seed: int) -> list[str]:
    """Command line running peer ``name`` on ``inp`` with ``k`` domains (``peers/run_peer.py``)."""
    return [python, str(Path(__file__).parent / "peers" / "run_peer.py"), name, str(inp), str(k), str(out), "--seed", str(seed)]


def _run_peer(name: str, a, k: int, work: Path, python: str, timeout: int, seed: int) -> dict:
    """Run one peer in a subprocess (its own environment); returns labels / embedding or the error."""
    work.mkdir(parents=True, exist_ok=True)
    inp = work / "input.h5ad"
    if not inp.exists():
        write_peer_input(a, inp)
    out = work / f"{name}.npz"
    if out.exists():
        out.unlink()
    cmd = peer_command(name, inp, k, out, python, seed)
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout} s", "seconds": round(time.perf_counter() - t, 1)}
    secs = round(time.perf_counter() - t, 1)
    (work / f"{name}.log").write_text(p.stdout[-20000:] + "\n--- stderr ---\n" + p.stderr[-20000:])
    if p.returncode != 0 or not out.exists():
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        msg = err[-1] if err else f"exit code {p.returncode}"
        return {"status": f"error: {msg[:300]}", "seconds": secs}
    z = np.load(out, allow_pickle=False)
    res = {"status": "ok", "seconds": secs, "labels": z["labels"], "info": json.loads(str(z["info"]))}
    if "embedding" in z.files:
        res["embedding"] = z["embedding"]
    return res


def _load_model(args, slides):
    import storm_st as st

    if args.model in ("storm-small", "random"):  # harness test only: a random model with the first slide's HVGs
        import torch

        torch.manual_seed(args.seed)
        vocab = st.pp.select_hvgs(read_slide(slides[0]), 2000)
        return st.load_model("storm-small", gene_vocab=vocab, he_backbone="resnet10t", image_size=112)
    deadline = time.time() + (args.wait_model or 0)
    while True:  # --wait-model: peers run first, the checkpoint may still be being built
        try:
            return st.load_model(args.model)
        except (FileNotFoundError, ValueError):
            if time.time() > deadline:
                raise
            time.sleep(30)


def run(args, suite: str) -> dict:
    import storm_st as st

    slides = args.domain_slides or DEFAULT_SLIDES
    peer_python = args.peer_python or sys.executable
    data, rows, info = {}, {}, {}
    # 1) baseline and peers (they do not need the STORM checkpoint)
    for spec in slides:
        a0 = read_slide(spec)
        a, key, n_kept, n_dropped = _labelled(a0)
        k = int(a.obs[key].nunique())
        img = _has_image(a)
        sinfo = {
            "n_spots": int(a.n_obs), "n_dropped_unlabelled": n_dropped, "K": k, "labels_key": key,
            "classes": sorted(a.obs[key].unique().tolist()), "has_image": img, "timings_s": {},
        }
        if img:
            from storm_st.io._slide import slide_views

            v = slide_views(a)[0]
            sinfo["image_um_per_px"] = round(float(v.levels[0].mpp), 3)
        data[spec] = (a, key, k, img)
        rows[spec] = []
        t = time.perf_counter()
        b = a.copy()
        lab, X = baseline_pca_kmeans(b, k, args.seed)
        b.obs["bench_domain"] = lab.astype(str)
        b.obsm["X_bench"] = X
        rows[spec].append({"slide": spec, "method": "HVG->PCA->KMeans (scanpy)", "status": "ok",
                           **_metrics(b, key, "bench_domain", "X_bench")})
        sinfo["timings_s"]["HVG->PCA->KMeans"] = round(time.perf_counter() - t, 1)
        for peer in PEERS:
            if suite == "quick" or peer not in (args.peers or PEERS):
                rows[spec].append({"slide": spec, "method": peer, "status": "not run (quick suite)" if suite == "quick" else "not selected"})
                continue
            work = RESULTS / "_tmp" / spec.replace(":", "_").replace("/", "_")
            log.info("peer %s on %s", peer, spec)
            res = _run_peer(peer, a, k, work, peer_python, PEER_TIMEOUT_S[suite], args.seed)
            row = {"slide": spec, "method": peer, "status": res["status"], "seconds": res.get("seconds")}
            if res["status"] == "ok":
                b = a.copy()
                b.obs["bench_domain"] = np.asarray(res["labels"]).astype(str)
                use_rep = None
                if "embedding" in res:
                    b.obsm["X_peer"] = res["embedding"]
                    use_rep = "X_peer"
                row.update(_metrics(b, key, "bench_domain", use_rep))
                row["settings"] = res["info"]
            rows[spec].append(row)
            sinfo["timings_s"][peer] = res.get("seconds")
        info[spec] = sinfo
    # 2) STORM
    model = _load_model(args, slides)
    for spec in slides:
        a, key, k, img = data[spec]
        storm_rows = []
        for m in ["he+st", "he", "st"] if img else ["st"]:
            t = time.perf_counter()
            b = a.copy()
            try:
                st.tl.embed(b, model, modalities=m, show_progress=False)
                st.tl.domains(b, n_domains=k, use_rep="X_storm", key_added="bench_domain", random_state=args.seed)
                r = _metrics(b, key, "bench_domain", "X_storm")
                storm_rows.append({"slide": spec, "method": f"STORM ({m})", "status": "ok", **r})
            except Exception as e:
                log.exception("STORM %s failed", m)
                storm_rows.append({"slide": spec, "method": f"STORM ({m})", "status": f"error: {type(e).__name__}: {e}"[:300]})
            info[spec]["timings_s"][f"STORM ({m})"] = round(time.perf_counter() - t, 1)
        rows[spec] = storm_rows + rows[spec]
    return {"slides": info, "rows": [r for spec in slides for r in rows[spec]],
            "model": {"name": getattr(model, "name", ""), "sha256": getattr(model, "checkpoint_sha256", None)},
            "peer_python": peer_python}
