"""SIGTERM, how SLURM and Kubernetes stop a job, is an interruption like Ctrl-C (issue 21, item 2): open
runs end KILLED tagged with the signal, exit 143, the one --resume line, and --resume finishes the study.
So are SIGHUP (a closed terminal) and a SIGTERM to the driver's whole process group (`timeout`, a shell's
`kill -- -PGID`), which Ray's own processes, in groups of their own, do not receive (issue 34, item 1)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from analysis.report import main as report_main
from tests.studies.study_cli import PROJECT_ROOT, Store, run_study, start_study, study_command, study_env, tiny_study

STUDY = "terminated"
TRIALS = 4  # --num-samples: one at a time, so later trials are still to run when the signal comes


def wait_for_a_finished_trial(study_dir, proc, timeout: float = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be stopped"
        if (study_dir / "ray" / "erm-search").exists() and Store(study_dir, STUDY).nested("search", status="FINISHED"):
            return
        time.sleep(0.3)
    raise TimeoutError("no search trial finished in time")


def report_of(study_dir, out) -> str:
    """`python -m analysis.report` on the study's store, after adding a trial run that a driver killed
    with -9 would leave RUNNING (the resume ends it KILLED, tagged orphan)."""
    store = Store(study_dir, STUDY)
    (parent,) = store.runs("tags.stage = 'study'")
    store.client.create_run(store.experiment_id, run_name="erm-trial-left_running", tags={
        "study": STUDY, "mlflow.parentRunId": parent.info.run_id, "arm": "erm", "stage": "search",
        "trial_id": "left_running"})
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    assert report_main(["--tracking-uri", uri, "--study", STUDY, "--out", str(out)]) == 0
    return (out / "summary.md").read_text()


def test_sigterm_stops_like_ctrl_c_and_the_study_resumes(tmp_path):
    args = (str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(tmp_path), "--concurrency", "1",
            "--num-samples", str(TRIALS))
    study_dir, log = tmp_path / STUDY, tmp_path / "first.log"
    proc = start_study(*args, log=log)
    try:
        wait_for_a_finished_trial(study_dir, proc)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert "Traceback" not in text and "Fatal Python error" not in text and "Stack trace" not in text, text[-3000:]
    assert text.count("--resume") == 1 and "terminated (SIGTERM)" in text, text[-3000:]

    runs = Store(study_dir, STUDY).runs()
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert [r.data.tags["stage"] for r in killed if r.data.tags["stage"] == "study"] == ["study"]
    assert all(r.data.tags.get("interrupted") == "SIGTERM" for r in killed), [r.data.tags for r in killed]

    text = report_of(study_dir, tmp_path / "report")
    assert "UNFINISHED" in text.splitlines()[0], text[:3000]
    assert "- the study run is KILLED (stopped by SIGTERM)" in text, text[:3000]
    assert "- arm erm: final seed(s) 1 of 1 missing" in text and "erm-trial-left_running" in text, text[:3000]
    assert "- resume with `" in text and "--resume`" in text, text[:3000]

    resumed = run_study(*args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "UNFINISHED" not in (study_dir / "report" / "summary.md").read_text().splitlines()[0]
    store = Store(study_dir, STUDY)
    assert len(store.nested("search", "erm", "FINISHED")) == TRIALS
    assert len(store.nested("final", "erm", "FINISHED")) == 1
    assert [r.info.status for r in store.runs("tags.stage = 'study'")] == ["FINISHED"]


def assert_stopped_like_ctrl_c(code: int, text: str, study_dir, signal_name: str, exit_code: int) -> None:
    """The exit code of the signal, its name in the one message with the one --resume line, no traceback, and
    every run FINISHED or KILLED, the killed ones (the parent among them) tagged with the signal."""
    assert code == exit_code, text[-3000:]
    assert "Traceback" not in text and "Fatal Python error" not in text, text[-3000:]
    assert text.count("--resume") == 1 and f"terminated ({signal_name})" in text, text[-3000:]
    runs = Store(study_dir, STUDY).runs()
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert "study" in [r.data.tags["stage"] for r in killed], [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.data.tags.get("interrupted") == signal_name for r in killed), [r.data.tags for r in killed]


@pytest.mark.parametrize("signal_name, exit_code, group", [("SIGHUP", 129, False), ("SIGTERM", 143, True)],
                         ids=["sighup", "sigterm-to-the-process-group"])
def test_sighup_and_a_group_sigterm_stop_like_ctrl_c(tmp_path, signal_name, exit_code, group):
    args = (str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(tmp_path), "--concurrency", "1",
            "--num-samples", str(TRIALS))
    study_dir, log = tmp_path / STUDY, tmp_path / "first.log"
    with open(log, "w") as out:  # in its own process group, as a shell job or `timeout`'s child is
        proc = subprocess.Popen(study_command(*args), cwd=PROJECT_ROOT, env=study_env(), stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
    try:
        wait_for_a_finished_trial(study_dir, proc)
        sent = time.monotonic()
        if group:
            os.killpg(proc.pid, getattr(signal, signal_name))
        else:
            proc.send_signal(getattr(signal, signal_name))
        code = proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_stopped_like_ctrl_c(code, log.read_text(), study_dir, signal_name, exit_code)
    assert took < 30, f"the driver took {took:.0f} s to stop"
