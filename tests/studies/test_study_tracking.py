"""MLflow filters built by the harness quote their values: a value with a quote still matches exactly
(real SQLite store, no mocks)."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from studies.tracking import StudyRun, quoted, where


def test_quoted_picks_a_quote_the_value_lacks_and_refuses_both():
    assert quoted("a") == "'a'" and quoted("it's") == '"it\'s"'
    with pytest.raises(ValueError, match="both quote characters"):
        quoted("it's \"x\"")


def test_filters_match_values_holding_quotes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("q", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment, tags={"study": "o'study", "stage": "study"}).info.run_id
    for arm in ("it's", "plain"):
        client.create_run(experiment, tags={"study": "o'study", MLFLOW_PARENT_RUN_ID: parent, "arm": arm,
                                            "stage": "search"})
    study_run = StudyRun(uri, experiment, parent, {"study": "o'study"})
    assert [r.data.tags["arm"] for r in study_run.nested_runs("it's", "search")] == ["it's"]
    assert len(study_run.nested_runs(stage="search", status="RUNNING")) == 2
    assert where(tag_study="x", tag_arm=None, status="FINISHED") == "tags.`study` = 'x' and attributes.status = 'FINISHED'"


def test_runs_left_running_end_by_what_the_grid_says_of_their_trial(tmp_path):
    """After a stage, a run still RUNNING ends FAILED when its trial failed (a tracking outage kept the
    error callback from the store), FINISHED and budget_stopped when the trial merely stopped, and KILLED
    as an orphan when the grid holds no trial for it."""
    from ray.tune import Result as TuneResult
    from studies.search import close_budget_stopped

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("s", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment, tags={"study": "s", "stage": "study"}).info.run_id
    runs = {trial: client.create_run(experiment, tags={"study": "s", MLFLOW_PARENT_RUN_ID: parent, "arm": "idea",
                                                       "stage": "search", "trial_id": trial}).info.run_id
            for trial in ("cut", "crashed", "gave_up", "orphan")}
    grid = [TuneResult(metrics={"trial_id": "cut", "best_ndcg_at_10": 0.02, "epoch": 3}, checkpoint=None, error=None,
                       path=str(tmp_path)),
            TuneResult(metrics={"trial_id": "crashed", "best_ndcg_at_10": 0.01, "epoch": 2}, checkpoint=None,
                       error=RuntimeError("CUDA out of memory"), path=str(tmp_path)),
            TuneResult(metrics={"trial_id": "gave_up", "permanent_error": "ValueError: bad config", "epoch": 0},
                       checkpoint=None, error=None, path=str(tmp_path))]
    close_budget_stopped(StudyRun(uri, experiment, parent, {"study": "s"}), "idea", "search", grid)

    ended = {trial: client.get_run(run_id) for trial, run_id in runs.items()}
    assert {t: r.info.status for t, r in ended.items()} == {
        "cut": "FINISHED", "crashed": "FAILED", "gave_up": "FAILED", "orphan": "KILLED"}
    assert ended["cut"].data.tags.get("budget_stopped") == "true"
    assert ended["cut"].data.metrics["best_valid_ndcg_at_10"] == pytest.approx(0.02)
    assert "CUDA out of memory" in ended["crashed"].data.tags["error"]
    assert ended["gave_up"].data.tags["error"] == "ValueError: bad config"
    assert not any(ended[t].data.tags.get("budget_stopped") for t in ("crashed", "gave_up", "orphan"))
    assert ended["orphan"].data.tags.get("orphan") == "true"
