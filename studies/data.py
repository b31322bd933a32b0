"""The study's data: loaded and split once in the driver, then shared with trials through Ray."""
from __future__ import annotations

import dataclasses
import os

from idea.data import get_spec, load_dataset
from idea.data.interactions import Interactions, subsample_users
from idea.splits import Split, SplitConfig, make_split

from studies.config import StudyConfig


def load_split(study: StudyConfig, data_dir: str | os.PathLike | None = None) -> tuple[Interactions, Split]:
    """The dataset (subsampled if the study says so) and its split by the study's protocol."""
    data = load_dataset(study.dataset, data_dir)
    if study.max_users is not None:
        data = subsample_users(data, study.max_users, study.seed)
    return data, make_split(data, SplitConfig(study.protocol, study.max_len, study.cuts), get_spec(study.dataset).cuts)


def without_tests(split: Split) -> Split:
    """The split the search sees: training and validation only, so no trial can touch a test window."""
    return dataclasses.replace(split, tests={}, bounds={k: split.bounds[k] for k in ("train", "valid")})
