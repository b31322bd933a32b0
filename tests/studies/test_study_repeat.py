"""What studies/README.md claims about reproducibility: at --concurrency 1 the same study file gives the
same search (configurations, in order) and the same final numbers, run after run."""
from __future__ import annotations

import pandas as pd

from tests.studies.study_cli import run_study, tiny_study


def test_one_trial_at_a_time_repeats_the_study_exactly(tmp_path):
    outcomes = []
    for attempt in ("first", "second"):
        study = tiny_study(tmp_path / f"{attempt}.yaml", ("erm", "idea"))
        done = run_study(str(study), "--out", str(tmp_path), "--concurrency", "1", timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        trials = pd.read_csv(tmp_path / attempt / "trials.csv")
        results = pd.read_csv(tmp_path / attempt / "final_results.csv")
        params = [c for c in trials.columns if c in ("lr", "dropout", "N")]
        outcomes.append((trials[["arm", *params]].sort_values(["arm", *params]).reset_index(drop=True),  # ids differ
                         results.sort_values(["arm", "seed", "part", "subset", "metric", "k"])
                         [["arm", "seed", "part", "subset", "metric", "k", "value"]].reset_index(drop=True)))
    (trials_a, results_a), (trials_b, results_b) = outcomes
    pd.testing.assert_frame_equal(trials_a, trials_b)
    pd.testing.assert_frame_equal(results_a, results_b, check_exact=True)
