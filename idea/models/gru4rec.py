"""GRU4Rec (Hidasi et al., 2016) as in RecBole: embedding dropout -> GRU -> linear projection.

The user vector is the GRU output at each sequence's last real item, computed on
right-padded sequences so the amount of left padding never matters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .base import Backbone, check_dropout


class GRU4Rec(Backbone):
    """RecBole defaults: embedding 64, embedding dropout 0.3, 1-layer GRU of 128, Linear(128 -> 64)."""

    def __init__(
        self,
        n_items: int,
        max_len: int,
        dropout: float = 0.3,
        d: int = 64,
        hidden: int = 128,
        n_layers: int = 1,
        chunk_rows: int = 256,
        buckets: str = "rows",
    ):
        super().__init__(n_items, max_len, d, chunk_rows, buckets)
        self.hidden = hidden
        self.emb_dropout = nn.Dropout(check_dropout(dropout))
        self.gru = nn.GRU(d, hidden, num_layers=n_layers, bias=False, batch_first=True)  # RecBole: no bias
        self.dense = nn.Linear(hidden, d)
        self._init_weights()

    def _init_weights(self) -> None:
        """RecBole's init: xavier-normal item table, xavier-uniform GRU weights."""
        nn.init.xavier_normal_(self.item_emb.weight)
        for name, w in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(w)
        self._zero_padding_row()

    def right_padded(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Embedding dropout, then left-padded `x [B, T, d]` -> right-padded: row b starts at column
        T - len_b, and rolling by that offset puts the real items first and the padding after them."""
        B, T, d = x.shape
        x = self.emb_dropout(x)
        start = (T - lengths).unsqueeze(1)  # [B, 1]
        idx = (start + torch.arange(T, device=x.device)) % T  # [B, T]
        return x.gather(1, idx.unsqueeze(-1).expand(B, T, d))  # [B, T, d] right-padded

    def run_gru(self, inputs: Tensor | PackedSequence) -> tuple[Tensor | PackedSequence, Tensor]:
        """The GRU's (outputs, last states). cuDNN wants its weights in one buffer; a deep copy (the trainer's
        best model) splits them, and cuDNN would then copy them on every call: re-joined first (a no-op when
        they already are, and on CPU)."""
        self.gru.flatten_parameters()
        return self.gru(inputs)

    def encode_block(self, x: Tensor, lengths: Tensor) -> Tensor:
        """GRU output at each row's last real item (step len_b - 1 of the right-padded row).

        The GRU is causal, so outputs at step len_b - 1 never see the padding placed after
        the real items; one dense pass is much faster on CPU than packed sequences.
        """
        B = len(lengths)
        out, _ = self.run_gru(self.right_padded(x, lengths))  # [B, T, hidden]
        last = out.gather(1, (lengths - 1).view(B, 1, 1).expand(B, 1, self.hidden))  # [B, 1, hidden]
        return self.dense(last.squeeze(1))  # [B, d]

    def encode_widths(self, x: Tensor, lengths: Tensor) -> Tensor:
        """One GRU call over packed sequences: step t runs only the rows longer than t, so the work follows
        the real items in one call whatever the row order. One host sync: the lengths (packing needs them)."""
        packed = pack_padded_sequence(self.right_padded(x, lengths), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, h = self.run_gru(packed)  # [layers, B, hidden]: each row's state after its last real item, caller's order
        return self.dense(h[-1])  # [B, d]
