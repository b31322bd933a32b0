"""Helpers of the study harness tests: run the real CLI in a subprocess, as a user would,
and read the MLflow store it leaves."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_STUDY = PROJECT_ROOT / "studies" / "run_study.py"


LR = {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}
DROPOUT = {"type": "float", "low": 0.0, "high": 0.5}
TINY_ARMS = {  # the smallest arms that still run every stage: 1 epoch, 150 users, sequences of 10
    "erm": {"num_samples": 2, "first": {"lr": 0.003, "dropout": 0.3}, "space": {"lr": LR, "dropout": DROPOUT}},
    "idea": {"num_samples": 3, "train": {"K": 2}, "first": {"N": 2, "lr": 0.001, "dropout": 0.3},
             "space": {"N": {"type": "int", "low": 2, "high": 3}, "lr": LR, "dropout": DROPOUT}},
}


def tiny_study(path: Path, arms: tuple[str, ...] = ("erm",)) -> Path:
    """Write a study file of `arms` (TINY_ARMS) on a tiny synthetic sample, 1 final seed; returns its path.
    The study's folder name is the file's stem."""
    spec = {"dataset": "synthetic", "max_users": 150, "max_len": 10, "epochs": 1, "patience": 1, "seed": 0,
            "seeds": 1, "train": {"batch_size": 256}, "asha": {"grace_period": 1, "reduction_factor": 2},
            "arms": {arm: TINY_ARMS[arm] for arm in arms}}
    path.write_text(yaml.safe_dump(spec))
    return path


def study_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # a stray cluster address must not leak into the local-cluster tests
    return {**env, **extra}


def study_command(*args: str) -> list[str]:
    """`python studies/run_study.py ...` exactly as a user types it, from the project root."""
    return [sys.executable, str(RUN_STUDY.relative_to(PROJECT_ROOT)), *args]


def run_study(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run the CLI to completion; stdout and stderr captured as text."""
    return subprocess.run(study_command(*args), cwd=PROJECT_ROOT, env=study_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process (the same code path as `run_study`, without a new interpreter's
    imports): for commands that stop before Ray starts, such as refused flags, names, files or resumes."""
    from studies.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(PROJECT_ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse refusing a flag
                code = stop.code
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(["run_study.py", *args], code, out.getvalue(), err.getvalue())


def start_study(*args: str, log: Path, **env: str) -> subprocess.Popen:
    """Start the CLI in the background, output to `log`."""
    with open(log, "w") as f:
        return subprocess.Popen(study_command(*args), cwd=PROJECT_ROOT, env=study_env(**env), stdout=f,
                                stderr=subprocess.STDOUT)


class Store:
    """Read access to a study's MLflow store (the default SQLite file in the study folder, or `db`)."""

    def __init__(self, study_dir: Path, study: str, db: Path | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=f"sqlite:///{db or study_dir / 'mlflow.db'}")
        experiment = self.client.get_experiment_by_name(study)
        assert experiment is not None, f"no MLflow experiment {study!r} in {study_dir}"
        self.experiment_id = experiment.experiment_id

    def runs(self, filter_string: str = "") -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string, max_results=1000))

    def nested(self, stage: str, arm: str | None = None, status: str | None = None) -> list:
        clause = f"tags.stage = '{stage}'" + (f" and tags.arm = '{arm}'" if arm else "")
        return self.runs(clause + (f" and attributes.status = '{status}'" if status else ""))

    def steps(self, run, key: str = "valid_ndcg_at_10") -> list[int]:
        return [m.step for m in self.client.get_metric_history(run.info.run_id, key)]
