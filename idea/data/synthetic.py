"""A seeded synthetic dataset with a controlled temporal shift: no files, fast, Beauty-like shape.

Items belong to topics and have a popularity that peaks at an item-specific
time, so the popular set drifts (and new items appear) as time goes on; users
start at random times and their interest topic drifts as they age. Next items
often follow the previous item's topic chain, a sequential signal that a
recommender can learn and a most-popular baseline cannot.

The positive control (`promo_rate` > 0) adds what IDEA is meant to see through: promotions, one side item
per topic (shown to the user, never a target), placed right before a share `promo_rate` of the real
events. With probability `promo_link` (the strength) a promotion names the topic of the item that follows
it, else a random topic; from the day `promo_flip` of the timeline on (the studies' first test day,
`promo_cuts`), a linked promotion names the next topic instead. So before the cut the promotion is a
shortcut to the next item's topic, after it a wrong one; `promo_link` 0 gives promotions that never
predict anything, the control without a spurious link.
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
    promo_rate: float = 0.0  # share of real events right after a promotion (0: none, the data as without them)
    promo_link: float = 0.0  # chance a promotion names the next item's topic (after promo_flip: the next topic)
    promo_flip: float = 0.8  # where on the timeline [0, 1) linked promotions change topic

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
        for field in ("promo_rate", "promo_link"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"SyntheticConfig.{field} must lie in [0, 1], got {getattr(self, field)}")
        if not 0.0 < self.promo_flip < 1.0:
            raise ValueError(f"SyntheticConfig.promo_flip must lie in (0, 1), got {self.promo_flip}")
        if self.promo_rate > 0 and self.n_topics < 2:
            raise ValueError("SyntheticConfig.n_topics must be >= 2 with promotions (a flipped one names another topic)")


def promo_cuts(cfg: SyntheticConfig, valid_days: float = 0.1, windows: int = 3) -> tuple[int, ...]:
    """Temporal cuts (Unix seconds) whose first test day is the promotions' flip day: validation the
    `valid_days` share of the timeline before it, then `windows` equal windows to the end."""
    flip = _flip_day(cfg)
    edges = np.linspace(flip, cfg.days, windows + 1).round().astype(np.int64)
    days = (round((cfg.promo_flip - valid_days) * cfg.days), *edges)
    return tuple(START + int(d) * DAY for d in days)


def _flip_day(cfg: SyntheticConfig) -> int:
    return round(cfg.promo_flip * cfg.days)


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
    day = (t[keep] * cfg.days).astype(np.int64)  # day granularity, like Amazon
    item_ids = items[keep] + 1
    if cfg.promo_rate > 0:
        users, day, item_ids = _with_promotions(cfg, users, day, item_ids, topic[items[keep]])
    used, remap = np.unique(item_ids, return_inverse=True)
    user_ids = np.unique(users, return_inverse=True)[1]
    fields = asdict(cfg)
    if cfg.promo_rate == 0:  # the digest of data generated before promotions existed, which is the same data
        fields = {k: v for k, v in fields.items() if not k.startswith("promo_")}
    digest = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()
    return Interactions(
        name=name,
        user=user_ids.astype(np.int64),
        item=remap.astype(np.int64) + 1,
        timestamp=START + day * DAY,
        n_users=int(user_ids.max()) + 1,
        n_items=len(used),
        sha256=digest,
        side_items=np.flatnonzero(used > n).astype(np.int64) + 1,  # promotions are the ids after the n items
    )


def _with_promotions(cfg: SyntheticConfig, users: np.ndarray, day: np.ndarray, item_ids: np.ndarray,
                     topics: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The events [M] (user, day, item id, the item's topic) with a promotion (item id n + 1 + its topic) on
    the same day right before a share promo_rate of them, drawn from a stream of their own so the rest of
    the data is what it is without promotions."""
    rng = np.random.default_rng([cfg.seed, 1])
    T = cfg.n_topics
    shown = rng.random(len(item_ids)) < cfg.promo_rate  # [M]
    linked = rng.random(len(item_ids)) < cfg.promo_link  # [M]
    named = np.where(day >= _flip_day(cfg), (topics + 1) % T, topics)  # [M] the topic a linked promotion names
    promo = cfg.n_items + 1 + np.where(linked, named, rng.integers(0, T, len(item_ids)))  # [M]
    rows = np.stack([shown, np.ones_like(shown)], axis=1)  # [M, 2]: the promotion, then the event

    def interleave(before: np.ndarray, event: np.ndarray) -> np.ndarray:
        return np.stack([before, event], axis=1)[rows]  # [M + shown.sum()], in order

    return interleave(users, users), interleave(day, day), interleave(promo, item_ids)
