"""SASRec (Kang & McAuley, 2018) as in RecBole: post-LayerNorm causal Transformer blocks.

Sequences are right-aligned, so position embeddings are indexed from the right
end (the most recent item always gets position max_len - 1); trimming a batch
to its longest sequence therefore does not change any user vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, check_dropout, real_positions, recbole_init

LAYER_NORM_EPS = 1e-12  # RecBole's value


def attention_mask(lengths: Tensor, T: int) -> Tensor:
    """Boolean `[B, 1, T, T]` (True = query i may attend to key j): causal, real keys only.

    Self-attention is always allowed so padding queries have a key and cannot
    produce NaN on any backend; real queries only ever see real keys, so padding
    never reaches real positions.
    """
    cols = torch.arange(T, device=lengths.device)  # [T]
    real = real_positions(lengths, T)  # [B, T] key is a real item
    causal = cols.unsqueeze(1) >= cols.unsqueeze(0)  # [T, T] query i sees key j <= i
    self_loop = torch.eye(T, dtype=torch.bool, device=lengths.device)  # [T, T]
    return ((causal & real.unsqueeze(1)) | self_loop).unsqueeze(1)  # [B, 1, T, T]


class SelfAttention(nn.Module):
    """Multi-head self-attention + residual + LayerNorm (RecBole's MultiHeadAttention)."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        if d % n_heads != 0:
            raise ValueError(f"hidden size {d} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.attn_dropout = dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.resid_dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """`x [B, T, d]`, `allowed [B, 1, T, T]` (True = query may attend to key)."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 x [B, T, d]
        q, k, v = (t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # [B, h, T, hd]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attn_dropout if self.training else 0.0
        )  # [B, h, T, hd]
        y = y.transpose(1, 2).reshape(B, T, d)  # [B, T, d]
        return self.ln(x + self.resid_dropout(self.proj(y)))  # [B, T, d]


class FeedForward(nn.Module):
    """Position-wise GELU MLP + residual + LayerNorm."""

    def __init__(self, d: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))  # [B, T, d]


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(d, n_heads, dropout)
        self.ff = FeedForward(d, d_ff, dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        return self.ff(self.attn(x, allowed))  # [B, T, d]


class SASRec(Backbone):
    """RecBole defaults: hidden 64, 2 blocks, 2 heads, feed-forward 256 (GELU), dropout 0.5."""

    def __init__(
        self,
        n_items: int,
        max_len: int,
        dropout: float = 0.5,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        chunk_rows: int = 256,
        buckets: str = "rows",
    ):
        super().__init__(n_items, max_len, d, chunk_rows, buckets)
        dropout = check_dropout(dropout)
        self.pos_emb = nn.Embedding(max_len, d)
        self.emb_ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.apply(recbole_init)
        self._zero_padding_row()

    def encode_block(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Hidden state at the last (most recent) position after the Transformer blocks."""
        B, T, d = x.shape
        if T > self.max_len:
            raise ValueError(f"sequences of {T} items exceed max_len={self.max_len}")
        pos = torch.arange(self.max_len - T, self.max_len, device=x.device)  # [T], counted from the right
        h = self.emb_dropout(self.emb_ln(x + self.pos_emb(pos)))  # [B, T, d]

        allowed = attention_mask(lengths, T)  # [B, 1, T, T]
        for block in self.blocks:
            h = block(h, allowed)  # [B, T, d]
        return h[:, -1]  # [B, d]
