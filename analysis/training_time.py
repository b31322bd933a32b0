"""What a study's training cost, per arm and stage: its runs, the epochs they trained and the hours those
epochs took, as each epoch timed itself (training and validation; `idea.trainer`'s `epoch_seconds`).

Summed over epochs rather than read off a clock, so the figures hold for a study that was stopped and
resumed (the hours between are not counted) or that ran trials side by side (each trial's epochs count).
On a machine shared with other work they include that load. Not counted: start-up, the final runs' test
evaluation, an epoch cut by a stop before it ended, and runs deleted to MLflow's trash.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from idea.contract import EPOCH_SECONDS, Stage

__all__ = ["SECONDS_KEY", "TRAINING_TIME_COLUMNS", "ALL", "is_wanted", "training_time"]

SECONDS_KEY = EPOCH_SECONDS
TRAINING_TIME_COLUMNS = ["study", "arm", "stage", "runs", "epochs", "hours", "s_per_epoch"]
ALL = "all"  # the arm and stage of the row that sums the study


def is_wanted(key: str) -> bool:
    """The metric key `training_time` reads (the `keys` of `analysis.load.StudyRead.history`)."""
    return key == SECONDS_KEY


def training_time(history: pd.DataFrame, arms: Sequence[str] = ()) -> pd.DataFrame:
    """One row per study, arm and stage (TRAINING_TIME_COLUMNS) from `StudyRead.history` rows of every run,
    whatever its status: arms in `arms`' order (the report's; the others after, by name), each arm's stages
    in the order they run (search, final, oracle); then a row `all` per study. An epoch logged twice counts
    once."""
    rows = history.loc[history["key"] == SECONDS_KEY] if not history.empty else history
    if rows.empty:
        return pd.DataFrame(columns=TRAINING_TIME_COLUMNS)
    epochs = rows.drop_duplicates(["run_id", "step"], keep="last")
    out = epochs.groupby(["study", "arm", "stage"]).agg(runs=("run_id", "nunique"), epochs=("step", "size"),
                                                        seconds=("value", "sum")).reset_index()
    rank = {arm: i for i, arm in enumerate(arms)}
    out = out.assign(_stage=out["stage"].map({s: i for i, s in enumerate(Stage.NESTED)}),
                     _arm=out["arm"].map(lambda a: rank.get(a, len(rank))))
    out = out.sort_values(["study", "_arm", "arm", "_stage"], kind="stable")
    parts = []
    for study, per_study in out.groupby("study", sort=False):
        total = {c: per_study[c].sum() for c in ("runs", "epochs", "seconds")}  # counts stay integers
        parts += [per_study, pd.DataFrame([{**total, "study": study, "arm": ALL, "stage": ALL}])]
    out = pd.concat(parts, ignore_index=True)
    out["hours"] = out["seconds"] / 3600
    out["s_per_epoch"] = out["seconds"] / out["epochs"]
    return out[TRAINING_TIME_COLUMNS]
