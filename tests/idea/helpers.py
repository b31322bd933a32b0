"""Helpers only the tests use: a non-learned reference ranker and row selection of prediction events."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from idea.metrics import metrics_frame, rank_events
from idea.splits import Events, Split


def most_popular(split: Split, part: str = "valid") -> pd.DataFrame:
    """Metrics frame of ranking every item by its count among training targets: what a trained model has to beat."""
    counts = np.bincount(split.train.target, minlength=split.n_items + 1).astype(np.float32)
    pop = torch.as_tensor(counts)  # [n_items + 1]
    events = split.parts()[part]

    def score(history, lengths):
        return pop.expand(len(history), -1)  # [b, n_items + 1]

    ranks = rank_events(score, events.history, events.lengths, events.target)
    return metrics_frame(ranks, events.warm, part)


def take(events: Events, idx: np.ndarray) -> Events:
    """The events at rows `idx`."""
    return Events(
        events.history[idx], events.lengths[idx], events.target[idx], events.user[idx], events.row[idx],
        None if events.time is None else events.time[idx], events.warm[idx],
    )
