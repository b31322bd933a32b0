"""A seeded synthetic dataset with a controlled temporal shift: no files, fast, Beauty-like shape.

Items belong to topics and have a popularity that peaks at an item-specific
time, so the popular set drifts (and new items appear) as time goes on; users
start at random times and their interest topic drifts as they age. Next items
often follow the previous item's topic chain, a sequential signal that a
recommender can learn and a most-popular baseline cannot.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from idea.data.interactions import Interactions

DAY = 86_400
START = 1_577_836_800  # 2020-01-01 UTC


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 2000
    n_items: int = 1000
    n_topics: int = 20
    mean_extra_length: float = 4.0  # sequence length = 5 + Geometric(mean 4), like Beauty's mean of ~9
    max_length: int = 60
    days: int = 730
    shift: float = 1.0  # 0 = stationary popularity; 1 = peaks spread over the whole timeline
    p_chain: float = 0.55  # chance the next item follows the previous item's topic chain
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("n_users", "n_items", "n_topics", "max_length", "days"):
            if getattr(self, field) < 1:
                raise ValueError(f"SyntheticConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.n_items < self.n_topics:
            raise ValueError("SyntheticConfig.n_items must be >= n_topics")
        if not 0.0 <= self.p_chain <= 1.0:
            raise ValueError(f"SyntheticConfig.p_chain must lie in [0, 1], got {self.p_chain}")
        if self.shift < 0:
            raise ValueError(f"SyntheticConfig.shift must be >= 0, got {self.shift}")


def _sample_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of `weights` [U, n] (unnormalised), vectorised."""
    cum = np.cumsum(weights, axis=1)  # [U, n]
    u = rng.random(len(weights))[:, None] * cum[:, -1:]  # [U, 1]
    return np.minimum((cum < u).sum(axis=1), weights.shape[1] - 1)


def generate(cfg: SyntheticConfig = SyntheticConfig(), name: str = "synthetic") -> Interactions:
    rng = np.random.default_rng(cfg.seed)
    n, U, T = cfg.n_items, cfg.n_users, cfg.n_topics
    topic = np.arange(n) * T // n  # [n] items sorted by topic: a topic is a contiguous chain
    base = rng.lognormal(0.0, 1.0, n)  # [n] long-tailed base popularity
    peak = 0.5 + cfg.shift * rng.uniform(-0.7, 0.7, n)  # [n] time of peak popularity in [0, 1] units
    width = 0.12 + 0.5 / (1.0 + 4.0 * cfg.shift)

    lengths = np.minimum(5 + rng.geometric(1.0 / (1.0 + cfg.mean_extra_length), U) - 1, cfg.max_length)
    start = rng.uniform(0.0, 0.9, U)  # [U] first activity
    gaps = rng.exponential(0.015, (U, cfg.max_length))  # [U, S]
    t = start[:, None] + np.cumsum(gaps, axis=1) - gaps[:, :1]  # [U, S] in [0, ~1.2)
    user_topic = rng.integers(0, T, U)  # [U] initial interest
    drift = rng.normal(0.0, 6.0 * cfg.shift, U)  # [U] topics moved per unit of time

    items = np.zeros((U, cfg.max_length), dtype=np.int64)
    prev = np.zeros(U, dtype=np.int64)
    for s in range(cfg.max_length):  # steps of all users at once
        ts = t[:, s]  # [U]
        pop = base[None, :] * np.exp(-0.5 * ((ts[:, None] - peak[None, :]) / width) ** 2)  # [U, n]
        cur_topic = (user_topic + np.round(drift * (ts - start))).astype(np.int64) % T  # [U]
        pref = np.where(topic[None, :] == cur_topic[:, None], 8.0, 1.0)  # [U, n]
        fresh = _sample_rows(pop * pref, rng)  # [U]
        step = rng.integers(1, 4, U)
        chain = (prev + step) % n
        follow = (s > 0) & (rng.random(U) < cfg.p_chain)
        prev = np.where(follow, chain, fresh)
        items[:, s] = prev

    keep = (np.arange(cfg.max_length)[None, :] < lengths[:, None]) & (t < 1.0)  # [U, S]
    keep &= keep.sum(axis=1, keepdims=True) >= 2
    users = np.broadcast_to(np.arange(U)[:, None], keep.shape)[keep]
    stamps = START + (t[keep] * cfg.days).astype(np.int64) * DAY  # day granularity, like Amazon
    item_ids = items[keep] + 1
    used, remap = np.unique(item_ids, return_inverse=True)
    user_ids = np.unique(users, return_inverse=True)[1]
    digest = hashlib.sha256(repr(sorted(asdict(cfg).items())).encode()).hexdigest()
    return Interactions(
        name=name,
        user=user_ids.astype(np.int64),
        item=remap.astype(np.int64) + 1,
        timestamp=stamps,
        n_users=int(user_ids.max()) + 1,
        n_items=len(used),
        sha256=digest,
    )
