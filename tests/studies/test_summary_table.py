"""The driver's console table shows the report's own per-window table (studies/finish.py reads it back from
the report it has just written), so the console and summary.md cannot disagree."""
from __future__ import annotations

import pandas as pd

from analysis.summaries import per_window
from studies.driver import summary_table
from studies.plan import Selection


def test_summary_table_shows_the_reports_per_window_means():
    rows = [dict(study="s", arm=arm, method="erm", stage="final", seed=seed, trial_id="t", run_id="r", part=part,
                 subset=subset, metric="ndcg", k=10, value=value + (0.02 if subset == "warm" else 0.0), n_events=5)
            for arm, values in (("erm", {1: (0.3, 0.1), 2: (0.3, 0.12)}), ("idea", {1: (0.4, 0.2)}))
            for seed, (valid, w1) in values.items()
            for part, value in (("valid", valid), ("w1", w1)) for subset in ("all", "warm")]
    trials = pd.DataFrame({"arm": ["erm", "erm", "idea"], "status": ["FINISHED", "FAILED", "FINISHED"],
                           "budget_stopped": [False, False, False]})  # as studies.tracking.trials_frame has it
    selections = {"erm": Selection("erm", "t1", {"lr": 0.001}, 0.3), "idea": Selection("idea", "t2", {"K": 2}, 0.4)}
    lines = summary_table(selections, trials, per_window(pd.DataFrame(rows), "ndcg", 10, "all")).splitlines()
    assert lines[0].split() == ["arm", "trials", "best", "valid", "NDCG@10", "configuration", "w1", "(n=2)", "w1",
                                "(n=1)"]
    assert lines[1].split()[-4:] == ["0.1100", "±", "0.0141", "-"]  # erm: mean and std over seeds 1 and 2
    assert "0.2000 ± -" in lines[2] and "1 ok / 1 failed" in lines[1]
    none = per_window(pd.DataFrame(rows).iloc[:0], "ndcg", 10, "all")
    assert summary_table({"erm": None}, trials, none).splitlines()[1].split()[-3:] == ["no", "completed",
                                                                                                  "trial"]
