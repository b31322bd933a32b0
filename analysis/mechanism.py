"""Did IDEA's mechanism act? Its per-epoch telemetry (idea/methods.py; names in idea/contract.py), read back
from the final runs, per arm and in words a reader can check against the numbers beside them.

The two things IDEA adds to fine-tuning are a penalty on the variance of the environment risks and
extractors that learn which items to drop. Neither acts when the penalty's gradient is a small share of the
recommender's, or when the extractors take few updates and their masks end where they began. The thresholds
below say where the words change; the table gives the numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from idea.contract import KEEP_RATE, Result, is_mechanism_metric

__all__ = ["PENALTY_NEGLIGIBLE", "PENALTY_ACTING", "MASKS_MOVED", "is_wanted", "epochs", "mechanism", "verdict"]

PENALTY_NEGLIGIBLE = 0.01  # penalty share below this: the recommender is, in effect, erm_ft on mixed views
PENALTY_ACTING = 0.1  # from this share on, the penalty steers a tenth of the recommender's gradient or more
MASKS_MOVED = 0.05  # change of an extractor's keep rate or of the disagreement, first IDEA epoch to best epoch

MECHANISM_COLUMNS = ["study", "arm", "n_seeds", "epochs_run", "best_epoch", "extractor_steps", "penalty_share",
                     "keep_first", "keep_best", "keep_spread_best", "keep_moved_best", "disagreement_first",
                     "disagreement_best",
                     "lambda_dominant", "risk_var", "verdict"]


def is_wanted(key: str) -> bool:
    """The metric keys `epochs` reads (the `keys` of `analysis.load.StudyRead.history`)."""
    return is_mechanism_metric(key) or key == Result.BEST_EPOCH


def epochs(history: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, arm, seed, epoch) of the IDEA epochs of the runs that logged telemetry, from
    `StudyRead.history(keys=is_wanted)`: each telemetry key a column, keep_mean and keep_spread (max - min)
    over the extractors' keep rates, and the run's best_epoch (logged once, at its end)."""
    empty = pd.DataFrame(columns=["study", "arm", "seed", "epoch", "best_epoch"])
    if history.empty:
        return empty
    run = ["study", "arm", "seed"]
    best = history.loc[history["key"] == Result.BEST_EPOCH].groupby(run)["value"].last().rename(Result.BEST_EPOCH)
    telemetry = history.loc[history["key"] != Result.BEST_EPOCH]
    if telemetry.empty:
        return empty
    wide = telemetry.pivot_table(index=[*run, "step"], columns="key", values="value",
                                 aggfunc="last").reset_index().rename(columns={"step": "epoch"})
    wide.columns.name = None
    keep = wide[[c for c in wide.columns if c.startswith(KEEP_RATE)]]
    wide["keep_mean"], wide["keep_spread"] = keep.mean(axis=1), keep.max(axis=1) - keep.min(axis=1)
    wide = wide.merge(best.reset_index(), on=run, how="left")
    return wide.loc[wide["penalty_share"].notna()].reset_index(drop=True) if "penalty_share" in wide else empty


def mechanism(per_epoch: pd.DataFrame) -> pd.DataFrame:
    """Per IDEA arm (means over its final seeds) from `epochs`: epochs run, best epoch, extractor updates up
    to the best epoch, the median penalty share over its IDEA epochs, the mean keep rate in its first IDEA
    epoch and at the best one (and the spread over extractors there), the largest change of one extractor's
    keep rate between the two (extractors that move apart leave the mean where it was), the disagreement
    likewise, the dominant mixing weight and the risk variance at the best epoch, and a verdict in words."""
    if per_epoch.empty:
        return pd.DataFrame(columns=MECHANISM_COLUMNS)
    rows = []
    for (study, arm), g in per_epoch.groupby(["study", "arm"], sort=False):
        seeds = []
        for _, run in g.groupby("seed"):
            run = run.sort_values("epoch")
            at = run.loc[run["epoch"] == run["best_epoch"]]
            at = at.iloc[-1] if len(at) else run.iloc[-1]  # a run without a best epoch: its last
            first = run.iloc[0]
            rates = [c for c in run.columns if c.startswith(KEEP_RATE)]
            seeds.append({"epochs_run": run["epoch"].max(), "best_epoch": at["epoch"],
                          "extractor_steps": at.get("extractor_steps", np.nan),
                          "penalty_share": run["penalty_share"].median(),
                          "keep_first": first["keep_mean"], "keep_best": at["keep_mean"],
                          "keep_spread_best": at["keep_spread"],
                          "keep_moved_best": (at[rates] - first[rates]).abs().max(),
                          "disagreement_first": first.get("mask_disagreement", np.nan),
                          "disagreement_best": at.get("mask_disagreement", np.nan),
                          "lambda_dominant": at.get("lambda_dominant", np.nan), "risk_var": at.get("risk_var", np.nan)})
        mean = pd.DataFrame(seeds).mean()
        rows.append({"study": study, "arm": arm, "n_seeds": len(seeds), **mean.to_dict(), "verdict": verdict(mean)})
    return pd.DataFrame(rows)[MECHANISM_COLUMNS]


def verdict(row: pd.Series) -> str:
    """The mechanism in words from one row of `mechanism`'s numbers (thresholds at the top of this module)."""
    share = row["penalty_share"]
    if share < PENALTY_NEGLIGIBLE:
        penalty = f"penalty negligible ({share:.2%} of the mean risk's gradient, under {PENALTY_NEGLIGIBLE:.0%})"
    elif share < PENALTY_ACTING:
        penalty = f"penalty small ({share:.1%} of the mean risk's gradient, under {PENALTY_ACTING:.0%})"
    else:
        penalty = f"penalty acting ({share:.0%} of the mean risk's gradient)"
    moved = max(row["keep_moved_best"] if pd.notna(row["keep_moved_best"]) else 0,
                abs(row["disagreement_best"] - row["disagreement_first"]) if pd.notna(row["disagreement_best"]) else 0)
    largest = row["keep_moved_best"]
    by = "by less than 0.01" if largest < 0.01 else f"by up to {largest:.2f}"  # not "by up to 0.00"
    change = (f"{row['extractor_steps']:.0f} extractor updates; mean keep rate {row['keep_first']:.2f} -> "
              f"{row['keep_best']:.2f}, one extractor's {by}")
    masks = (f"masks moved ({change})" if moved >= MASKS_MOVED
             else f"masks stayed where they began ({change}, change under {MASKS_MOVED})")
    active = share >= PENALTY_ACTING and moved >= MASKS_MOVED
    return f"{'active' if active else 'inactive'}: {penalty}; {masks}"
