"""Design experiments on the training patient only: train HER2ST C2, C3 -> validate on C4.

The test sections C5 and C6 are never read here; choices of the default model (patch field of view,
fine-tuning) were made on these numbers, and then measured once on C5/C6 by ``run.py``.

    python benchmarks/validate.py cnn --fov 100 154 220 300 --epochs 30
    python benchmarks/validate.py storm --model default --finetune 0 30
    python benchmarks/validate.py storm --model runs/val_supinit_lowlr/model --head-genes 50 --head-input centre centre+spot
    python benchmarks/validate.py storm --model runs/val_supinit_lowlr/model --head-genes 50 --encoder-epochs 0 10
    python benchmarks/validate.py decoder --ckpt runs/val_supinit_lowlr/checkpoints/last.ckpt
    python benchmarks/validate.py stain --model runs/val_supinit_lowlr/model --head-genes 50 --seed 0
    python benchmarks/validate.py readouts --model runs/val_supinit_lowlr/model --head-genes 50 --seed 0
    python benchmarks/validate.py adapt --slides dlpfc:151674 dlpfc:151675 --steps 0 300
    python benchmarks/validate.py vocab --arms her2st her2st+dlpfc union
    python benchmarks/validate.py --val C3 readouts --model runs/val_paired03_c3/model --arms A B --head-genes 50
    python benchmarks/validate.py --val C3 imagenet --image-size 224 112 --seed 0

Prints the median gene-wise PCC over the top 50 seurat_v3 HVGs of C2 + C3, measured on C4. ``--val C2 | C3`` holds
out another training section instead (the other two train; design experiment 23); C5 and C6 cannot be chosen.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import storm_st as st

PATIENT_C_TRAIN = ("C2", "C3", "C4")  # the training sections; C5 / C6 are the benchmark's test sections
VAL = "C4"  # the validation section (--val); the other two training sections train


def _train() -> list[str]:
    return [s for s in PATIENT_C_TRAIN if s != VAL]


def _data():
    train = [st.datasets.her2st(s) for s in _train()]
    return train, st.datasets.her2st(VAL)


def _fold(args, normalize_stains: bool = True):
    """The fold's training slides, held-out slide, top-50 and head gene lists, and ``args.model`` with stains normalised
    (as the shipped head recipe reads them), or as the checkpoint has it (``normalize_stains=False``)."""
    train, val = _data()
    base = st.load_model(args.model)
    if normalize_stains:
        st.models.set_stain_normalization(base, True)
    return train, val, st.pp.select_hvgs(train, 50), st.pp.select_hvgs(train, args.head_genes), base


def _median_r(model, slide, genes: list[str]) -> float:
    """Median gene-wise Pearson r of ``model``'s H&E-only predictions of ``genes`` on a copy of ``slide``."""
    v = slide.copy()
    out = st.tl.impute_expression(v, model, genes=genes, key_added="virtual", show_progress=False)
    return float(np.nanmedian(st.tl.expression_pcc(v, out, genes=genes)))


def cnn(args) -> None:
    from stnet import STNET_SIZE, train_predict

    train, val = _data()
    genes = st.pp.select_hvgs(train, 50)

    def targets(a):
        return st.pp.expression_input(a, st.pp.align_genes(a, genes))

    Ytr, Yv = np.concatenate([targets(a) for a in train]), targets(val)
    for fov in args.fov:
        Ptr = np.concatenate([st.pp.spot_patches(a, size=STNET_SIZE, fov_um=fov) for a in train])
        Pv = st.pp.spot_patches(val, size=STNET_SIZE, fov_um=fov)
        t0 = time.time()
        (p,), _ = train_predict(Ptr, Ytr, [Pv], epochs=args.epochs, seed=args.seed)
        r = [np.corrcoef(p[:, j], Yv[:, j])[0, 1] for j in range(len(genes))]
        print(f"cnn fov_um={fov:g} epochs={args.epochs}: median PCC {np.nanmedian(r):.4f} ({time.time() - t0:.0f} s)", flush=True)


