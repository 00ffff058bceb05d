"""Pretraining decoders (discarded after pretraining) and the expression-head loss."""

from __future__ import annotations

import torch
from torch import nn

from ._layers import Block, alibi_slopes, attention_mask, init_weights, num_heads_for
from ._storm import WindowTokens


class MaskedDecoder(nn.Module):
    """Masked-spot decoder of one modality: an MLP, then transformer blocks over visible + query tokens.

    Query tokens (one learned mask token) sit at every slot of the window; ALiBi tells them where
    they are. The output at each query is the prediction for the spot in that slot.
    """

    def __init__(self, hidden_dim: int, dim: int, depth: int, out_dim: int, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(hidden_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        heads = num_heads_for(dim, num_heads)
        self.blocks = nn.ModuleList([Block(dim, heads, 4.0, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, encoded: torch.Tensor, wt: WindowTokens, rel_pos: torch.Tensor, query_valid: torch.Tensor):
        """Predictions ``(B, K, out_dim)`` at every slot (only ``query_valid`` ones are meaningful)."""
        B, K = query_valid.shape
        x = self.proj(encoded)
        q = self.mask_token.expand(B, K, -1)
        seq = torch.cat([x, q], dim=1)
        valid = torch.cat([wt.valid, query_valid], dim=1)
        pos = torch.cat([wt.positions, rel_pos], dim=1)
        mask = attention_mask(pos, valid, self.slopes)
        for blk in self.blocks:
            seq = blk(seq, mask)
        return self.out(self.norm(seq[:, -K:]))


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean Gaussian negative log-likelihood (constant dropped)."""
    logvar = logvar.clamp(-7.0, 7.0)
    nll = 0.5 * (logvar + (target - mean) ** 2 * torch.exp(-logvar))
    w = weight.to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1.0)


def expression_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, l1: float = 1.0, l2: float = 1.0
) -> torch.Tensor:
    """Eq. 4 of the paper: ``mean(l1 * |y - ŷ| + l2 * (y - ŷ)^2)`` over measured entries."""
    d = pred - target
    loss = l1 * d.abs() + l2 * d * d
    if mask is None:
        return loss.mean()
    w = mask.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp_min(1.0)
