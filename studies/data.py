"""The study's data: loaded and split once in the driver, then shared with trials through Ray."""
from __future__ import annotations

import dataclasses
import os

from idea.data import load_split
from idea.data.interactions import Interactions
from idea.splits import Split, SplitConfig

from studies.config import StudyConfig


def study_split(study: StudyConfig, data_dir: str | os.PathLike | None = None) -> tuple[Interactions, Split]:
    """The dataset (subsampled if the study says so) and its split by the study's protocol."""
    return load_split(study.dataset, data_dir, SplitConfig(study.protocol, study.max_len, study.cuts),
                      study.max_users, study.seed)


def without_tests(split: Split) -> Split:
    """The split the search sees: training and validation only, so no trial can touch a test window."""
    return dataclasses.replace(split, tests={}, bounds={k: split.bounds[k] for k in ("train", "valid")})
