"""Faults of the machine stop a study cleanly and resumably (issue 21, item 3): a read-only, misplaced or
too full --out is refused before Ray starts (exit 2); a full disk mid-study (a simulated ENOSPC in a trial)
and a tracking store another process keeps locked stop the study with one message, the resume command and
exit 75, and the resume finishes it; writes to a locked store are retried for $IDEA_STUDY_STORE_RETRY_S."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from studies.faults import ENVIRONMENT_EXIT, STORE_RETRY_ENV, RetryingClient
from studies.preflight import MIN_FREE_ENV

from tests.studies.study_cli import Store, run_cli, run_study, start_study, tiny_study

STUDY = "faulted"
TRIALS = 3


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one may write: chmod for a user, a read-only tmpfs mounted over it for root (whom
    permissions do not stop)."""
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    mounted = os.geteuid() == 0
    if mounted and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)]).returncode:
        pytest.skip("root cannot mount a read-only tmpfs here")
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        path.chmod(0o755)


def test_a_read_only_out_is_refused_before_ray_starts(tmp_path, read_only_dir):
    done = run_cli(str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(read_only_dir / "out"))
    assert done.returncode == 2, done.stderr
    assert f"{read_only_dir} is not writable" in done.stderr and "choose another --out" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and list(read_only_dir.iterdir()) == []


def test_an_out_under_a_file_or_missing_on_resume_is_named(tmp_path):
    study_file = tiny_study(tmp_path / f"{STUDY}.yaml")
    done = run_cli(str(study_file), "--out", str(study_file / "out"))
    assert done.returncode == 2 and f"{study_file} is a file" in done.stderr, done.stderr
    done = run_cli(str(study_file), "--out", str(tmp_path / "typo"), "--resume")
    assert done.returncode == 2 and f"{tmp_path / 'typo'} does not exist: check --out" in done.stderr, done.stderr


def test_too_little_free_space_is_refused_before_ray_starts(tmp_path, monkeypatch):
    monkeypatch.setenv(MIN_FREE_ENV, str(2**40))  # a petabyte
    done = run_cli(str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "MiB free on the disk of" in done.stderr and MIN_FREE_ENV in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def assert_clean_stop(done_code: int, text: str, cause: str) -> None:
    assert done_code == ENVIRONMENT_EXIT, text[-3000:]
    assert cause in text and text.count("--resume") == 1, text[-3000:]
    assert "Traceback" not in text and "database is locked\n" not in text, text[-3000:]


def assert_resumed(args, study_dir) -> None:
    resumed = run_study(*args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    store = Store(study_dir, STUDY)
    assert len(store.nested("search", "erm", "FINISHED")) == TRIALS, [r.info.status for r in store.runs()]
    assert len(store.nested("final", "erm", "FINISHED")) == 1
    assert {r.info.status for r in store.runs()} == {"FINISHED"}


def test_a_full_disk_stops_the_study_cleanly_and_resumably(tmp_path):
    args = (str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(tmp_path), "--concurrency", "1",
            "--num-samples", str(TRIALS))
    # the first trial (the study file's `first` configuration) meets a full disk: ENOSPC, as writing a checkpoint
    fault = json.dumps({"lr": 0.003, "dropout": 0.3, "error": "enospc"})
    done = run_study(*args, timeout=300, IDEA_STUDY_INJECT_FAULT=fault)
    assert_clean_stop(done.returncode, done.stderr, "no space left on the disk")
    runs = Store(tmp_path / STUDY, STUDY).runs()
    assert runs and {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert {r.data.tags.get("interrupted") for r in runs} == {"disk full"}
    assert_resumed(args, tmp_path / STUDY)


LOCK_HOLDER = """import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(db, seconds: float) -> subprocess.Popen:
    """Another process holding a write lock on the SQLite file `db` for `seconds`."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_store_stops_the_study_cleanly_and_resumably(tmp_path):
    args = (str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(tmp_path), "--concurrency", "1",
            "--num-samples", str(TRIALS))
    study_dir, log = tmp_path / STUDY, tmp_path / "first.log"
    proc = start_study(*args, log=log, **{STORE_RETRY_ENV: "3"})
    holder = None
    try:
        deadline = time.monotonic() + 200
        while not ((study_dir / "ray" / "erm-search").exists() and Store(study_dir, STUDY).nested("search")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        holder = hold_lock(study_dir / "mlflow.db", 300)  # far beyond MLflow's 20 s and the 3 s of retries
        code = proc.wait(timeout=150)
    finally:
        for process in (proc, holder):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert_clean_stop(code, log.read_text(), f"the tracking store sqlite:///{study_dir / 'mlflow.db'} stayed locked")
    assert_resumed(args, study_dir)


def test_writes_to_a_locked_store_are_retried_beyond_mlflows_busy_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_RETRY_ENV, "60")
    client = RetryingClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("locked", artifact_location=(tmp_path / "artifacts").as_uri())
    holder = hold_lock(tmp_path / "mlflow.db", 25)  # MLflow alone gives up after 20 s
    try:
        start = time.monotonic()
        run = client.create_run(experiment)
        assert time.monotonic() - start > 20
    finally:
        holder.kill()
        holder.wait()
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_a_report_that_failed_to_be_written_is_written_by_the_resume(tmp_path):
    """The report is part of finishing (issue 34, item 2): a full disk while the summary and report are written,
    after the last trial (simulated by IDEA_STUDY_INJECT_REPORT_FAULT), stops the study with exit 75, and
    `--resume` writes them, exit 0, instead of calling the study finished with an empty summary.txt and no
    report; only then is it finished."""
    args = (str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(tmp_path), "--concurrency", "1",
            "--num-samples", "1")
    study_dir = tmp_path / STUDY
    done = run_study(*args, timeout=300, IDEA_STUDY_INJECT_REPORT_FAULT="enospc")
    assert_clean_stop(done.returncode, done.stderr, "no space left on the disk")
    resumed = run_study(*args, "--resume", timeout=300)
    assert resumed.returncode == 0 and "already finished" not in resumed.stderr, resumed.stderr[-3000:]
    summary = (study_dir / "summary.txt").read_text()
    assert summary.startswith(f"Study {STUDY} ") and summary in resumed.stdout, (summary, resumed.stdout[-3000:])
    report = study_dir / "report" / "summary.md"
    assert report.is_file() and "UNFINISHED" not in report.read_text().splitlines()[0]
    assert [r.info.status for r in Store(study_dir, STUDY).runs("tags.stage = 'study'")] == ["FINISHED"]
    again = run_study(*args, "--resume", timeout=120)
    assert again.returncode == 0 and "already finished" in again.stderr and summary in again.stdout, again.stderr
