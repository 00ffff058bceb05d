"""Task 1: H&E -> expression on held-out slides (gene-wise Pearson r, MSE in log space)."""

from __future__ import annotations

import logging
import time

import numpy as np
from _common import expression_scores, hest_ridge, load_split

log = logging.getLogger("bench")

SUITES = {
    # quick: <= 15 min on 2 cores -> 50 genes, no ViT floor, ST-Net for at most 4 min
    "quick": {"gene_sets": [50], "stnet_epochs": 30, "stnet_budget_s": 240, "vit_floor": False,
              "random_head": True},
    # full: ST-Net ~15 min in total (split over the gene sets), everything else as specified
    "full": {"gene_sets": [50, 500], "stnet_epochs": 60, "stnet_budget_s": 900, "vit_floor": True,
             "random_head": True},
}

#: PyPI packages checked as H&E -> expression peers (``pip download --no-deps NAME``), with the finding.
PYPI_PEERS = [
    ("hist2st / his2st (Hist2ST)", "not on PyPI (`No matching distribution`); GitHub-only research code (biomed-AI/Hist2ST)"),
    ("stnet (ST-Net)", "not on PyPI; GitHub-only (bryanhe/ST-Net). Re-implemented here as the small from-scratch CNN (g)"),
    ("bleep (BLEEP)", "the PyPI name `bleep` is an unrelated package (a Rust cp37-abi3 wheel, no metadata about histology); BLEEP itself is GitHub-only (bowang-lab/BLEEP)"),
    ("histogene / hist2gene (HisToGene)", "not on PyPI; GitHub-only (maxpmx/HisToGene)"),
    ("thitogene (THItoGene)", "not on PyPI"),
    ("deepspot (DeepSpot)", "not on PyPI under that name; GitHub-only (ratschlab/DeepSpot), and it needs pretrained pathology foundation-model weights (not available offline)"),
    ("istar (iStar)", "not on PyPI; GitHub-only, needs UNI/HIPT weights"),
]


def _slide_targets(adatas, genes):
    from storm_st.pp import align_genes, expression_input

    out = []
    for a in adatas:
        al = align_genes(a, genes)
        out.append((expression_input(a, al), np.asarray(al.present)))
    return out


def _storm_features(adatas, model):
    import storm_st as st

    feats = []
    for a in adatas:
        b = a.copy()
        st.tl.embed(b, model, modalities="he", show_progress=False)
        feats.append((np.asarray(b.obsm["X_storm"]), np.asarray(b.obsm["X_storm_he"])))
    return feats


def _impute(model, adatas, genes):
    import storm_st as st

    preds = []
    for a in adatas:
        b = a.copy()
        v = st.tl.impute_expression(b, model, genes=genes, key_added="bench_virtual", show_progress=False)
        if v is None:  # written as a layer over b.var_names
            from storm_st.pp import gene_symbols

            sym = list(gene_symbols(b))
            layer = np.asarray(b.layers["bench_virtual"])
            preds.append(layer[:, [sym.index(g) for g in genes]])
        else:
            preds.append(np.asarray(v.X))
    return preds


def _spot_tokens(model, adatas, transforms):
    """Each spot's own H&E token (backbone + projection, no spatial encoder), per D4 transform: ``[t][slide]``."""

    from storm_st._inference import encode_slide
    from storm_st.data import prepare_slides

    model = model.eval()
    out = [[np.zeros((a.n_obs, model.config.hidden_dim), dtype=np.float32) for a in adatas] for _ in transforms]
    for i, a in enumerate(adatas):
        for s in prepare_slides(a, model.config, use_he=True, use_gene=False):  # once per slide, not per transform
            for j, t in enumerate(transforms):
                out[j][i][s.obs_indices] = encode_slide(model, s, use_he=True, use_gene=False, d4=t).spot_token
    return out


