"""Task 'protocol': how much the H&E -> expression score depends on the gene list and the target scale.

"Median gene-wise PCC over the top-50 HVGs" leaves two choices open that move the number more than most
models do: *which* 50 genes (the HVG rule) and *which* expression scale the PCC is computed on. This task
fixes the features -- a randomly initialised ViT-S/16 with the HEST ridge probe, the floor of the brief --
and varies only those two choices, on the same train/test split as the expression task.

Gene rules (all computed on the training slides only):

- ``seurat_v3`` -- :func:`storm_st.pp.select_hvgs` (scanpy ``seurat_v3`` on counts, slides as batches): the
  rule of every other table in docs/benchmarks.md.
- ``hest`` -- HEST-Benchmark's ``get_k_genes(criteria='var')`` as published (mahmoodlab/HEST): genes
  detected in >= 10 % of the spots of every slide, log1p of raw counts pooled, scanpy's default
  (``seurat``) flavour.
- ``variance`` -- the 50 genes with the largest variance of log1p(CP10k) over the pooled training spots,
  among genes detected in >= 10 % of the spots of every slide.
- ``mean`` -- the 50 genes with the largest mean log1p(CP10k), same filter.

Targets: ``log1p_cp10k`` (the package's :func:`storm_st.pp.expression_input`, library-size normalised) and
``log1p_counts`` (no library-size normalisation, as in HEST's benchmark; spot depth, which follows tissue
density and is visible in H&E, then contributes to every gene's PCC).

``--protocol-methods`` (design investigation 43, report only) also fits, for every rule x scale, the models the
expression task compares, each trained on that list and scale: ``storm`` (the checkpoint's encoder, a head from
``tl.fit_expression_head``), ``storm-tuned`` (the shipped recipe: the same with ``encoder_epochs=10``, from the
pretrained model ``runs/default/model``), ``spot`` (the spot-token head, ablation (b)) and ``cnn`` (the ST-Net-like
CNN, the quick suite's epochs). Heads reach log1p-count targets through a layer named by the slide's normalisation
record (``uns['storm_normalization']['layer']``), which :func:`storm_st.pp.expression_input` uses as is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from _common import hest_ridge, load_split

from storm_st._utils import gene_pcc

log = logging.getLogger("bench")

RULES = ("seurat_v3", "hest", "variance", "mean")
TARGETS = ("log1p_cp10k", "log1p_counts")
MIN_DETECTED = 0.10
FLOOR = "random-init ViT-S/16 + HEST ridge [floor]"
METHODS = {
    "storm": "STORM + expression head",
    "storm-tuned": "shipped recipe on the list (encoder tuned)",
    "spot": "spot tokens + expression head (b)",
    "cnn": "ST-Net-like CNN (from scratch)",
}
COUNTS_LAYER = "bench_log1p_counts"
PRETRAINED = Path(__file__).resolve().parents[1] / "runs" / "default" / "model"


def _counts_frame(a):
    """Raw counts of ``a`` as a spots x symbols DataFrame (first of duplicated symbols kept)."""
    import pandas as pd
    import scipy.sparse as sp

    from storm_st.pp import gene_symbols

    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    df = pd.DataFrame(X.astype(np.float64), columns=[str(g) for g in gene_symbols(a)])
    return df.loc[:, ~df.columns.duplicated()]


def _detected_everywhere(frames) -> list[str]:
    common = None
    for df in frames:
        ok = set(df.columns[((df > 0).mean(0) >= MIN_DETECTED).to_numpy()])
        common = ok if common is None else common & ok
    return sorted(common)


def select_genes(train, rule: str, n: int) -> list[str]:
    """The ``n`` genes of ``rule`` on the training slides."""
    import anndata as ad
    import scanpy as sc

    import storm_st as st

    if rule == "seurat_v3":
        return st.pp.select_hvgs(train, n)
    frames = [_counts_frame(a) for a in train]
    genes = _detected_everywhere(frames)
    C = np.concatenate([f[genes].to_numpy() for f in frames])
    if rule == "hest":
        b = ad.AnnData(C.astype(np.float32))
        b.var_names = genes
        sc.pp.log1p(b)
        sc.pp.highly_variable_genes(b, n_top_genes=n)  # scanpy default flavour, as HEST
        return list(b.var_names[b.var["highly_variable"]][:n])
    lib = np.concatenate([f.to_numpy().sum(1) for f in frames])[:, None]
    L = np.log1p(C / np.maximum(lib, 1) * 1e4)
    score = L.var(0) if rule == "variance" else L.mean(0)
    return [genes[i] for i in np.argsort(-score, kind="stable")[:n]]


def targets(adatas, genes: list[str], scale: str) -> list[np.ndarray]:
    """Per slide ``(n_spots, len(genes))`` targets on ``scale`` (genes absent from a slide are 0)."""
    from expression import _slide_targets

    if scale == "log1p_cp10k":  # the package's normalisation, as in the expression task
        return [y for y, _ in _slide_targets(adatas, genes)]
    return [np.log1p(_counts_frame(a).reindex(columns=genes, fill_value=0.0).to_numpy()) for a in adatas]


def with_scale(adatas, scale: str):
    """``(slides, layer)`` for fitting a head on ``scale``: the slides themselves for log1p(CP10k); for log1p counts,
    copies carrying ``log1p`` of their raw counts in a layer that their normalisation record names."""
    if scale == "log1p_cp10k":
        return list(adatas), None
    from storm_st._constants import Keys
    from storm_st.pp._genes import expression_source

    out = []
    for a in adatas:
        b = a.copy()
        X, already_log = expression_source(b)
        if already_log:
            raise ValueError("log1p_counts needs raw counts, but this slide's expression is already log-normalised.")
        b.layers[COUNTS_LAYER] = X.astype(np.float32).log1p() if hasattr(X, "log1p") else np.log1p(np.asarray(X, dtype=np.float32))
        b.uns[Keys.NORMALIZATION] = {"layer": COUNTS_LAYER, "target_sum": None, "note": "log1p of raw counts (benchmarks/protocol.py)"}
        out.append(b)
    return out, COUNTS_LAYER


class _Methods:
    """The models of ``--protocol-methods``, fitted on one gene list and target scale at a time (shared inputs --
    models, spot tokens, patches -- computed once)."""

    def __init__(self, which, model_name, train, test, seed):
        from expression import _spot_tokens, resolve_model
        from stnet import split_patches

        from storm_st._inference import D4

        self.which, self.train, self.test, self.seed = list(which), train, test, seed
        self.model = resolve_model(model_name, train, seed)
        if "storm-tuned" in self.which and not (PRETRAINED / "config.json").is_file():
            raise FileNotFoundError(f"storm-tuned refits the shipped recipe from the pretrained model {PRETRAINED}, which is "
                                    "missing: build it with scripts/build_default_model.py, or leave storm-tuned out.")
        if "spot" in self.which:
            self.tokens = _spot_tokens(self.model, train, D4), _spot_tokens(self.model, test, D4)
        if "cnn" in self.which:
            self.patches = split_patches(train, test)

    def predict(self, key: str, genes: list[str], scale: str, Ytr: np.ndarray) -> list[np.ndarray]:
        """Per test slide ``(n_spots, len(genes))`` predictions of method ``key`` trained on ``genes`` at ``scale``
        (``Ytr``: the training spots' targets on that scale, :func:`targets` stacked, which the CNN trains on)."""
        from expression import _impute, _spot_token_head, as_shipped
        from stnet import train_predict

        import storm_st as st
        from storm_st.models import from_pretrained

        if key == "cnn":
            return train_predict(self.patches[0], Ytr, self.patches[1], epochs=30, seed=self.seed)[0]  # quick suite's epochs
        train, layer = with_scale(self.train, scale)
        if key == "spot":
            return _spot_token_head(self.model, train, *self.tokens, genes, self.seed, layer=layer)[0]
        if key == "storm":
            base, extra = self.model, {}
        else:  # the shipped recipe: its pretrained model, reading patches as the shipped head was fitted on them
            base, extra = as_shipped(from_pretrained(PRETRAINED), self.model), {"encoder_epochs": 10}
        m = st.tl.fit_expression_head(train, base, genes=genes, layer=layer, seed=self.seed, show_progress=False, **extra)
        return _impute(m, self.test, genes)


def run(args, suite: str) -> dict:
    from expression import _vit_features

    n = (args.gene_sets or [50])[0]
    t0 = time.perf_counter()
    train, test, names_tr, names_te = load_split(args.train, args.test)
    timings = {"read slides": time.perf_counter() - t0}
    t = time.perf_counter()
    Ftr, Fte = _vit_features(train, args.seed), _vit_features(test, args.seed)
    timings["ViT-S/16 features"] = time.perf_counter() - t
    Xtr = np.concatenate(Ftr)
    splits = np.cumsum([len(f) for f in Fte])[:-1]
    which = list(getattr(args, "protocol_methods", None) or [])
    if which:
        t = time.perf_counter()
        methods = _Methods(which, args.model, train, test, args.seed)
        timings["methods: model, spot tokens, patches"] = time.perf_counter() - t
    gene_lists, rows = {}, []

    def score(method, rule, scale, ys, preds):
        for name, y, p in zip(names_te, ys, preds, strict=True):
            r = gene_pcc(y, p)
            rows.append({"method": method, "rule": rule, "target": scale, "slide": name, "pcc_median": float(np.nanmedian(r)),
                         "pcc_mean": float(np.nanmean(r)), "n_genes": int(np.isfinite(r).sum())})
            log.info("%s | %s | %s | %s: median r %.3f", method, rule, scale, name, rows[-1]["pcc_median"])

    for rule in RULES:
        t = time.perf_counter()
        genes = select_genes(train, rule, n)
        gene_lists[rule] = genes
        ys = {scale: (np.concatenate(targets(train, genes, scale)), targets(test, genes, scale)) for scale in TARGETS}
        for scale, (Ytr, Yte) in ys.items():
            P, _ = hest_ridge(Xtr, Ytr, np.concatenate(Fte), seed=args.seed)
            score(FLOOR, rule, scale, Yte, np.split(P, splits))
        timings[f"genes {rule} + ridge"] = time.perf_counter() - t
        for key in which:
            t = time.perf_counter()
            for scale, (Ytr, Yte) in ys.items():
                score(METHODS[key], rule, scale, Yte, methods.predict(key, genes, scale, Ytr))
            timings[f"{key}, genes {rule}"] = time.perf_counter() - t
    overlap = {f"{a} & {b}": len(set(gene_lists[a]) & set(gene_lists[b])) for i, a in enumerate(RULES) for b in RULES[i + 1 :]}
    return {
        "train": names_tr,
        "test": names_te,
        "n_genes": n,
        "features": f"vit_small_patch16_224 (random init, seed {args.seed}), 224 px of the spot field of view, pooled",
        "methods": [METHODS[k] for k in which],
        "model": {"name": args.model, "sha256": getattr(methods.model, "checkpoint_sha256", None)} if which else None,
        "seed": args.seed,
        "rows": rows,
        "gene_lists": gene_lists,
        "overlap": overlap,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "reference": [0.36, 0.23] if names_te == ["C5", "C6"] else None,
        "note_reference": "brief: ridge on a random-init ViT-S/16 (HEST protocol) 0.36 on C5 / 0.23 on C6",
        "reference_cnn": [0.44, 0.42] if names_te == ["C5", "C6"] else None,  # brief: the ST-Net-like CNN
    }
