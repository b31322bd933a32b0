"""The mechanism table from a hand-built telemetry history: the numbers it averages and the words it picks."""
import pandas as pd
import pytest

from analysis import mechanism as M
from analysis import report
from analysis.load import SHIFT_FRAME_COLUMNS


def history(arm: str, seed: int, shares, keeps, disagreement, best: int) -> list[dict]:
    """A run's rows as `StudyRead.history` returns them: per epoch the telemetry of two extractors, then best_epoch."""
    rows = []
    for epoch, (share, (k0, k1), d) in enumerate(zip(shares, keeps, disagreement), 1):
        values = {"penalty_share": share, "keep_rate_0": k0, "keep_rate_1": k1, "mask_disagreement": d,
                  "extractor_steps": 9.0 * epoch, "lambda_dominant": 0.95, "risk_var": 1e-3 * epoch}
        rows += [{"study": "s", "arm": arm, "stage": "final", "trial": "t", "seed": seed, "run_id": f"{arm}{seed}",
                  "run_name": arm, "key": key, "step": epoch, "value": value} for key, value in values.items()]
    rows.append({"study": "s", "arm": arm, "stage": "final", "trial": "t", "seed": seed, "run_id": f"{arm}{seed}",
                 "run_name": arm, "key": "best_epoch", "step": 0, "value": float(best)})
    return rows


def table(rows) -> pd.DataFrame:
    return M.mechanism(M.epochs(pd.DataFrame(rows))).set_index("arm")


def test_numbers_are_the_runs_means_at_their_best_epochs():
    rows = (history("idea", 1, [0.2, 0.4, 0.9], [(0.9, 0.8), (0.6, 0.5), (0.5, 0.3)], [0.1, 0.2, 0.3], best=2)
            + history("idea", 2, [0.1, 0.3, 0.5], [(0.9, 0.9), (0.8, 0.6), (0.7, 0.7)], [0.1, 0.1, 0.2], best=3))
    got = table(rows).loc["idea"]
    assert got["n_seeds"] == 2 and got["epochs_run"] == 3 and got["best_epoch"] == 2.5
    assert got["penalty_share"] == pytest.approx((0.4 + 0.3) / 2)  # each run's median over its epochs
    assert got["extractor_steps"] == pytest.approx((18 + 27) / 2)  # at the best epoch
    assert got["keep_first"] == pytest.approx((0.85 + 0.9) / 2)
    assert got["keep_best"] == pytest.approx((0.55 + 0.7) / 2)
    assert got["keep_spread_best"] == pytest.approx((0.1 + 0.0) / 2)
    assert got["keep_moved_best"] == pytest.approx((0.3 + 0.2) / 2)  # each run: its largest change of one rate
    assert got["disagreement_best"] == pytest.approx((0.2 + 0.2) / 2)
    assert got["risk_var"] == pytest.approx((2e-3 + 3e-3) / 2)
    assert got["verdict"].startswith("active: penalty acting (35% ")


@pytest.mark.parametrize("share, words", [(0.002, "penalty negligible (0.20%"), (0.05, "penalty small (5.0%"),
                                          (0.5, "penalty acting (50%")])
def test_the_penalty_is_worded_by_its_share(share, words):
    got = table(history("idea", 1, [share] * 2, [(0.5, 0.5), (0.3, 0.3)], [0.2, 0.2], best=2)).loc["idea", "verdict"]
    assert words in got
    assert got.startswith("active" if share >= M.PENALTY_ACTING else "inactive")


def test_masks_that_did_not_move_make_the_mechanism_inactive_whatever_the_penalty():
    still = table(history("idea", 1, [0.5, 0.5], [(0.88, 0.88), (0.87, 0.88)], [0.2, 0.21], best=2)).loc["idea"]
    assert still["verdict"].startswith("inactive") and "masks stayed where they began (18 extractor updates" in still["verdict"]
    assert "one extractor's by up to 0.01," in still["verdict"]
    unmoved = table(history("idea", 1, [0.5, 0.5], [(0.88, 0.88), (0.876, 0.88)], [0.2, 0.2], best=2)).loc["idea"]
    assert "one extractor's by less than 0.01, change under" in unmoved["verdict"]  # beauty-long's 0.005 read "0.00"
    disagreeing = table(history("idea", 1, [0.5, 0.5], [(0.88, 0.88), (0.88, 0.88)], [0.2, 0.3], best=2)).loc["idea"]
    assert disagreeing["verdict"].startswith("active") and "masks moved" in disagreeing["verdict"]


def test_extractors_that_move_apart_are_masks_that_moved_though_their_mean_keep_rate_stays():
    """beauty-loo-long's IDEA seed 1: by its best epoch one extractor kept 0.42 of the items and the mean stayed
    at 0.49; the mean alone read as masks that never moved."""
    apart = table(history("idea", 1, [0.5, 0.5], [(0.5, 0.5), (0.40, 0.56)], [0.5, 0.51], best=2)).loc["idea"]
    assert apart["keep_best"] - apart["keep_first"] == pytest.approx(-0.02)
    assert apart["keep_moved_best"] == pytest.approx(0.10)  # the largest change, not the mean change (0.08)
    assert apart["verdict"] == ("active: penalty acting (50% of the mean risk's gradient); masks moved (18 extractor "
                                "updates; mean keep rate 0.50 -> 0.48, one extractor's by up to 0.10)")


def test_runs_without_telemetry_give_an_empty_table():
    plain = pd.DataFrame([{"study": "s", "arm": "erm_ft", "stage": "final", "trial": "t", "seed": 1, "run_id": "r",
                           "run_name": "erm_ft", "key": "best_epoch", "step": 0, "value": 3.0}])
    assert table(plain).empty and M.mechanism(M.epochs(pd.DataFrame())).empty


def test_the_report_reads_the_telemetry_of_finished_final_runs_only():
    """A seed still running (or killed) has no results yet: its first epochs must not enter the arm's means,
    as they enter no other table (beauty-loo-long's IDEA read n_seeds 2 and 8.5 epochs with seed 2 at epoch 1)."""
    done = history("idea", 1, [0.2, 0.4, 0.9], [(0.9, 0.8), (0.6, 0.5), (0.5, 0.3)], [0.1, 0.2, 0.3], best=2)
    running = history("idea", 2, [0.9], [(0.1, 0.1)], [0.9], best=1)
    results = pd.DataFrame([{"study": "s", "arm": "idea", "stage": "final", "trial": "t", "seed": 1, "run_id": "idea1",
                             "run_name": "idea-seed1", "part": part, "subset": "all", "metric": "ndcg", "k": 10,
                             "value": 0.1} for part in ("valid", "w1")])
    tables = report.build_tables(results, pd.DataFrame(columns=SHIFT_FRAME_COLUMNS), {},
                                 history=pd.DataFrame(done + running))
    got = tables["mechanism"].set_index("arm").loc["idea"]
    assert got["n_seeds"] == 1 and got["epochs_run"] == 3 and got["penalty_share"] == pytest.approx(0.4)
