"""Leakage-free evaluation splits: temporal windows (the point of the project) and leave-one-out.

Every event is (history, target): the target interaction and the user's items
strictly before it in the user's (time, file order) sequence, truncated to the
last `max_len`, right-aligned and left-padded with 0.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from idea.contract import VALID, window_name

if TYPE_CHECKING:  # annotations only: idea.data imports this module to split datasets by name
    from idea.data.interactions import Interactions

PROTOCOLS = ("temporal", "loo")


def to_timestamp(value: str | int) -> int:
    """'YYYY-MM-DD' (UTC midnight) or Unix seconds -> Unix seconds."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value)
    try:
        day = dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ValueError(f"cut {value!r} is neither Unix seconds nor a 'YYYY-MM-DD' date") from None
    return int(day.timestamp())


def to_date(ts: int | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class SplitConfig:
    """protocol: 'temporal' | 'loo'. cuts (temporal only): (t_val, t0, end_w1, ..., end_wm),
    strictly increasing dates or Unix seconds; None takes the dataset's defaults."""

    protocol: str = "temporal"
    max_len: int = 50
    cuts: tuple[str | int, ...] | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"SplitConfig.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not 1 <= self.max_len <= 1000:
            raise ValueError(f"SplitConfig.max_len must lie in 1..1000, got {self.max_len}")
        if self.cuts is not None:
            if self.protocol != "temporal":
                raise ValueError("SplitConfig.cuts only applies to protocol 'temporal'")
            try:
                times = [to_timestamp(c) for c in self.cuts]
            except ValueError as err:
                raise ValueError(f"SplitConfig.cuts: {err}") from None
            if len(times) < 3:
                raise ValueError("SplitConfig.cuts needs (t_val, t0, end of w1, ...): at least 3 values")
            if any(b <= a for a, b in zip(times, times[1:])):
                raise ValueError(f"SplitConfig.cuts must be strictly increasing, got {self.cuts}")


@dataclass(frozen=True, eq=False)
class Events:
    """Prediction events of one part; arrays share the first dimension E."""

    history: np.ndarray  # [E, L] int64, right-aligned, 0 = padding
    lengths: np.ndarray  # [E] int64, real items in history (>= 1)
    target: np.ndarray  # [E] int64 item id
    user: np.ndarray  # [E] int64
    row: np.ndarray  # [E] int64 index of the target interaction in the Interactions table
    time: np.ndarray | None  # [E] int64 target time (None without timestamps)
    warm: np.ndarray  # [E] bool, target item seen in training interactions

    def __len__(self) -> int:
        return len(self.target)


@dataclass(frozen=True, eq=False)
class Split:
    protocol: str
    dataset: str
    n_items: int
    max_len: int
    train: Events
    valid: Events
    tests: dict[str, Events]  # "w1".."wm" (temporal) or "test" (loo), in time order
    bounds: dict[str, tuple[int | None, int | None]]  # part -> [start, end) target times
    skipped: dict[str, int]  # targets without any earlier interaction, per part
    warm_items: np.ndarray  # [n_items + 1] bool
    data_sha256: str
    side_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # never targets (Interactions)

    def parts(self) -> dict[str, Events]:
        return {"train": self.train, "valid": self.valid, **self.tests}


def mask_side_items(split: Split) -> Split:
    """The split with every side item in every history read as one id (the first side item's): a history
    still shows that a promotion was there, no longer which. Targets, lengths and parts are unchanged, so the
    events pair one to one with the unmasked split's (the positive control's clean arm)."""
    if len(split.side_items) == 0:
        raise ValueError(f"dataset {split.dataset!r} has no side items to mask; mask_side_items needs a dataset "
                         "with promotions (the synthetic-promo* datasets)")
    one = int(split.side_items.min())

    def masked(ev: Events) -> Events:
        history = np.where(np.isin(ev.history, split.side_items), one, ev.history)  # [E, L]
        return replace(ev, history=history)

    return replace(split, train=masked(split.train), valid=masked(split.valid),
                   tests={name: masked(ev) for name, ev in split.tests.items()})


def proportional_cuts(ts: np.ndarray, n_windows: int = 3) -> tuple[int, ...]:
    """Default cuts for datasets without calendar defaults: t_val at the 70% time quantile,
    t0 at 80%, then `n_windows` equal-length windows to the last interaction."""
    t_val, t0 = (int(np.quantile(ts, q)) for q in (0.7, 0.8))
    end = int(ts.max()) + 1
    edges = np.linspace(t0, end, n_windows + 1).astype(np.int64)
    return (t_val, *(int(e) for e in edges))


def _events(data: Interactions, rows: np.ndarray, max_len: int, warm_items: np.ndarray) -> Events:
    """Vectorised event construction: history = the max_len rows before `rows` within the same user."""
    starts = data.user_starts[data.user[rows]]  # [E]
    idx = rows[:, None] - max_len + np.arange(max_len)[None, :]  # [E, L]
    valid = idx >= starts[:, None]  # [E, L]
    history = np.where(valid, data.item[np.maximum(idx, 0)], 0)
    return Events(
        history=history.astype(np.int64),
        lengths=valid.sum(axis=1).astype(np.int64),
        target=data.item[rows],
        user=data.user[rows],
        row=rows,
        time=None if data.timestamp is None else data.timestamp[rows],
        warm=warm_items[data.item[rows]],
    )


def _item_mask(data: Interactions, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(data.n_items + 1, dtype=bool)
    mask[data.item[rows]] = True
    return mask


def temporal_split(data: Interactions, cuts, max_len: int = 50) -> Split:
    if not data.has_time:
        raise ValueError(
            f"dataset {data.name!r} has no timestamps, so it cannot be split in time; use protocol 'loo'"
        )
    t = [to_timestamp(c) for c in cuts]
    SplitConfig(protocol="temporal", max_len=max_len, cuts=tuple(t))  # validates the cuts
    ts, pos = data.timestamp, data.position
    t_val, t0, ends = t[0], t[1], t[2:]
    warm_items = _item_mask(data, np.flatnonzero(ts < t_val))
    names = ["train", VALID] + [window_name(i + 1) for i in range(len(ends))]
    bounds = dict(zip(names, [(None, t_val), (t_val, t0)] + list(zip([t0, *ends[:-1]], ends))))
    target = ~np.isin(data.item, data.side_items)  # [M] side items are never predicted
    parts, skipped = {}, {}
    for name, (lo, hi) in bounds.items():
        in_part = (ts < hi) & (ts >= (lo if lo is not None else np.iinfo(np.int64).min)) & target
        skipped[name] = int((in_part & (pos == 0)).sum())
        parts[name] = _events(data, np.flatnonzero(in_part & (pos > 0)), max_len, warm_items)
    return Split(
        protocol="temporal", dataset=data.name, n_items=data.n_items, max_len=max_len,
        train=parts["train"], valid=parts["valid"], tests={n: parts[n] for n in names[2:]},
        bounds=bounds, skipped=skipped, warm_items=warm_items, data_sha256=data.sha256, side_items=data.side_items,
    )


def loo_split(data: Interactions, max_len: int = 50) -> Split:
    """Leave-one-out: per user, last item test, second-to-last validation, earlier next-item
    prefixes train (RecBole's protocol). Leaks across the global timeline: one user's test
    item may predate another user's training items."""
    if len(data.side_items):
        raise ValueError(f"dataset {data.name!r} has side items, which leave-one-out's positions would count as "
                         "targets; split it with protocol 'temporal'")
    pos = data.position
    n = np.diff(data.user_starts)[data.user]  # [M] length of each row's user sequence
    is_test, is_valid = pos == n - 1, pos == n - 2
    is_train = ~is_test & ~is_valid
    warm_items = _item_mask(data, np.flatnonzero(is_train))
    parts, skipped = {}, {}
    for name, mask in (("train", is_train), ("valid", is_valid), ("test", is_test)):
        skipped[name] = int((mask & (pos == 0)).sum())
        parts[name] = _events(data, np.flatnonzero(mask & (pos > 0)), max_len, warm_items)
    return Split(
        protocol="loo", dataset=data.name, n_items=data.n_items, max_len=max_len,
        train=parts["train"], valid=parts["valid"], tests={"test": parts["test"]},
        bounds={k: (None, None) for k in parts}, skipped=skipped, warm_items=warm_items,
        data_sha256=data.sha256,
    )


class LeakageError(AssertionError):
    """A split lets an event see data it must not see."""


def check_leakage(split: Split, data: Interactions) -> None:
    """Prove the split is leakage-free against the raw table; raises LeakageError naming the breach.

    For every event: each history item is an earlier interaction of the same user (checked
    against the table, not the split's own bookkeeping); under `temporal`, no training event
    touches time >= t_val, no validation event touches time >= t0, and every target lies in
    its part's window; under `loo`, no training event touches a user's last two interactions
    and validation never sees the test item.
    """
    pos, starts = data.position, data.user_starts
    for name, ev in split.parts().items():
        if len(ev) == 0:
            continue
        offs = np.arange(-split.max_len, 0)[None, :]  # [1, L]
        src = ev.row[:, None] + offs  # [E, L] rows the history claims to come from
        real = ev.history > 0
        if np.any(real & (src < starts[ev.user][:, None])):
            raise LeakageError(f"{name}: a history reaches into another user's interactions")
        if not np.array_equal(np.where(real, data.item[np.maximum(src, 0)], 0), ev.history):
            raise LeakageError(f"{name}: a history is not the user's items right before the target")
        if np.any(data.user[ev.row] != ev.user) or np.any(data.item[ev.row] != ev.target):
            raise LeakageError(f"{name}: an event's target does not match the interaction table")
        touched = np.concatenate([np.where(real, src, ev.row[:, None]), ev.row[:, None]], axis=1)  # [E, L+1]
        if split.protocol == "temporal":
            lo, hi = split.bounds[name]
            latest = data.timestamp[touched].max(axis=1)  # [E]
            if np.any(latest >= hi):
                raise LeakageError(f"{name}: an event touches time >= {to_date(hi)} (its part's end)")
            if lo is not None and np.any(data.timestamp[ev.row] < lo):
                raise LeakageError(f"{name}: a target precedes its window start {to_date(lo)}")
        else:
            n = np.diff(starts)[ev.user][:, None]  # [E, 1]
            limit = {"train": n - 2, "valid": n - 1, "test": n}[name]
            if np.any(pos[touched] >= limit):
                raise LeakageError(f"{name}: an event touches a held-out leave-one-out position")


def make_split(data: Interactions, config: SplitConfig, default_cuts=None) -> Split:
    """Split by `config`; temporal cuts come from the config, else `default_cuts`, else proportional."""
    if config.protocol == "loo":
        return loo_split(data, config.max_len)
    if not data.has_time:
        return temporal_split(data, (), config.max_len)  # raises the clear no-timestamps error
    cuts = config.cuts or default_cuts or proportional_cuts(data.timestamp)
    return temporal_split(data, cuts, config.max_len)
