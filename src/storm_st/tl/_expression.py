"""Virtual expression from H&E: fitting the expression head, and imputing with it."""

from __future__ import annotations

import copy as _copy
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_st._constants import Keys
from storm_st._utils import check_batch_size, gene_pcc, get_adata, resolve_device

from ._common import encode_adata, model_hash, resolve_model

if TYPE_CHECKING:
    from anndata import AnnData

    from storm_st.models import StormModel


def _targets(adata: AnnData, genes: list[str], layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    from storm_st.pp import align_genes, expression_input

    al = align_genes(adata, genes)
    y = expression_input(adata, al, layer=layer)
    mask = np.broadcast_to(al.present, y.shape).copy()
    return y, mask


def fit_expression_head(
    adatas: AnnData | list[AnnData],
    model: StormModel | str | None = None,
    *,
    genes: list[str] | None = None,
    n_top_genes: int = 500,
    epochs: int = 10,
    lr: float = 5e-4,
    batch_size: int = 64,
    l1: float = 1.0,
    l2: float = 1.0,
    augment: bool = True,
    library_key: str | None = None,
    layer: str | None = None,
    device: str | None = None,
    seed: int = 0,
    finetune_epochs: int = 0,
    head_input: str | None = None,
    encoder_epochs: int = 0,
    encoder_lr: float = 1e-4,
    encoder_targets: str = "centre",
    context_dropout: float = 0.0,
    encoder_mix: float = 1.0,
    smooth_targets: float | None = None,
    show_progress: bool = True,
) -> StormModel:
    """Fit STORM's expression head on paired H&E + ST slides (the encoder frozen, unless asked otherwise).

    Each training spot is embedded from H&E alone (its 5 x 5 window), as at prediction time, and an
    MLP head is trained to predict library-size-normalised log expression with the loss of eq. 4,
    ``λ1·|y − ŷ| + λ2·(y − ŷ)²`` (AdamW, lr 5e-4, 10 epochs, cosine decay, as in the paper).

    Parameters
    ----------
    adatas
        One or several slides with an H&E image and raw counts.
    model
        Starting model (default: the embedded one); it is not modified.
    genes
        Genes to predict; default the ``n_top_genes`` most variable genes of ``adatas``.
    n_top_genes
        Number of highly variable genes when ``genes`` is not given.
    epochs, lr, batch_size
        Optimisation.
    l1, l2
        Loss weights λ1, λ2.
    augment
        Also train on the embeddings of the 8 flips / rotations of every patch (8x the data).
    library_key
        ``obs`` column naming slides inside one AnnData.
    layer
        Layer of raw counts.
    device
        Torch device; default a GPU when available.
    seed
        Random seed.
    finetune_epochs
        After fitting the head on the frozen encoder (as in the paper), fine-tune the whole network
        (backbone, spatial encoder, head) for this many passes over the slides with augmentation
        (0 = off). Useful for small models pretrained on few slides.
    head_input
        What the head reads: ``"centre"`` (the spatial encoder's output for the centre spot, as in the
        paper), ``"centre+spot"`` (that output next to the spot's own H&E token, a skip connection
        around the spatial encoder) or ``"spot"`` (the spot's own H&E token alone, no spatial context);
        default the model's ``config.head_input``.
    encoder_epochs
        After fitting the head on the frozen encoder, train the spatial encoder together with the head
        for this many passes over the (augmented) training spots, the backbone frozen: the spot tokens
        are computed once, so no image passes through the backbone again (10 epochs on ~550 spots: about
        4 min on 2 CPU cores, against 1 min for the head alone; 0 = off, the paper's frozen encoder). It lets the encoder learn what a spot's neighbours say about its expression, which
        masked pretraining does not ask of it. Changes every H&E embedding of the returned model (the
        expression-only path keeps its gene FFN experts but shares attention with H&E). Every tuning an encoder
        has had is listed in ``model.extra['encoder_tuning']``; tuning one that already was (such as the
        default model's, tuned on HER2ST C2-C4) warns, since it starts from there.
    encoder_lr
        Learning rate of the spatial encoder in that stage (the head keeps ``lr``). On validation sections of
        HER2ST patient C, 3e-5 instead of 1e-4 scored higher on the hardest held-out section and lower on
        the two others (design experiments 37-38 in :doc:`/pretraining`); the default was kept.
    encoder_targets
        Which of a window's outputs that stage trains on: ``"centre"`` (the centre spot's, the output the
        head reads at prediction time) or ``"window"`` (every training spot in the window predicts its own
        expression through the same head, from the part of its neighbourhood the window holds: up to 25
        targets per window instead of one; design experiment 31 in :doc:`/pretraining`). Predictions
        always read the centre.
    context_dropout
        In that stage, drop each neighbour of a training window (never its centre) with this probability at every
        step, as a spot beyond a tissue edge is dropped; ``0`` (default) trains on whole windows. Predictions always
        read whole windows.
    encoder_mix
        After that stage, interpolate every weight it trained (spatial encoder and head) between its value before
        the stage (the head fitted on the frozen encoder) and after it: ``(1 - encoder_mix) * before + encoder_mix *
        after`` -- a weight-space ensemble of the frozen-encoder and the tuned model (WiSE-FT, Wortsman et al.,
        CVPR 2022). ``1`` (default) keeps the tuned weights, ``0`` returns the frozen-encoder fit. No extra weights
        and no extra cost at prediction time; without ``encoder_epochs`` there is nothing to interpolate. On the
        validation sections of HER2ST patient C, 0.5 (and the frozen encoder, 0) scored higher than 1 on the hardest
        held-out section and lower on another (design experiments 44-45 in :doc:`/pretraining`); the default was kept.
    smooth_targets
        Train on neighbour-smoothed expression, ``(1 - smooth_targets) * own + smooth_targets * mean over the
        immediate neighbours`` (the operator of :func:`impute_expression`'s ``smooth``, within 1.6 lattice
        pitches, per slide), in ``[0, 1]``; 0 trains on each spot's own measured expression. It damps the count
        noise of single spots in the targets; predictions are not smoothed. Default (``None``): 0.25 on Visium
        and legacy-ST slides (chosen on validation, design experiment 15 in :doc:`/pretraining`), 0 on
        Visium HD bins and cell-level platforms, where there is no evidence for it and neighbours are other cells.
    show_progress
        Progress bar while embedding.

    Returns
    -------
    A copy of the model carrying the new head (``model.config.head_genes`` lists its genes).
    """
    from storm_st._inference import D4
    from storm_st.pp import select_hvgs
    from storm_st.train._head import check_context_dropout, check_encoder_targets, fit_head

    adatas = [adatas] if not isinstance(adatas, list | tuple) else list(adatas)
    adatas = [get_adata(a) for a in adatas]
    if not adatas:
        raise ValueError("No training slides given.")
    base = resolve_model(model)
    if genes is None:
        genes = select_hvgs(adatas, n_top_genes)
    genes = [str(g).upper() for g in genes]
    if len(genes) == 0:
        raise ValueError("genes is empty: give at least one gene to predict.")
    embs, ys, ms = [], [], []
    transforms = D4 if augment else [(0, False)]
    from storm_st.models._config import check_head_input

    head_input = check_head_input(head_input or base.config.head_input)  # before any encoding
    check_batch_size(batch_size)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 (passes of the head over the training spots), got {epochs}.")
    if not (lr > 0 and encoder_lr > 0):
        raise ValueError(f"lr and encoder_lr must be positive learning rates, got {lr} and {encoder_lr}.")
    if encoder_epochs < 0 or finetune_epochs < 0:
        raise ValueError(f"encoder_epochs and finetune_epochs must be >= 0, got {encoder_epochs} and {finetune_epochs}.")
    if encoder_epochs > 0 and head_input == "spot":
        raise ValueError(
            "encoder_epochs > 0 trains the spatial encoder, but head_input='spot' reads the spot tokens alone and "
            "never the encoder: use head_input='centre' or 'centre+spot', or encoder_epochs=0."
        )
    check_encoder_targets(encoder_targets, "encoder_targets")
    check_context_dropout(context_dropout)
    _blend_weight(encoder_mix, "encoder_mix", "1 = the tuned weights, 0 = the weights before tuning")
    if encoder_mix != 1.0 and encoder_epochs == 0:
        raise ValueError(
            f"encoder_mix={encoder_mix} interpolates the weights of the encoder-tuning stage, but encoder_epochs=0 "
            "skips that stage: give encoder_epochs > 0, or leave encoder_mix=1."
        )
    if smooth_targets is not None:
        _blend_weight(smooth_targets, "smooth_targets", "0 = own expression; None = platform default")
    prior_tuning = _encoder_tuning(base)
    if (encoder_epochs > 0 or finetune_epochs > 0) and prior_tuning:
        last = prior_tuning[-1]
        warnings.warn(
            f"This model's spatial encoder was already tuned with an expression head ({last.get('epochs')} epochs on "
            f"{last.get('n_spots')} spots, {last.get('n_genes')} genes); encoder_epochs / finetune_epochs tune it again "
            "from there. On the slides it was tuned on, that overfits (benchmarks: the default re-tuned on C2-C4 drops "
            "from 0.209 to 0.165 median r on held-out C6); encoder_epochs=0 and finetune_epochs=0 fit a new head on the encoder as it is.",
            UserWarning,
            stacklevel=2,
        )
    from storm_st._inference import encode_slide
    from storm_st.data import prepare_slides

    dev = resolve_device(device)
    base = base.to(dev).eval()
    prepared = []  # (slides, targets, masks) per AnnData, reused by the fine-tuning stage
    target_smoothing: list[float] = []  # weight used on each slide
    tuning: dict[str, list] = {"tokens": [], "windows": [], "y": [], "m": []}  # per slide and transform
    cache = finetune_epochs > 0 or None  # each slide's own patch size
    for a in adatas:
        if a.n_vars == 0:
            raise ValueError("A training slide has no genes; fit_expression_head needs measured expression.")
        y, m = _targets(a, genes, layer)
        y, weights = _smooth_targets(a, y, smooth_targets, library_key)
        target_smoothing.extend(weights)
        slides = prepare_slides(
            a, base.config, use_he=True, use_gene=False, library_key=library_key, cache_patches=cache
        )
        prepared.append((slides, y, m))
        width = base.head_in_dim(head_input)
        for t in transforms:
            e = np.zeros((a.n_obs, width), dtype=np.float32)
            for s in slides:
                enc = encode_slide(base, s, use_he=True, use_gene=False, device=dev, d4=t)
                e[s.obs_indices] = base.head_features(enc.embedding, enc.spot_token, head_input)
                if encoder_epochs > 0:
                    tuning["tokens"].append(enc.spot_token)  # H&E alone: the H&E token table
                    tuning["windows"].append((s.neighbors, s.rel_pos))
                    tuning["y"].append(y[s.obs_indices])
                    tuning["m"].append(m[s.obs_indices])
            embs.append(e)
            ys.append(y)
            ms.append(m)
    model_out = _copy.deepcopy(base).cpu()
    hist = fit_head(
        model_out, np.concatenate(embs), np.concatenate(ys), np.concatenate(ms), genes=genes, epochs=epochs, lr=lr,
        batch_size=batch_size, l1=l1, l2=l2, seed=seed, device=dev, head_input=head_input,
    )
    enc_hist: list[float] = []
    if encoder_epochs > 0:
        from storm_st.train._head import interpolate_weights, tune_encoder_with_head

        mix = encoder_mix != 1.0
        before = {k: v.detach().clone() for k, v in model_out.state_dict().items()} if mix else None
        enc_hist = tune_encoder_with_head(
            model_out, tuning["tokens"], tuning["windows"], tuning["y"], tuning["m"], epochs=encoder_epochs, lr=lr,
            encoder_lr=encoder_lr, batch_size=batch_size, l1=l1, l2=l2, seed=seed, device=dev,
            targets_from=encoder_targets, context_dropout=context_dropout,
        )
        if mix:
            interpolate_weights(model_out, before, encoder_mix)
            del before
    ft_hist: list[float] = []
    if finetune_epochs > 0:
        from storm_st.train._head import finetune_with_head

        ft_slides, ft_y, ft_m = [], [], []
        for slides, y, m in prepared:
            for s in slides:
                ft_slides.append(s)
                ft_y.append(y[s.obs_indices])
                ft_m.append(m[s.obs_indices])
        ft_hist = finetune_with_head(model_out, ft_slides, ft_y, ft_m, epochs=finetune_epochs, seed=seed, device=dev)
    model_out.cpu().eval()
    model_out.extra = dict(getattr(base, "extra", {}) or {})
    model_out.extra["head"] = {
        "n_genes": len(genes),
        "head_input": head_input,
        "n_spots": int(sum(a.n_obs for a in adatas)),
        "epochs": epochs,
        "lr": lr,
        "augment": augment,
        "smooth_targets": max(target_smoothing, default=0.0),
        "smooth_targets_per_slide": target_smoothing,
        "loss": [round(h, 5) for h in hist],
        "encoder_epochs": encoder_epochs,
        "encoder_lr": encoder_lr,
        "encoder_targets": encoder_targets,
        "context_dropout": context_dropout,
        "encoder_mix": encoder_mix,
        "encoder_loss": [round(h, 5) for h in enc_hist],
        "finetune_epochs": finetune_epochs,
        "finetune_loss": [round(h, 5) for h in ft_hist],
    }
    # every tuning the spatial encoder has had, oldest first (a new head does not erase the encoder's history)
    this = {"epochs": encoder_epochs, "lr": encoder_lr, "targets": encoder_targets, "mix": encoder_mix,
            "n_spots": int(sum(a.n_obs for a in adatas)), "n_genes": len(genes)}
    model_out.extra["encoder_tuning"] = prior_tuning + ([this] if encoder_epochs > 0 else [])
    if finetune_epochs > 0:
        model_out.extra["encoder_tuning"].append(
            {"epochs": finetune_epochs, "n_spots": this["n_spots"], "n_genes": this["n_genes"], "whole_network": True}
        )
    model_out.name = getattr(base, "name", base.config.name) + "+head"
    model_out.checkpoint_sha256 = None
    return model_out


def _blend_weight(value: Any, name: str, meaning: str) -> float:
    """``value`` as a float in ``[0, 1]`` (a blending weight), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1] ({meaning}), got {value!r}.")
    return float(value)


#: default weight of ``fit_expression_head(smooth_targets=None)`` on the platforms below (design experiment 15)
TARGET_SMOOTHING = 0.25
TARGET_SMOOTHING_PLATFORMS = frozenset({"visium", "legacy_st"})


def _smooth_targets(
    adata: AnnData, y: np.ndarray, weight: float | None, library_key: str | None
) -> tuple[np.ndarray, list[float]]:
    """Blend each spot's targets with its immediate neighbours' mean, per slide; returns the weight used per slide."""
    from storm_st.io._slide import slide_views
    from storm_st.pp._neighbors import ring_mean_operator

    views = slide_views(adata, library_key=library_key)
    if weight is None:
        weights = [TARGET_SMOOTHING if v.platform in TARGET_SMOOTHING_PLATFORMS else 0.0 for v in views]
    else:
        weights = [float(weight)] * len(views)
    if not any(weights):
        return y, weights
    w = np.zeros((adata.n_obs, 1), dtype=np.float32)
    for v, wv in zip(views, weights, strict=True):
        w[v.obs_indices] = wv
    neighbours = np.asarray(ring_mean_operator(adata, library_key=library_key) @ y)
    return ((1.0 - w) * y + w * neighbours).astype(np.float32), weights


def _encoder_tuning(model: StormModel) -> list[dict]:
    """The supervised tunings the model's encoder has had (``extra['encoder_tuning']``, or read from the head's record)."""
    extra = getattr(model, "extra", None) or {}
    if "encoder_tuning" in extra:
        return [dict(t) for t in extra["encoder_tuning"]]
    head = extra.get("head") or {}
    out = []
    if head.get("encoder_epochs", 0) > 0:  # checkpoints written before the list existed
        out.append({"epochs": head["encoder_epochs"], "lr": head.get("encoder_lr"), "n_spots": head.get("n_spots"),
                    "n_genes": head.get("n_genes")})
    if head.get("finetune_epochs", 0) > 0:
        out.append({"epochs": head["finetune_epochs"], "n_spots": head.get("n_spots"), "n_genes": head.get("n_genes"),
                    "whole_network": True})
    return out


def impute_expression(
    adata: AnnData | Any,
    model: StormModel | str | None = None,
    *,
    genes: list[str] | None = None,
    key_added: str = Keys.VIRTUAL,
    library_key: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    tta: bool = True,
    smooth: float = 0.0,
    table_key: str | None = None,
    show_progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Predict expression from H&E alone (virtual ST) with the model's expression head.

    The input needs only spot coordinates and an image (e.g. from :func:`storm_st.io.read_wsi`);
    counts, if present, are ignored.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` and an H&E image, or a SpatialData object (``table_key``).
    model
        Model with an expression head (default: the embedded model, whose head was trained on the
        HER2ST training sections).
    genes
        Subset of the head's genes to return (default all).
    key_added
        Where the prediction goes (see Returns).
    library_key
        ``obs`` column naming slides.
    batch_size, device
        Inference settings.
    tta
        Average over the 8 flips / rotations of each patch.
    smooth
        Blend each spot's prediction with the mean prediction of its immediate neighbours on the same slide
        (within 1.6 lattice pitches: 8 on a square grid, 6 on a hexagonal one):
        ``(1 - smooth) * own + smooth * neighbours``, in ``[0, 1]``; 0 (default) leaves the head's output
        as is. A spatial prior that trades resolution for noise: on spot platforms it can raise gene-wise
        correlation, on cell-level platforms it blurs cell types. See the benchmarks for what it gave.
    table_key
        Table of a SpatialData object.
    show_progress
        Progress bar.
    copy
        Return a modified copy instead of writing in place (only when a layer is written).

    Returns
    -------
    Library-size-normalised log expression (log1p of counts per 10k) predicted for each spot:

    - when every gene of ``adata.var_names`` is predicted (the object carries the model's genes), it
      is written to ``layers[key_added]`` and the function returns ``None`` (or the copy);
    - otherwise (e.g. H&E-only input, or a different gene panel) ``adata`` is left untouched and a
      **new AnnData** of virtual expression is returned, aligned to the spots (same ``obs_names``,
      ``obs``, ``obsm['spatial']`` and ``uns['spatial']``), with ``var_names`` = the predicted genes.

    Either way ``uns[key_added]`` holds the provenance: model and checkpoint hash, TTA, smoothing, stain
    normalisation and each slide's patch geometry as read (``patches``: field in µm, side in px, µm/px).
    """
    import anndata as ad_mod

    from storm_st import __version__

    ad = get_adata(adata, table_key)
    smooth = _blend_weight(smooth, "smooth", "0 = no smoothing")
    model = resolve_model(model)
    if model.head is None:
        raise ValueError(
            "The model has no expression head; fit one first: model = storm_st.tl.fit_expression_head(slides, model)."
        )
    head_genes = list(model.config.head_genes)
    if genes is not None:
        wanted = [str(g).upper() for g in genes]
        missing = [g for g in wanted if g not in set(head_genes)]
        if missing:
            raise ValueError(
                f"{len(missing)} requested genes are not predicted by this model's head (e.g. {missing[:5]}); "
                f"it predicts {len(head_genes)} genes, see model.config.head_genes."
            )
        cols = [head_genes.index(g) for g in wanted]
    else:
        wanted, cols = head_genes, list(range(len(head_genes)))
    out = encode_adata(
        ad, model, use_he=True, use_gene=False, library_key=library_key, layer=None, batch_size=batch_size,
        device=device, tta=tta, show_progress=show_progress,
    )
    import torch

    # predictions written block by block into one array of the genes asked for (no full-size temporaries)
    pred = np.empty((len(out["embedding"]), len(cols)), dtype=np.float32)
    with torch.no_grad():
        dev = next(model.parameters()).device
        emb = torch.from_numpy(model.head_features(out["embedding"], out.get("spot_token")))
        idx = torch.as_tensor(cols, device=dev)
        for s in range(0, len(emb), 4096):
            block = model.predict_expression(emb[s : s + 4096].to(dev)).float()
            pred[s : s + 4096] = block.index_select(1, idx).clamp_min(0).cpu().numpy()
    if smooth > 0:
        from storm_st.pp._neighbors import ring_mean_operator, smooth_with_neighbors

        pred = smooth_with_neighbors(pred, ring_mean_operator(ad, library_key=library_key), smooth)
    provenance = {
        "model": getattr(model, "name", model.config.name),
        "model_sha256": model_hash(model) or "",
        "n_genes": len(wanted),
        "tta": tta,
        "smooth": smooth,
        "stain_normalized": model.config.stain_reference is not None,
        "bn_stats": model.config.bn_stats,
        "patches": out["patches"],
        "units": "log1p(counts per 10k)",
        "version": __version__,
    }
    from storm_st.pp import gene_symbols

    if ad.n_vars > 0:
        sym = list(gene_symbols(ad))
        pos = {g: i for i, g in enumerate(wanted)}
        if all(g in pos for g in sym):
            order = [pos[g] for g in sym]
            layer = pred if order == list(range(len(wanted))) else pred[:, order]
            if copy:
                ad = ad.copy()
            ad.layers[key_added] = layer
            ad.uns[key_added] = provenance
            return ad if copy else None
    virtual = ad_mod.AnnData(
        X=pred,
        obs=ad.obs.copy(),
        var=pd.DataFrame(index=pd.Index(wanted, name="gene")),
    )
    if Keys.SPATIAL in ad.obsm:
        virtual.obsm[Keys.SPATIAL] = np.asarray(ad.obsm[Keys.SPATIAL]).copy()
    if Keys.SPATIAL in ad.uns:
        virtual.uns[Keys.SPATIAL] = ad.uns[Keys.SPATIAL]
    virtual.uns[key_added] = provenance
    return virtual


