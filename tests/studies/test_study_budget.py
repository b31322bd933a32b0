"""A time budget is a budget (issue 21, item 4): trials it stops are recorded as budget-stopped, an arm
without a completed trial is reported as such (not as failures), and the study ends with a clear message,
exit 3 and the report of what exists."""
from __future__ import annotations

from tests.studies.study_cli import Store, run_study, tiny_study

STUDY = "budget"


def test_a_one_second_budget_records_stopped_trials_and_reports_arms_without_result(tmp_path):
    # One second is less than a trial takes to start on any machine, so no trial completes an epoch.
    proc = run_study(str(tiny_study(tmp_path / f"{STUDY}.yaml", ("erm", "idea"))), "--out", str(tmp_path),
                     "--time-budget-s", "1", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "Traceback" not in out and "trial failed" not in out, out[-3000:]
    assert "erm: no erm trial completed an epoch (2 stopped by --time-budget-s 1 before their first, 0 failed)" in out
    assert "idea: not run: it fine-tunes the erm arm's models, and erm has none" in out
    assert "larger --time-budget-s than 1" in out and "--resume" not in out

    store = Store(tmp_path / STUDY, STUDY)
    search = store.nested("search", "erm")
    assert len(search) == 2 and all(r.data.tags.get("budget_stopped") == "true" for r in search)
    assert {r.info.status for r in search} == {"KILLED"}  # stopped before a first epoch: no result to keep
    (parent,) = store.runs("tags.stage = 'study'")
    assert parent.info.status == "FINISHED" and parent.data.tags["arms_without_result"] == "erm,idea"
    summary = (tmp_path / STUDY / "report" / "summary.md").read_text()
    assert "UNFINISHED" in summary.splitlines()[0]
    assert "- arm erm: no result" in summary and "- arm idea: no result" in summary and "resume with" not in summary
