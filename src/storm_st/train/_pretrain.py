"""Masked multimodal pretraining (Lightning) of the STORM network."""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from storm_st.data import SpotBatch
from storm_st.models import StormConfig, StormModel
from storm_st.models._heads import MaskedDecoder, expression_loss, gaussian_nll

from ._augment import augment


def sample_visible(valid: torch.Tensor, n_visible: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick ``n_visible`` random valid slots per row of ``valid`` ``(B, K)`` (all of them when fewer)."""
    scores = torch.rand(valid.shape, generator=generator, device="cpu").to(valid.device)
    scores = scores.masked_fill(~valid, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < n_visible) & valid


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float = 0.01) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class StormPretraining(L.LightningModule):
    """Lightning module for STORM's masked multimodal pretraining (eq. 3 of the paper).

    Per window, ``n_visible`` spots per modality stay visible and the others are reconstructed by
    modality-specific decoders (MLP + transformer blocks): the ST target is the log-normalised
    expression over the vocabulary under a Gaussian likelihood (genes absent from a slide masked
    out); the H&E target is the feature vector of a stop-gradient EMA copy of the H&E encoder
    (layer-normalised, as in data2vec), which cannot collapse because the ST loss anchors the
    backbone and the teacher lags the student. With probability ``p_he_only`` a window is an
    "H&E-only" window: all its H&E tokens are visible, no ST token is, and every ST token is
    reconstructed — this matches the H&E-only inference setting (virtual ST) exactly.

    Parameters
    ----------
    config
        Model configuration (dict form of :class:`~storm_st.models.StormConfig`).
    n_visible
        Visible spots per modality per window.
    p_he_only
        Fraction of H&E-only windows.
    lr, backbone_lr, weight_decay, layer_decay
        AdamW settings; the backbone uses ``backbone_lr`` with layer-wise decay.
    warmup_steps, max_steps
        Schedule (optimizer steps).
    ema_momentum
        Teacher EMA momentum.
    he_loss_weight, st_loss_weight
        Weights of the two reconstruction terms.
    st_loss
        ST reconstruction loss: ``"gaussian"`` (negative log-likelihood with a predicted per-gene variance,
        the default) or ``"l1l2"`` (eq. 4's ``|y - ŷ| + (y - ŷ)²``, every gene weighted equally, so
        noisy, variable genes cannot be down-weighted by a large predicted variance).
    he_to_st_weight
        Weight of an auxiliary loss on the H&E-only windows (0 = off): each H&E token's *encoder* output
        predicts its own spot's expression through a linear probe (discarded after pretraining), with the
        ST loss above. The masked decoders can mix neighbours themselves; this term asks the spatial
        encoder's per-spot outputs -- what the expression head reads -- to carry context-aware expression.
    crop_scale, jitter, stain_jitter
        H&E augmentation strengths: area fraction of the random resized crop, colour jitter, and haematoxylin /
        eosin strength jitter (``storm_st.train._augment.stain_jitter``; 0 = off).
    init_backbone
        Optional path of backbone weights (safetensors) to start from.
    seed
        Base seed of the per-step random streams (masking, H&E-only windows, augmentation, dropout):
        every micro-batch reseeds from ``(seed, global step, micro-batch)``, so a run resumed from a
        checkpoint draws exactly the numbers the uninterrupted run would have drawn.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        n_visible: int = 5,
        p_he_only: float = 0.5,
        lr: float = 1e-4,
        backbone_lr: float | None = None,
        weight_decay: float = 0.05,
        layer_decay: float = 0.7,
        warmup_steps: int = 100,
        max_steps: int = 2000,
        ema_momentum: float = 0.996,
        he_loss_weight: float = 1.0,
        st_loss_weight: float = 1.0,
        st_loss: str = "gaussian",
        he_to_st_weight: float = 0.0,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        jitter: float = 0.1,
        stain_jitter: float = 0.0,
        init_backbone: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if st_loss not in ("gaussian", "l1l2"):
            raise ValueError(f"st_loss must be 'gaussian' or 'l1l2', got {st_loss!r}.")
        self.save_hyperparameters()
        cfg = StormConfig.from_dict(config)
        self.model = StormModel(cfg)
        if init_backbone:
            from storm_st.models import load_backbone_weights

            load_backbone_weights(self.model, init_backbone)
        h = cfg.hidden_dim
        self.teacher = copy.deepcopy(self.model.he_encoder).requires_grad_(False)
        self.he_decoder = MaskedDecoder(h, cfg.decoder_dim, cfg.decoder_depth, self.model.he_encoder.out_dim)
        self.st_decoder = MaskedDecoder(h, cfg.decoder_dim, cfg.decoder_depth, 2 * max(len(cfg.gene_vocab), 1))
        self.st_probe = None
        if he_to_st_weight > 0:
            self.st_probe = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * max(len(cfg.gene_vocab), 1)))
        self._micro = 0  # micro-batches since the last optimizer step (gradient accumulation)

    def start_from(self, model: StormModel) -> None:
        """Continue pretraining from ``model``'s weights (``training.init_model``).

        Every encoder weight and the EMA teacher start from it; the masked decoders start fresh (a checkpoint does not
        keep them), and an expression head, which continued pretraining would leave behind its encoder, is not carried
        over.
        """
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"training.init_model: the checkpoint's weights do not fit the model this config builds ({e}). "
                "Pretrain with the checkpoint's own architecture and gene input."
            ) from e
        self.teacher.load_state_dict(self.model.he_encoder.state_dict())

    # ---------------------------------------------------------------- helpers
    def _tables(self, batch: SpotBatch, train: bool):
        cfg = self.model.config
        tables, available = {}, {}
        target = None
        if batch.patches is not None:
            x = batch.patches
            # the backbone's input side: image_size, or with patch_mpp each slide's own (as cached, config.patch_px)
            size = cfg.image_size if cfg.patch_mpp is None else x.shape[-1]
            if train:
                x = augment(
                    x, size, crop_scale=tuple(self.hparams.crop_scale), jitter=self.hparams.jitter,
                    stain=self.hparams.stain_jitter,
                )
            elif x.shape[-1] != size:
                x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
            _, tables["he"] = self.model.encode_he(x)
            available["he"] = batch.has_he
            with torch.no_grad():
                t_in = batch.patches
                if t_in.shape[-1] != size:
                    t_in = F.interpolate(t_in.float(), size=size, mode="bilinear", antialias=True)
                self.teacher.eval()
                target = F.layer_norm(self.teacher(t_in).float(), (self.model.he_encoder.out_dim,))
        if batch.expr is not None:
            tables["gene"] = self.model.encode_gene(batch.expr, batch.present, batch.gene_feats)
            available["gene"] = batch.has_gene
        return tables, available, target

    def _st_loss(self, mean, logvar, target, weight):
        if self.hparams.get("st_loss", "gaussian") == "l1l2":
            return expression_loss(mean, target, weight)
        return gaussian_nll(mean, logvar, target, weight)

    def compute_loss(self, batch: SpotBatch, train: bool = True) -> dict[str, torch.Tensor]:
        """Masked reconstruction losses of one batch."""
        tables, available, he_target = self._tables(batch, train)
        wi = batch.window_index
        idx = wi.clamp_min(0)
        B, K = wi.shape
        slot_ok = wi >= 0
        he_here = slot_ok & available["he"][idx] if "he" in tables else torch.zeros_like(slot_ok)
        st_here = slot_ok & available["gene"][idx] if "gene" in tables else torch.zeros_like(slot_ok)
        n_vis = self.hparams.n_visible
        he_vis = sample_visible(he_here, n_vis)
        st_vis = sample_visible(st_here, n_vis)
        he_only = None
        if "he" in tables and "gene" in tables and self.hparams.p_he_only > 0:
            he_only = (torch.rand(B, device=wi.device) < self.hparams.p_he_only)[:, None]
            he_vis = torch.where(he_only, he_here, he_vis)
            st_vis = st_vis & ~he_only
        visible = {"he": he_vis, "gene": st_vis}
        wt = self.model.build_tokens(tables, available, wi, batch.rel_pos, visible)
        enc = self.model.spatial_encode(wt)
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=wi.device)
        if "he" in tables:
            q = he_here & ~he_vis
            if q.any():
                pred = self.he_decoder(enc, wt, batch.rel_pos, q)
                tgt = he_target[idx]
                err = 0.5 * ((pred.float() - tgt) ** 2).mean(-1)
                out["loss_he"] = (err * q).sum() / q.sum()
                total = total + self.hparams.he_loss_weight * out["loss_he"]
        if "gene" in tables:
            q = st_here & ~st_vis
            if q.any():
                pred = self.st_decoder(enc, wt, batch.rel_pos, q).float()
                V = pred.shape[-1] // 2
                mean, logvar = pred[..., :V], pred[..., V:]
                target = batch.expr[idx]
                weight = q[..., None] & batch.present[idx]
                out["loss_st"] = self._st_loss(mean, logvar, target, weight)
                out["mse_st"] = (((mean - target) ** 2) * weight).sum() / weight.sum().clamp_min(1)
                total = total + self.hparams.st_loss_weight * out["loss_st"]
        if self.st_probe is not None and he_only is not None:
            q = he_only & he_here & st_here  # H&E-only windows: every H&E token predicts its own spot's ST
            if q.any():
                pred = self.st_probe(enc[:, wt.segment("he")]).float()
                V = pred.shape[-1] // 2
                weight = q[..., None] & batch.present[idx]
                out["loss_he_to_st"] = self._st_loss(pred[..., :V], pred[..., V:], batch.expr[idx], weight)
                total = total + self.hparams.he_to_st_weight * out["loss_he_to_st"]
        out["loss"] = total
        return out

    # ---------------------------------------------------------------- lightning hooks
    def training_step(self, batch: SpotBatch, batch_idx: int):
        acc = max(1, int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)) if self._trainer else 1
        torch.manual_seed(self.hparams.seed * 1_000_003 + self.global_step * acc + self._micro)
        self._micro = (self._micro + 1) % acc
        losses = self.compute_loss(batch, train=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, batch_size=batch.window_index.shape[0])
        return losses["loss"]

    def validation_step(self, batch: SpotBatch, batch_idx: int):
        losses = self.compute_loss(batch, train=False)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=batch.window_index.shape[0])

    def optimizer_step(self, *args, **kwargs):
        # The EMA teacher follows the student right after each optimizer step, before any callback
        # (e.g. a checkpoint) sees the module, so a resumed run restores exactly this teacher.
        super().optimizer_step(*args, **kwargs)
        m = self.hparams.ema_momentum
        with torch.no_grad():
            for pt, ps in zip(self.teacher.parameters(), self.model.he_encoder.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            for bt, bs in zip(self.teacher.buffers(), self.model.he_encoder.buffers(), strict=True):
                bt.copy_(bs)

    def configure_optimizers(self):
        hp = self.hparams
        bb_lr = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
        groups = self.model.backbone_param_groups(bb_lr, hp.weight_decay, hp.layer_decay)
        bb_ids = {id(p) for p in self.model.he_encoder.parameters()}
        rest_decay, rest_no = [], []
        for mod in (self.model, self.he_decoder, self.st_decoder, self.st_probe):
            if mod is None:
                continue
            for n, p in mod.named_parameters():
                if id(p) in bb_ids or not p.requires_grad:
                    continue
                (rest_no if p.ndim < 2 or "embed" in n or "token" in n else rest_decay).append(p)
        groups += [
            {"params": rest_decay, "weight_decay": hp.weight_decay, "lr": hp.lr},
            {"params": rest_no, "weight_decay": 0.0, "lr": hp.lr},
        ]
        opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, hp.warmup_steps, hp.max_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
