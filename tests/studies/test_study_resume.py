"""Ctrl-C during the IDEA stage (after the ERM arm and while IDEA fine-tunes its models) leaves a
resumable study and a consistent store; `--resume` finishes it, in the folder's new place when it was moved,
without rerunning finished trials (same MLflow runs, untouched Tune results, no extra trials from a reset
searcher) or losing any.
The interrupted study is a tiny one (tests/studies/study_cli.py: tiny_study), one trial at a time."""
from __future__ import annotations

import json
import re
import shutil
import signal
import time

import pandas as pd
import pytest
import yaml

from studies import preflight
from studies.cli import parse_args
from studies.config import load_study

from tests.studies.study_cli import TINY_ARMS, Store, run_cli, run_study, start_study, tiny_study

STUDY = "synthetic-smoke"  # the smoke study's folder, for the tests that need no study to run
RESUMED = "resumed"  # the tiny study's folder
TRIALS_PER_ARM = {arm: TINY_ARMS[arm]["num_samples"] for arm in ("erm", "idea")}


def wait_for_finished_idea_trial(study_dir, proc, timeout: float = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be interrupted"
        # Tune's folder appears after the driver has created the store: opening the SQLite file earlier
        # would race the driver's table creation.
        if (study_dir / "ray" / "idea-search").exists():
            if Store(study_dir, RESUMED).runs("tags.stage = 'search' and tags.arm = 'idea' and "
                                            "attributes.status = 'FINISHED'"):
                return
        time.sleep(0.5)
    raise TimeoutError("no IDEA search trial finished in time")


def result_lines(study_dir, trial_id: str) -> int:
    """Epochs Tune recorded for a trial (its result.json), to prove a finished trial never ran again."""
    (path,) = [p for p in (study_dir / "ray").glob(f"*-search/*{trial_id}*/result.json")]
    return len(path.read_text().splitlines())


def test_interrupt_then_resume(tmp_path):
    args = (str(tiny_study(tmp_path / f"{RESUMED}.yaml", ("erm", "idea"))), "--out", str(tmp_path),
            "--concurrency", "1")  # one trial at a time: IDEA's later trials are still to run at the Ctrl-C
    study_dir = tmp_path / RESUMED
    proc = start_study(*args, log=tmp_path / "first.log")
    try:
        wait_for_finished_idea_trial(study_dir, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "first.log").read_text()
    assert "--resume" in log
    assert "Tuner.restore" not in log  # Tune's own advice is left out: the study prints its --resume line

    store = Store(study_dir, RESUMED)
    before = store.runs()
    assert {r.info.status for r in before} <= {"FINISHED", "KILLED"}  # nothing left RUNNING
    assert [r.info.status for r in before if r.data.tags["stage"] == "study"] == ["KILLED"]
    finished = {r.data.tags["trial_id"]: r for r in before if r.data.tags["stage"] == "search"
                and r.info.status == "FINISHED"}
    assert {r.data.tags["arm"] for r in finished.values()} >= {"erm", "idea"}
    assert len(store.nested("final", "erm")) == 1 and not store.nested("final", "idea")  # killed in the IDEA stage
    lines = {t: result_lines(study_dir, t) for t in finished}
    finished_run = next(iter(finished.values()))

    # a run the driver created just before dying, for a trial Tune never kept (kill -9 at that moment)
    orphan = store.client.create_run(store.experiment_id, run_name="idea-trial-orphan", tags={
        **{k: finished_run.data.tags[k] for k in ("study", "mlflow.parentRunId", "dataset", "backbone", "git_sha",
                                                   "data_sha256")},
        "arm": "idea", "method": "idea", "stage": "search", "seed": "0", "trial_id": "orphan_00099"}).info.run_id

    # The folder is moved before the resume (say, to a bigger disk): the trials the IDEA stage has yet to
    # create are written in its new place too, and nothing where it was.
    first_place, study_dir = study_dir, tmp_path / "moved" / RESUMED
    study_dir.parent.mkdir()
    shutil.move(first_place, study_dir)
    args = (args[0], "--out", str(study_dir.parent), *args[3:])
    store = Store(study_dir, RESUMED)
    resumed = run_study(*args, "--resume", timeout=300)
    assert not first_place.exists()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    erm_trials = TRIALS_PER_ARM["erm"]
    assert f"[erm-search] resuming from Tune's saved state: {erm_trials} of its {erm_trials} trial(s) ended" \
        in resumed.stderr
    assert "[idea-search] resuming from Tune's saved state: " in resumed.stderr
    # then which trials continue from which epoch (a trial has one epoch here: one in flight starts from epoch 1)
    ended = re.search(r"^\[idea-search\] resuming from Tune's saved state: (\d+) of", resumed.stderr, re.M)[1]
    said = re.search(r"^\[idea-search\] resumed: (.*?) \| ", resumed.stderr, re.M)
    assert said and re.fullmatch(rf"(trial \w+ starts from epoch 1; )*{ended} trial\(s\) had ended", said[1]), \
        resumed.stderr[-3000:]
    assert "Restoring the run from the latest experiment state file" not in resumed.stderr  # Tune's own note

    gone = store.client.get_run(orphan)
    assert gone.info.status == "KILLED" and gone.data.tags["orphan"] == "true"
    assert "orphan_00099" not in set(pd.read_csv(study_dir / "trials.csv")["trial_id"])
    after = [r for r in store.runs() if r.info.run_id != orphan]
    assert {r.info.status for r in after} == {"FINISHED"}
    for arm, trials in TRIALS_PER_ARM.items():
        trial_ids = [r.data.tags["trial_id"] for r in store.nested("search", arm) if r.info.run_id != orphan]
        assert len(trial_ids) == len(set(trial_ids)) == trials  # one run per trial, no extra or lost trials
        assert len(store.nested("final", arm)) == 1
    by_trial = {r.data.tags.get("trial_id"): r for r in after if r.data.tags["stage"] == "search"}
    for trial_id, run in finished.items():
        again = by_trial[trial_id]
        assert again.info.run_id == run.info.run_id and again.info.end_time == run.info.end_time
        assert result_lines(study_dir, trial_id) == lines[trial_id]
    for run in [r for r in store.nested("search") if r.info.run_id != orphan]:  # no epoch logged twice
        steps = store.steps(run)
        assert steps == sorted(set(steps)) and steps[0] == 1
    assert len(store.runs("tags.stage = 'study'")) == 1

    parent = store.runs("tags.stage = 'study'")[0]
    again = run_study(*args, "--resume", timeout=120)
    assert again.returncode == 0 and "already finished" in again.stderr and "best valid NDCG@10" in again.stdout
    assert "report:" in again.stdout and "Ray" not in again.stderr  # answered from the folder, no Ray start
    assert store.runs("tags.stage = 'study'")[0].info.end_time == parent.info.end_time  # nothing changed


def test_resume_refuses_changed_settings(tmp_path):
    missing = run_cli("synthetic", "--smoke", "--out", str(tmp_path), "--resume")
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr
    study_dir = tmp_path / STUDY
    study_dir.mkdir()
    saved = load_study("synthetic", smoke=True).with_overrides(epochs=2)
    (study_dir / "study.yaml").write_text(yaml.safe_dump(saved.to_dict()))
    (study_dir / "run.json").write_text(json.dumps({"tracking_uri": f"sqlite:///{study_dir / 'mlflow.db'}",
                                                    "device": "cpu"}))
    changed = run_cli("synthetic", "--smoke", "--out", str(tmp_path), "--resume")
    assert changed.returncode == 2 and "different study settings (['epochs'])" in changed.stderr


def test_a_second_driver_on_the_same_study_stops_and_touches_nothing(tmp_path):
    args = (str(tiny_study(tmp_path / f"{RESUMED}.yaml", ("erm", "idea"))), "--out", str(tmp_path))
    first = start_study(*args, log=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / RESUMED / "study.yaml").exists():  # the first driver holds the folder
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(1)  # run.json is written right after study.yaml
        second = run_study(*args, "--resume", timeout=120)
        assert second.returncode == 2 and f"in use by another driver (pid {first.pid} on " in second.stderr, \
            second.stderr[-2000:]
        assert (tmp_path / RESUMED / ".driver.lock").read_text().startswith(f"pid {first.pid} ")
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=120)
        except Exception:
            first.kill()


