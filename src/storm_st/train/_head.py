"""Fitting the expression head on frozen STORM embeddings (eq. 4 of the paper)."""

from __future__ import annotations

import numpy as np
import torch

from storm_st.models import StormModel
from storm_st.models._heads import expression_loss

from ._pretrain import cosine_with_warmup


def fit_head(
    model: StormModel,
    embeddings: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    genes: list[str],
    epochs: int = 10,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    l1: float = 1.0,
    l2: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Train a fresh expression head of ``model`` on ``(embeddings, targets)``; the encoder is untouched.

    Parameters
    ----------
    model
        Model whose head is replaced (in place).
    embeddings
        ``(N, h)`` centre-spot embeddings.
    targets
        ``(N, G)`` log-normalised expression.
    mask
        ``(N, G)`` bool, measured entries (default all).
    genes
        Names of the ``G`` target genes.
    epochs, lr, weight_decay, batch_size
        AdamW with linear warm-up (5 % of steps) and cosine decay, as in the paper (lr 5e-4, 10 epochs).
    l1, l2
        Weights of the absolute and squared errors (eq. 4).
    seed
        Seed of the initialisation and shuffling.
    device
        Torch device.

    Returns
    -------
    Mean training loss per epoch.
    """
    torch.manual_seed(seed)
    model.set_head(list(genes))
    head = model.head.to(device)
    head.train()
    X = torch.as_tensor(embeddings, dtype=torch.float32)
    Y = torch.as_tensor(targets, dtype=torch.float32)
    M = torch.ones_like(Y, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    n = len(X)
    steps_per_epoch = max(1, int(np.ceil(n / batch_size)))
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, max(1, total // 20), total))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for s in range(0, n, batch_size):
            b = perm[s : s + batch_size]
            pred = head(X[b].to(device))
            loss = expression_loss(pred, Y[b].to(device), M[b].to(device), l1, l2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(b)
        history.append(tot / n)
    head.eval()
    return history
