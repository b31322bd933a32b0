"""How each final run ended: the epochs it ran, its best epoch, the epoch cap and patience it had, and whether
early stopping ended it. A comparison of training methods is at its intended budget only when every run
stopped on its own (`patience` epochs without a validation gain), not at a cap that cut it off. A fine-tuning
run's best epoch is one of its own, never its start: `valid_vs_start` says whether it rose above the model
it began from.
"""
from __future__ import annotations

import pandas as pd

from idea.contract import SELECTION, VALID, Result, Stage

__all__ = ["STOPPING_COLUMNS", "EARLY_STOPPING", "EPOCH_CAP", "CUT_SHORT", "EPOCHS_KEY", "is_wanted", "ended_by",
           "stopping", "not_early_stopped"]

EPOCHS_KEY = "train_loss"  # logged at every epoch (step = epoch), so its last step is the epochs a run trained
EARLY_STOPPING = "early stopping"  # `patience` epochs passed without a validation gain
EPOCH_CAP = "epoch cap"  # the run reached its `epochs` while it was still improving
CUT_SHORT = "cut short"  # neither: a time budget, or a run stopped from outside
STOPPING_COLUMNS = ["study", "arm", "seed", "run_name", "epochs_run", "best_epoch", "epochs", "patience", "ended_by",
                    "valid_vs_start"]


def is_wanted(key: str) -> bool:
    """The metric keys `stopping` reads (the `keys` of `analysis.load.StudyRead.history`)."""
    return key in (EPOCHS_KEY, Result.BEST_EPOCH)


def ended_by(epochs_run: float, best_epoch: float, epochs: float, patience: float) -> str | None:
    """What ended a run that trained `epochs_run` epochs, its best at `best_epoch` (0: none selectable), with
    cap `epochs` and `patience`. Early stopping wins a tie with the cap: the run would have stopped there anyway.
    None where a number is missing."""
    if any(pd.isna(v) for v in (epochs_run, best_epoch, epochs, patience)):
        return None
    if best_epoch > 0 and epochs_run - best_epoch >= patience:
        return EARLY_STOPPING
    return EPOCH_CAP if epochs_run >= epochs else CUT_SHORT


def stopping(history: pd.DataFrame, results: pd.DataFrame, base: str | None = None, metric: str = SELECTION[0],
             k: int = SELECTION[1]) -> pd.DataFrame:
    """One row per finished final run (STOPPING_COLUMNS): from `history` (`StudyRead.history(keys=is_wanted)`)
    the epochs it trained and its best epoch, from `results` (`StudyRead.results()`, finished runs) its arm,
    seed and the `epochs` and `patience` it was given, and `ended_by`; for a run of an arm fine-tuning the
    `base` arm, `valid_vs_start`: its validation `metric`@`k` (all targets) minus that of the base arm's run
    of its seed, the model it started from (below 0: it never rose above its start)."""
    final = results.loc[results["stage"] == Stage.FINAL]
    if history.empty or final.empty:
        return pd.DataFrame(columns=STOPPING_COLUMNS)
    trained = history.loc[history["key"] == EPOCHS_KEY].groupby("run_id")["step"].max().rename("epochs_run")
    best = history.loc[history["key"] == Result.BEST_EPOCH].groupby("run_id")["value"].last().rename("best_epoch")
    params = [c for c in ("epochs", "patience") if c in final.columns]
    runs = final.drop_duplicates("run_id").set_index("run_id")[["study", "arm", "seed", "run_name", *params]]
    out = runs.join(trained, how="inner").join(best, how="left").reindex(columns=STOPPING_COLUMNS[:-2])
    out["ended_by"] = [ended_by(*r) for r in out[["epochs_run", "best_epoch", "epochs", "patience"]].itertuples(
        index=False)]
    out["valid_vs_start"] = _vs_start(final, out, base, metric, k)
    return out.reset_index(drop=True)


def _vs_start(final: pd.DataFrame, runs: pd.DataFrame, base: str | None, metric: str, k: int) -> pd.Series:
    """Each run's validation `metric`@`k` minus that of its seed's run of the `base` arm (indexed like `runs`,
    by run id); NaN for the base arm's own runs and where either value is missing."""
    if base is None:
        return pd.Series(float("nan"), index=runs.index)
    valid = final.loc[(final["part"] == VALID) & (final["subset"] == "all") & (final["metric"] == metric)
                      & (final["k"] == k)]
    value = valid.drop_duplicates("run_id").set_index("run_id")["value"].reindex(runs.index)
    start = valid.loc[valid["arm"] == base].drop_duplicates(["study", "seed"]).set_index(["study", "seed"])["value"]
    gain = value - start.reindex(pd.MultiIndex.from_frame(runs[["study", "seed"]])).to_numpy()
    return gain.where(runs["arm"] != base)


def not_early_stopped(table: pd.DataFrame) -> list[str]:
    """`run_name (ended_by)` of every run in a `stopping` table that early stopping did not end."""
    other = table.loc[table["ended_by"] != EARLY_STOPPING]
    return [f"{r.run_name} ({r.ended_by or 'unknown'})" for r in other.itertuples()]
