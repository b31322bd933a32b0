"""Damaged or replaced state under a resumed study: a truncated Tune state file, a recreated MLflow store,
a copied study folder. Each case starts from one tiny real study (local Ray, SQLite MLflow; one ERM arm,
2 search trials, one of them crashing, 1 final seed) whose driver was interrupted after its stages ran,
copied per test. A resume either continues in the study's own store or stops with exit 2 naming what is
wrong, and never hangs (pytest-timeout)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from tests.studies.study_cli import PROJECT_ROOT, Store, run_cli, run_study, study_env, tiny_study

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
    assert "--retrain-damaged" in error[0] and "weights_only" not in proc.stderr  # no advice to run the pickle
    assert "Traceback" not in proc.stderr
    assert statuses(store) == before


@pytest.mark.timeout(200)
@pytest.mark.parametrize("stage", ["search", "final"])
def test_retrain_damaged_trains_the_trial_again_from_its_start_in_a_new_run_the_report_names(base, tmp_path, stage):
    """A finished trial's checkpoint truncated, resumed with --retrain-damaged: Tune trains that trial again
    (same trial id and config) from its start, its epochs go to a new run tagged with why and with the run it
    replaces (deleted, in MLflow's trash), its checkpoint is whole again, and the report says so."""
    study_file, out, study_dir = copy_study(base, tmp_path)
    checkpoint = sorted((study_dir / "ray" / f"erm-{stage}").glob("*/checkpoint_*/trainer.pt"))[-1]
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    store = Store(study_dir, STUDY)
    (old,) = [r for r in store.nested(stage, "erm", status="FINISHED") if r.data.tags["trial_id"] in str(checkpoint)]
    proc = run_study(*args(study_file, out, "--resume", "--retrain-damaged"), timeout=190)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"trial {old.data.tags['trial_id']} will be trained again from its start" in proc.stderr
    (new,) = [r for r in store.nested(stage, "erm") if r.data.tags["trial_id"] == old.data.tags["trial_id"]]
    assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
    assert new.data.tags["replaces_run"] == old.info.run_id and "damaged" in new.data.tags["retrained_damaged"]
    assert new.data.params == old.data.params and store.steps(new) == [1]  # its epochs once, from the first
    gone = store.client.get_run(old.info.run_id)
    assert gone.info.lifecycle_stage == "deleted" and gone.data.tags["retrained_damaged"] == new.data.tags["retrained_damaged"]
    (again,) = sorted((study_dir / "ray" / f"erm-{stage}").glob(f"*{old.data.tags['trial_id']}*/checkpoint_*/trainer.pt"))
    torch.load(again, weights_only=True)  # whole again
    summary = (study_dir / "report" / "summary.md").read_text()
    assert f"Run `{new.info.run_name}` was trained again from its start: its checkpoint was damaged" in summary
    (parent,) = store.runs("tags.stage = 'study'")
    assert parent.info.status == "FINISHED" and "--retrain-damaged" not in parent.data.tags["resume_command"]


def test_retrain_damaged_needs_resume(base, tmp_path):
    study_file, out, _ = copy_study(base, tmp_path)
    proc = run_cli(*args(study_file, tmp_path / "new", "--retrain-damaged"))
    assert proc.returncode == 2 and "--retrain-damaged retrains trials of a study being resumed: add --resume" \
        in proc.stderr, proc.stderr


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


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.timeout(200)
def test_a_copied_study_folder_resumes_into_its_own_store(base, tmp_path):
    study_file, out, study_dir = copy_study(base, tmp_path)
    original = Store(base[1], STUDY)
    before, files = statuses(original), digests(base[1])
    proc = run_study(*args(study_file, out, "--resume"), timeout=190)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert statuses(original) == before  # the original's store untouched
    assert digests(base[1]) == files  # and every other file of it (Tune's state, optuna.db, checkpoints)
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


def read_on_resume(study_dir) -> dict[str, bytes]:
    """What a resume reads of a study folder that this project writes or Tune rewrites, as text: run.json,
    both stores (their SQL, not their pages, where old rows may linger), and the newest experiment state,
    searcher state and trial-generator state of each stage (older snapshots stay on disk unread). Not
    tuner.pkl (Tune's pickle of the first run's settings: `Tuner.restore` recomputes its storage path from
    the folder it is given, `fit` replaces its callbacks and its trial generator)."""
    files = {"run.json": (study_dir / "run.json").read_bytes()}
    for store in ("mlflow.db", "optuna.db"):
        with contextlib.closing(sqlite3.connect(study_dir / store)) as con:
            files[store] = "\n".join(con.iterdump()).encode()
    for stage in (study_dir / "ray").iterdir():
        for pattern in ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
                        "basic-variant-state-*.json"):
            newest = sorted(stage.glob(pattern))[-1:]
            files.update({str(f.relative_to(study_dir)): f.read_bytes() for f in newest})
    return files


