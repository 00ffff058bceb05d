"""Inference engine shared by ``tl`` and ``train``: spot tokens once per spot, then windows."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from storm_st.data import PreparedSlide
from storm_st.models import StormModel

#: the 8 symmetries of the square (rotations x flips), for augmentation / test-time averaging
D4 = [(k, f) for f in (False, True) for k in range(4)]


def _d4(patches: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.flip(patches, dims=(-1,)) if flip else patches
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


#: spots a slide's BatchNorm statistics are re-estimated on (``bn_stats="slide"``): all of them up to this many,
#: else a fixed random subset of this size
BN_STATS_SPOTS = 1024


def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def slide_bn_stats(
    model: StormModel, slide: PreparedSlide, *, batch_size: int, device: torch.device, d4: tuple[int, bool] = (0, False)
):
    """Inside the block, the H&E backbone's BatchNorm layers use statistics of ``slide``'s own patches (AdaBN).

    One pass in train mode over the slide's spot patches (every spot, or a fixed random :data:`BN_STATS_SPOTS` of them,
    in random batches), in the flip / rotation ``d4``, pools every BatchNorm layer's input over all patches and pixels
    into a per-channel mean and variance, which replace the running statistics; on leaving the block the model's own
    statistics and modes are restored. Weights are never changed.
    """
    if slide.n < 2:
        raise ValueError(
            f"bn_stats='slide' estimates BatchNorm statistics from a slide's own patches, but slide "
            f"{slide.library_id!r} has {slide.n} spot: use bn_stats='training' (storm_st.models.set_bn_stats) for it."
        )
    layers = batchnorm_layers(model.he_encoder)
    if not layers:  # a backbone without BatchNorm (a ViT): nothing to re-estimate, no extra pass
        yield
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.training) for m in layers]
    sums = [None] * len(layers)  # per layer: (count, sum, sum of squares) per channel, in float64

    def pool(i):
        def hook(mod, inp):
            x = inp[0].detach().double().transpose(0, 1).reshape(inp[0].shape[1], -1)
            acc = (x.shape[1], x.sum(1), (x * x).sum(1))
            sums[i] = acc if sums[i] is None else tuple(a + b for a, b in zip(sums[i], acc, strict=True))
        return hook

    hooks = [m.register_forward_pre_hook(pool(i)) for i, m in enumerate(layers)]
    try:
        # random batches (obs order is often raster order); nearly equal sizes, so never a lone patch, whose
        # 1 x 1 deepest feature map has no variance in train mode
        rows = np.random.default_rng(0).permutation(slide.n)[:BN_STATS_SPOTS]
        for m in layers:
            m.train()  # deeper layers see inputs normalised batch-wise, as in training
        with torch.no_grad():
            for chunk in np.array_split(rows, -(-len(rows) // batch_size)):
                p = torch.from_numpy(slide.read_patches(np.sort(chunk))).permute(0, 3, 1, 2)
                model.he_encoder(_d4(p.to(device), *d4))
        for h in hooks:
            h.remove()
        for m, (count, total, squares) in zip(layers, sums, strict=True):
            mean = total / count
            m.running_mean.copy_(mean)
            m.running_var.copy_((squares / count - mean * mean).clamp_min(0))
            m.eval()
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, (mean, var, nbt, training) in zip(layers, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(nbt)
            m.train(training)


@dataclass
class SlideEncoding:
    """Per-spot outputs of one slide.

    Attributes
    ----------
    embedding
        ``(n, h)`` centre-spot embeddings from the spatial encoder.
    he_features
        ``(n, C)`` H&E backbone features (or ``None``).
    gene_tokens
        ``(n, h)`` gene-encoder tokens (or ``None``).
    spot_token
        ``(n, h)`` each spot's own input token before the spatial encoder (mean over the modalities
        fed); with :attr:`embedding` what the expression head may read (``StormModel.head_features``).
    """

    embedding: np.ndarray
    he_features: np.ndarray | None
    gene_tokens: np.ndarray | None
    spot_token: np.ndarray | None = None


@torch.no_grad()
def encode_slide(
    model: StormModel,
    slide: PreparedSlide,
    *,
    use_he: bool,
    use_gene: bool,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    d4: tuple[int, bool] = (0, False),
    progress=None,
) -> SlideEncoding:
    """Encode every spot of ``slide``: the backbone runs once per spot, windows index the token table.

    Parameters
    ----------
    model
        STORM model (put in eval mode by the caller).
    slide
        Prepared slide.
    use_he, use_gene
        Modalities to feed.
    batch_size
        Spots per backbone / spatial-encoder batch.
    device
        Torch device.
    d4
        ``(rotations, flip)`` applied to every patch (for test-time augmentation).
    progress
        Optional callable ``progress(n_done)`` advanced per batch.
    """
    device = torch.device(device)
    tables: dict[str, torch.Tensor] = {}
    available: dict[str, torch.Tensor] = {}
    he_feats = gene_toks = None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    n = slide.n
    # outputs are written into arrays allocated once (no per-batch lists + concatenation): memory is the
    # outputs themselves plus one batch, whatever the slide size
    if use_he:
        he_table = he_feats = None
        bn = (
            slide_bn_stats(model, slide, batch_size=batch_size, device=device, d4=d4)
            if model.config.bn_stats == "slide" else nullcontext()
        )
        with bn:
            for s in range(0, n, batch_size):
                rows = np.arange(s, min(s + batch_size, n))
                p = torch.from_numpy(slide.read_patches(rows)).permute(0, 3, 1, 2).to(device)
                p = _d4(p, *d4)
                with autocast:
                    f, t = model.encode_he(p)
                if he_table is None:
                    he_table = torch.empty((n, t.shape[1]), dtype=torch.float32, device=device)
                    he_feats = np.empty((n, f.shape[1]), dtype=np.float32)
                he_table[s : s + len(rows)] = t.float()
                he_feats[s : s + len(rows)] = f.float().cpu().numpy()
                if progress is not None:
                    progress(len(rows) / (2 if use_gene else 1))
        tables["he"] = he_table
        available["he"] = torch.ones(n, dtype=torch.bool, device=device)
    if use_gene:
        gene_table = None
        present = torch.from_numpy(slide.present).to(device)
        for s in range(0, n, batch_size):
            e = torch.from_numpy(slide.expr[s : s + batch_size]).to(device)
            f = None if slide.gene_feats is None else torch.from_numpy(slide.gene_feats[s : s + batch_size]).to(device)
            t = model.encode_gene(e, present, f).float()
            if gene_table is None:
                gene_table = torch.empty((n, t.shape[1]), dtype=torch.float32, device=device)
            gene_table[s : s + len(t)] = t
            if progress is not None and use_he:
                progress(min(batch_size, n - s) / 2)
            elif progress is not None:
                progress(min(batch_size, n - s))
        tables["gene"] = gene_table
        available["gene"] = torch.ones(n, dtype=torch.bool, device=device)
        gene_toks = gene_table.cpu().numpy()
    emb = None
    nb = torch.from_numpy(slide.neighbors)
    rel = torch.from_numpy(slide.rel_pos)
    for s in range(0, n, batch_size):
        with autocast:
            e = model(tables, available, nb[s : s + batch_size].to(device), rel[s : s + batch_size].to(device))
        if emb is None:
            emb = np.empty((n, e.shape[1]), dtype=np.float32)
        emb[s : s + len(e)] = e.float().cpu().numpy()
    return SlideEncoding(emb, he_feats, gene_toks, model.spot_tokens(tables).float().cpu().numpy())
