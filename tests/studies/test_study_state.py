"""Damaged or replaced state under a resumed study: a truncated Tune state file, a recreated MLflow store,
a copied study folder. Each case starts from one tiny real study (local Ray, SQLite MLflow; one ERM arm,
2 search trials, one of them crashing, 1 final seed) whose driver was interrupted after its stages ran,
copied per test. A resume either continues in the study's own store or stops with exit 2 naming what is
wrong, and never hangs (pytest-timeout)."""
from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient

from tests.studies.study_cli import Store, run_cli, run_study, tiny_study

STUDY = "state"
# The ERM arm's first trial (its `first` point) crashes in the first run, never retried (--max-failures 0):
# Tune keeps it ERROR, and a resume (without the fault) gives it another chance, so a resumed stage logs.
FAULT = {"method": "erm", "lr": 0.003, "dropout": 0.3, "seed": 0}


def args(study_file, out, *extra: str) -> tuple[str, ...]:
    return (str(study_file), "--out", str(out), "--study-name", STUDY, "--max-failures", "0", "--concurrency", "1",
            *extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(study file, folder of the interrupted study): its parent run KILLED as a Ctrl-C leaves it."""
    root = tmp_path_factory.mktemp("state")
    study_file = tiny_study(root / "state.yaml")
    proc = run_study(*args(study_file, root / "out"), timeout=300, IDEA_STUDY_INJECT_FAULT=json.dumps(FAULT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    study_dir = root / "out" / STUDY
    store = Store(study_dir, STUDY)
    assert sorted(r.info.status for r in store.nested("search", "erm")) == ["FAILED", "FINISHED"]
    (parent,) = store.runs("tags.stage = 'study'")
    store.client.set_terminated(parent.info.run_id, "KILLED")
    (study_dir / "summary.txt").unlink()
    return study_file, study_dir


def copy_study(base, tmp_path):
    study_file, study_dir = base
    out = tmp_path / "out"
    shutil.copytree(study_dir, out / STUDY)
    return study_file, out, out / STUDY


def statuses(store: Store) -> dict[str, str]:
    return {r.info.run_id: r.info.status for r in store.runs()}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("pattern", ["experiment_state-*.json", "searcher-state-*.pkl"])  # JSON; a pickle
def test_a_truncated_tune_state_file_is_named_not_silently_restarted(base, tmp_path, pattern):
    study_file, out, study_dir = copy_study(base, tmp_path)
    (state,) = sorted((study_dir / "ray" / "erm-search").glob(pattern))
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])
    store = Store(study_dir, STUDY)
    before = statuses(store)
    proc = run_cli(*args(study_file, out, "--resume"))  # refused before Ray starts
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and str(state) in error[0], proc.stderr[-4000:]
    assert ("incomplete" in error[0] or "not valid JSON" in error[0]) and "another --study-name" in error[0]
    assert "Traceback" not in proc.stderr
    assert statuses(store) == before  # no trial ran, no run added; the parent is KILLED again (resumable)


@pytest.mark.timeout(150)
def test_a_damaged_trial_checkpoint_is_named_before_ray_starts(base, tmp_path):
    """A finished trial's checkpoint truncated (say, a full disk at its last save): the resume stops at once
    naming the file, rather than failing that trial on restore and selecting the second best."""
    study_file, out, study_dir = copy_study(base, tmp_path)
    checkpoint = sorted((study_dir / "ray" / "erm-search").glob("*/checkpoint_*/trainer.pt"))[-1]
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    store = Store(study_dir, STUDY)
    before = statuses(store)
    proc = run_cli(*args(study_file, out, "--resume"))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and str(checkpoint) in error[0] and "trial checkpoint is damaged" in error[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert statuses(store) == before


@pytest.mark.timeout(150)
def test_a_state_file_missing_trials_of_the_store_is_refused(base, tmp_path):
    """A whole but stale experiment state (say, an older backup put back) lacks trials the store ended."""
    study_file, out, study_dir = copy_study(base, tmp_path)
    (state,) = sorted((study_dir / "ray" / "erm-search").glob("experiment_state-*.json"))
    saved = json.loads(state.read_text())
    saved["trial_data"] = saved["trial_data"][:1]
    state.write_text(json.dumps(saved))
    proc = run_study(*args(study_file, out, "--resume"), timeout=140)
    assert proc.returncode == 2 and "missing trials the tracking store has ended runs for" in proc.stderr, \
        proc.stderr[-4000:]
    assert str(state) in proc.stderr


@pytest.mark.timeout(150)
def test_a_recreated_store_is_refused_naming_the_missing_parent_run(base, tmp_path):
    study_file, out, study_dir = copy_study(base, tmp_path)
    parent = json.loads((study_dir / "run.json").read_text())["parent_run_id"]
    (study_dir / "mlflow.db").unlink()
    proc = run_study(*args(study_file, out, "--resume"), timeout=140)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"parent run {parent}" in proc.stderr and "recreated or replaced" in proc.stderr
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{study_dir / 'mlflow.db'}")
    assert client.get_experiment_by_name(STUDY) is None  # nothing written in its place


@pytest.mark.timeout(200)
def test_a_copied_study_folder_resumes_into_its_own_store(base, tmp_path):
    study_file, out, study_dir = copy_study(base, tmp_path)
    original = Store(base[1], STUDY)
    before = statuses(original)
    proc = run_study(*args(study_file, out, "--resume"), timeout=190)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert statuses(original) == before  # the original's store untouched
    copy = Store(study_dir, STUDY)
    runs = copy.nested("search", "erm")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]  # the crashed trial ran again, here
    assert all(copy.steps(r) == [1] for r in runs)
    (parent,) = copy.runs("tags.stage = 'study'")
    assert parent.info.status == "FINISHED" and {r.data.tags["mlflow.parentRunId"] for r in copy.runs()
                                                 if r.info.run_id != parent.info.run_id} == {parent.info.run_id}


@pytest.mark.timeout(150)
def test_a_restore_tune_gives_up_on_stops_before_the_stage_restarts(base, tmp_path):
    """A state file that parses but that Tune cannot restore from: Tune logs "Failed to restore the run
    state" and would start the stage again, empty; the study stops instead, before any trial runs."""
    study_file, out, study_dir = copy_study(base, tmp_path)
    (state,) = sorted((study_dir / "ray" / "erm-search").glob("experiment_state-*.json"))
    saved = json.loads(state.read_text())
    saved["runner_data"] = "damaged"
    state.write_text(json.dumps(saved))
    store = Store(study_dir, STUDY)
    before = statuses(store)
    proc = run_study(*args(study_file, out, "--resume"), timeout=140)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]  # Tune's own log above it holds its traceback
    assert last.startswith("error: Tune did not restore 2 of the 2 trials saved in") and str(state.parent) in last
    assert statuses(store) == before