@pytest.mark.timeout(200)
def test_a_moved_study_folder_resumes_on_its_own_files_and_keeps_no_path_of_its_old_place(base, tmp_path):
    """Copied, then moved (nothing left where the copy was): the resume finishes on the folder it is given,
    writes nothing where the folder was or where it first ran, and afterwards nothing a resume reads names
    either place."""
    study_file, out, study_dir = copy_study(base, tmp_path)
    first = digests(base[1])
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(study_dir, moved / STUDY)
    proc = run_study(*args(study_file, moved, "--resume"), timeout=190)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert not study_dir.exists() and digests(base[1]) == first
    store = Store(moved / STUDY, STUDY)
    assert sorted(r.info.status for r in store.nested("search", "erm")) == ["FINISHED", "FINISHED"]
    places = [str(place).encode() for place in (base[1], study_dir)]
    naming = [name for name, text in read_on_resume(moved / STUDY).items() if any(p in text for p in places)]
    assert naming == [], naming


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["mlflow.db", "optuna.db"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_named_with_what_can_be_done(base, tmp_path, store, damage):
    """Refused before the store is opened (exit 2, no traceback): the file, that a resume cannot rebuild it,
    and the way forward; the file is left as it was."""
    study_file, out, study_dir = copy_study(base, tmp_path)
    path = study_dir / store
    data = path.read_bytes()
    path.write_bytes(b"not a database\n" * 500 if damage == "garbage" else data[: len(data) // 3])
    damaged = path.read_bytes()
    proc = run_cli(*args(study_file, out, "--resume"))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: {path} is damaged (") and "--resume cannot rebuild it" in error, error
    assert "Put it back from a copy of the study folder" in error and "another --study-name" in error
    assert "Traceback" not in proc.stderr
    assert path.read_bytes() == damaged


# A real signal while the driver creates a new study's MLflow store (its schema migrations): the driver's
# own signal, sent from inside MLflow's migration step, so that it lands there and nowhere else.
SIGNAL_IN_STORE_CREATION = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if this test's runner ignores it
import mlflow.store.db.utils as db
migrate = db._upgrade_db
def signalled(engine):
    os.kill(os.getpid(), signal.{name})
    migrate(engine)
db._upgrade_db = signalled
from studies.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_store_is_created_stops_cleanly_and_the_resume_completes_the_store(tmp_path, name, code):
    study_file = tiny_study(tmp_path / f"{STUDY}.yaml")
    first = args(study_file, tmp_path / "out")
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_STORE_CREATION.format(name=name), *first], cwd=PROJECT_ROOT,
                          env=study_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert proc.stderr.count("--resume") == 1 and "outside the study's stages" in proc.stderr, proc.stderr[-3000:]
    study_dir = tmp_path / "out" / STUDY
    assert not (study_dir / "ray").exists()  # no stage began
    if name == "SIGTERM":
        return  # the same path; one resume is enough
    proc = run_study(*args(study_file, tmp_path / "out", "--resume"), timeout=200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    store = Store(study_dir, STUDY)
    assert sorted(r.info.status for r in store.runs()) == ["FINISHED"] * 4  # parent, 2 search trials, 1 final seed
