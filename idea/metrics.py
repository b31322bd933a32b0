"""Full-ranking metrics for next-item recommendation.

Items are ids 1..n_items; column 0 of every score matrix is padding and is
never ranked. Ties are broken pessimistically (a target tied with other items
ranks below all of them) so a constant or degenerate model cannot look good.
Seen items are not masked unless asked for (``mask_seen`` / ``seen``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from idea.contract import KS, METRICS, metric_name

__all__ = ["pessimistic_ranks", "rank_events", "metrics_frame", "summary"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pessimistic_ranks(
    scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """0-based rank of each target among items 1..n_items, ties counted against it.

    scores [B, n_items+1], targets [B] long in 1..n_items, seen [B, L] long item
    ids (0 = padding) or None. rank = #items scoring above the target + #other
    items tied with it. Column 0 never counts. With ``seen``, the row's seen
    items other than the target are excluded (as if scored -inf, but they never
    count even against a -inf target). An item counts against the target unless
    it scores strictly lower, so NaN on either side is pessimistic: a NaN target
    ranks last among the candidates.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [B, n_items+1] with n_items >= 1, got {tuple(scores.shape)}")
    B, n_cols = scores.shape
    n_items = n_cols - 1
    targets = torch.as_tensor(targets, device=scores.device).long().reshape(-1)  # [B]
    if targets.shape[0] != B:
        raise ValueError(f"targets must be [B]={B}, got {targets.shape[0]}")
    if B == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    # Out-of-range ids would be a silent gather error (or a device assert on GPU).
    t_min, t_max = int(targets.min()), int(targets.max())
    if t_min < 1 or t_max > n_items:
        raise ValueError(f"targets must be item ids in 1..{n_items}, got range [{t_min}, {t_max}]")

    rows = torch.arange(B, device=scores.device)  # [B]
    target_score = scores[rows, targets].unsqueeze(1)  # [B, 1]
    # Pessimistic: every other item not strictly below the target (ties, NaNs) ranks above it,
    # so rank = (n_items - 1) - #items strictly below. Counting in int32 is twice as fast.
    below = (scores[:, 1:] < target_score).sum(dim=1, dtype=torch.int32)  # [B]
    ranks = (n_items - 1) - below.long()  # [B]
    if seen is not None:
        seen = torch.as_tensor(seen, device=scores.device).long()  # [B, L]
        if seen.dim() != 2 or seen.shape[0] != B:
            raise ValueError(f"seen must be [B={B}, L], got {tuple(seen.shape)}")
        masked = torch.zeros(B, n_cols, dtype=torch.bool, device=scores.device)  # [B, n_items+1]
        masked.scatter_(1, seen, True)  # each seen item once, however often it was seen
        masked[:, 0] = False
        masked[rows, targets] = False  # the target itself is never masked
        ranks -= (masked & ~(scores < target_score)).sum(dim=1)  # masked items no longer rank above it
    return ranks  # [B] long


