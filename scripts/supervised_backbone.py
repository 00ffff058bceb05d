"""Supervised start for the H&E backbone: train it to predict expression on paired spots, save its weights.

The weights feed ``training.init_backbone`` of a pretraining config, so that masked multimodal pretraining
starts from a backbone that already maps morphology to expression (the role H0-mini plays in the paper,
played here by the training slides themselves). The backbone, its input normalisation, patch geometry
(``image_size``, ``fov_scale``) and augmentation are exactly those of the pretraining config::

    python scripts/supervised_backbone.py --config configs/validation_contig.yaml --train C2 C3 --eval C4 \\
        --out runs/sup_c2c3/backbone.safetensors

Targets: log1p(CP10k) of the top ``--genes`` seurat_v3 HVGs of the training slides (plus their top 50, which
are not nested in the larger list), z-scored per gene so that every gene weighs the same; a linear head on the
pooled backbone features; MSE; AdamW with cosine decay; the pretraining augmentation (random resized crop,
flips / 90° rotations, colour jitter, stain jitter where the config sets ``training.stain_jitter``). With
``--midpoints P`` (design experiment 39; off by default) a training item is, with probability ``P``, replaced by a
patch centred midway between its spot and one of the spot's lattice neighbours (both under tissue), whose target is
the mean of the two spots' log-expression: image content the spot patches only show at their edges. ``--eval``
sections report the median gene-wise Pearson r over the top-50 HVGs of the training slides (design experiments only:
never pass a test section); their measured and predicted top-50 expression is written beside the weights
(``.eval.npz``), e.g. to score an average of several starts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import storm_st as st
from storm_st._inference import D4, _d4
from storm_st._utils import gene_pcc
from storm_st.data import prepare_slides
from storm_st.models import StormConfig, load_backbone_weights
from storm_st.models._storm import HEEncoder
from storm_st.train._augment import augment
from storm_st.train._runner import load_config


def _patches_and_targets(slides, cfg: StormConfig, genes: list[str]):
    P, Y = [], []
    for a in slides:
        s = prepare_slides(a, cfg, use_he=True, use_gene=False, cache_patches=True)[0]
        rows = s.obs_indices
        P.append(s.read_patches(np.arange(s.n)))
        Y.append(st.pp.expression_input(a, st.pp.align_genes(a, genes))[rows])
    return np.concatenate(P), np.concatenate(Y).astype(np.float32)


def _midpoints(slides, cfg: StormConfig, Y: np.ndarray):
    """Patches centred midway between lattice neighbours (≤ 1.2 pitches apart) and the mean of their targets.

    ``Y``: the spot targets of ``_patches_and_targets`` on the same slides. Returns the patches, targets, and for
    each midpoint the two rows of ``Y`` it joins (rows shift by each slide's spot count).
    """
    from dataclasses import replace

    from scipy.spatial import cKDTree

    from storm_st.pp import extract_patches, normalize_stains

    P, E, offset = [], [], 0
    for a in slides:
        s = prepare_slides(a, cfg, use_he=True, use_gene=False)[0]
        pairs = np.array(sorted(cKDTree(s.view.coords_um).query_pairs(1.2 * s.pitch_um)), dtype=np.int64).reshape(-1, 2)
        mid = replace(s.view, coords_px=(s.view.coords_px[pairs[:, 0]] + s.view.coords_px[pairs[:, 1]]) / 2.0,
                      obs_indices=np.arange(len(pairs)))
        x = extract_patches(mid, fov_um=s.fov_um, size=s.patch_px)
        P.append(x if s.stains is None else normalize_stains(x, *s.stains))
        E.append(pairs + offset)
        offset += s.n
    E = np.concatenate(E)
    return np.concatenate(P), (Y[E[:, 0]] + Y[E[:, 1]]) / 2.0, E


def train(
    cfg: StormConfig,
    P: np.ndarray,
    Y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    crop_scale: tuple[float, float],
    jitter: float,
    stain: float,
    seed: int,
    init: str | None = None,
    midpoints: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    p_mid: float = 0.0,
) -> tuple[HEEncoder, torch.nn.Linear, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    enc = HEEncoder(cfg)
    if init:
        load_backbone_weights(enc, init)
    head = torch.nn.Linear(enc.out_dim, Y.shape[1])
    mu, sd = Y.mean(0), Y.std(0) + 1e-3
    n_spots = len(P)
    if p_mid > 0:  # midpoint items follow the spot items; drawn per spot (see _midpoints)
        Pm, Ym, Em = midpoints
        P, Y = np.concatenate([P, Pm]), np.concatenate([Y, Ym])
        incident = [[] for _ in range(n_spots)]
        for k, (i, j) in enumerate(Em):
            incident[i].append(n_spots + k)
            incident[j].append(n_spots + k)
    Z = torch.from_numpy((Y - mu) / sd)  # mu, sd of the spots alone: the midpoints are on the spots' scale
    X = torch.from_numpy(P).permute(0, 3, 1, 2)  # uint8 (n, 3, S, S)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * int(np.ceil(len(X) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    enc.train()
    losses, t0 = [], time.perf_counter()
    for ep in range(epochs):
        order = rng.permutation(n_spots)
        if p_mid > 0:  # as many items per epoch as spots: each one swapped, with probability p_mid, for a midpoint
            swap = rng.random(n_spots) < p_mid
            pick = rng.random(n_spots)
            for t in np.flatnonzero(swap):
                inc = incident[order[t]]
                if inc:
                    order[t] = inc[int(pick[t] * len(inc))]
        tot = 0.0
        for b in range(0, n_spots, batch_size):
            idx = torch.from_numpy(order[b : b + batch_size])
            x = augment(X[idx], cfg.image_size, crop_scale=crop_scale, jitter=jitter, stain=stain)
            loss = torch.nn.functional.mse_loss(head(enc(x)), Z[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        losses.append(tot / n_spots)
        print(f"epoch {ep + 1}/{epochs}: train MSE (z-scored) {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    info = {"epochs": epochs, "train_mse_z": [round(v, 4) for v in losses], "seconds": round(time.perf_counter() - t0, 1)}
    return enc, head, {**info, "target_mean": mu, "target_sd": sd}


@torch.no_grad()
def predict(enc: HEEncoder, head: torch.nn.Linear, P: np.ndarray, mu, sd, batch_size: int = 128) -> np.ndarray:
    """Mean over the 8 flips / 90° rotations of each patch (as tl.impute_expression's TTA)."""
    enc.eval()
    X = torch.from_numpy(P).permute(0, 3, 1, 2).float()
    out = np.zeros((len(X), head.out_features), dtype=np.float32)
    for k, flip in D4:
        for b in range(0, len(X), batch_size):
            out[b : b + batch_size] += head(enc(_d4(X[b : b + batch_size], k, flip))).numpy()
    return out / len(D4) * sd + mu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="pretraining config whose model section defines the backbone")
    ap.add_argument("--train", nargs="+", required=True, help="HER2ST sections with H&E + counts")
    ap.add_argument("--eval", nargs="*", default=[], help="sections to score (validation only; never a test section)")
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None,
                    help="timm-format backbone weights to start from (e.g. scripts/imagenet_backbone.py); default random")
    ap.add_argument("--midpoints", type=float, default=0.0,
                    help="probability of swapping a training spot for a midpoint to a lattice neighbour (0 = off)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="backbone weights (.safetensors); a .json of the run goes beside it")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from safetensors.torch import save_file

    conf = load_config(a.config)  # follows `extends`
    model_kw = {k: v for k, v in (conf.get("model") or {}).items() if k not in ("gene_vocab", "head_genes")}
    cfg = StormConfig(**model_kw)
    tr = conf.get("training") or {}
    stain = float(tr.get("stain_jitter", 0.0))
    train_slides = [st.datasets.her2st(s) for s in a.train]
    top50 = st.pp.select_hvgs(train_slides, 50)
    genes = list(dict.fromkeys(top50 + st.pp.select_hvgs(train_slides, a.genes)))
    P, Y = _patches_and_targets(train_slides, cfg, genes)
    print(f"{len(P)} training spots, {len(genes)} target genes, patches {P.shape[1]} px", flush=True)
    if not 0.0 <= a.midpoints <= 1.0:
        raise SystemExit(f"--midpoints is a probability in [0, 1], got {a.midpoints}")
    mids = _midpoints(train_slides, cfg, Y) if a.midpoints > 0 else None
    if mids is not None:
        print(f"{len(mids[0])} midpoint patches", flush=True)
    enc, head, info = train(
        cfg, P, Y, epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, batch_size=a.batch_size,
        crop_scale=tuple(tr.get("crop_scale", (0.6, 1.0))), jitter=float(tr.get("jitter", 0.1)),
        stain=stain, seed=a.seed,
        init=a.init, midpoints=mids, p_mid=a.midpoints,
    )
    mu, sd = info.pop("target_mean"), info.pop("target_sd")
    scores, evals = {}, {}
    for name in a.eval:
        v = st.datasets.her2st(name)
        Pv, Yv = _patches_and_targets([v], cfg, genes)
        evals[f"{name}_true"], evals[f"{name}_pred"] = Yv[:, : len(top50)], predict(enc, head, Pv, mu, sd)[:, : len(top50)]
        r = gene_pcc(evals[f"{name}_true"], evals[f"{name}_pred"])
        scores[name] = round(float(np.nanmedian(r)), 4)
        print(f"{name}: median PCC over the top-50 HVGs of {'+'.join(a.train)}: {scores[name]:.4f}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.backbone.state_dict().items()}, str(out))
    meta = {"config": a.config, "backbone": cfg.he_backbone, "image_size": cfg.image_size, "fov_scale": cfg.fov_scale,
            "train": a.train, "n_spots": len(P), "n_genes": len(genes), "lr": a.lr, "weight_decay": a.weight_decay,
            "batch_size": a.batch_size, "stain_jitter": stain, "seed": a.seed, "midpoints": a.midpoints,
            "n_midpoints": 0 if mids is None else len(mids[0]),
            "init": a.init, "eval_median_pcc_top50": scores, **info}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    if evals:
        np.savez_compressed(out.with_suffix(".eval.npz"), genes=np.array(top50), **evals)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
