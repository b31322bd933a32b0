"""Training time per arm and stage (analysis/training_time.py): epochs and their seconds, summed per run."""
from __future__ import annotations

import pandas as pd

from analysis import training_time as TT
from idea.contract import Stage


def _epochs(run_id: str, arm: str, stage: str, seconds: list[float], study: str = "s") -> list[dict]:
    """`StudyRead.history` rows of one run's epoch seconds (step = epoch), and a train_loss row per epoch."""
    run = {"study": study, "arm": arm, "stage": stage, "trial": run_id, "seed": 1, "run_id": run_id,
           "run_name": run_id}
    rows = [{**run, "key": TT.SECONDS_KEY, "step": e, "value": s} for e, s in enumerate(seconds, 1)]
    return rows + [{**run, "key": "train_loss", "step": e, "value": 1.0} for e in range(1, len(seconds) + 1)]


def test_training_time_sums_each_arm_and_stage_in_the_arms_order_and_the_stages_run_order():
    """Runs, epochs and seconds summed per arm and stage; arms in the given order (one it does not name
    last), stages search before final; an epoch logged twice (a resumed run) counts once; a row for the study."""
    history = pd.DataFrame(
        _epochs("i1", "idea", Stage.FINAL, [100, 200]) + _epochs("i1", "idea", Stage.FINAL, [100, 200])
        + _epochs("e1", "erm", Stage.FINAL, [30, 30, 30]) + _epochs("e2", "erm", Stage.FINAL, [60])
        + _epochs("s1", "erm", Stage.SEARCH, [36, 36]) + _epochs("x1", "extra", Stage.SEARCH, [9])
        + _epochs("i0", "idea", Stage.SEARCH, [3600]))
    table = TT.training_time(history, ["erm", "idea"])
    assert list(table.columns) == TT.TRAINING_TIME_COLUMNS
    assert table["runs"].dtype.kind == table["epochs"].dtype.kind == "i"  # counts, also in the study's row
    assert table[["arm", "stage", "runs", "epochs"]].values.tolist() == [
        ["erm", Stage.SEARCH, 1, 2], ["erm", Stage.FINAL, 2, 4], ["idea", Stage.SEARCH, 1, 1],
        ["idea", Stage.FINAL, 1, 2], ["extra", Stage.SEARCH, 1, 1], [TT.ALL, TT.ALL, 6, 10]]
    seconds = [72, 150, 3600, 300, 9, 4131]
    assert table["hours"].tolist() == [s / 3600 for s in seconds]
    assert table["s_per_epoch"].tolist() == [36, 37.5, 3600, 150, 9, 413.1]


def test_training_time_keeps_studies_apart_and_is_empty_without_epoch_seconds():
    history = pd.DataFrame(_epochs("a", "erm", Stage.FINAL, [10], study="s1")
                           + _epochs("b", "erm", Stage.FINAL, [20, 20], study="s2"))
    table = TT.training_time(history)
    assert table[["study", "arm", "epochs", "hours"]].values.tolist() == [
        ["s1", "erm", 1, 10 / 3600], ["s1", TT.ALL, 1, 10 / 3600], ["s2", "erm", 2, 40 / 3600],
        ["s2", TT.ALL, 2, 40 / 3600]]
    assert TT.training_time(history.loc[history["key"] != TT.SECONDS_KEY]).empty
    assert TT.training_time(pd.DataFrame()).empty
