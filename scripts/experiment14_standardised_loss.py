"""Design experiment 14 (docs/pretraining.md): the head's eq.-4 loss on per-gene standardised errors.

Fits ``tl.fit_expression_head`` (``"centre"`` readout, ``encoder_epochs=10``) on HER2ST C2 + C3 from the validation
model ``runs/val_supinit_lowlr/model`` and prints the median gene-wise PCC over the top-50 HVGs of C2 + C3 on C4.
``scaled`` computes the loss of every stage on ``(y - ŷ) / s_g`` (``s_g`` the gene's s.d. over the training spots,
floored at 0.05) by patching ``storm_st.train._head.expression_loss``; ``plain`` is the package as it is::

    python scripts/experiment14_standardised_loss.py N_GENES SEED {scaled,plain}

Not adopted (see the entry); kept so that its numbers can be reproduced.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

import storm_st as st
import storm_st.train._head as H
from storm_st.models._heads import expression_loss
from storm_st.tl._expression import _targets

ROOT = Path(__file__).resolve().parents[1]
n_genes, seed, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
train = [st.datasets.her2st(s) for s in ["C2", "C3"]]
val = st.datasets.her2st("C4")
genes50 = st.pp.select_hvgs(train, 50)
genes = st.pp.select_hvgs(train, n_genes)
ys, ms = zip(*(_targets(a, genes, None) for a in train), strict=True)
Y, M = np.concatenate(ys), np.concatenate(ms)
mu = (Y * M).sum(0) / np.maximum(M.sum(0), 1)
sd = np.sqrt((((Y - mu) ** 2) * M).sum(0) / np.maximum(M.sum(0), 1))
SCALE = torch.as_tensor(np.maximum(sd, 0.05), dtype=torch.float32)
print("sd quantiles", np.quantile(sd, [0, 0.1, 0.5, 0.9, 1]).round(3), flush=True)


def scaled_loss(pred, target, mask=None, l1=1.0, l2=1.0):
    return expression_loss(pred / SCALE, target / SCALE, mask, l1, l2)


if mode == "scaled":
    H.expression_loss = scaled_loss
base = st.load_model(ROOT / "runs" / "val_supinit_lowlr" / "model")
t0 = time.time()
m = st.tl.fit_expression_head(train, base, genes=genes, seed=seed, head_input="centre", encoder_epochs=10, show_progress=False)
v = val.copy()
out = st.tl.impute_expression(v, m, genes=genes50, key_added="virtual", show_progress=False)
r = st.tl.expression_pcc(v, out, genes=genes50)
print(f"RESULT mode={mode} head_genes={n_genes} seed={seed}: median PCC {np.nanmedian(r):.4f} ({time.time()-t0:.0f} s)", flush=True)