def storm(args) -> None:
    train, val, genes50, genes, base = _fold(args, normalize_stains=False)
    if args.ft_kw:  # override finetune_with_head's defaults, e.g. --ft-kw lr=1e-3 layer_decay=1.0
        import functools
        import json

        import storm_st.train._head as head

        kw = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.ft_kw)}
        head.finetune_with_head = functools.partial(head.finetune_with_head, **kw)
    runs = [(h, e, w) for h in args.head_input for e in args.encoder_epochs for w in args.smooth_targets]
    for hi, ee, w in runs:
        for ft in args.finetune:
            t0 = time.time()
            m = st.tl.fit_expression_head(
                train, base, genes=genes, finetune_epochs=ft, seed=args.seed, head_input=hi, encoder_epochs=ee,
                smooth_targets=w, show_progress=False,
            )
            r = _median_r(m, val, genes50)
            if args.save:  # e.g. to run the domain task on the tuned encoder
                st.models.save_pretrained(m, args.save)
            print(f"storm {args.model} head_genes={args.head_genes} head_input={m.config.head_input} encoder_epochs={ee} smooth_targets={'auto' if w is None else f'{w:g}'} finetune_epochs={ft} {' '.join(args.ft_kw)}: median PCC {r:.4f} ({time.time() - t0:.0f} s)", flush=True)


