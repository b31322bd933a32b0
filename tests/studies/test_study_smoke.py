"""A real smoke study on `synthetic` (local Ray, SQLite MLflow), run once for the module. One ERM
trial is made to crash at every attempt and one DROS trial to hit a NaN loss (the fault hook), so
failure handling (a crash retried, a NaN not) runs in the same study."""
from __future__ import annotations

import json
import math

import re

import pandas as pd
import pytest
import torch
import yaml

from idea.trainer import state_digest
from tests.studies.study_cli import Store, run_cli, run_study

STUDY = "synthetic-smoke"
FAULTS = [{"method": "erm", "lr": 0.001, "dropout": 0.3, "seed": 0},  # the ERM arm's first point: a crash
          {"method": "dros", "dros_alpha": 0.1, "seed": 0, "error": "nonfinite"}]  # the DROS arm's: a NaN loss
COMMON_PARAMS = ("lr", "dropout", "batch_size", "epochs", "backbone", "method", "seed")  # every method reads them
IDEA_PARAMS = ("K", "N", "lambda_low", "lambda_high", "tau", "beta", "T", "penalty", "pretrain_epochs")
DROS_PARAMS = ("dros_alpha", "dros_beta")
NESTED_TAGS = ("study", "arm", "method", "backbone", "dataset", "seed", "git_sha", "data_sha256", "stage")
WINDOWS = ("w1", "w2", "w3")
# _base.yaml's smoke section (synthetic.yaml extends it): trials and epochs per arm, final seeds
SMOKE_TRIALS = {"erm": 2, "idea": 3, "erm_ft": 2, "dros": 2}
SMOKE_EPOCHS = {"erm": 3, "idea": 2, "erm_ft": 2, "dros": 2}
SMOKE_SEEDS = (1, 2)
ARMS = tuple(SMOKE_TRIALS)
METHOD = {"erm": "erm", "idea": "idea", "erm_ft": "erm", "dros": "dros"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(completed process, study folder, store) of `run_study.py synthetic --smoke`."""
    out = tmp_path_factory.mktemp("smoke")
    proc = run_study("synthetic", "--smoke", "--out", str(out), "--max-failures", "1", timeout=600,
                     IDEA_STUDY_INJECT_FAULT=json.dumps(FAULTS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, out / STUDY, Store(out / STUDY, STUDY)


def test_one_parent_run_and_no_run_left_running(smoke):
    _, _, store = smoke
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
    _, study_dir, store = smoke
    space = {arm: spec["space"] for arm, spec in yaml.safe_load((study_dir / "study.yaml").read_text())["arms"].items()}
    for arm in ARMS:
        runs = store.nested("search", arm)
        assert len(runs) == SMOKE_TRIALS[arm]
        assert len({r.data.tags["trial_id"] for r in runs}) == SMOKE_TRIALS[arm]
        for run in runs:
            assert run.info.run_name == f"{arm}-trial-{run.data.tags['trial_id']}"
            assert run.data.tags["method"] == METHOD[arm] and run.data.tags["seed"] == "0"
            params = set(run.data.params)  # only what the run's method reads: an ERM run shows no K or beta
            assert set(COMMON_PARAMS) <= params
            for method, names in (("idea", IDEA_PARAMS), ("dros", DROS_PARAMS)):
                if METHOD[arm] == method:
                    assert set(names) <= params, (arm, params)
                else:
                    assert not set(names) & params, (arm, set(names) & params)
            assert not any(k.startswith("test_") for k in run.data.metrics)  # trials never see test data
            assert json.loads(run.data.tags["searched"]) == space[arm]  # the arm's space, for analysis
            if run.info.status == "FINISHED":
                steps = store.steps(run)
                assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= SMOKE_EPOCHS[arm]
                assert store.steps(run, "train_loss") == steps
                assert "best_valid_ndcg_at_10" in run.data.metrics and "best_epoch" in run.data.metrics
                if run.data.tags.get("asha_stopped") == "true":
                    assert len(steps) < SMOKE_EPOCHS[arm]
    first = [r for r in store.nested("search", "idea") if r.data.params["K"] == "3" and r.data.params["N"] == "4"
             and r.data.params["tau"] == "0.1" and r.data.params["beta"] == "10.0" and r.data.params["T"] == "5"]
    assert first, "the paper-like defaults must be evaluated as a trial (the first point)"


def test_crashing_trial_is_retried_then_failed_and_the_study_goes_on(smoke):
    proc, _, store = smoke
    failed = {r.data.tags["arm"]: r for r in store.runs() if r.info.status == "FAILED"}
    assert set(failed) == {"erm", "dros"}
    run = failed["erm"]
    assert run.data.tags["stage"] == "search"
    assert run.data.params["lr"] == "0.001" and run.data.params["dropout"] == "0.3"
    assert run.data.tags["failures"] == "2"  # first attempt + max_failures=1 retry
    assert "InjectedFault" in run.data.tags["error"]
    assert len(store.nested("final", "erm")) == len(SMOKE_SEEDS)  # the ERM arm still finished
    assert re.search(r"^\s*erm .*1 failed", proc.stdout, re.M), proc.stdout


def test_a_nan_loss_fails_its_trial_at_once_without_retries(smoke):
    proc, study_dir, store = smoke
    (run,) = [r for r in store.nested("search", "dros") if r.info.status == "FAILED"]
    assert run.data.params["dros_alpha"] == "0.1" and run.data.tags["failures"] == "0"
    assert run.data.tags["error"].startswith("NonFiniteLossError: ") and "retried" in run.data.tags
    assert store.steps(run) == []  # its marker result is not logged as an epoch
    trial_id = run.data.tags["trial_id"]
    assert re.search(rf"\[dros-search\] trial {trial_id} FAILED, not retried .*NonFiniteLossError", proc.stderr)
    (trial_dir,) = (study_dir / "ray" / "dros-search").glob(f"*{trial_id}*")
    assert not (trial_dir / "error.txt").exists()  # Tune saw no error, so it retried nothing
    finished = [r for r in store.nested("search", "dros") if r.info.status == "FINISHED"]
    assert len(finished) == SMOKE_TRIALS["dros"] - 1 and len(store.nested("final", "dros")) == len(SMOKE_SEEDS)


def test_final_runs_per_arm_and_seed_with_per_window_test_metrics(smoke):
    _, _, store = smoke
    for arm in ARMS:
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
    _, _, store = smoke
    for arm in ARMS:
        searched = [r for r in store.nested("search", arm) if r.info.status == "FINISHED"]
        best = max(searched, key=lambda r: r.data.metrics["best_valid_ndcg_at_10"])
        for run in store.nested("final", arm):
            differing = {k for k, v in run.data.params.items() if best.data.params[k] != v}
            assert differing == ({"seed"} if arm == "erm" else {"seed", "init_from"}), differing


def _best_state_digest(study_dir, experiment: str, trial_id: str) -> str:
    """Digest of the best state in a trial's own Tune checkpoint (not the study's copy of it)."""
    (path,) = (study_dir / "ray" / experiment).glob(f"*{trial_id}*/checkpoint_*/trainer.pt")
    return state_digest(torch.load(path, weights_only=True)["best_state"])


def test_fine_tuning_arms_start_from_the_erm_models_they_name(smoke):
    _, study_dir, store = smoke
    erm = [r for r in store.nested("search", "erm") if r.info.status == "FINISHED"]
    selected = max(erm, key=lambda r: r.data.metrics["best_valid_ndcg_at_10"])
    search_digest = _best_state_digest(study_dir, "erm-search", selected.data.tags["trial_id"])
    erm_final = {r.data.tags["seed"]: r for r in store.nested("final", "erm")}
    for arm in ("idea", "erm_ft", "dros"):
        for run in store.nested("search", arm, "FINISHED"):
            assert run.data.tags["init_run_id"] == selected.info.run_id
            assert run.data.tags["init_digest"] == search_digest  # the weights it actually loaded
            assert run.data.params["init_from"] == "starts/erm-search.pt"  # within the study folder, which may move
        for run in store.nested("final", arm):
            source = erm_final[run.data.tags["seed"]]  # seed s starts from ERM seed s: paired
            assert run.data.params["init_from"] == f"starts/erm-seed{run.data.tags['seed']}.pt"
            assert run.data.tags["init_run_id"] == source.info.run_id
            assert run.data.tags["init_digest"] == _best_state_digest(study_dir, "erm-final", source.data.tags["trial_id"])
    assert {r.data.params["pretrain_epochs"] for r in store.nested("final", "idea")} == {"0"}
    assert "init_run_id" not in selected.data.tags
    digests = {r.data.tags["init_digest"] for r in store.nested("final", "idea")}
    assert len(digests) == len(SMOKE_SEEDS)  # each seed its own ERM model


def test_report_compares_the_arms_paired_by_seed(smoke):
    _, study_dir, _ = smoke
    summary = (study_dir / "report" / "summary.md").read_text()
    assert "Paired by seed" in summary and "erm_ft" in summary
    paired = pd.read_csv(study_dir / "report" / "paired.csv")
    pairs = list(dict.fromkeys(zip(paired["arm"], paired["control"])))  # every arm against ERM, IDEA vs erm_ft first
    assert pairs == [("idea", "erm_ft"), ("idea", "erm"), ("erm_ft", "erm"), ("dros", "erm")]
    per_window = pd.read_csv(study_dir / "report" / "per_window_all.csv")
    assert set(per_window["arm"]) == set(ARMS)
    assert all(f"| {arm} " in summary for arm in ARMS)
    assert (paired["n_pairs"] == len(SMOKE_SEEDS)).all() and paired["ci_low"].le(paired["ci_high"]).all()
    # the verdict on the first pair opens the report, its detail the base arm first
    verdict = r"(gains over|loses to|shows no measurable difference from)"
    assert re.search(rf"^\*\*idea {verdict} erm_ft on w3 ", summary, re.M)
    assert "NDCG@10 falls from validation by erm " in summary


def test_every_idea_run_logs_the_mechanism_telemetry_every_epoch(smoke):
    """Each IDEA epoch of every search and final run carries the telemetry, one keep rate per extractor; the
    other methods' runs carry none; the report says per IDEA arm whether the mechanism acted."""
    _, study_dir, store = smoke
    telemetry = ("penalty_share", "extractor_steps", "mask_disagreement", "lambda_dominant", "risk_var")
    for stage in ("search", "final"):
        for arm in ARMS:
            for run in store.nested(stage, arm, status="FINISHED"):
                if METHOD[arm] != "idea":
                    assert not any(k.startswith("keep_rate_") or k in telemetry for k in run.data.metrics), arm
                    continue
                steps = store.steps(run)
                K = int(run.data.params["K"])
                for key in (*telemetry, *(f"keep_rate_{k}" for k in range(K))):
                    assert store.steps(run, key) == steps, (run.info.run_name, key)
                assert f"keep_rate_{K}" not in run.data.metrics
                shares = [m.value for m in store.client.get_metric_history(run.info.run_id, "penalty_share")]
                assert all(s > 0 for s in shares)
    mechanism = pd.read_csv(study_dir / "report" / "mechanism.csv")
    assert list(mechanism["arm"]) == ["idea"] and mechanism["n_seeds"].tolist() == [len(SMOKE_SEEDS)]
    assert mechanism["verdict"].str.match(r"(in)?active: penalty").all()
    assert "Did IDEA's mechanism act?" in (study_dir / "report" / "summary.md").read_text()


