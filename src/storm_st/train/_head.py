"""Fitting the expression head on frozen STORM embeddings (eq. 4 of the paper)."""

from __future__ import annotations

import numpy as np
import torch

from storm_st.models import StormModel
from storm_st.models._heads import expression_loss

from ._pretrain import cosine_with_warmup

#: which outputs of a window the encoder-tuning loss reads (``tune_encoder_with_head(targets_from=...)``)
ENCODER_TARGETS = ("centre", "window")


def check_context_dropout(context_dropout) -> None:
    """Raise a ``ValueError`` unless ``context_dropout`` is a number in ``[0, 1)``."""
    if isinstance(context_dropout, bool) or not (isinstance(context_dropout, int | float) and 0.0 <= context_dropout < 1.0):
        raise ValueError(f"context_dropout must be a number in [0, 1) (0 = whole windows), got {context_dropout!r}.")


def check_encoder_targets(targets, name: str = "targets_from") -> None:
    """Raise a ``ValueError`` unless ``targets`` is one of :data:`ENCODER_TARGETS` (``name``: the argument's name)."""
    if targets not in ENCODER_TARGETS:
        raise ValueError(f"{name} must be one of {ENCODER_TARGETS}, got {targets!r}.")


def _adamw_cosine(params, lr: float, weight_decay: float, total: int):
    """AdamW with linear warm-up over 5 % of ``total`` steps, then cosine decay (the head's schedule)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, max(1, total // 20), total))
    return opt, sched


def _step(opt, sched, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


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
    head_input: str | None = None,
) -> list[float]:
    """Train a fresh expression head of ``model`` on ``(embeddings, targets)``; the encoder is untouched.

    Parameters
    ----------
    model
        Model whose head is replaced (in place).
    embeddings
        ``(N, d)`` what the head reads (``StormModel.head_features``: centre-spot embeddings, with the
        spot tokens beside them when ``head_input`` is ``"centre+spot"``).
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
    head_input
        ``config.head_input`` of the new head (default: the model's).

    Returns
    -------
    Mean training loss per epoch.
    """
    torch.manual_seed(seed)
    model.set_head(list(genes), head_input=head_input)
    head = model.head.to(device)
    if head[0].normalized_shape[0] != embeddings.shape[1]:
        raise ValueError(
            f"The head reads {head[0].normalized_shape[0]}-d inputs (head_input={model.config.head_input!r}) but the "
            f"embeddings are {embeddings.shape[1]}-d."
        )
    head.train()
    X = torch.as_tensor(embeddings, dtype=torch.float32)
    Y = torch.as_tensor(targets, dtype=torch.float32)
    M = torch.ones_like(Y, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    with torch.no_grad():  # start from the per-gene training mean, the trivial predictor
        mean = (Y * M).sum(0) / M.sum(0).clamp_min(1)
        head[-1].bias.copy_(mean.to(head[-1].bias))
    n = len(X)
    steps_per_epoch = max(1, int(np.ceil(n / batch_size)))
    total = steps_per_epoch * epochs
    opt, sched = _adamw_cosine(head.parameters(), lr, weight_decay, total)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for s in range(0, n, batch_size):
            b = perm[s : s + batch_size]
            pred = head(X[b].to(device))
            loss = expression_loss(pred, Y[b].to(device), M[b].to(device), l1, l2)
            tot += _step(opt, sched, loss) * len(b)
        history.append(tot / n)
    head.eval()
    return history


def encoder_params(model: StormModel) -> list[torch.nn.Parameter]:
    """The spatial encoder's parameters that read H&E windows: blocks, final norm, H&E modality embedding."""
    return [*model.blocks.parameters(), *model.norm.parameters(), model.modality_embed["he"]]


def interpolate_weights(model: torch.nn.Module, before: dict[str, torch.Tensor], weight: float) -> None:
    """Set every floating-point entry of ``model``'s state to ``(1 - weight) * before + weight * now``, in place.

    ``before`` is a copy of the state taken earlier in the same model's training (same keys and shapes); entries that
    did not change since are left as they are. With ``weight`` 1 nothing changes, with 0 the model returns to ``before``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}.")
    state = model.state_dict()
    if set(state) != set(before):
        raise ValueError("before must be a state of the same model (its keys differ).")
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point() and not torch.equal(v, before[k].to(v.device)):
                v.copy_(before[k].to(v.device, v.dtype).lerp(v, weight))


def tune_encoder_with_head(
    model: StormModel,
    tokens: list[np.ndarray],
    windows: list[tuple[np.ndarray, np.ndarray]],
    targets: list[np.ndarray],
    masks: list[np.ndarray],
    *,
    epochs: int = 10,
    lr: float = 5e-4,
    encoder_lr: float = 1e-4,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    l1: float = 1.0,
    l2: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    targets_from: str = "centre",
    context_dropout: float = 0.0,
) -> list[float]:
    """Train the spatial encoder together with the head on H&E -> expression, the backbone frozen.

    The backbone's spot tokens are computed once (``tokens``: one ``(n, h)`` table per slide and
    flip / rotation); every step takes ``batch_size`` windows of one table, runs the spatial encoder
    from H&E alone and back-propagates the head's eq. 4 loss into the head and the spatial encoder
    (:func:`encoder_params`). Cheap -- no image passes through the backbone -- so the encoder can learn
    how much of a spot's expression its neighbours tell, which masked pretraining does not ask of it.
    The head must already exist (see :func:`fit_head`, whose fit it continues from).

    Parameters
    ----------
    model
        Model with a head; trained in place.
    tokens
        H&E token tables ``(n, h)``, one per slide and augmentation.
    windows
        ``(neighbors, rel_pos)`` of the slide of each table (:class:`~storm_st.data.PreparedSlide`).
    targets, masks
        ``(n, G)`` log-normalised expression and measured-entry masks of the slide of each table.
    epochs
        Passes over all tables.
    lr, encoder_lr, weight_decay, batch_size
        AdamW with linear warm-up (5 % of steps) and cosine decay; the head gets ``lr``, the spatial
        encoder ``encoder_lr``.
    l1, l2
        Loss weights of eq. 4.
    seed
        Seed of the shuffling.
    device
        Torch device.
    targets_from
        Which outputs of a window the loss reads: ``"centre"`` (the centre spot's, as the head reads at
        prediction time) or ``"window"`` (every spot of the window predicts its own expression, from
        whatever part of its neighbourhood the window holds; the loss is the mean over those spots).
    context_dropout
        Probability with which each neighbour of a training window (never its centre) is dropped from it for that
        step, as a spot beyond a tissue edge is; ``0`` (default) keeps every window whole. Predictions always read
        whole windows.

    Returns
    -------
    Mean training loss per epoch.
    """
    check_encoder_targets(targets_from)
    check_context_dropout(context_dropout)
    if model.head is None:
        raise ValueError("tune_encoder_with_head needs a model with a head (fit_head first).")
    if model.config.head_input == "spot":
        raise ValueError(
            "This head reads the spot tokens alone (head_input='spot'); the spatial encoder does not reach it, so "
            "there is nothing to tune: use head_input='centre' or 'centre+spot', or encoder_epochs=0."
        )
    if not (len(tokens) == len(windows) == len(targets) == len(masks)):
        raise ValueError("tokens, windows, targets and masks must have one entry per token table.")
    model.to(device).train()
    tabs = [torch.as_tensor(t, dtype=torch.float32, device=device) for t in tokens]
    wins = [(torch.as_tensor(nb, device=device), torch.as_tensor(rp, device=device)) for nb, rp in windows]
    ys = [torch.as_tensor(y, dtype=torch.float32) for y in targets]
    ms = [torch.as_tensor(m, dtype=torch.bool) for m in masks]
    total = epochs * sum(int(np.ceil(len(t) / batch_size)) for t in tabs)
    groups = [{"params": encoder_params(model), "lr": encoder_lr}, {"params": model.head.parameters(), "lr": lr}]
    opt, sched = _adamw_cosine(groups, lr, weight_decay, total)
    gen = torch.Generator().manual_seed(seed)
    n_all = sum(len(t) for t in tabs)
    history = []
    for _ in range(epochs):
        tot = 0.0
        for i in torch.randperm(len(tabs), generator=gen).tolist():
            tab, (nb, rp) = tabs[i], wins[i]
            avail = {"he": torch.ones(len(tab), dtype=torch.bool, device=device)}
            for b in torch.randperm(len(tab), generator=gen).split(batch_size):
                bd = b.to(device)
                win = nb[bd]
                if context_dropout > 0:  # drop neighbours (never the centre, column 0) as at a tissue edge
                    drop = torch.rand(win.shape, generator=gen) < context_dropout
                    drop[:, 0] = False
                    win = win.masked_fill(drop.to(device), -1)
                # H&E alone: the output tokens are the window's positions, column 0 the centre (the spot itself)
                out = model.spatial_encode(model.build_tokens({"he": tab}, avail, win, rp[bd]))
                keep = win >= 0
                if targets_from == "centre":
                    keep[:, 1:] = False
                rows = win[keep]
                pred = model.predict_expression(model.head_features(out[keep], tab[rows]))
                rows = rows.cpu()
                loss = expression_loss(pred, ys[i][rows].to(device), ms[i][rows].to(device), l1, l2)
                tot += _step(opt, sched, loss) * len(b)
        history.append(tot / n_all)
    model.eval()
    return history


def crop_windows(neighbors: np.ndarray, rel_pos: np.ndarray, n_spots: int, rng: np.random.Generator):
    """A spatially contiguous crop of about ``n_spots`` spots of one slide, with its windows cut to the crop.

    Grows a region breadth-first over the window graph from a random spot; neighbours outside the
    region become padding (``-1``), as at a tissue edge.

    Returns
    -------
    ``(rows, neighbors, rel_pos)``: the crop's rows in the slide and its local window table.
    """
    from storm_st.data import contiguous_rows

    n = len(neighbors)
    rows = contiguous_rows(neighbors, n_spots, rng)
    local = np.full(n, -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    nb = neighbors[rows]
    nb = np.where(nb >= 0, local[np.maximum(nb, 0)], -1)
    return rows, nb, rel_pos[rows]


def finetune_with_head(
    model: StormModel,
    slides: list,
    targets: list[np.ndarray],
    masks: list[np.ndarray],
    *,
    epochs: int = 30,
    crop_spots: int = 64,
    lr: float = 5e-4,
    backbone_lr: float = 5e-4,
    weight_decay: float = 0.05,
    layer_decay: float = 0.9,
    l1: float = 1.0,
    l2: float = 1.0,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    jitter: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Supervised fine-tuning of the whole network (backbone, spatial encoder, head) on H&E -> expression.

    Every step takes a spatially contiguous crop of ``crop_spots`` spots of one slide (see
    :func:`crop_windows`): their patches go through the backbone once (augmented: random resized
    crop, flips / 90° rotations, colour jitter), every spot's window, cut to the crop, goes through
    the spatial encoder from H&E alone, and the head's eq. 4 loss over the crop is back-propagated.
    One image per supervised spot, as a spot-level CNN, with the neighbourhood context on top.
    The head must already exist (see :func:`fit_head`, whose per-gene-mean initialisation it keeps).

    Parameters
    ----------
    model
        Model with a head; trained in place.
    slides
        :class:`~storm_st.data.PreparedSlide` objects with cached patches.
    targets, masks
        Per slide ``(n, G)`` log-normalised expression and measured-entry masks.
    epochs
        Passes over the spots (each epoch visits every slide ``ceil(n / crop_spots)`` times).
    crop_spots
        Spots per step.
    lr, backbone_lr, weight_decay, layer_decay
        AdamW; the backbone gets ``backbone_lr`` with layer-wise decay.
    l1, l2
        Loss weights of eq. 4.
    crop_scale, jitter
        Augmentation.
    seed
        Seed.
    device
        Torch device.

    Returns
    -------
    Mean loss per epoch.
    """
    from ._augment import augment

    if model.head is None:
        raise ValueError("finetune_with_head needs a model with a head (fit_head first).")
    torch.manual_seed(seed)
    model.to(device).train()
    groups = model.backbone_param_groups(backbone_lr, weight_decay, layer_decay)
    bb = {id(p) for p in model.he_encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in bb and p.requires_grad]
    groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay})
    opt = torch.optim.AdamW(groups, lr=lr)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    per_epoch = [i for i, s in enumerate(slides) for _ in range(int(np.ceil(s.n / crop_spots)))]
    total = epochs * len(per_epoch)
    history = []
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        tot, n = 0.0, 0
        for i in rng.permutation(per_epoch):
            s = slides[i]
            f = cosine_with_warmup(step, max(1, total // 20), total)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            rows, nb, rp = crop_windows(s.neighbors, s.rel_pos, crop_spots, rng)
            x = torch.from_numpy(s.patches[rows]).permute(0, 3, 1, 2).to(device)
            x = augment(x, s.patches.shape[1], crop_scale=crop_scale, jitter=jitter)
            _, tok = model.encode_he(x)
            avail = {"he": torch.ones(len(rows), dtype=torch.bool, device=device)}
            emb = model({"he": tok}, avail, torch.from_numpy(nb).to(device), torch.from_numpy(rp).to(device))
            pred = model.predict_expression(model.head_features(emb, tok))
            y = torch.from_numpy(targets[i][rows]).to(device)
            m = torch.from_numpy(masks[i][rows]).to(device)
            loss = expression_loss(pred, y, m, l1, l2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += loss.item() * len(rows)
            n += len(rows)
        history.append(tot / n)
    model.eval()
    return history