def test_two_resumes_at_once_the_loser_is_refused_before_ray_starts_and_the_winner_finishes(tmp_path):
    """Two `--resume` drivers on one folder started 0.3 s apart (issue 34, item 5): the folder's lock is
    taken before Ray starts, so the loser stops within seconds, naming the folder, having said nothing else."""
    args = (str(tiny_study(tmp_path / "raced.yaml")), "--out", str(tmp_path))
    checked = preflight.check_study(parse_args(list(args)))  # the folder as a first run leaves it before its store
    checked.folder.create(checked.study, checked.tracking_uri, "cpu", checked.split.data_sha256)
    checked.folder.unlock(checked.lock)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    drivers = []
    for log in logs:
        drivers.append(start_study(*args, "--resume", log=log))
        time.sleep(0.3)
    try:
        deadline = time.monotonic() + 120
        while all(d.poll() is None for d in drivers):
            assert time.monotonic() < deadline, "neither driver was refused"
            time.sleep(0.05)
        loser = next(i for i, d in enumerate(drivers) if d.poll() is not None)
        winner, winner_log = drivers[1 - loser], logs[1 - loser].read_text()
        text = logs[loser].read_text()
        assert drivers[loser].returncode == 2 and f"{tmp_path / 'raced'} is in use by another driver" in text, text
        assert text.startswith("error: ") and text.count("\n") == 1, text  # nothing else: it started nothing
        assert "trials:" not in winner_log, winner_log  # refused before even the winner had started Ray
        assert winner.wait(timeout=300) == 0, logs[1 - loser].read_text()[-3000:]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
    assert [r.info.status for r in Store(tmp_path / "raced", "raced").runs("tags.stage = 'study'")] == ["FINISHED"]


