"""The Ray Tune function trainables: thin adapters over `idea.trainer.Trainer`.

Every epoch reports the validation metrics (and the best-so-far ones) with a
Tune checkpoint of the whole trainer, so a trial resumed by Tune (after a crash,
a retry or `--resume`) continues where it stopped. `search_trial` gets a split
without test windows; only `final_trial` sees them, after training, once.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import ray
import torch
from ray import tune

from idea.config import TrainConfig
from idea.contract import METRIC_NAMES, SUBSETS, Result, best_key, best_state_key
from idea.metrics import summary
from idea.splits import Split
from idea.trainer import CheckpointError, NonFiniteLossError, Trainer

CHECKPOINT_FILE = "trainer.pt"
RESULTS_FILE = "results.csv"  # final trials: the tidy metrics frame of the best state
# Errors a retry would repeat (a NaN loss from the same seed and config, an unreadable or mismatched
# checkpoint): such a trial reports one under Result.PERMANENT_ERROR and returns instead of raising, so
# Tune does not retry it; the MLflow callback ends its run FAILED.
PERMANENT_ERRORS = (NonFiniteLossError, CheckpointError)
# Test hook: a JSON object (or a list of them) of TrainConfig fields; a trial whose config matches all
# of one's fields raises at its start, every attempt, so failure handling (retries, FAILED runs) can be
# tested for real. The optional key "error": "nonfinite" raises NonFiniteLossError (never retried)
# instead of InjectedFault (retried like a crash); "enospc" the OSError of a full disk.
FAULT_ENV = "IDEA_STUDY_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """Raised by a trial matching $IDEA_STUDY_INJECT_FAULT."""


def _check_fault(config: TrainConfig) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    faults = json.loads(spec)
    values = config.to_dict()
    for fault in faults if isinstance(faults, list) else [faults]:
        wanted = {k: v for k, v in fault.items() if k != "error"}
        if all(values.get(k) == v for k, v in wanted.items()):
            message = f"{FAULT_ENV} fault {json.dumps(fault)} matches this trial"
            if fault.get("error") == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), message)
            raise (NonFiniteLossError if fault.get("error") == "nonfinite" else InjectedFault)(message)


def failed(result) -> bool:
    """Did a trial of a Tune result grid fail: an error Tune recorded, or one it was not asked to retry?"""
    return result.error is not None or Result.PERMANENT_ERROR in (result.metrics or {})


def _stop_on_permanent_errors(run: Callable[..., None]) -> Callable[..., None]:
    """`run` (a trial function), reporting an error in PERMANENT_ERRORS as its last result instead of
    raising it. The result carries NaN for every metric a scheduler or searcher may read (Optuna records
    the trial as failed) and epoch 0, where ASHA decides nothing."""

    @functools.wraps(run)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            run(*args, **kwargs)
        except PERMANENT_ERRORS as err:
            nan = float("nan")
            tune.report({Result.EPOCH: 0, **{n: nan for n in METRIC_NAMES}, **{best_key(n): nan for n in METRIC_NAMES},
                         Result.PERMANENT_ERROR: f"{type(err).__name__}: {err}"})

    return guarded


def remove_scratch(scratch: str) -> int:
    """Remove the temporary checkpoint folders of the study whose `StudyFolder.scratch_key` is `scratch` on
    this machine; returns how many. A trial Ray stops or kills (Ctrl-C, ASHA, the time budget, a driver killed
    with -9) never leaves its `with` block, so its folder (about 14 MB for Beauty) stays behind; the driver
    calls this at its start and at its end."""
    paths = [p for kind in ("ckpt", "final") for p in Path(tempfile.gettempdir()).glob(f"idea-{kind}-{scratch}-*")]
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return len(paths)


def prepare_worker() -> None:
    """Torch threads = the trial's CPU share, so concurrent trials do not oversubscribe the cores; and no
    Ray line per saved checkpoint (a trial saves one every epoch, and the console already shows the epoch)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


def _start(trainer: Trainer) -> dict[str, str]:
    """The warm start's weight digest for a report (tagged on the MLflow run), or nothing."""
    return {Result.INIT_DIGEST: trainer.init_digest} if trainer.init_digest else {}


def _train(config: dict[str, Any], split: Split, fixed: dict[str, Any], scratch: str) -> Trainer:
    """Fixed settings + sampled params -> a trained Trainer; resumes from Tune's checkpoint when there is one."""
    train_config = TrainConfig.from_dict({**fixed, **config})
    _check_fault(train_config)
    prepare_worker()
    trainer = Trainer(train_config, split)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / CHECKPOINT_FILE)
    with tempfile.TemporaryDirectory(prefix=f"idea-ckpt-{scratch}-") as tmp:
        path = Path(tmp) / CHECKPOINT_FILE

        def report(record) -> None:
            best = trainer.records[trainer.best_epoch - 1].valid if trainer.best_epoch else {}  # 0: no finite score yet
            tune.report({**record.flat(), **_start(trainer), **{best_key(k): v for k, v in best.items()}},
                        checkpoint=tune.Checkpoint.from_directory(tmp))

        trainer.fit(on_epoch=report, checkpoint=path)
    return trainer


@_stop_on_permanent_errors
def search_trial(config: dict[str, Any], split: Split, fixed: dict[str, Any], scratch: str) -> None:
    """One search trial: train on `split` (no test windows), reporting validation metrics per epoch;
    `scratch` (`StudyFolder.scratch_key`) names its temporary folder."""
    if split.tests:
        raise ValueError("search trials must not receive test windows; pass studies.data.without_tests(split)")
    _train(config, split, fixed, scratch)


def final_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Flat MLflow-style names of a best-state frame: best_valid_[warm_]<m>_at_<k>, test_<w>_[warm_]<m>_at_<k>."""
    out = {}
    for part in frame["part"].unique():
        for subset in SUBSETS:
            out.update({best_state_key(part, k, subset): v for k, v in summary(frame, part, subset).items()})
    return out


@_stop_on_permanent_errors
def final_trial(config: dict[str, Any], split: Split, fixed: dict[str, Any], scratch: str,
                starts: Mapping[int, str] | None = None) -> None:
    """One final seed run: train like a search trial (a warm arm's seed s from `starts[s]`, the ERM arm's
    seed s), then evaluate the best state once on validation and every test window; the last report
    carries those metrics and a checkpoint with the tidy frame."""
    if starts is not None:
        fixed = {**fixed, "init_from": starts[config["seed"]]}
    trainer = _train(config, split, fixed, scratch)
    frame = trainer.evaluate()
    with tempfile.TemporaryDirectory(prefix=f"idea-final-{scratch}-") as tmp:
        trainer.save(Path(tmp) / CHECKPOINT_FILE)
        frame.to_csv(Path(tmp) / RESULTS_FILE, index=False)
        tune.report({Result.EPOCH: trainer.epoch, Result.BEST_EPOCH: trainer.best_epoch,
                     Result.BEST_PHASE: trainer.best_phase, Result.EVALUATED: 1, **_start(trainer),
                     **final_metrics(frame)}, checkpoint=tune.Checkpoint.from_directory(tmp))
