"""How each final run ended (analysis/stopping.py): epochs trained, best epoch, cap, patience, and the verdict."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis import report
from analysis import stopping as ST
from analysis.load import SHIFT_FRAME_COLUMNS
from idea.contract import Result, Stage


@pytest.mark.parametrize("epochs_run, best, cap, patience, want", [
    (29, 19, 300, 10, ST.EARLY_STOPPING),  # ten epochs without a gain
    (100, 95, 100, 10, ST.EPOCH_CAP),  # still improving at the cap
    (100, 90, 100, 10, ST.EARLY_STOPPING),  # patience ran out at the cap: it would have stopped there anyway
    (12, 8, 100, 10, ST.CUT_SHORT),  # neither: a time budget or an outside stop
    (10, 0, 100, 10, ST.CUT_SHORT),  # no selectable epoch yet (IDEA's pretraining)
    (10, float("nan"), 100, 10, None),  # best epoch never logged
])
def test_ended_by_names_what_stopped_the_run(epochs_run, best, cap, patience, want):
    assert ST.ended_by(epochs_run, best, cap, patience) == want


def _history(run_id: str, epochs: int, best: int) -> list[dict]:
    """`StudyRead.history` rows of one run: train_loss per epoch, best_epoch once."""
    run = {"study": "s", "arm": "a", "stage": Stage.FINAL, "trial": "t", "seed": 1, "run_id": run_id,
           "run_name": run_id}
    rows = [{**run, "key": ST.EPOCHS_KEY, "step": s, "value": 1.0 / s} for s in range(1, epochs + 1)]
    return rows + [{**run, "key": Result.BEST_EPOCH, "step": 0, "value": float(best)}]


def _results(run_id: str, arm: str, seed: int, stage: str, epochs: int, patience: int) -> list[dict]:
    """Two metric rows of one run, as `StudyRead.results` gives every run many."""
    return [{"study": "s", "arm": arm, "stage": stage, "seed": seed, "run_id": run_id, "run_name": f"{arm}-seed{seed}",
             "epochs": epochs, "patience": patience, "part": part, "value": 0.1} for part in ("valid", "test")]


def test_stopping_table_reads_epochs_from_history_and_budget_from_params():
    """One row per finished final run: epochs = the last step of train_loss, best epoch from its metric, the cap
    and patience from the run's params; search runs and runs absent from `results` (not FINISHED) are left out."""
    history = pd.DataFrame(_history("a", 29, 19) + _history("b", 100, 97) + _history("c", 7, 5)
                           + _history("running", 4, 4))
    results = pd.DataFrame(_results("a", "erm", 1, Stage.FINAL, 300, 10)
                           + _results("b", "idea", 1, Stage.FINAL, 100, 10)
                           + _results("c", "idea", 0, Stage.SEARCH, 100, 2))
    table = ST.stopping(history, results)
    assert list(table.columns) == ST.STOPPING_COLUMNS
    assert table[["run_name", "epochs_run", "best_epoch", "epochs", "patience", "ended_by"]].values.tolist() == [
        ["erm-seed1", 29, 19, 300, 10, ST.EARLY_STOPPING], ["idea-seed1", 100, 97, 100, 10, ST.EPOCH_CAP]]
    assert ST.not_early_stopped(table) == ["idea-seed1 (epoch cap)"]
    assert ST.stopping(pd.DataFrame(), results).empty and ST.stopping(history, results.iloc[:0]).empty


def test_a_fine_tuning_run_is_compared_with_the_base_arm_run_of_its_seed_on_validation():
    """valid_vs_start = the run's validation metric (the selection's: NDCG@10, all targets) minus the base arm's
    run of the same seed; blank for the base arm, for a seed without a base run, and without a base arm."""
    history = pd.DataFrame(sum((_history(r, 20, 10) for r in ("e1", "e2", "i1", "i2", "i3")), []))
    rows = []
    for run_id, arm, seed, ndcg in (("e1", "erm", 1, 0.0364), ("e2", "erm", 2, 0.0350), ("i1", "idea", 1, 0.0360),
                                    ("i2", "idea", 2, 0.0371), ("i3", "idea", 3, 0.0300)):
        for r in _results(run_id, arm, seed, Stage.FINAL, 300, 10):  # parts valid and test (test: 9.0)
            rows += [{**r, "subset": "all", "metric": "ndcg", "k": 10, "value": ndcg if r["part"] == "valid" else 9.0},
                     {**r, "subset": "warm", "metric": "ndcg", "k": 10, "value": 1.0},
                     {**r, "subset": "all", "metric": "hr", "k": 10, "value": 2.0}]
    results = pd.DataFrame(rows)
    table = ST.stopping(history, results, base="erm").set_index("run_name")["valid_vs_start"]
    assert table[["idea-seed1", "idea-seed2"]].tolist() == pytest.approx([0.0360 - 0.0364, 0.0371 - 0.0350])
    assert table[["erm-seed1", "erm-seed2", "idea-seed3"]].isna().all()
    assert ST.stopping(history, results)["valid_vs_start"].isna().all()


def test_report_notes_runs_that_early_stopping_did_not_end():
    """A run stopped by its cap is a caveat on its arm's comparison: the report's notes name it; with every run
    early-stopped there is no such note."""
    history = pd.DataFrame(_history("a", 29, 19) + _history("b", 100, 97))
    results = pd.DataFrame(_results("a", "erm", 1, Stage.FINAL, 300, 10)
                           + _results("b", "idea", 1, Stage.FINAL, 100, 10))
    results = results.assign(subset="all", metric="ndcg", k=10, trial="t")
    shift = pd.DataFrame(columns=SHIFT_FRAME_COLUMNS)
    tables = report.build_tables(results, shift, {}, history=history)
    got = [n for n in report.notes(results, tables, shift) if "early stopping" in n]
    assert got == ["1 final run(s) did not end by early stopping, so their arm was compared at a budget that bound "
                   "(epoch cap) or was cut: idea-seed1 (epoch cap)."]
    tables = report.build_tables(results.loc[results["run_id"] == "a"], shift, {}, history=history)
    assert not [n for n in report.notes(results, tables, shift) if "early stopping" in n]


def test_counts_are_written_whole_but_a_mean_of_counts_keeps_its_decimals():
    """The stopping table's epochs read as counts; the mechanism table's best_epoch, a mean over seeds, must not
    be rounded to one."""
    assert report._column("best_epoch", pd.Series([19.0, 22.0, float("nan")])).tolist() == ["19", "22", ""]
    assert report._column("best_epoch", pd.Series([12.6, 17.0])).tolist() == ["12.60", "17.00"]
