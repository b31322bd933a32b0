"""Non-learned reference rankers: what a trained model has to beat."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from idea.metrics import metrics_frame, rank_events
from idea.splits import Split


def most_popular(split: Split, part: str = "valid") -> pd.DataFrame:
    """Metrics frame of ranking every item by its count among training targets."""
    counts = np.bincount(split.train.target, minlength=split.n_items + 1).astype(np.float32)
    pop = torch.as_tensor(counts)  # [n_items + 1]
    events = split.parts()[part]

    def score(history, lengths):
        return pop.expand(len(history), -1)  # [b, n_items + 1]

    ranks = rank_events(score, events.history, events.lengths, events.target)
    return metrics_frame(ranks, events.warm, part)
