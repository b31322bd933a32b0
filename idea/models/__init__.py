"""Sequential recommender backbones sharing the `Backbone` interface."""

from __future__ import annotations

from .base import Backbone
from .gru4rec import GRU4Rec
from .mamba4rec import Mamba4Rec
from .sasrec import SASRec

# A new backbone: its module here, its name here and in idea.config.BACKBONE_NAMES (docs/design.md)
BACKBONES: dict[str, type[Backbone]] = {"gru4rec": GRU4Rec, "sasrec": SASRec, "mamba4rec": Mamba4Rec}


def build_backbone(name: str, n_items: int, max_len: int, dropout: float | None = None,
                   chunk_rows: int = 256, buckets: str = "rows") -> Backbone:
    """Backbone by registry name; `dropout=None` keeps the model's own default; `chunk_rows`: rows per
    length bucket when encoding (256 suits a CPU cache; on a GPU one bucket of all rows is faster);
    `buckets="widths"`: encode by length classes instead (`Backbone.encode_widths`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    kwargs = {} if dropout is None else {"dropout": dropout}
    return BACKBONES[name](n_items, max_len, chunk_rows=chunk_rows, buckets=buckets, **kwargs)


__all__ = ["BACKBONES", "Backbone", "GRU4Rec", "Mamba4Rec", "SASRec", "build_backbone"]