def expression_pcc(
    adata: AnnData | Any,
    virtual: AnnData | None = None,
    *,
    genes: list[str] | None = None,
    virtual_key: str = Keys.VIRTUAL,
    layer: str | None = None,
    table_key: str | None = None,
) -> pd.Series:
    """Gene-wise Pearson correlation between measured and virtual expression over the spots.

    Measured expression is library-size normalised and log-transformed (as the head's target);
    genes that are constant in either (undefined correlation) get ``NaN``.

    Parameters
    ----------
    adata
        Slide with measured raw counts (``X`` or ``layer``).
    virtual
        Output of :func:`impute_expression` when it returned a new AnnData; default
        ``adata.layers[virtual_key]``.
    genes
        Genes to score (default all predicted genes measured on the slide).
    virtual_key
        Layer holding the virtual expression when ``virtual`` is not given.
    layer
        Layer of raw counts.
    table_key
        Table of a SpatialData object.

    Returns
    -------
    PCC per gene (index = upper-case symbols), in the order of ``genes``.
    """
    from storm_st.pp import align_genes, expression_input, gene_symbols

    ad = get_adata(adata, table_key)
    if virtual is None:
        if virtual_key not in ad.layers:
            raise KeyError(
                f"No virtual expression: layers[{virtual_key!r}] is missing and no `virtual` AnnData was given. "
                "Run storm_st.tl.impute_expression first."
            )
        pred_names = list(gene_symbols(ad))
        pred = np.asarray(ad.layers[virtual_key])
    else:
        if virtual.n_obs != ad.n_obs or not np.array_equal(virtual.obs_names, ad.obs_names):
            raise ValueError("`virtual` is not aligned to adata's spots (different obs_names).")
        pred_names = [str(g).upper() for g in virtual.var_names]
        pred = virtual.X.toarray() if hasattr(virtual.X, "toarray") else np.asarray(virtual.X)
    pos = {g: i for i, g in enumerate(pred_names)}
    genes = [str(g).upper() for g in (genes if genes is not None else pred_names)]
    unknown = [g for g in genes if g not in pos]
    if unknown:
        raise ValueError(f"{len(unknown)} genes have no virtual expression (e.g. {unknown[:5]}).")
    al = align_genes(ad, genes)
    if al.n_matched < len(genes):
        genes = [g for g, p in zip(genes, al.present, strict=True) if p]
        al = align_genes(ad, genes)
    y = expression_input(ad, al, layer=layer)
    r = gene_pcc(y, pred[:, [pos[g] for g in genes]])
    return pd.Series(r, index=pd.Index(genes, name="gene"), name="pcc")