DAMAGED = {
    "unparsable study.yaml": ("study.yaml", "dataset: [synthetic\n", "study.yaml is damaged"),
    "invalid study.yaml": ("study.yaml", "dataset: netflix\narms: {}\n", "study.yaml is damaged"),
    "missing run.json": ("run.json", None, "run.json is missing"),
    "truncated run.json": ("run.json", '{"tracking_uri": "sqlite:///x', "run.json is damaged"),
    "run.json without device": ("run.json", '{"tracking_uri": "sqlite:///x.db"}', "run.json lacks tracking_uri or device"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_study_files_are_named_not_tracebacks(tmp_path, case):
    name, text, message = DAMAGED[case]
    study_dir = tmp_path / STUDY
    study_dir.mkdir()
    (study_dir / "study.yaml").write_text(yaml.safe_dump(load_study("synthetic", smoke=True).to_dict()))
    (study_dir / "run.json").write_text(json.dumps({"tracking_uri": f"sqlite:///{study_dir / 'mlflow.db'}",
                                                    "device": "cpu"}))
    if text is None:
        (study_dir / name).unlink()
    else:
        (study_dir / name).write_text(text)
    proc = run_cli("synthetic", "--smoke", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(study_dir / name) in proc.stderr


def test_printed_resume_and_ui_commands_are_shell_quoted():
    """Pasted back, the resume line and the `mlflow ui` line keep a path with a space as one argument; the
    UI is served on 127.0.0.1:5001 (5000 is often taken)."""
    import shlex
    import sys

    from studies.driver import resume_command, ui_hint

    argv = ["studies/run_study.py", "/my studies/beauty.yaml", "--out", "my out"]
    assert shlex.split(resume_command(argv, resume=False)) == [sys.executable, *argv, "--resume"]
    assert shlex.split(resume_command([*argv, "--resume"], resume=True)) == [sys.executable, *argv, "--resume"]
    uri = "sqlite:////my out/beauty/mlflow.db"
    assert shlex.split(ui_hint(uri)) == ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                         "--port", "5001"]
    assert ui_hint("http://srv:5000") == "open http://srv:5000 (MLflow tracking server)"