def _long_tensor(x) -> torch.Tensor:
    """Tensor view of `x`; numpy arrays are copied when read-only (e.g. in Ray's shared memory)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    return torch.as_tensor(x).long()


@torch.inference_mode()
def rank_events(
    score_fn: ScoreFn,
    history: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    mask_seen: bool = False,
) -> np.ndarray:
    """Pessimistic rank of every event's target, in batches so memory stays ~batch_size * n_items.

    history [E, L] (right-aligned, left-padded with 0), lengths [E], targets [E].
    score_fn(history [b, l] long, lengths [b] long), both on ``device``, returns
    scores [b, n_items+1]. Events are processed longest-first (the largest batch
    comes first, so memory errors surface immediately) and each batch's history
    is trimmed to its longest sequence, keeping the last columns. With
    ``mask_seen`` the (trimmed, i.e. the visible) history items other than the
    target are excluded from ranking. Returns int64 ranks [E] in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    history = _long_tensor(history)  # [E, L]
    lengths = _long_tensor(lengths).reshape(-1).to(history.device)  # [E]
    targets = _long_tensor(targets).reshape(-1)  # [E]
    if history.dim() != 2:
        raise ValueError(f"history must be [E, L], got {tuple(history.shape)}")
    E, L = history.shape
    if lengths.shape[0] != E or targets.shape[0] != E:
        raise ValueError(f"history, lengths, targets disagree on E: {E}, {lengths.shape[0]}, {targets.shape[0]}")
    if E and (int(lengths.min()) < 0 or int(lengths.max()) > L):
        raise ValueError(f"lengths must lie in 0..{L}")
    device = torch.device(device)

    order = torch.argsort(lengths, descending=True, stable=True)  # [E], longest first
    ranks = torch.empty(E, dtype=torch.long)  # [E], input order
    for start in range(0, E, batch_size):
        idx = order[start : start + batch_size]  # [b]
        b_len = lengths[idx]  # [b]
        keep = max(int(b_len[0]), 1)  # sorted descending: first is the batch max; >= 1 column
        b_hist = history[idx, L - keep :].to(device)  # [b, keep], last columns (right-aligned)
        b_len = b_len.to(device)  # [b]
        b_tgt = targets[idx.to(targets.device)].to(device)  # [b]
        scores = score_fn(b_hist, b_len)  # [b, n_items+1]
        if scores.dim() != 2 or scores.shape[0] != idx.shape[0]:
            raise ValueError(f"score_fn must return [b={idx.shape[0]}, n_items+1], got {tuple(scores.shape)}")
        b_ranks = pessimistic_ranks(scores, b_tgt, b_hist if mask_seen else None)  # [b]
        ranks[idx.cpu()] = b_ranks.cpu()
    return ranks.numpy().astype(np.int64, copy=False)


def _metric_values(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-event HR/NDCG/MRR at k: an event scores only when its 0-based rank is < k."""
    hit = ranks < k  # [E]
    r = ranks.astype(np.float64)  # [E]
    return {
        "hr": hit.astype(np.float64),
        "ndcg": np.where(hit, 1.0 / np.log2(r + 2.0), 0.0),
        "mrr": np.where(hit, 1.0 / (r + 1.0), 0.0),
    }


def metrics_frame(ranks: np.ndarray, warm: np.ndarray, part: str, ks=KS) -> pd.DataFrame:
    """Tidy (part, subset, metric, k, value, n_events) rows for subsets "all" and "warm".

    "warm" keeps the events where ``warm`` is True (e.g. targets seen in
    training). A tidy frame concatenates across parts and windows and feeds
    MLflow and the analysis tables without reshaping. Empty subsets give NaN
    with n_events 0 rather than raising, since a window can lack warm events.
    """
    ranks = np.asarray(ranks).reshape(-1)
    warm = np.asarray(warm).reshape(-1)
    if ranks.shape != warm.shape:
        raise ValueError(f"ranks and warm must have the same length, got {ranks.shape[0]} and {warm.shape[0]}")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks must be 0-based and non-negative")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    warm = warm.astype(bool)

    rows = []
    for subset, sel in (("all", ranks), ("warm", ranks[warm])):
        n = int(sel.size)
        per_k = {k: _metric_values(sel, k) for k in ks}  # k -> metric -> [n]
        for metric in METRICS:
            for k in ks:
                value = float(per_k[k][metric].mean()) if n else float("nan")
                rows.append((part, subset, metric, k, value, n))
    frame = pd.DataFrame(rows, columns=["part", "subset", "metric", "k", "value", "n_events"])
    return frame.astype({"k": "int64", "value": "float64", "n_events": "int64"})


def summary(frame: pd.DataFrame, part: str | None = None, subset: str = "all") -> dict[str, float]:
    """Flatten one part and subset of a metrics frame to {"ndcg_at_10": v, ...}.

    Flat names match MLflow metric keys (``test_<window>_<metric>_at_<k>``
    once prefixed). ``part=None`` requires the frame to hold exactly one part.
    """
    if part is None:
        parts = frame["part"].unique()
        if len(parts) != 1:
            raise ValueError(f"frame holds parts {list(parts)}; pass part=")
        part = parts[0]
    rows = frame[(frame["part"] == part) & (frame["subset"] == subset)]
    if rows.empty:
        raise KeyError(f"no rows for part={part!r}, subset={subset!r}")
    return {metric_name(m, int(k)): float(v) for m, k, v in zip(rows["metric"], rows["k"], rows["value"])}
