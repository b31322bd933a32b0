"""The canonical interaction table every dataset reader produces."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd


class DataFormatError(ValueError):
    """A data file exists but its content is malformed (the message names file, line and problem)."""


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing (the message lists paths tried and where to get them)."""


@dataclass(frozen=True, eq=False)
class Interactions:
    """One dataset as flat arrays, sorted by (user, timestamp, file order).

    `user` is 0..n_users-1, `item` is 1..n_items (0 is padding), `timestamp` is
    Unix seconds or None for datasets without time (leave-one-out only).
    Rows of one user are contiguous and chronological; ties keep file order.
    """

    name: str
    user: np.ndarray  # [M] int64
    item: np.ndarray  # [M] int64
    timestamp: np.ndarray | None  # [M] int64 or None
    n_users: int
    n_items: int
    sha256: str  # digest of the source bytes (or generator parameters): the `data_sha256` tag
    # Side items (e.g. promotions shown to the user): they occur in histories but are never a target. Only
    # the positive-control data (idea/data/synthetic.py) has them.
    side_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [S] item ids

    def __post_init__(self) -> None:
        m = len(self.user)
        if len(self.item) != m or (self.timestamp is not None and len(self.timestamp) != m):
            raise ValueError("user, item and timestamp arrays must have the same length")
        if m == 0:
            raise ValueError(f"dataset {self.name!r} has no interactions")
        if np.any(np.diff(self.user) < 0):
            raise ValueError("interactions must be grouped by user in ascending user order")
        if self.item.min() < 1 or self.item.max() > self.n_items:
            raise ValueError(f"item ids must lie in 1..{self.n_items}")

    @property
    def n_interactions(self) -> int:
        return len(self.user)

    @property
    def has_time(self) -> bool:
        return self.timestamp is not None

    @property
    def user_starts(self) -> np.ndarray:
        """[n_users + 1] offsets: user u's rows are user_starts[u]:user_starts[u+1]."""
        return np.searchsorted(self.user, np.arange(self.n_users + 1))

    @property
    def position(self) -> np.ndarray:
        """[M] index of each row within its user's sequence (0 = first interaction)."""
        starts = self.user_starts
        return np.arange(self.n_interactions) - np.repeat(starts[:-1], np.diff(starts))

    def frame(self) -> pd.DataFrame:
        cols = {"user": self.user, "item": self.item}
        if self.timestamp is not None:
            cols["timestamp"] = self.timestamp
        return pd.DataFrame(cols)


def from_arrays(name: str, user, item, timestamp, sha256: str, order=None) -> Interactions:
    """Build an Interactions table from raw ids: re-index users 0.., items 1.. and sort stably.

    Raw ids may be any hashable values; users and items are numbered in order of
    first appearance. Rows are sorted by (user, timestamp) with a stable sort, so
    equal timestamps keep the order given (`order` overrides the tie order).
    """
    user_codes, _ = pd.factorize(pd.Series(user), sort=False)
    item_codes, _ = pd.factorize(pd.Series(item), sort=False)
    user_codes = user_codes.astype(np.int64)
    item_codes = item_codes.astype(np.int64) + 1
    ts = None if timestamp is None else np.asarray(timestamp, dtype=np.int64)
    tie = np.arange(len(user_codes)) if order is None else np.asarray(order)
    keys = [tie] + ([ts] if ts is not None else []) + [user_codes]
    idx = np.lexsort(keys)
    return Interactions(
        name=name,
        user=user_codes[idx],
        item=item_codes[idx],
        timestamp=None if ts is None else ts[idx],
        n_users=int(user_codes.max()) + 1,
        n_items=int(item_codes.max()),
        sha256=sha256,
    )


def subsample_users(data: Interactions, n_users: int, seed: int) -> Interactions:
    """Keep `n_users` random users with all their interactions, for smoke runs on real data.
    The digest changes with the sample, so `data_sha256` never claims the full dataset."""
    if n_users >= data.n_users:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(data.n_users, n_users, replace=False))
    rows = np.isin(data.user, keep)
    digest = hashlib.sha256(f"{data.sha256}:users={n_users}:seed={seed}".encode()).hexdigest()
    timestamp = None if data.timestamp is None else data.timestamp[rows]
    # from_arrays re-indexes users and items densely; rows are already in (user, time, file) order.
    sample = from_arrays(data.name, data.user[rows], data.item[rows], timestamp, digest)
    side = np.unique(sample.item[np.isin(data.item[rows], data.side_items)])  # the side items' new ids
    return replace(sample, side_items=side.astype(np.int64))
