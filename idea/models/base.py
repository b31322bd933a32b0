"""Common interface of the sequential recommenders (backbones) used by IDEA.

A backbone is an item embedding table plus a sequence encoder. Sequences are
right-aligned: left-padded with item id 0, so the most recent item is at
position L-1 in every row and views of different sequences align by recency.
The encoder is split from the embedding lookup because IDEA feeds it soft-masked
and mixed embedding views rather than item ids.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from idea.config import BUCKETS


def real_positions(lengths: Tensor, T: int) -> Tensor:
    """`[B, T]` boolean mask, True at the last `lengths[b]` positions of right-aligned row b."""
    return torch.arange(T, device=lengths.device) >= (T - lengths).unsqueeze(1)


def real_item_table(model: Backbone, n_items: int) -> Tensor:
    """[n_items + 1, d] rows of padding and the real items 1..n_items of `model`'s table; the fake noise
    ids after them are never ranked (training scores them only with softmax_over "all")."""
    return model.item_emb.weight[: n_items + 1]


class Backbone(nn.Module, abc.ABC):
    """Item table + encoder: `forward(history, lengths) -> user vector`; scores are `user @ item_emb.weight.T`
    (the trainer ranks the real items' rows only; fake noise ids enter a training softmax only when asked)."""

    def __init__(self, n_items: int, max_len: int, d: int, chunk_rows: int = 256, buckets: str = "rows"):
        """`buckets`: how `encode` spares short rows the width of long ones (see there and `encode_widths`)."""
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if buckets not in BUCKETS:
            raise ValueError(f"unknown buckets {buckets!r}; choose one of {list(BUCKETS)}")
        self.n_items = n_items
        self.max_len = max_len
        self.d = d
        self.chunk_rows = chunk_rows  # rows per length bucket in `encode` (CPU: 256; GPUs: one bucket)
        self.buckets = buckets  # "rows": chunk_rows consecutive rows per bucket; "widths": length classes
        # Row 0 is padding: zero vector and no gradient.
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)

    def embed(self, history: Tensor) -> Tensor:
        """Plain embedding lookup (no dropout), so extractors see the clean sequence."""
        return self.item_emb(history)  # [B, L] -> [B, L, d]

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Map item embeddings `x [B, L, d]` (maybe a masked/mixed view) to users `[B, d]`.

        Only the last `lengths[b]` positions of row b influence the output. Rows are encoded
        in consecutive blocks of `chunk_rows`, each trimmed to its own longest sequence: rows
        are independent, so the result equals one big pass, and when the caller orders rows
        by length (the trainer and `rank_events` do) short sequences, most of them, stop
        paying for the longest one in the batch. Contiguous blocks need no gather.
        `buckets="widths"` encodes by length classes instead (`encode_widths`).
        """
        if self.buckets == "widths" and len(lengths):  # an empty batch has no classes: one (empty) pass
            return self.encode_widths(x, lengths)
        if len(lengths) <= self.chunk_rows:
            return self.encode_block(x, lengths)
        blocks = lengths.split(self.chunk_rows)
        widths = torch.stack([lb.max() for lb in blocks]).tolist()  # one host sync
        L = x.shape[1]
        return torch.cat([self.encode_block(xb[:, L - w:], lb)
                          for xb, lb, w in zip(x.split(self.chunk_rows), blocks, widths)])  # [B, d]

    def encode_widths(self, x: Tensor, lengths: Tensor) -> Tensor:
        """`encode` by length classes, whatever the row order: rows of lengths in (w/2, w], w = 1, 2, 4, ...,
        are gathered and encoded in one pass trimmed to the class's longest row, so at most about twice the
        real positions are computed (one pass over a batch computes its longest row's width for every row: on
        Beauty's training batches 6x the real positions), in at most log2(L) + 2 passes. One host sync: the
        class sizes."""
        B, L, _ = x.shape
        order = lengths.argsort()  # [B] rows by length
        counts = torch.bincount(lengths, minlength=L + 1).tolist()  # [L + 1] rows per length: the host sync
        bounds = [-1, 1]  # classes (low, high]: lengths 0-1, 2, 3-4, 5-8, ..., up to L
        while bounds[-1] < L:
            bounds.append(min(2 * bounds[-1], L))
        users, start = [], 0
        for low, high in zip(bounds, bounds[1:]):
            sizes = counts[low + 1: high + 1]  # rows of each length in the class
            if not any(sizes):
                continue
            width = max(max(low + 1 + i for i, n in enumerate(sizes) if n), 1)  # the class's longest row
            idx = order[start: start + sum(sizes)]  # [rows]
            users.append(self.encode_block(x[:, L - width:].index_select(0, idx), lengths[idx]))  # [rows, d]
            start += len(idx)
        return torch.cat(users).index_select(0, order.argsort())  # [B, d] back in the caller's order

    @abc.abstractmethod
    def encode_block(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Users `[b, d]` from right-aligned `x [b, T, d]`, T >= every length (extra columns are padding)."""

    def forward(self, history: Tensor, lengths: Tensor) -> Tensor:
        """User vectors `[B, d]` for id sequences `history [B, L]`."""
        return self.encode(self.embed(history), lengths)  # [B, d]

    def _zero_padding_row(self) -> None:
        """Re-zero the padding embedding after a custom init overwrote it."""
        with torch.no_grad():
            self.item_emb.weight[0].zero_()


def recbole_init(m: nn.Module) -> None:
    """RecBole's init, for `module.apply`: N(0, 0.02) linear and embedding weights, zero linear biases,
    identity LayerNorm; other modules keep PyTorch's defaults."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def check_dropout(dropout: float) -> float:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return float(dropout)
