"""A real smoke study on `synthetic` (local Ray, SQLite MLflow), run once for the module. One ERM
trial is made to crash at every attempt (the fault hook), so failure handling runs in the same study."""
from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest

from tests.studies.study_cli import Store, run_study

STUDY = "synthetic-smoke"
FAULT = {"method": "erm", "lr": 0.001, "dropout": 0.3, "seed": 0}  # the ERM arm's first point
SEARCH_PARAMS = ("K", "N", "lambda_low", "lambda_high", "tau", "beta", "T", "lr", "dropout")
NESTED_TAGS = ("study", "arm", "method", "backbone", "dataset", "seed", "git_sha", "data_sha256", "stage")
WINDOWS = ("w1", "w2", "w3")
SMOKE_TRIALS, SMOKE_SEEDS, SMOKE_EPOCHS = 3, (1, 2), 3  # synthetic.yaml's smoke section


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(completed process, study folder, store, seconds) of `run_study.py synthetic --smoke`."""
    out = tmp_path_factory.mktemp("smoke")
    start = time.monotonic()
    proc = run_study("synthetic", "--smoke", "--out", str(out), "--max-failures", "1", timeout=400,
                     IDEA_STUDY_INJECT_FAULT=json.dumps(FAULT))
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, out / STUDY, Store(out / STUDY, STUDY), seconds


def test_finishes_within_the_smoke_budget(smoke):
    assert smoke[3] < 180


def test_one_parent_run_and_no_run_left_running(smoke):
    _, _, store, _ = smoke
    parents = store.runs("tags.stage = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == STUDY and parent.info.status == "FINISHED"
    assert {k: parent.data.tags[k] for k in ("study", "dataset", "backbone")} == {
        "study": STUDY, "dataset": "synthetic", "backbone": "gru4rec"}
    assert len(parent.data.tags["git_sha"]) in (40, len("unknown")) and len(parent.data.tags["data_sha256"]) == 64
    runs = store.runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    for run in runs:
        if run.info.run_id != parent.info.run_id:
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert set(NESTED_TAGS) <= set(run.data.tags), run.info.run_name
            assert run.data.tags["data_sha256"] == parent.data.tags["data_sha256"]


def test_search_runs_have_params_once_and_per_epoch_validation_metrics(smoke):
    _, _, store, _ = smoke
    for arm in ("idea", "erm"):
        runs = store.nested("search", arm)
        assert len(runs) == SMOKE_TRIALS
        assert len({r.data.tags["trial_id"] for r in runs}) == SMOKE_TRIALS
        for run in runs:
            assert run.info.run_name == f"{arm}-trial-{run.data.tags['trial_id']}"
            assert run.data.tags["method"] == arm and run.data.tags["seed"] == "0"
            assert set(SEARCH_PARAMS) <= set(run.data.params)
            assert not any(k.startswith("test_") for k in run.data.metrics)  # trials never see test data
            if run.info.status == "FINISHED":
                steps = store.steps(run)
                assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= SMOKE_EPOCHS
                assert store.steps(run, "train_loss") == steps
                assert "best_valid_ndcg_at_10" in run.data.metrics and "best_epoch" in run.data.metrics
                if run.data.tags.get("asha_stopped") == "true":
                    assert len(steps) < SMOKE_EPOCHS
    first = [r for r in store.nested("search", "idea") if r.data.params["K"] == "3" and r.data.params["N"] == "4"
             and r.data.params["tau"] == "0.1" and r.data.params["beta"] == "1.0" and r.data.params["T"] == "5"]
    assert first, "the paper-like defaults must be evaluated as a trial (the first point)"


def test_crashing_trial_is_retried_then_failed_and_the_study_goes_on(smoke):
    proc, _, store, _ = smoke
    failed = [r for r in store.runs() if r.info.status == "FAILED"]
    assert len(failed) == 1
    run = failed[0]
    assert run.data.tags["arm"] == "erm" and run.data.tags["stage"] == "search"
    assert run.data.params["lr"] == "0.001" and run.data.params["dropout"] == "0.3"
    assert run.data.tags["failures"] == "2"  # first attempt + max_failures=1 retry
    assert "InjectedFault" in run.data.tags["error"]
    assert len(store.nested("final", "erm")) == len(SMOKE_SEEDS)  # the ERM arm still finished
    assert "1 failed" in proc.stdout


def test_final_runs_per_arm_and_seed_with_per_window_test_metrics(smoke):
    _, _, store, _ = smoke
    for arm in ("idea", "erm"):
        runs = store.nested("final", arm)
        assert sorted(r.info.run_name for r in runs) == [f"{arm}-seed{s}" for s in SMOKE_SEEDS]
        for run in runs:
            assert run.info.status == "FINISHED"
            for w in WINDOWS:
                for m in ("ndcg", "hr", "mrr"):
                    for k in (5, 10, 20):
                        assert f"test_{w}_{m}_at_{k}" in run.data.metrics and f"test_{w}_warm_{m}_at_{k}" in run.data.metrics
            assert {"best_valid_ndcg_at_10", "best_valid_warm_ndcg_at_10", "best_epoch"} <= set(run.data.metrics)
            assert len(store.steps(run)) >= 1


def test_final_runs_retrain_the_best_validation_configuration(smoke):
    _, _, store, _ = smoke
    for arm in ("idea", "erm"):
        searched = [r for r in store.nested("search", arm) if r.info.status == "FINISHED"]
        best = max(searched, key=lambda r: r.data.metrics["best_valid_ndcg_at_10"])
        for run in store.nested("final", arm):
            differing = {k for k, v in run.data.params.items() if best.data.params[k] != v}
            assert differing == {"seed"}, differing


def test_parent_artifacts_and_study_folder(smoke):
    _, study_dir, store, _ = smoke
    parent = store.runs("tags.stage = 'study'")[0]
    assert {a.path for a in store.client.list_artifacts(parent.info.run_id)} == {
        "study.yaml", "describe.json", "trials.csv", "final_results.csv"}
    assert {"idea-search", "erm-search", "idea-final", "erm-final"} <= {p.name for p in (study_dir / "ray").iterdir()}
    trials = pd.read_csv(study_dir / "trials.csv")
    assert len(trials) == 2 * SMOKE_TRIALS and set(trials["status"]) <= {"FINISHED", "FAILED"}
    results = pd.read_csv(study_dir / "final_results.csv")
    assert {"study", "arm", "stage", "seed", "part", "subset", "metric", "k", "value"} <= set(results.columns)
    assert set(results["part"]) == {"valid", *WINDOWS} and set(results["subset"]) == {"all", "warm"}
    assert results.groupby(["arm", "seed"]).size().to_dict() == {
        (a, s): 4 * 2 * 3 * 3 for a in ("erm", "idea") for s in SMOKE_SEEDS}
    run = store.nested("final", "idea")[0]
    seed = int(run.data.tags["seed"])
    row = results[(results.arm == "idea") & (results.seed == seed) & (results.part == "w1") & (results.subset == "all")
                  & (results.metric == "ndcg") & (results.k == 10)]
    assert math.isclose(row["value"].item(), run.data.metrics["test_w1_ndcg_at_10"])


def test_cli_prints_summary_and_mlflow_ui_command(smoke):
    proc, study_dir, _, _ = smoke
    out = proc.stdout
    assert "best valid NDCG@10" in out and "w1 (n=2)" in out and "±" in out
    summary = out[out.index("best valid NDCG@10"):]
    assert "\nidea " in summary and "\n erm " in summary
    assert f"mlflow ui --backend-store-uri sqlite:///{study_dir / 'mlflow.db'}" in out
    assert "Trial status" in out + proc.stderr  # Ray Tune's progress table


def test_rerun_without_resume_refuses_to_overwrite(smoke):
    _, study_dir, _, _ = smoke
    proc = run_study("synthetic", "--smoke", "--out", str(study_dir.parent), timeout=120)
    assert proc.returncode == 2 and "--resume" in proc.stderr