def _spot_token_head(model, train, tokens_tr, tokens_te, genes, seed, layer=None):
    """Issue 4's ablation (b): the package's expression head, fitted and applied as ``tl.fit_expression_head`` /
    ``tl.impute_expression`` do (D4 x 8 training copies, lr 5e-4, 10 epochs, the same neighbour-smoothed targets;
    8-fold TTA averaging the input of the head; predictions clipped at 0), but on each spot's own H&E token instead of the spatial encoder's output.
    ``tokens_tr`` / ``tokens_te``: :func:`_spot_tokens` of the training / test slides over the D4 transforms; ``layer``:
    the targets' layer, as ``fit_expression_head``'s."""
    import copy

    import torch

    from storm_st.tl._expression import _smooth_targets, _targets
    from storm_st.train._head import fit_head

    ys, ms = zip(*(_targets(a, genes, layer) for a in train), strict=True)
    ys = [_smooth_targets(a, y, None, None)[0] for a, y in zip(train, ys, strict=True)]  # fit_expression_head's default
    m = copy.deepcopy(model)
    hist = fit_head(
        m, np.concatenate([x for per in tokens_tr for x in per]), np.concatenate(list(ys) * len(tokens_tr)),
        np.concatenate(list(ms) * len(tokens_tr)), genes=genes, seed=seed, head_input="centre",
    )
    preds = []
    with torch.no_grad():
        for i in range(len(tokens_te[0])):
            emb = torch.from_numpy(np.mean([per[i] for per in tokens_te], axis=0))
            preds.append(m.predict_expression(emb).numpy().clip(min=0))
    return preds, {"loss": [round(h, 5) for h in hist], "n_head_genes": len(genes)}


def _vit_features(adatas, seed):
    import timm
    import torch

    import storm_st as st

    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for a in adatas:
            P = st.pp.spot_patches(a, size=224)  # spot field of view (100 µm legacy ST, 55 µm Visium)
            fs = []
            for s in range(0, len(P), 64):
                x = torch.from_numpy(P[s : s + 64]).permute(0, 3, 1, 2).float() / 255.0
                fs.append(vit((x - mean) / std))
            out.append(torch.cat(fs).numpy())
    return out


def _vit(train, test, preds, method_info, ridge_sets, seed):
    vtr = _vit_features(train, seed)
    vte = _vit_features(test, seed)
    label = "random-init ViT-S/16 (224 px) + HEST ridge [floor]"
    preds[label], info = ridge_sets(np.concatenate(vtr), vte)
    method_info[label] = {"ridge": info, "features": "vit_small_patch16_224 (random init), pooled", "dim": int(vtr[0].shape[1])}


def random_like(model, seed: int):
    """A randomly initialised STORM with the architecture and vocabulary of ``model``."""
    import torch

    import storm_st as st

    cfg = model.config.to_dict()
    vocab = cfg.pop("gene_vocab")
    for k in ("head_genes", "name"):
        cfg.pop(k, None)
    torch.manual_seed(seed)
    m = st.load_model("storm-small", gene_vocab=vocab, **cfg)
    m.name = "random-init"
    return m


def as_shipped(model, shipped):
    """``model`` -- a pretrained model before its head, e.g. ``runs/default/model`` -- set to read patches as the shipped
    checkpoint ``shipped`` does (its stain normalisation reference, pixel size and BatchNorm statistics), so that a head
    refitted on it follows the shipped recipe (``scripts/build_default_model.py --stain-normalize [--bn-stats slide]``).
    Changes ``model`` in place; returns it."""
    import copy

    model.config.stain_reference = copy.deepcopy(shipped.config.stain_reference)
    model.config.patch_mpp = shipped.config.patch_mpp
    model.config.bn_stats = shipped.config.bn_stats
    return model


def resolve_model(name: str, train, seed: int):
    import storm_st as st

    if name in ("storm-small", "random"):
        import torch

        vocab = st.pp.select_hvgs(train, 2000)
        torch.manual_seed(seed)
        m = st.load_model("storm-small", gene_vocab=vocab, he_backbone="resnet10t", image_size=112)
        m.name = "storm-small (random, harness test)"
        return m
    m = st.load_model(name)
    return m


