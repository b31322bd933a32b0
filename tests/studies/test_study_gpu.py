"""Studies whose trials train on a GPU: every stage on CUDA with fractional GPUs (four trials sharing
one) and with whole ones, MLflow getting the same runs as on a CPU, and a trial interrupted mid-run
resuming on the GPU from its checkpoint. Skipped, with the reason, where there is no GPU."""
from __future__ import annotations

import json
import signal
import time

import pytest
import torch
import yaml

from tests.studies.study_cli import LR, DROPOUT, Store, run_study, start_study

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI and the dev machine have none)")

EPOCHS = 3


def gpu_study(path, name: str):
    """erm + idea on a small synthetic sample, several epochs per trial (so a trial can stop mid-run)."""
    spec = {"dataset": "synthetic", "max_users": 300, "max_len": 10, "epochs": EPOCHS, "patience": EPOCHS, "seed": 0,
            "seeds": 2, "train": {"batch_size": 64}, "asha": {"grace_period": EPOCHS, "reduction_factor": 2},
            "arms": {"erm": {"num_samples": 2, "first": {"lr": 0.003, "dropout": 0.3},
                             "space": {"lr": LR, "dropout": DROPOUT}},
                     "idea": {"num_samples": 2, "train": {"K": 2}, "first": {"N": 2, "lr": 0.001},
                              "space": {"N": {"type": "int", "low": 2, "high": 3}, "lr": LR}}}}
    path = path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def check_store(study_dir, name: str) -> Store:
    """Every trial of every stage ran on CUDA and ended FINISHED, as on a CPU: 2 + 2 search, 2 + 2 final."""
    store = Store(study_dir, name)
    runs = [r for r in store.runs() if r.data.tags["stage"] != "study"]
    assert len(runs) == 8, [(r.data.tags["arm"], r.data.tags["stage"]) for r in runs]
    assert {r.info.status for r in store.runs()} == {"FINISHED"}
    assert {r.data.params["device"] for r in runs} == {"cuda"}
    finals = [r for r in runs if r.data.tags["stage"] == "final"]
    assert all("test_w1_ndcg_at_10" in r.data.metrics for r in finals)
    return store


def test_fractional_gpus_run_every_stage_on_cuda(tmp_path):
    study = gpu_study(tmp_path, "gpu-shared")
    done = run_study(str(study), "--out", str(tmp_path), "--gpus-per-trial", "0.25", "--concurrency", "4", timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "0.25 GPU each (device cuda)" in done.stderr
    check_store(tmp_path / "gpu-shared", "gpu-shared")


def test_a_trial_interrupted_mid_run_resumes_on_the_gpu_from_its_checkpoint(tmp_path):
    name = "gpu-resume"
    study = gpu_study(tmp_path, name)
    args = (str(study), "--out", str(tmp_path), "--gpus-per-trial", "1", "--concurrency", "1")
    study_dir = tmp_path / name
    proc = start_study(*args, log=tmp_path / "first.log")
    try:  # Ctrl-C once an idea search trial has reported its first epoch and not its last
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            results = list((study_dir / "ray").glob("idea-search/*/result.json"))
            epochs = [json.loads(line)["epoch"] for p in results for line in p.read_text().splitlines()]
            if epochs and max(epochs) < EPOCHS:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    resumed = run_study(*args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    check_store(study_dir, name)
    for path in (study_dir / "ray").glob("idea-search/*/result.json"):  # continued, never restarted from epoch 1
        epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines()]
        assert epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS, (path, epochs)
