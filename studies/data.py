"""The study's data: loaded and split once in the driver, then shared with trials through Ray."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from idea.data import get_spec, load_dataset
from idea.data.interactions import Interactions, from_arrays
from idea.splits import Split, SplitConfig, make_split

from studies.config import StudyConfig


def subsample_users(data: Interactions, n_users: int, seed: int) -> Interactions:
    """Keep `n_users` random users (all their interactions) for smoke runs on real data.
    The digest changes with the sample, so `data_sha256` never claims the full dataset."""
    if n_users >= data.n_users:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(data.n_users, n_users, replace=False))
    rows = np.isin(data.user, keep)
    digest = hashlib.sha256(f"{data.sha256}:users={n_users}:seed={seed}".encode()).hexdigest()
    timestamp = None if data.timestamp is None else data.timestamp[rows]
    # from_arrays re-indexes users and items densely; rows are already in (user, time, file) order.
    return from_arrays(data.name, data.user[rows], data.item[rows], timestamp, digest)


def load_split(study: StudyConfig, data_dir: str | os.PathLike | None = None) -> tuple[Interactions, Split]:
    """The dataset (subsampled if the study says so) and its split by the study's protocol."""
    data = load_dataset(study.dataset, data_dir)
    if study.max_users is not None:
        data = subsample_users(data, study.max_users, study.seed)
    return data, make_split(data, SplitConfig(study.protocol, study.max_len, study.cuts), get_spec(study.dataset).cuts)


def without_tests(split: Split) -> Split:
    """The split the search sees: training and validation only, so no trial can touch a test window."""
    return dataclasses.replace(split, tests={}, bounds={k: split.bounds[k] for k in ("train", "valid")})
