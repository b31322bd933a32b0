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
