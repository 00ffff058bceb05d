"""ST-Net-like baseline: a small CNN trained from scratch on spot patches to regress log expression.

After He et al., Nat Biomed Eng 2020 (ST-Net: DenseNet-121 on HER2+ legacy-ST spots), scaled down to train
on a 2-core CPU: a 4-stage CNN on 112 px patches of a 154 µm field of view (1.38 µm/px), random flips and
90° rotations, MSE on log1p(CP10k) targets, AdamW with cosine decay. A baseline, not package code.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

STNET_FOV_UM = 154.56  # 112 px x 1.38 µm/px
STNET_SIZE = 112


class SmallCNN(nn.Module):
    def __init__(self, n_out: int, widths=(32, 64, 128, 256), dropout: float = 0.3):
        super().__init__()
        layers = [nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        c = widths[0]
        for w in widths[1:]:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, n_out))

    def forward(self, x):
        return self.head(self.features(x))


def split_patches(train, test) -> tuple[np.ndarray, list[np.ndarray]]:
    """The CNN's inputs: the training slides' spot patches stacked, and each test slide's (112 px of 154.56 µm)."""
    import storm_st as st

    def read(a):
        return st.pp.spot_patches(a, size=STNET_SIZE, fov_um=STNET_FOV_UM)

    return np.concatenate([read(a) for a in train]), [read(a) for a in test]


def _d4_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=g))
    if bool(torch.randint(0, 2, (1,), generator=g)):
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def train_predict(
    P_train: np.ndarray,
    Y_train: np.ndarray,
    P_tests: list[np.ndarray],
    *,
    epochs: int,
    time_budget_s: float | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[list[np.ndarray], dict]:
    """Train on ``(n, S, S, 3)`` uint8 patches and ``(n, G)`` targets; predict each array of ``P_tests``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(P_train).permute(0, 3, 1, 2).float() / 255.0
    mean = X.mean(dim=(0, 2, 3), keepdim=True)
    std = X.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    X = (X - mean) / std
    Y = torch.from_numpy(np.asarray(Y_train, dtype=np.float32))
    model = SmallCNN(Y.shape[1])
    with torch.no_grad():
        model.head[-1].bias.copy_(Y.mean(0))
        model.head[-1].weight.mul_(0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(X) / batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    t0 = time.perf_counter()
    losses = []
    done = 0
    for _ep in range(epochs):
        model.train()
        perm = torch.randperm(len(X), generator=g)
        tot = 0.0
        for s in range(0, len(X), batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < 2:
                continue
            xb = _d4_batch(X[idx], g)
            loss = nn.functional.mse_loss(model(xb), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        losses.append(round(tot / len(X), 5))
        done += 1
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
    train_s = time.perf_counter() - t0
    model.eval()
    preds = []
    with torch.no_grad():
        for P in P_tests:
            Xt = (torch.from_numpy(P).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            preds.append(torch.cat([model(Xt[s : s + 128]) for s in range(0, len(Xt), 128)]).numpy())
    info = {
        "epochs_planned": epochs,
        "epochs_done": done,
        "train_s": round(train_s, 1),
        "loss": losses,
        "params": int(sum(p.numel() for p in model.parameters())),
        "fov_um": STNET_FOV_UM,
        "patch_px": STNET_SIZE,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
    }
    return preds, info