def test_parent_artifacts_and_study_folder(smoke):
    _, study_dir, store = smoke
    parent = store.runs("tags.stage = 'study'")[0]
    assert {a.path for a in store.client.list_artifacts(parent.info.run_id)} == {
        "study.yaml", "describe.json", "trials.csv", "final_results.csv", "report"}
    logged = {a.path for a in store.client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/summary.md", "report/paired.csv", "report/metric_vs_window_all.png"} <= logged
    assert {f"{a}-{stage}" for a in ARMS for stage in ("search", "final")} <= {p.name for p in (study_dir / "ray").iterdir()}
    assert sorted(p.name for p in (study_dir / "starts").iterdir()) == ["erm-search.pt", "erm-seed1.pt", "erm-seed2.pt"]
    trials = pd.read_csv(study_dir / "trials.csv")
    assert len(trials) == sum(SMOKE_TRIALS.values()) and set(trials["status"]) <= {"FINISHED", "FAILED"}
    results = pd.read_csv(study_dir / "final_results.csv")
    assert {"study", "arm", "stage", "seed", "part", "subset", "metric", "k", "value"} <= set(results.columns)
    assert set(results["part"]) == {"valid", *WINDOWS} and set(results["subset"]) == {"all", "warm"}
    assert results.groupby(["arm", "seed"]).size().to_dict() == {
        (a, s): 4 * 2 * 3 * 3 for a in ARMS for s in SMOKE_SEEDS}
    run = store.nested("final", "idea")[0]
    seed = int(run.data.tags["seed"])
    row = results[(results.arm == "idea") & (results.seed == seed) & (results.part == "w1") & (results.subset == "all")
                  & (results.metric == "ndcg") & (results.k == 10)]
    assert math.isclose(row["value"].item(), run.data.metrics["test_w1_ndcg_at_10"])


def test_cli_prints_summary_and_mlflow_ui_command(smoke):
    proc, study_dir, _ = smoke
    out = proc.stdout
    assert "best valid NDCG@10" in out and "w1 (n=2)" in out and "±" in out
    summary = out[out.index("best valid NDCG@10"):]
    assert {a for a in ARMS if re.search(rf"^\s*{a} ", summary, re.M)} == set(ARMS)
    assert f"mlflow ui --backend-store-uri sqlite:///{study_dir / 'mlflow.db'}" in out
    err = proc.stderr
    assert "Trial status" not in out + err  # Tune's metric table is replaced by compact lines
    for noise in ("Configuration for experiment", "TensorBoard", "Token authentication", "Checkpoint successfully",
                  "Wrote the latest version", "A new study created"):  # Ray's, Tune's and Optuna's lines
        assert noise not in out + err, noise
    assert list((study_dir / "ray" / "erm-search").glob("*/result.json"))  # Tune's own JSON logs are kept
    assert "== arm 2/4: idea (fine-tunes the trained ERM models)" in err
    assert "== arm 4/4: dros (fine-tunes the trained ERM models)" in err
    assert re.search(r"\[idea-search\] trial \w+ epoch 1 \[idea\] valid ndcg@10 0\.\d{4}.*\| \d/3 done, \d running \| "
                     r"study: \d+/\d+ epochs, \d+m\d\ds elapsed, ~\d+m\d\ds left \(estimate\)$", err, re.M), err[-3000:]
    assert re.search(r"\[idea-search\] trial \w+ (finished|stopped by ASHA after epoch \d of 2) \| 3/3 done, 0 running \|",
                     err), err[-3000:]


def _seconds(text: str) -> int:
    """`studies.progress.duration`'s text ("4m05s", "1h02m") in seconds."""
    h, m, s = re.fullmatch(r"(?:(\d+)h)?(\d+)m(?:(\d\d)s)?", text).groups()
    return 3600 * int(h or 0) + 60 * int(m) + int(s or 0)


def test_progress_lines_tell_the_whole_studys_epochs_elapsed_time_and_time_left(smoke):
    """Every progress line ends with the study's epochs done out of those expected (never more than the budget;
    an estimate, which the lengths of ended trials move either way), the time since the study started, which
    never restarts with a stage, and the time left, labelled an estimate; the study's last line has every epoch
    done: as many as its runs logged."""
    proc, _, store = smoke
    lines = re.findall(r"^\[[\w-]+\] .*\| study: (\d+)/(\d+) epochs, (\S+) elapsed, (.*)$", proc.stderr, re.M)
    stages = re.findall(r"^\[([\w-]+)\] .*\| study: ", proc.stderr, re.M)
    assert list(dict.fromkeys(stages)) == [f"{a}-{s}" for a in ARMS for s in ("search", "final")]
    done, planned = [int(d) for d, *_ in lines], [int(p) for _, p, *_ in lines]
    elapsed = [_seconds(e) for *_, e, _ in lines]
    assert done == sorted(done) and elapsed == sorted(elapsed)
    assert max(planned) <= sum((SMOKE_TRIALS[a] + len(SMOKE_SEEDS)) * SMOKE_EPOCHS[a] for a in ARMS)
    logged = sum(len(store.steps(r)) for stage in ("search", "final") for r in store.nested(stage))
    assert done[-1] == planned[-1] == logged and lines[-1][3] == "~0m00s left (estimate)", (lines[-1], logged)
    assert all(re.fullmatch(r"~\S+ left \(estimate\)|time left estimated after the first epoch", left)
               for *_, left in lines)


def test_final_runs_log_metric_against_window_series(smoke):
    _, _, store = smoke
    for run in store.nested("final"):
        for infix in ("", "warm_"):
            history = store.client.get_metric_history(run.info.run_id, f"shift_{infix}ndcg_at_10")
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2, 3]
            by_step = {m.step: m.value for m in history}
            assert by_step[0] == pytest.approx(run.data.metrics[f"best_valid_{infix}ndcg_at_10"])
            for i, w in enumerate(WINDOWS, 1):
                assert by_step[i] == pytest.approx(run.data.metrics[f"test_{w}_{infix}ndcg_at_10"])


