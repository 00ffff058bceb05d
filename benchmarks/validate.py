"""Design experiments on the training patient only: train HER2ST C2, C3 -> validate on C4.

The test sections C5 and C6 are never read here; choices of the default model (patch field of view,
fine-tuning) were made on these numbers, and then measured once on C5/C6 by ``run.py``.

    python benchmarks/validate.py cnn --fov 100 154 220 300 --epochs 30
    python benchmarks/validate.py storm --model default --finetune 0 30
    python benchmarks/validate.py storm --model runs/val_supinit_lowlr/model --head-genes 50 --head-input centre centre+spot

Prints the median gene-wise PCC over the top 50 seurat_v3 HVGs of C2 + C3, measured on C4.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import storm_st as st

TRAIN, VAL = ["C2", "C3"], "C4"


def _data():
    train = [st.datasets.her2st(s) for s in TRAIN]
    return train, st.datasets.her2st(VAL)


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
    train, val = _data()
    genes50 = st.pp.select_hvgs(train, 50)
    genes = st.pp.select_hvgs(train, args.head_genes)
    base = st.load_model(args.model)
    if args.ft_kw:  # override finetune_with_head's defaults, e.g. --ft-kw lr=1e-3 layer_decay=1.0
        import functools
        import json

        import storm_st.train._head as head

        kw = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.ft_kw)}
        head.finetune_with_head = functools.partial(head.finetune_with_head, **kw)
    for hi in args.head_input:
        for ft in args.finetune:
            t0 = time.time()
            m = st.tl.fit_expression_head(
                train, base, genes=genes, finetune_epochs=ft, seed=args.seed, head_input=hi, show_progress=False
            )
            v = val.copy()
            out = st.tl.impute_expression(v, m, genes=genes50, key_added="virtual", show_progress=False)
            r = st.tl.expression_pcc(v, out, genes=genes50)
            print(f"storm {args.model} head_genes={args.head_genes} head_input={m.config.head_input} finetune_epochs={ft} {' '.join(args.ft_kw)}: median PCC {np.nanmedian(r):.4f} ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    for p in (c, s):
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 2))
    {"cnn": cnn, "storm": storm}[args.what](args)


if __name__ == "__main__":
    main()