def run(args, suite: str) -> dict:
    from stnet import split_patches, train_predict

    import storm_st as st

    cfg = SUITES[suite]
    gene_sets = args.gene_sets or cfg["gene_sets"]
    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    train, test, names_tr, names_te = load_split(args.train, args.test)
    timings["read slides"] = time.perf_counter() - t0

    t = time.perf_counter()
    hvg = st.pp.select_hvgs(train, max(gene_sets))
    sets = {n: hvg[:n] for n in gene_sets}
    timings["select_hvgs"] = time.perf_counter() - t

    Ytr_all = _slide_targets(train, hvg)
    Yte_all = _slide_targets(test, hvg)
    # training targets: genes absent from a training slide are 0 there (expression_input); fine for HVGs of all slides
    Ytr = np.concatenate([y for y, _ in Ytr_all])

    model = resolve_model(args.model, train, args.seed)
    model_info = {
        "name": getattr(model, "name", model.config.name),
        "sha256": getattr(model, "checkpoint_sha256", None),
        "he_backbone": model.config.he_backbone,
        "image_size": model.config.image_size,
        "hidden_dim": model.config.hidden_dim,
        "vocab": len(model.config.gene_vocab),
    }
    preds: dict[str, dict[int, list[np.ndarray]]] = {}  # method -> gene-set size -> per test slide (n_spots, n)
    method_info: dict[str, dict] = {}

    def _ridge_sets(Xtr, Xte_list):
        """HEST ridge fitted per gene set (its alpha depends on the number of targets)."""
        out, infos = {}, {}
        splits = np.cumsum([len(x) for x in Xte_list])[:-1]
        for n in gene_sets:
            P, infos[n] = hest_ridge(Xtr, Ytr[:, :n], np.concatenate(Xte_list), seed=args.seed)
            out[n] = np.split(P, splits)
        return out, infos
    # ---- STORM (a, b, c) and random STORM (d)
    for tag, m in (("STORM", model), ("STORM random-init", None)):
        if m is None:
            m = random_like(model, args.seed + 1)
        t = time.perf_counter()
        ftr = _storm_features(train, m)
        fte = _storm_features(test, m)
        timings[f"{tag}: embed (he)"] = time.perf_counter() - t
        t = time.perf_counter()
        for key, j in (("X_storm", 0), ("X_storm_he", 1)):
            if tag == "STORM random-init" and key == "X_storm_he":
                continue
            Xtr = np.concatenate([f[j] for f in ftr])
            label = f"{tag} + HEST ridge on {key}" + (" (no spatial encoder)" if key == "X_storm_he" else "")
            preds[label], info = _ridge_sets(Xtr, [f[j] for f in fte])
            method_info[label] = {"ridge": info, "features": key, "dim": int(Xtr.shape[1])}
        timings[f"{tag}: ridge"] = time.perf_counter() - t
        if tag != "STORM" and not cfg["random_head"]:
            notes.append(f"{tag} + expression head: full suite only")
            continue
        if tag == "STORM":
            from storm_st._inference import D4

            label = "STORM spot tokens (no spatial encoder) + expression head"
            t = time.perf_counter()
            tok_tr, tok_te = _spot_tokens(m, train, D4), _spot_tokens(m, test, D4)  # shared by the gene sets
            timings["STORM spot tokens: encode (D4)"] = time.perf_counter() - t
            for n in gene_sets:
                t = time.perf_counter()
                preds.setdefault(label, {})[n], method_info[f"{label} [{n}]"] = _spot_token_head(
                    m, train, tok_tr, tok_te, hvg[:n], args.seed
                )
                timings[f"STORM spot tokens: head ({n} genes)"] = time.perf_counter() - t
            shipped = [str(g).upper() for g in (m.config.head_genes or [])]
            if shipped:  # what a user gets out of the box: impute_expression with the checkpoint's own head
                label = f"STORM as shipped (its own {len(shipped)}-gene head)"
                for n in gene_sets:
                    if {str(g).upper() for g in hvg[:n]} <= set(shipped):
                        t = time.perf_counter()
                        preds.setdefault(label, {})[n] = _impute(m, test, hvg[:n])
                        timings[f"STORM shipped head: impute_expression ({n} genes)"] = time.perf_counter() - t
                        method_info[f"{label} [{n}]"] = {"head": m.extra.get("head", {}), "n_head_genes": len(shipped)}
                    else:
                        notes.append(f"{label}: its head lacks some of the top {n} genes; row skipped for that set")
        # what the head reads (the paper's centre embedding, the skip readout), and the centre head with the
        # spatial encoder tuned alongside it (fit_expression_head(encoder_epochs=...))
        variants = [(hi, 0) for hi in args.head_inputs]
        if getattr(args, "encoder_epochs", 0) > 0:
            variants.append(("centre", args.encoder_epochs))
        for hi, ee in variants:
            label = f"{tag} + expression head" + ("" if hi == "centre" else f" (reads {hi})")
            label += f" (encoder tuned, {ee} epochs)" if ee else ""
            what = f"{hi}{f', encoder {ee} ep' if ee else ''}"
            try:
                for n in gene_sets:  # one head per gene set, as the ridge probe and the CNN
                    t = time.perf_counter()
                    mh = st.tl.fit_expression_head(
                        train, m, genes=hvg[:n], seed=args.seed, finetune_epochs=args.finetune_epochs, head_input=hi,
                        encoder_epochs=ee, show_progress=False,
                    )
                    timings[f"{tag}: fit_expression_head ({what}, {n} genes)"] = time.perf_counter() - t
                    t = time.perf_counter()
                    preds.setdefault(label, {})[n] = _impute(mh, test, hvg[:n])
                    timings[f"{tag}: impute_expression ({what}, {n} genes)"] = time.perf_counter() - t
                    method_info[f"{label} [{n}]"] = {"head": mh.extra.get("head", {}), "n_head_genes": n}
            except Exception as e:
                preds.pop(label, None)
                notes.append(f"{label} failed: {type(e).__name__}: {e}")
                log.exception("head failed")

    # ---- (e) floor: random ViT-S/16 + ridge
    t = time.perf_counter()
    if not cfg["vit_floor"]:
        notes.append("random-init ViT-S/16 floor: full suite only (224 px ViT-S costs ~4 min on 2 cores)")
    else:
        _vit(train, test, preds, method_info, _ridge_sets, args.seed)
        timings["ViT-S random: features + ridge"] = time.perf_counter() - t


    # ---- (f) training mean
    mu = Ytr.mean(0, keepdims=True)
    preds["training-slide mean (constant)"] = {n: [np.repeat(mu[:, :n], len(y), axis=0) for y, _ in Yte_all] for n in gene_sets}

    # ---- (g) ST-Net-like CNN, one per gene set
    t = time.perf_counter()
    Ptr, Pte = split_patches(train, test)
    timings["ST-Net: patches"] = time.perf_counter() - t
    cnns = [("ST-Net-like CNN (from scratch)", Ytr)]
    # the same CNN on the neighbour-smoothed targets STORM's heads train on (fit_expression_head's default), so that
    # no method gets a training recipe the others lack
    if getattr(args, "cnn_smoothed_targets", True):
        from storm_st.tl._expression import _smooth_targets

        smoothed = [_smooth_targets(a, y, None, None)[0] for a, (y, _) in zip(train, Ytr_all, strict=True)]
        cnns.append(("ST-Net-like CNN (from scratch, smoothed targets)", np.concatenate(smoothed)))
    for label, Y in cnns:
        for n in gene_sets:
            t = time.perf_counter()
            ps, info = train_predict(
                Ptr, Y[:, :n], Pte, epochs=args.stnet_epochs or cfg["stnet_epochs"],
                time_budget_s=(args.stnet_budget or cfg["stnet_budget_s"]) / len(gene_sets), seed=args.seed,
            )
            timings[f"{label} ({n} genes): train+predict"] = time.perf_counter() - t
            preds.setdefault(label, {})[n] = ps
            method_info[f"{label} [{n}]"] = info

    # ---- the same neighbour smoothing (impute_expression(smooth=W)) on the shipped head, the spot-token head
    # and the CNN, so that no method gets a post-processing the others lack
    w = float(getattr(args, "smooth", 0.0) or 0.0)
    if w > 0:
        from storm_st.pp._neighbors import ring_mean_operator, smooth_with_neighbors

        ops = [ring_mean_operator(a) for a in test]
        for meth in list(preds):
            if meth.startswith(("STORM as shipped", "STORM spot tokens", "ST-Net-like CNN")):
                preds[f"{meth} + smooth {w:g}"] = {
                    n: [smooth_with_neighbors(p, op, w) for p, op in zip(P, ops, strict=True)]
                    for n, P in preds[meth].items()
                }

    # ---- scores
    rows = []
    for n in gene_sets:
        cols = np.arange(n)
        for meth in preds:
            if n not in preds[meth]:  # e.g. the shipped head lacks some genes of this set
                continue
            P_list = preds[meth][n]
            ys, ps, ms = [], [], []
            for name, (y, present), p in zip(names_te, Yte_all, P_list, strict=True):
                meas = present[cols].copy()
                pp_ = p
                if np.isnan(pp_).any():
                    notes.append(f"{meth}: NaN predictions on {name}")
                    continue
                sc = expression_scores(y[:, cols], pp_, meas)
                rows.append({"method": meth, "genes": n, "slide": name, **sc})
                ys.append(y[:, cols])
                ps.append(pp_)
                ms.append(meas)
            if len(ys) > 1:
                meas_all = np.logical_and.reduce(ms)
                sc = expression_scores(np.concatenate(ys), np.concatenate(ps), meas_all)
                rows.append({"method": meth, "genes": n, "slide": "all (pooled)", **sc})
    return {
        "train": names_tr,
        "test": names_te,
        "n_train_spots": int(sum(a.n_obs for a in train)),
        "n_test_spots": [int(a.n_obs) for a in test],
        "gene_sets": {str(n): sets[n] for n in gene_sets},
        "head_genes": "one head per gene set",
        "finetune_epochs": args.finetune_epochs,
        "head_inputs": list(args.head_inputs),
        "encoder_epochs": getattr(args, "encoder_epochs", 0),
        "smooth": w,
        "model": model_info,
        "rows": rows,
        "method_info": method_info,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "pypi_peers": PYPI_PEERS,
        "notes": notes,
    }
