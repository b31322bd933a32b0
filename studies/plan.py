"""What the stages of one driver run share, built once: the `StageContext` (study, split, resources, folder,
parent run, resume) and one `ArmPlan` per arm (its fixed training fields, tags, epochs and warm starts).
The search, final and oracle stages (studies/search.py, studies/final.py, studies/oracle.py) take
`(ctx, plan)` and rebuild none of it. Also what they hand each other: an arm's `Selection` (its best search
trial) and the base arm's models the fine-tuning arms start from (`Start`, `Starts`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from analysis.mlflow_ui import arm_colours
from idea.splits import Split

from studies.config import StudyConfig
from studies.data import without_tests
from studies.experiments import Resources
from studies.folder import StudyFolder
from studies.tracking import StudyRun


NO_SEARCH = "none"  # the selected trial of an arm without a search (its final runs' `selected_trial` tag)


@dataclass(frozen=True)
class Selection:
    """An arm's best search trial: its sampled parameters and best validation metric; or, for an arm
    without a search (`first_point`), its first point, with no trial, value or checkpoint."""

    arm: str
    trial_id: str  # NO_SEARCH for an arm without a search
    params: dict[str, Any]
    value: float  # best validation NDCG@10 over the trial's epochs; NaN without a search
    checkpoint: str | None = None  # the trial's last checkpoint folder (holds its best state)

    @property
    def searched(self) -> bool:
        return self.trial_id != NO_SEARCH


def first_point(study: StudyConfig, arm: str) -> Selection:
    """What an arm without a search (num_samples 0) retrains with its final seeds: its `first` point."""
    return Selection(arm, NO_SEARCH, dict(study.arms[arm].first), math.nan)


@dataclass(frozen=True)
class Start:
    """A trained base-arm model a fine-tuning arm starts from: its checkpoint file and MLflow run."""

    path: str  # where the trials read it (absolute)
    run_id: str | None
    logged: str  # what the runs' `init_from` param says: the path within the study folder, which may move


@dataclass(frozen=True)
class Starts:
    """Where every trial of a fine-tuning arm starts: `search` for search trials (None when the base arm has
    no search, and then no fine-tuning arm has one either), `seeds[s]` for final seed s."""

    search: Start | None
    seeds: dict[int, Start]


@dataclass(frozen=True)
class ArmPlan:
    """One arm as its stages run it. `fixed`: every trial's TrainConfig fields besides the sampled ones
    (the device included); `starts`: the base arm's models a fine-tuning arm starts from, else None."""

    arm: str
    method: str
    fixed: Mapping[str, Any]
    tags: Mapping[str, str]  # the arm's roles (`Arms.tags`), on every run of the arm
    colour: str  # the arm's colour in the report's figures, which MLflow's charts draw its final runs in
    epochs: int  # the most epochs a trial trains
    starts: Starts | None = None

    @property
    def search_fixed(self) -> dict[str, Any]:
        """The search trials' fixed fields: a fine-tuning arm's start from the base arm's selected search trial."""
        return {**self.fixed, **({"init_from": self.starts.search.path} if self.starts is not None else {})}


@dataclass(frozen=True)
class StageContext:
    """What every stage of one driver run shares. `split` has the test windows (final and oracle stages);
    `search_split` is the same without them (search trials never see test data)."""

    study: StudyConfig
    name: str  # the study's name: its MLflow experiment and folder
    split: Split
    resources: Resources
    folder: StudyFolder
    study_run: StudyRun
    resume: bool
    search_split: Split = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "search_split", without_tests(self.split))

    def plan(self, arm: str, starts: Starts | None = None) -> ArmPlan:
        """The arm's plan; `starts` for an arm that fine-tunes the base arm's models."""
        return ArmPlan(arm, self.study.arms[arm].method, {**self.study.fixed(arm), "device": self.resources.device},
                       self.study.roles().tags(arm), arm_colours(self.study.roles())[arm], self.study.epochs_of(arm),
                       starts)