def decoder(args) -> None:
    """The pretraining run's masked ST decoder as a predictor: H&E-only windows of C4, every slot queried."""
    from storm_st._inference import D4, encode_slide
    from storm_st.data import prepare_slides
    from storm_st.train._pretrain import StormPretraining

    state = torch.load(args.ckpt, map_location="cpu", weights_only=False)  # our own training checkpoint
    module = StormPretraining(**{**state["hyper_parameters"], "init_backbone": None})
    module.load_state_dict(state["state_dict"])
    module.eval()
    m = module.model
    train, val = _data()
    genes = st.pp.select_hvgs(train, 50)
    vocab = [g.upper() for g in m.config.gene_vocab]
    cols = [(j, vocab.index(g)) for j, g in enumerate(genes) if g in vocab]
    Y = st.pp.expression_input(val, st.pp.align_genes(val, genes))
    (s,) = prepare_slides(val, m.config, use_he=True, use_gene=False)
    nb, rp = torch.from_numpy(s.neighbors), torch.from_numpy(s.rel_pos)
    centre = every = 0.0
    for t in D4 if args.tta else [(0, False)]:
        tok = torch.from_numpy(encode_slide(m, s, use_he=True, use_gene=False, d4=t).spot_token)
        with torch.no_grad():
            wt = m.build_tokens({"he": tok}, {"he": torch.ones(s.n, dtype=torch.bool)}, nb, rp)
            pred = module.st_decoder(m.spatial_encode(wt), wt, rp, nb >= 0).float()
        mean = pred[..., : pred.shape[-1] // 2].numpy()
        centre = centre + mean[:, 0]
        acc, cnt = np.zeros((s.n, mean.shape[-1])), np.zeros(s.n)  # every window holding a spot predicts it
        for k in range(nb.shape[1]):
            ok = s.neighbors[:, k] >= 0
            np.add.at(acc, s.neighbors[ok, k], mean[ok, k])
            np.add.at(cnt, s.neighbors[ok, k], 1)
        every = every + acc / cnt[:, None]
    Yo = Y[s.obs_indices]
    for name, P in (("centre slot", centre), ("every slot", every)):
        r = [np.corrcoef(P[:, v], Yo[:, j])[0, 1] for j, v in cols]
        print(f"decoder {args.ckpt} {name} tta={args.tta}: median PCC {np.nanmedian(r):.4f} over {len(cols)} of 50 genes in its vocabulary", flush=True)


def stain(args) -> None:
    """Design experiment 17: the same head fitted and applied without / with stain normalisation, scored on C4 as read
    and on C4 re-stained by ``stain_shift.py``'s six conditions (the validation model's training stains as reference)."""
    import copy
    import json

    from stain_shift import CONDITIONS, restain

    train, val, genes50, genes, base = _fold(args, normalize_stains=False)  # each arm sets it
    slides = {name: val if f is None else restain(val, f)[0] for name, f in CONDITIONS.items()}
    for norm in args.normalize:
        b = copy.deepcopy(base)
        st.models.set_stain_normalization(b, bool(norm))
        t0 = time.time()
        m = st.tl.fit_expression_head(train, b, genes=genes, seed=args.seed, head_input="centre",
                                      encoder_epochs=args.encoder_epochs, show_progress=False)
        fit_s = time.time() - t0
        if args.save:
            st.models.save_pretrained(m, f"{args.save}_{'norm' if norm else 'plain'}")
        res = {}
        for name, a in slides.items():
            res[name] = round(_median_r(m, a, genes50), 4)
        restained = float(np.mean([r for k, r in res.items() if k != "original"]))
        print(json.dumps({"model": args.model, "train": _train(), "val": VAL, "head_genes": args.head_genes, "encoder_epochs": args.encoder_epochs,
                          "seed": args.seed, "stains_normalised": bool(norm), "fit_s": round(fit_s),
                          "as_read": res["original"], "restained_mean": round(restained, 4), "per_condition": res}),
              flush=True)


def readouts(args) -> None:
    """Design experiment 18: the shipped recipe's head (A: ``"centre"``, encoder tuned), the spot-token head (B), their
    predictions averaged (E) and a ``"centre+spot"`` head with the encoder tuned (C); stains normalised as shipped.
    Design experiment 25: F averages A's head with ``--n-heads - 1`` more centre heads fitted on A's tuned encoder
    (frozen; head seeds ``100 * seed + j``). Design experiment 31: W is A with the encoder tuned on every spot of each
    window (``encoder_targets="window"``). Design experiment 36: K is A with the neighbours of each training window dropped
    with probability ``--context-dropout`` at every tuning step (``context_dropout``). Design experiment 37: L is A with
    the spatial encoder tuned at ``--encoder-lr`` instead of 1e-4 (``encoder_lr``). Design experiment 44: Z is A with the
    spatial encoder frozen (``encoder_epochs=0``, ``fit_expression_head``'s default). Design experiment 45: M is A with
    its tuned weights interpolated half-way back to Z's (``encoder_mix=--encoder-mix``, WiSE-FT). Design experiment 46:
    N is A with each slide's own BatchNorm statistics throughout (``bn_stats="slide"``, head fitting and prediction);
    T is A's fitted head predicting with the held-out slide's own statistics (needs A)."""
    import json

    import anndata
    import pandas as pd

    train, val, genes50, genes, base = _fold(args)
    if args.window_radius is not None:  # design experiment 33: windows for head fitting, tuning and prediction
        base.config.window_radius = args.window_radius
    tuned = {"head_input": "centre", "encoder_epochs": args.encoder_epochs}  # A; every other arm is A with one change
    arms = {"A": tuned, "B": {"head_input": "spot"}, "C": {**tuned, "head_input": "centre+spot"},
            "W": {**tuned, "encoder_targets": "window"}, "K": {**tuned, "context_dropout": args.context_dropout},
            "L": {**tuned, "encoder_lr": args.encoder_lr}, "Z": {**tuned, "encoder_epochs": 0},
            "M": {**tuned, "encoder_mix": args.encoder_mix}, "N": tuned}
    pred, res, fit_s = {}, {}, {}
    if "N" in args.arms:  # the same weights, each slide's own BatchNorm statistics
        slide_bn = copy.deepcopy(base)
        st.models.set_bn_stats(slide_bn, "slide")

    def predict(m) -> np.ndarray:
        out = st.tl.impute_expression(val.copy(), m, genes=genes50, key_added="virtual", show_progress=False)
        return np.asarray(out.X, dtype=np.float64)

    tuned_a = None
    for name in [a for a in args.arms if a not in ("F", "T")]:
        t0 = time.time()
        start = slide_bn if name == "N" else base
        m = st.tl.fit_expression_head(train, start, genes=genes, seed=args.seed, show_progress=False, **arms[name])
        fit_s[name] = round(time.time() - t0)
        pred[name] = predict(m)
        if name == "A":
            tuned_a = m
        if args.save:
            st.models.save_pretrained(m, f"{args.save}_{name}")
    if "A" in pred and "B" in pred:
        pred["E"] = (pred["A"] + pred["B"]) / 2
    if "T" in args.arms:  # design experiment 46: A's head, the held-out slide's own BatchNorm statistics
        if tuned_a is None:
            raise SystemExit("arm T predicts with A's head: give --arms A ... T")
        t_model = copy.deepcopy(tuned_a)
        st.models.set_bn_stats(t_model, "slide")
        pred["T"] = predict(t_model)
    if "F" in args.arms:  # design experiment 25: more heads on A's tuned encoder, all averaged
        if "A" not in pred:
            raise SystemExit("arm F averages extra heads with A's: give --arms A ... F")
        t0 = time.time()
        heads = [pred["A"]]
        for j in range(1, args.n_heads):
            mj = st.tl.fit_expression_head(train, tuned_a, genes=genes, seed=100 * args.seed + j, head_input="centre",
                                           encoder_epochs=0, show_progress=False)
            heads.append(predict(mj))
        pred["F"] = np.mean(heads, axis=0)
        fit_s["F"] = round(time.time() - t0)
    for name, p in pred.items():
        virtual = anndata.AnnData(X=p.astype(np.float32), obs=val.obs[[]].copy(),
                                  var=pd.DataFrame(index=pd.Index([g.upper() for g in genes50])))
        r = st.tl.expression_pcc(val, virtual, genes=genes50)
        res[name] = round(float(np.nanmedian(r)), 4)
    print(json.dumps({"model": args.model, "train": _train(), "val": VAL, "head_genes": args.head_genes, "encoder_epochs": args.encoder_epochs,
                      "window_radius": base.config.window_radius, "seed": args.seed, "stains_normalised": True, "fit_s": fit_s, "median_r": res,
                      **({"n_heads": args.n_heads} if "F" in args.arms else {}),
                      **({"context_dropout": args.context_dropout} if "K" in args.arms else {}),
                      **({"encoder_lr": args.encoder_lr} if "L" in args.arms else {}),
                      **({"encoder_mix": args.encoder_mix} if "M" in args.arms else {})}), flush=True)


def scale(args) -> None:
    """Investigation 40: the pixel size patches are read at when a platform's spots are smaller than legacy ST's.

    Two heads are fitted as the benchmark fits them (A: the shipped recipe, B: the spot-token head), at the model's own
    patch geometry (on legacy ST: ``fov_scale`` x 100 µm at ``image_size`` px). The validation section is then predicted
    with each field of view in ``--fov`` read two ways: at ``image_size`` px, as the package reads the patch of a spot
    ``fov / fov_scale`` µm wide (so the pixel size shrinks with the field), and at the pixel size the backbone was
    trained at (``fov / trained µm/px`` px). The first minus the second is the cost of the magnification change alone;
    the second against the trained field is the cost of the smaller field alone. Spot positions, windows and targets are
    the section's own: only the patches change."""
    import json

    train, val, genes50, genes, base = _fold(args)
    size0 = base.config.image_size
    fov0 = base.config.patch_fov_um(100.0)  # HER2ST's spot diameter: the geometry the heads are fitted at
    um_px = fov0 / size0
    fitted, res = {}, {}
    for name, (hi, ee) in {"A": ("centre", args.encoder_epochs), "B": ("spot", 0)}.items():
        fitted[name] = st.tl.fit_expression_head(train, base, genes=genes, seed=args.seed, head_input=hi,
                                                 encoder_epochs=ee, show_progress=False)
    for fov in args.fov:
        for how, size in (("as_now", size0), ("trained_um_px", int(round(fov / um_px)))):
            for name, m in fitted.items():
                m.config.fov_um, m.config.image_size = float(fov), size
                try:
                    r = _median_r(m, val, genes50)
                finally:
                    m.config.fov_um, m.config.image_size = None, size0
                res[f"{name}|{fov:g}um|{size}px|{how}"] = round(r, 4)
    print(json.dumps({"model": args.model, "train": _train(), "val": VAL, "head_genes": args.head_genes,
                      "seed": args.seed, "trained_fov_um": fov0, "trained_um_per_px": round(um_px, 4),
                      "median_r": res}), flush=True)


def tiling(args) -> None:
    """Investigation 42: virtual spots tiled over the validation section's H&E alone (``io.read_wsi``), scored at its
    measured spots.

    The shipped head recipe (A) is fitted on the two training sections; the held-out section's full-resolution image is
    then tiled with legacy-ST geometry (100 µm spots, 200 µm square lattice) and with Visium's (55 µm, 100 µm hex), the
    latter read with the model's ``patch_mpp`` and without it (every patch 112 px). Each measured spot's virtual value
    is the Gaussian-weighted mean (sigma 50 µm, within 150 µm) of the virtual spots around it; reported: the median r over
    the top-50 HVGs of the training sections, beside A's prediction at the measured spots themselves."""
    import json

    import anndata
    import pandas as pd
    from scipy.spatial import cKDTree

    from storm_st._utils import data_dir

    train, val, genes50, genes, base = _fold(args)
    m = st.tl.fit_expression_head(train, base, genes=genes, seed=args.seed, head_input="centre",
                                  encoder_epochs=args.encoder_epochs, show_progress=False)
    lib = st.io.library_ids(val)[0]
    mpp = float(val.uns["spatial"][lib]["scalefactors"]["microns_per_pixel"])
    measured_um = np.asarray(val.obsm["spatial"], dtype=np.float64) * mpp
    truth = val.copy()
    res = {"at measured spots": round(_median_r(m, val, genes50), 4)}
    image = data_dir() / "her2st" / "images" / f"{VAL}.jpg"
    own_mpp = m.config.patch_mpp  # validation models built before experiment 41 have none: their trained pixel size is
    trained_mpp = own_mpp or m.config.patch_fov_um(100.0) / m.config.image_size  # the legacy-ST field / image_size
    for name, (spot, pitch, lattice, pmpp) in {
        "legacy ST tiling (100 µm, 200 µm square)": (100.0, 200.0, "square", trained_mpp),
        "Visium tiling (55 µm, 100 µm hex), patch_mpp": (55.0, 100.0, "hex", trained_mpp),
        "Visium tiling (55 µm, 100 µm hex), 112 px patches": (55.0, 100.0, "hex", None),
    }.items():
        he = st.io.read_wsi(image, mpp=mpp, spot_diameter_um=spot, pitch_um=pitch, lattice=lattice, library_id="tiles")
        m.config.patch_mpp = pmpp
        try:
            virtual = st.tl.impute_expression(he, m, genes=genes50, show_progress=False)
        finally:
            m.config.patch_mpp = own_mpp
        tiles_um = np.asarray(he.obsm["spatial"], dtype=np.float64) * mpp
        tree = cKDTree(tiles_um)
        X = np.asarray(virtual.X, dtype=np.float64)
        agg = np.full((len(measured_um), X.shape[1]), np.nan)
        for i, (d, j) in enumerate(zip(*tree.query(measured_um, k=64, distance_upper_bound=150.0), strict=True)):
            ok = np.isfinite(d)
            if ok.any():
                w = np.exp(-0.5 * (d[ok] / 50.0) ** 2)
                agg[i] = w @ X[j[ok]] / w.sum()
        keep = ~np.isnan(agg[:, 0])
        pred = anndata.AnnData(X=agg[keep].astype(np.float32), obs=truth.obs[[]].iloc[np.flatnonzero(keep)].copy(),
                               var=pd.DataFrame(index=pd.Index(list(virtual.var_names))))
        r = st.tl.expression_pcc(truth[keep].copy(), pred, genes=genes50)
        res[name] = {"median_r": round(float(np.nanmedian(r)), 4), "virtual_spots": int(he.n_obs),
                     "measured_spots_scored": int(keep.sum())}
    print(json.dumps({"model": args.model, "train": _train(), "val": VAL, "head_genes": args.head_genes,
                      "seed": args.seed, "results": res}), flush=True)


def imagenet(args) -> None:
    """Design experiment 26: the spot-token head (arm B of ``readouts``) on a frozen ImageNet backbone
    (``scripts/imagenet_backbone.py``: EfficientNet-Lite0 from a PyPI wheel), 200 µm patches at each
    ``--image-size``; stains normalised to the training sections' (as shipped); nothing else trained."""
    import json

    train, val = _data()
    genes50 = st.pp.select_hvgs(train, 50)
    genes = st.pp.select_hvgs(train, args.head_genes)
    vocab = st.pp.select_hvgs(train, 2000)
    stains = st.pp.stain_reference(train)
    res, fit_s = {}, {}
    for size in args.image_size:
        torch.manual_seed(args.seed)
        m = st.load_model("storm-small", gene_vocab=vocab, he_backbone=args.backbone, image_size=size, fov_scale=2.0,
                          image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
        st.models.load_backbone_weights(m, args.weights)
        m.config.stain_reference = stains
        t0 = time.time()
        m = st.tl.fit_expression_head(train, m, genes=genes, seed=args.seed, head_input="spot", encoder_epochs=0,
                                      show_progress=False)
        fit_s[size] = round(time.time() - t0)
        res[size] = round(_median_r(m, val, genes50), 4)
    print(json.dumps({"backbone": args.backbone, "weights": args.weights, "train": _train(), "val": VAL,
                      "head_genes": args.head_genes, "seed": args.seed, "stains_normalised": True, "fit_s": fit_s,
                      "median_r": res}), flush=True)


def _st_domain_aris(model, a, key: str, k: int, seeds=(0,)) -> list[float]:
    """ARIs of ``tl.domains`` (k-means, K = ``k``, one per k-means seed) on the ST-only embedding of a copy of ``a``,
    embedded once, as in ``domains.py``."""
    from domains import _metrics

    b = a.copy()
    st.tl.embed(b, model, modalities="st", show_progress=False)
    out = []
    for seed in seeds:
        st.tl.domains(b, n_domains=k, use_rep="X_storm", key_added="d", random_state=seed)
        out.append(round(_metrics(b, key, "d", "X_storm")["ARI"], 4))
    return out


def domaincheck(args) -> None:
    """The domain check of design experiments 36-37 and 44-45: ST-only spatial domains (k-means, K = annotated classes)
    of each model on the validation domain sections, over several k-means seeds; one embedding per model and slide."""
    import json

    from _common import read_slide
    from domains import _labelled

    for name in args.models:
        model = st.load_model(name)
        per_slide = {}
        for spec in args.slides:
            a, key, *_ = _labelled(read_slide(spec))
            k = int(a.obs[key].nunique())
            aris = _st_domain_aris(model, a, key, k, args.seeds)
            per_slide[spec] = {"K": k, "ARI": aris, "mean": round(float(np.mean(aris)), 4)}
        mean = round(float(np.mean([v["mean"] for v in per_slide.values()])), 4)
        print(json.dumps({"model": name, "slides": per_slide, "mean": mean, "sha256": model.checkpoint_sha256}), flush=True)


def adapt(args) -> None:
    """Design experiment 19: spatial domains (ST only) from the model as it is and after continuing its pretraining on
    the slide itself (``training.init_model``, expression only, no labels), on sections that are not benchmark slides."""
    import json

    from _common import read_slide
    from domains import _labelled

    from storm_st.train import pretrain

    for spec in args.slides:
        a, key, *_ = _labelled(read_slide(spec))
        k = int(a.obs[key].nunique())
        if spec.lower().startswith("dlpfc:"):
            slide = {"reader": "dlpfc", "path": f"@data/dlpfc/DLPFC_{spec.split(':', 1)[1]}.h5ad", "use": "st"}
        else:
            slide = {"reader": "her2st", "root": "@data/her2st", "section": spec, "use": "st"}
        res = {}
        for n in args.steps:
            t0 = time.time()
            model = st.load_model(args.model)
            if n > 0:
                cfg = {"output": f"{args.runs}/adapt_{spec.replace(':', '_')}_{n}",
                       "training": {"init_model": args.model, "lr": args.lr, "warmup_steps": 10, "max_steps": n},
                       "data": {"windows_per_batch": 32, "slides": [slide]},
                       "trainer": {"log_every_n_steps": 10, "checkpoint_every_n_steps": 1000, "accelerator": "cpu",
                                   "seed": args.seed}}
                model = st.load_model(str(pretrain(cfg)))
            res[n] = {"ARI": _st_domain_aris(model, a, key, k)[0], "seconds": round(time.time() - t0)}
        print(json.dumps({"slide": spec, "K": k, "model": args.model, "lr": args.lr, "seed": args.seed, "steps": res}),
              flush=True)


def vocab(args) -> None:
    """Design experiment 20 (an investigation): expression-only pretraining runs of the default's architecture and
    schedule on HER2ST, with or without DLPFC 151674 and a vocabulary that covers it; ST-only domains on DLPFC 151675
    (never trained on) and on the four non-benchmark labelled HER2ST sections. No H&E, no test section."""
    import json

    import yaml
    from _common import read_slide
    from domains import _labelled

    from storm_st.train import pretrain

    default = yaml.safe_load(open("configs/default.yaml"))
    her2st = [{**s, "use": "st"} for s in default["data"]["slides"]]  # C2-C4 and the 23 expression-only sections
    dlpfc = {"reader": "dlpfc", "path": "@data/dlpfc/DLPFC_151674.h5ad", "use": "st", "weight": args.dlpfc_weight}
    h_genes = st.pp.select_hvgs([read_slide(s["section"]) for s in her2st], 2000)
    d_genes = st.pp.select_hvgs(read_slide("dlpfc:151674"), args.dlpfc_genes)
    arms = {"her2st": (her2st, h_genes), "her2st+dlpfc": (her2st + [dlpfc], h_genes),
            "union": (her2st + [dlpfc], list(dict.fromkeys(h_genes + d_genes)))}
    evals = {}
    for spec in ["dlpfc:151675", "C1", "D1", "E1", "F1"]:
        a, key, *_ = _labelled(read_slide(spec))
        evals[spec] = (a, key, int(a.obs[key].nunique()))
    for name in args.arms:
        slides, genes = arms[name]
        t0 = time.time()
        cfg = {"output": f"{args.runs}/vocab_{name}", "model": default["model"], "vocab": {"genes": genes},
               "data": {**default["data"], "slides": slides, "paired_fraction": None},  # no H&E: by spots x weight
               "training": {**{k: v for k, v in default["training"].items() if k != "init_backbone"},
                            "p_he_only": 0.0, "max_steps": args.steps},
               "trainer": {**default["trainer"], "accelerator": "cpu", "enable_progress_bar": False}}
        model = st.load_model(str(pretrain(cfg)))
        train_s = round(time.time() - t0)
        ari = {}
        for spec, (a, key, k) in evals.items():
            ari[spec] = _st_domain_aris(model, a, key, k)[0]
        her = [ari[s] for s in ("C1", "D1", "E1", "F1")]
        print(json.dumps({"arm": name, "vocab": len(genes), "steps": args.steps, "train_s": train_s, "ARI": ari,
                          "her2st_mean": round(float(np.mean(her)), 4)}), flush=True)


def main() -> None:
    global VAL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", default=VAL, choices=PATIENT_C_TRAIN,
                    help="validation section; the other two training sections train (default C4: train C2 + C3)")
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cnn")
    c.add_argument("--fov", type=float, nargs="+", default=[154.56])
    c.add_argument("--epochs", type=int, default=30)
    s = sub.add_parser("storm")
    s.add_argument("--model", default="default")
    s.add_argument("--finetune", type=int, nargs="+", default=[0])
    s.add_argument("--ft-kw", nargs="*", default=[], help="finetune_with_head keyword overrides, KEY=JSON")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--head-genes", type=int, default=500, help="genes of the expression head (top HVGs of C2 + C3)")
    s.add_argument("--head-input", nargs="+", default=[None], help="what the head reads: centre, centre+spot, spot")
    s.add_argument("--save", default=None, help="save the (last) fitted model to this folder")
    s.add_argument("--encoder-epochs", type=int, nargs="+", default=[0], help="fit_expression_head(encoder_epochs=...)")
    s.add_argument("--smooth-targets", type=lambda v: None if v == "auto" else float(v), nargs="+", default=[None],
                   help="fit_expression_head(smooth_targets=...); 'auto' (default) = the package's platform default. "
                        "Entries of scripts/design_experiments.md before experiment 15 ran without it: add --smooth-targets 0")
    n = sub.add_parser("stain", help="design experiment 17: heads fitted without / with stain normalisation")
    n.add_argument("--model", required=True)
    n.add_argument("--head-genes", type=int, default=50)
    n.add_argument("--encoder-epochs", type=int, default=10)
    n.add_argument("--normalize", type=int, nargs="+", default=[0, 1], help="0: as read, 1: stains normalised")
    n.add_argument("--save", default=None, help="save each fitted model to SAVE_plain / SAVE_norm")
    n.add_argument("--threads", type=int, default=2)
    o = sub.add_parser("readouts", help="design experiment 18: two readouts averaged")
    o.add_argument("--model", required=True)
    o.add_argument("--head-genes", type=int, default=50)
    o.add_argument("--encoder-epochs", type=int, default=10)
    o.add_argument("--arms", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C", "F", "W", "K", "L", "Z", "M", "N", "T"])
    o.add_argument("--encoder-mix", type=float, default=0.5, help="arm M: fit_expression_head(encoder_mix=...)")
    o.add_argument("--context-dropout", type=float, default=0.25, help="arm K: fit_expression_head(context_dropout=...)")
    o.add_argument("--encoder-lr", type=float, default=3e-5, help="arm L: fit_expression_head(encoder_lr=...)")
    o.add_argument("--n-heads", type=int, default=3, help="arm F: A's head and N - 1 more on its tuned encoder, averaged")
    o.add_argument("--save", default=None, help="save each fitted model to SAVE_<arm>")
    o.add_argument("--window-radius", type=float, default=None,
                   help="the model's window_radius for every arm (default: as the model has it)")
    o.add_argument("--threads", type=int, default=2)
    sc = sub.add_parser("scale", help="investigation 40: patch pixel size on platforms with smaller spots")
    sc.add_argument("--model", required=True)
    sc.add_argument("--fov", type=float, nargs="+", default=[200.0, 110.0, 64.0],
                    help="fields of view (µm): the trained one, a 55 µm Visium spot's and a cell's under fov_scale 2")
    sc.add_argument("--head-genes", type=int, default=50)
    sc.add_argument("--encoder-epochs", type=int, default=10)
    sc.add_argument("--threads", type=int, default=2)
    tl_ = sub.add_parser("tiling", help="investigation 42: virtual spots tiled over the validation H&E, Visium geometry")
    tl_.add_argument("--model", required=True)
    tl_.add_argument("--head-genes", type=int, default=50)
    tl_.add_argument("--encoder-epochs", type=int, default=10)
    tl_.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("adapt", help="design experiment 19: continued pretraining on the slide before domains")
    t.add_argument("--slides", nargs="+", default=["dlpfc:151674", "dlpfc:151675"])
    t.add_argument("--model", default="default")
    t.add_argument("--steps", type=int, nargs="+", default=[0, 300])
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--runs", default="runs/validation_adapt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    v = sub.add_parser("vocab", help="design experiment 20: a vocabulary covering DLPFC, expression-only runs")
    v.add_argument("--arms", nargs="+", default=["her2st", "her2st+dlpfc", "union"],
                   choices=["her2st", "her2st+dlpfc", "union"])
    v.add_argument("--steps", type=int, default=600)
    v.add_argument("--dlpfc-weight", type=float, default=1.0, help="sampling weight of DLPFC 151674 (spots x weight)")
    v.add_argument("--dlpfc-genes", type=int, default=1000, help="top HVGs of DLPFC 151674 added to the vocabulary")
    v.add_argument("--runs", default="runs/validation_vocab")
    v.add_argument("--threads", type=int, default=2)
    i = sub.add_parser("imagenet", help="design experiment 26: spot-token head on a frozen ImageNet backbone")
    i.add_argument("--weights", default="runs/imagenet/tf_efficientnet_lite0.safetensors",
                   help="timm-format backbone weights (scripts/imagenet_backbone.py)")
    i.add_argument("--backbone", default="tf_efficientnet_lite0")
    i.add_argument("--image-size", type=int, nargs="+", default=[224, 112])
    i.add_argument("--head-genes", type=int, default=50)
    i.add_argument("--threads", type=int, default=2)
    dc = sub.add_parser("domaincheck", help="design experiments 36-37, 44-45: ST-only domain ARI on validation sections")
    dc.add_argument("--models", nargs="+", default=["default"])
    dc.add_argument("--slides", nargs="+", default=["C1", "D1", "E1", "F1", "dlpfc:151675"])
    dc.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="k-means seeds")
    dc.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("decoder")
    d.add_argument("--ckpt", required=True, help="a pretraining run's checkpoints/last.ckpt")
    d.add_argument("--tta", action="store_true")
    for p in (c, s, n, o, i, sc, tl_):
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    VAL = args.val
    torch.set_num_threads(getattr(args, "threads", 2))
    {"cnn": cnn, "storm": storm, "decoder": decoder, "stain": stain, "readouts": readouts, "scale": scale, "tiling": tiling,
     "imagenet": imagenet, "adapt": adapt, "vocab": vocab, "domaincheck": domaincheck}[args.what](args)


if __name__ == "__main__":
    main()
