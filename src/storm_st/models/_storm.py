"""The STORM network: spot-level encoders, spatial encoder over neighbour windows, heads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._config import StormConfig, check_head_input
from ._layers import MoMEBlock, alibi_slopes, attention_mask, init_weights

HE, GENE = "he", "gene"
MODALITIES = (HE, GENE)


def _timm_kwargs(kwargs: dict) -> dict:
    kw = dict(kwargs)
    if kw.get("mlp_layer") == "swiglu_packed":
        from timm.layers import SwiGLUPacked

        kw["mlp_layer"] = SwiGLUPacked
    if kw.get("act_layer") == "silu":
        kw["act_layer"] = nn.SiLU
    return kw


class HEEncoder(nn.Module):
    """H&E spot encoder: a timm backbone (pooled features) on normalised RGB patches.

    Input is ``(N, 3, S, S)`` uint8 or float in [0, 255]; normalisation happens inside so that
    saved models carry it.
    """

    def __init__(self, config: StormConfig):
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            config.he_backbone, pretrained=False, num_classes=0, **_timm_kwargs(config.he_backbone_kwargs)
        )
        self.out_dim = int(self.backbone.num_features)
        self.config = config  # as StormModel.config: what the backbone was built from
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = (patches.float() - self.mean) / self.std
        return self.backbone(x)


class GeneEncoder(nn.Module):
    """Panel-agnostic gene spot encoder.

    Each vocabulary gene has a learned embedding; a spot is the expression-weighted mean of the
    embeddings of its measured genes (absent genes masked), plus its log total expression, then an
    MLP to ``h`` dimensions. Visium (~18k genes), Xenium (~500) and CosMx (~1k) panels share it.
    """

    def __init__(self, n_genes: int, embed_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(n_genes, embed_dim) * 0.02)
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim + 1),
            nn.Linear(embed_dim + 1, out_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(out_dim, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, expr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Encode ``(N, V)`` log-normalised expression with a ``(N, V)`` or ``(V,)`` presence mask."""
        w = expr * present.to(expr.dtype)
        total = w.sum(dim=1, keepdim=True)
        pooled = (w @ self.embedding) / total.clamp_min(1e-6)
        return self.mlp(torch.cat([pooled, torch.log1p(total)], dim=1))


class FeatureGeneEncoder(nn.Module):
    """Gene spot encoder over a frozen per-spot embedding computed by another model (e.g. NOVAE).

    The paper's STORM reads 64-d NOVAE embeddings here; the embedding is an input (``adata.obsm``),
    so the other model stays frozen and optional. LayerNorm then an MLP to ``h`` dimensions.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, out_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(out_dim, out_dim),
        )
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Encode ``(N, in_dim)`` embeddings."""
        if feats.shape[-1] != self.in_dim:
            raise ValueError(f"The gene encoder expects {self.in_dim}-d embeddings, got {feats.shape[-1]}-d.")
        return self.mlp(feats.float())