def test_every_arm_is_in_the_chart_views_runs_each_arm_in_a_colour_of_its_own(smoke):
    """summary.md links the chart view on the port of the `mlflow ui` command the study printed; the view (an
    experiment tag, how MLflow shares one) selects every final run and shows them all, each arm's runs in one
    colour (their tag `mlflow.runColor`, which MLflow draws a run in), a different one per arm; runs whose values
    coincide, whose lines would hide each other, are named in the notes."""
    proc, study_dir, store = smoke
    md = (study_dir / "report" / "summary.md").read_text()
    (port,) = set(re.findall(r"mlflow ui --backend-store-uri \S+ --host 127\.0\.0\.1 --port (\d+)", proc.stdout))
    links = re.findall(r"<(http[^>]+)>", md)
    assert links and all(link.startswith(f"http://127.0.0.1:{port}/#/") for link in links), links
    (view_link,) = [link for link in links if "viewStateShareKey=" in link]
    key = view_link.split("viewStateShareKey=", 1)[1]
    view = json.loads(store.client.get_experiment(store.experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    shown = store.runs(view["searchFilter"])
    assert sorted(r.info.run_name for r in shown) == sorted(f"{a}-seed{s}" for a in ARMS for s in SMOKE_SEEDS)
    assert view["runsHiddenMode"] == "SHOW_ALL"  # else MLflow draws the first 10 runs only
    colours = {}
    for run in shown:
        colours.setdefault(run.data.tags["arm"], set()).add(run.data.tags["mlflow.runColor"])
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == len(ARMS), colours
    assert [c["metricKey"] for c in view["compareRunCharts"]] == [
        "shift_ndcg_at_10", "best_valid_ndcg_at_10", *(f"test_{w}_ndcg_at_10" for w in WINDOWS)]
    series = {r.info.run_name: tuple(round(m.value, 12) for m in sorted(
        store.client.get_metric_history(r.info.run_id, "shift_ndcg_at_10"), key=lambda m: m.step)) for r in shown}
    twins = {tuple(sorted(n for n in series if series[n] == v)) for v in series.values()} - {(n,) for n in series}
    notes = [line for line in md.splitlines() if line.startswith("- Identical NDCG@10 on every part")]
    assert sorted(notes) == sorted(f"- Identical NDCG@10 on every part (valid, w1, w2, w3): "
                                   f"{' = '.join(f'`{n}`' for n in group)}; in MLflow's charts their lines and bars "
                                   "lie on one another, so only one shows." for group in twins), (notes, series)


def test_smoke_output_is_labelled_as_such(smoke):
    proc, study_dir, store = smoke
    assert store.runs("tags.stage = 'study'")[0].data.tags["smoke"] == "true"
    assert "SMOKE RUN" in proc.stdout and "its numbers are not results" in proc.stdout
    assert "Smoke study" in (study_dir / "report" / "summary.md").read_text()


def test_rerun_without_resume_refuses_to_overwrite(smoke):
    _, study_dir, _ = smoke
    proc = run_cli("synthetic", "--smoke", "--out", str(study_dir.parent))
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_each_arms_search_is_an_optuna_study_for_optuna_dashboard(smoke):
    """optuna.db in the study folder holds one Optuna study per arm: every search trial, the first one at the
    arm's first point, each with its per-epoch validation values; the CLI prints the dashboard command."""
    import optuna

    from studies.config import load_study

    proc, study_dir, _ = smoke
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    assert f"optuna-dashboard {storage}" in proc.stdout
    study = load_study("synthetic", smoke=True)
    for arm in ARMS:
        trials = optuna.load_study(study_name=arm, storage=storage).trials
        assert len(trials) == SMOKE_TRIALS[arm], (arm, len(trials))
        assert trials[0].params == dict(study.arms[arm].first)
        assert any(t.intermediate_values for t in trials)


def test_optuna_db_agrees_with_the_selection(smoke):
    """Each arm's Optuna study tells the search as the harness saw it: the objective named, the selected
    trial recorded (and Optuna's best trial unless ASHA cut it: Optuna's best is among COMPLETE trials),
    each trial's state from its MLflow run, its value the run's best_valid_ndcg_at_10, every epoch an
    intermediate value."""
    import optuna
    from optuna.trial import TrialState

    _, study_dir, store = smoke
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    for arm in ARMS:
        study = optuna.load_study(study_name=arm, storage=storage)
        assert study.metric_names == ["best_valid_ndcg_at_10"], arm
        runs = {r.data.tags["trial_id"]: r for r in store.nested("search", arm)}
        trials = {t.user_attrs.get("tune_trial_id"): t for t in study.trials}
        assert set(trials) == set(runs), arm
        (selected,) = {r.data.tags["selected_trial"] for r in store.nested("final", arm)}
        assert study.user_attrs.get("selected_trial") == trials[selected].number, arm
        if trials[selected].state == TrialState.COMPLETE:
            assert study.best_trial.number == trials[selected].number, arm
        for trial_id, trial in trials.items():
            run, tags = runs[trial_id], runs[trial_id].data.tags
            cut = tags.get("asha_stopped") == "true" or tags.get("budget_stopped") == "true"
            state = (TrialState.FAIL if run.info.status == "FAILED" else TrialState.PRUNED if cut
                     else TrialState.COMPLETE)
            assert trial.state == state, (arm, trial_id, trial.state, state)
            if state != TrialState.FAIL:
                epochs = sorted(trial.intermediate_values)
                assert epochs == sorted(store.steps(run)), (arm, trial_id, epochs, store.steps(run))
                value = trial.value if state == TrialState.COMPLETE else trial.user_attrs["best_valid_ndcg_at_10"]
                assert value == pytest.approx(run.data.metrics["best_valid_ndcg_at_10"], rel=1e-9), (arm, trial_id)


LEAKS = ("Exception ignored in", "sigterm_handler", "Restored on", "(search_trial pid=", "(final_trial pid=",  # workers
         "Started a local Ray instance",  # Ray's driver
         "Creating initial MLflow database tables", "Updating database tables", "Downloading artifacts")  # MLflow's


def console_leaks(console: str) -> list[str]:
    """What of `console` is not the harness's own: the known leaks, and any logger's INFO line or tqdm bar."""
    found = [leak for leak in LEAKS if leak in console]
    return found + re.findall(r"^.*\bINFO\b.*$", console, re.M) + re.findall(r"\d+%\|", console)


def test_console_holds_the_harness_lines_only(smoke):
    """No worker output on the console (Ray's SIGTERM tracebacks at shutdown, Tune's per-restore checkpoint
    line), no INFO line of Ray or MLflow, no download bar; every progress line of a trial shows its whole
    configuration; and a trial ASHA cut says so: one such line per run tagged asha_stopped, and no other."""
    proc, study_dir, store = smoke
    console = proc.stdout + proc.stderr
    assert console_leaks(console) == []
    space = yaml.safe_load((study_dir / "study.yaml").read_text())["arms"]["idea"]["space"]
    lines = re.findall(r"^\[idea-search\] trial \w+ epoch .*$", proc.stderr, re.M)
    assert len(space) == 8 and lines and [line for line in lines if not all(f" {p}=" in line for p in space)] == []
    cut = {r.data.tags["trial_id"] for r in store.nested("search") if r.data.tags.get("asha_stopped") == "true"}
    said = set(re.findall(r"trial (\w+) stopped by ASHA after epoch \d+ of \d+", console))
    assert said == cut


def test_compare_reads_the_real_study(smoke, tmp_path):
    """analysis.compare on the smoke study's folder: every pair the study file sets (idea vs erm_ft, each arm vs
    erm), each window, with the study's dataset, protocol and backbone and a finite detectable effect."""
    from analysis.compare import main

    _, study_dir, _ = smoke
    assert main(["--study-dir", str(study_dir), "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "compare.csv")
    assert set(zip(table["arm"], table["control"])) == {("idea", "erm_ft"), ("idea", "erm"), ("erm_ft", "erm"),
                                                        ("dros", "erm")}
    assert set(table["part"]) >= set(WINDOWS) and set(table["protocol"]) == {"temporal"}
    assert set(table["dataset"]) == {"synthetic"} and set(table["backbone"]) == {"gru4rec"}
    assert table["mde"].notna().all() and (table["n_pairs"] == len(SMOKE_SEEDS)).all()
