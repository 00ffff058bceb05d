"""Building blocks of the spatial encoder: 2-D ALiBi attention and modality-expert (MoME) FFNs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes: the geometric sequence ``2^(-8 i / H)``, ``i = 1..H`` (Press et al., 2022)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)])


def alibi_bias(positions: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """2-D ALiBi bias ``-slope_h * ||p_i - p_j||`` from token positions.

    Parameters
    ----------
    positions
        ``(B, T, 2)`` positions (in lattice pitches: µm divided by the slide's spot pitch).
    slopes
        ``(H,)`` per-head slopes.

    Returns
    -------
    ``(B, H, T, T)`` additive attention bias.
    """
    dist = torch.cdist(positions.float(), positions.float())  # (B, T, T)
    return -slopes.to(dist)[None, :, None, None] * dist[:, None]


def attention_mask(positions: torch.Tensor, valid: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """ALiBi bias with ``-inf`` on padded keys; each token may always attend to itself (no empty rows)."""
    bias = alibi_bias(positions, slopes)
    T = valid.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    allowed = valid[:, None, None, :] | eye[None, None]
    return bias.masked_fill(~allowed, float("-inf"))


class Attention(nn.Module):
    """Multi-head self-attention taking an additive float mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


def _ffn(dim: int, ratio: float, dropout: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class MoMEBlock(nn.Module):
    """Pre-LN block: shared self-attention, then one FFN expert per modality (eq. 2 of the paper).

    Tokens are laid out as contiguous modality segments; ``segments`` lists ``(modality, length)``
    and each segment goes through its own expert only.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, modalities: tuple[str, ...]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.experts = nn.ModuleDict({m: _ffn(dim, mlp_ratio, dropout) for m in modalities})
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, segments: list[tuple[str, int]]) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        h = self.norm2(x)
        outs, start = [], 0
        for modality, length in segments:
            outs.append(self.experts[modality](h[:, start : start + length]))
            start += length
        return x + self.drop(torch.cat(outs, dim=1))


class Block(nn.Module):
    """Plain pre-LN transformer block with ALiBi attention (used by the decoders)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _ffn(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal init for linear layers, as in ViT/MAE."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def num_heads_for(dim: int, wanted: int) -> int:
    """Largest head count ``<= wanted`` dividing ``dim``."""
    for h in range(wanted, 0, -1):
        if dim % h == 0:
            return h
    return 1