@dataclass
class WindowTokens:
    """Token sequence of a batch of windows, laid out as one segment per modality.

    Attributes
    ----------
    tokens
        ``(B, T, h)``.
    valid
        ``(B, T)`` bool: real (not padded / masked-out) tokens.
    positions
        ``(B, T, 2)`` positions in lattice pitches relative to the centre spot.
    segments
        ``[(modality, K), ...]`` in order.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    segments: list[tuple[str, int]]

    def segment(self, modality: str) -> slice:
        """Slice of the token axis holding ``modality``."""
        start = 0
        for m, k in self.segments:
            if m == modality:
                return slice(start, start + k)
            start += k
        raise KeyError(modality)


class StormModel(nn.Module):
    """STORM: spot encoders + spatial encoder (+ optional expression head).

    The backbone runs once per spot (:meth:`encode_he`, :meth:`encode_gene`); windows then index a
    table of spot tokens (:meth:`build_tokens`, :meth:`spatial_encode`), so a slide costs ``n_spots``
    backbone passes, not 25 x.
    """

    def __init__(self, config: StormConfig):
        super().__init__()
        self.config = config
        h = config.hidden_dim
        self.he_encoder = HEEncoder(config)
        self.he_proj = nn.Sequential(nn.LayerNorm(self.he_encoder.out_dim), nn.Linear(self.he_encoder.out_dim, h))
        if config.gene_obsm_key:
            self.gene_encoder = FeatureGeneEncoder(int(config.gene_input_dim), h, config.dropout)
        else:
            self.gene_encoder = GeneEncoder(max(len(config.gene_vocab), 1), config.gene_embed_dim, h, config.dropout)
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(h)) for m in MODALITIES})
        self.blocks = nn.ModuleList(
            [MoMEBlock(h, config.num_heads, config.mlp_ratio, config.dropout, MODALITIES) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(h)
        self.register_buffer("slopes", alibi_slopes(config.num_heads), persistent=False)
        self.head = self._make_head(len(config.head_genes)) if config.head_genes else None
        init_weights(self.he_proj)
        init_weights(self.gene_encoder.mlp)
        init_weights(self.blocks)
        for p in self.modality_embed.values():
            nn.init.trunc_normal_(p, std=0.02)

    def head_in_dim(self, head_input: str | None = None) -> int:
        """Width of what the expression head reads for ``head_input`` (default ``config.head_input``)."""
        head_input = check_head_input(head_input or self.config.head_input)
        return self.config.hidden_dim * (2 if head_input == "centre+spot" else 1)

    def _make_head(self, n_genes: int) -> nn.Module:
        c = self.config
        d = self.head_in_dim()
        head = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, c.head_hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.head_hidden, n_genes),
        )
        init_weights(head)
        return head

    def set_head(self, genes: list[str], head_input: str | None = None) -> None:
        """Attach a fresh expression head predicting ``genes``, reading ``head_input`` (default: unchanged)."""
        if head_input is not None:
            self.config.head_input = check_head_input(head_input)
        self.config.head_genes = [str(g) for g in genes]
        self.head = self._make_head(len(genes)) if genes else None

    @staticmethod
    def spot_tokens(tables: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each spot's own input token: the mean of its token tables over the modalities fed."""
        return sum(t for t in tables.values()) / len(tables)

    def head_features(self, embedding, spot_token, head_input: str | None = None):
        """What the expression head reads (``head_input``, default ``config.head_input``).

        From centre embeddings ``(N, h)`` and the centre spots' own input tokens ``(N, h)`` (numpy arrays
        or tensors, returned as the same kind).
        """
        head_input = head_input or self.config.head_input
        if head_input == "centre":
            return embedding
        if spot_token is None:
            raise ValueError(f"This model's head reads the spot tokens (head_input={head_input!r}); none were given.")
        if head_input == "spot":
            return spot_token
        if isinstance(embedding, torch.Tensor):
            return torch.cat([embedding, spot_token.to(embedding)], dim=-1)
        return np.concatenate([embedding, spot_token], axis=-1)

    # ------------------------------------------------------------------ spot level
    def encode_he(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``(N, C)`` and projected tokens ``(N, h)`` of H&E patches."""
        feats = self.he_encoder(patches)
        return feats, self.he_proj(feats)

    def encode_gene(
        self, expr: torch.Tensor | None, present: torch.Tensor | None, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gene tokens ``(N, h)``.

        From log-normalised expression over the vocabulary (``expr``, ``present``), or, for a model
        whose ``config.gene_input`` names an ``obsm`` embedding, from that embedding (``feats``).
        """
        if isinstance(self.gene_encoder, FeatureGeneEncoder):
            if feats is None:
                raise ValueError(
                    f"This model's gene encoder reads adata.obsm[{self.config.gene_obsm_key!r}] embeddings, "
                    "but none were given."
                )
            return self.gene_encoder(feats)
        return self.gene_encoder(expr, present)

    # ------------------------------------------------------------------ spatial level
    def build_tokens(
        self,
        tables: dict[str, torch.Tensor],
        available: dict[str, torch.Tensor],
        window_index: torch.Tensor,
        rel_pos: torch.Tensor,
        visible: dict[str, torch.Tensor] | None = None,
    ) -> WindowTokens:
        """Gather per-window token sequences from per-spot token tables.

        Parameters
        ----------
        tables
            ``{modality: (U, h)}`` spot tokens; a missing modality is simply left out (fewer tokens).
        available
            ``{modality: (U,)}`` bool, whether each spot has that modality.
        window_index
            ``(B, K)`` rows of the tables (``-1`` = padding); column 0 is the centre spot.
        rel_pos
            ``(B, K, 2)`` positions relative to the centre, in lattice pitches.
        visible
            Optional ``{modality: (B, K)}`` bool; tokens not visible are dropped (masked pretraining).
        """
        toks, valids, poss, segs = [], [], [], []
        idx = window_index.clamp_min(0)
        pad = window_index < 0
        for m in MODALITIES:
            if m not in tables:
                continue
            t = tables[m][idx] + self.modality_embed[m]
            v = ~pad & available[m][idx]
            if visible is not None and m in visible:
                v = v & visible[m]
            toks.append(t)
            valids.append(v)
            poss.append(rel_pos)
            segs.append((m, window_index.shape[1]))
        if not toks:
            raise ValueError("No modality given: pass H&E patches, expression, or both.")
        return WindowTokens(torch.cat(toks, 1), torch.cat(valids, 1), torch.cat(poss, 1), segs)

    def spatial_encode(self, wt: WindowTokens) -> torch.Tensor:
        """Run the spatial encoder; returns ``(B, T, h)`` (padded positions are zeroed)."""
        mask = attention_mask(wt.positions, wt.valid, self.slopes)
        x = wt.tokens * wt.valid[..., None].to(wt.tokens.dtype)
        for blk in self.blocks:
            x = blk(x, mask, wt.segments)
        x = self.norm(x)
        return x * wt.valid[..., None].to(x.dtype)

    def centre_embedding(self, wt: WindowTokens, out: torch.Tensor) -> torch.Tensor:
        """Embedding of each window's centre spot: mean of its output tokens over available modalities."""
        acc, cnt = 0.0, 0.0
        for m, _ in wt.segments:
            sl = wt.segment(m)
            v = wt.valid[:, sl.start][:, None].to(out.dtype)
            acc = acc + out[:, sl.start] * v
            cnt = cnt + v
        return acc / cnt.clamp_min(1.0)

    def forward(
        self,
        tables: dict[str, torch.Tensor],
        available: dict[str, torch.Tensor],
        window_index: torch.Tensor,
        rel_pos: torch.Tensor,
    ) -> torch.Tensor:
        """Centre-spot embeddings ``(B, h)`` of a batch of windows."""
        wt = self.build_tokens(tables, available, window_index, rel_pos)
        return self.centre_embedding(wt, self.spatial_encode(wt))

    def predict_expression(self, embedding: torch.Tensor) -> torch.Tensor:
        """Expression head (log-normalised expression of ``head_genes``) on :meth:`head_features`."""
        if self.head is None:
            raise ValueError(
                "This model has no expression head. Fit one with storm_st.tl.fit_expression_head(adatas, model=...)."
            )
        return self.head(embedding)

    def backbone_param_groups(self, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
        """Parameter groups of the H&E backbone with layer-wise learning-rate decay (timm)."""
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(self.he_encoder.backbone, weight_decay=weight_decay, layer_decay=layer_decay)
        for g in groups:
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        return groups
