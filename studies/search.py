"""The search stage: one Tune experiment per arm (`<study dir>/ray/<arm>-search`), TPE + ASHA,
resumable with its searcher state; and the selection of each arm's best trial on validation only."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune import ResultGrid

from idea.splits import Split

from studies.config import StudyConfig
from studies.progress import ProgressPrinter
from studies.space import MODE, make_scheduler, make_searcher
from studies.trainable import search_trial
from studies.tracking import INTERRUPTED, MlflowTrialLogger, StudyRun, summary_metrics


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a stage; Tune saved its state, so the study can be resumed."""


@dataclass(frozen=True)
class Resources:
    """Per-trial resources and run limits from the CLI (not part of the study's identity)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional GPUs share one device between trials
    concurrency: int = 2
    max_failures: int = 2  # retries of a crashing trial before it is recorded as FAILED
    time_budget_s: float | None = None  # per arm's search

    def __post_init__(self) -> None:
        if not self.cpus_per_trial > 0:
            raise ValueError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ValueError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"--gpus-per-trial above 1 must be a whole number, got {self.gpus_per_trial}")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.max_failures < 0:
            raise ValueError(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"--time-budget-s must be > 0, got {self.time_budget_s}")

    @property
    def device(self) -> str:
        """Ray exposes a trial's GPU share as its only visible CUDA device."""
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    def wrap(self, trainable: Callable, **shared: Any):
        """Share big objects through the object store (put once, not per trial) and attach resources."""
        return tune.with_resources(tune.with_parameters(trainable, **shared),
                                   {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})

    def run_config(self, ray_dir: Path, name: str, total: int, logger: tune.Callback) -> tune.RunConfig:
        """Tune's own console table is replaced by one line per trial event (`studies.progress`)."""
        return tune.RunConfig(
            name=name, storage_path=str(ray_dir), callbacks=[logger, ProgressPrinter(name, total, self.concurrency)],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest epoch is all a resume needs
        )


def fit(path: Path, trainable, resume: bool, build: Callable[[], tune.Tuner]) -> ResultGrid:
    """Run one experiment: restored (finished trials kept, unfinished continued from their checkpoints,
    errored ones given another chance) when resuming and Tune saved it, else built fresh."""
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = build()
    grid = tuner.fit()
    if INTERRUPTED.is_set():
        raise Interrupted(f"interrupted during {path.name}")
    return grid


def close_budget_stopped(study_run: StudyRun, arm: str, stage: str, grid: ResultGrid) -> None:
    """Trials Tune ended without a callback (the time budget) still have a RUNNING run: end it FINISHED,
    tagged budget_stopped, with its best-so-far metrics. A RUNNING run whose trial the grid does not
    hold (the driver died right after creating it, and Tune never kept the trial) is an orphan: it ends
    KILLED, tagged orphan, and counts as no trial."""
    client = study_run.client()
    last = {r.metrics.get("trial_id"): r.metrics for r in grid if r.metrics}
    for run in study_run.nested_runs(arm, stage, status="RUNNING"):
        if run.data.tags.get("trial_id") not in last:
            client.set_tag(run.info.run_id, "orphan", "true")
            client.set_terminated(run.info.run_id, "KILLED")
            continue
        metrics = summary_metrics(last.get(run.data.tags.get("trial_id"), {}))
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, float(value))
        client.set_tag(run.info.run_id, "budget_stopped", "true")
        client.set_terminated(run.info.run_id, "FINISHED")


def run_search(study: StudyConfig, arm: str, split: Split, resources: Resources, ray_dir: Path,
               study_run: StudyRun, resume: bool, start: Any = None) -> ResultGrid:
    """Search one arm on train + validation only (`split` must come without test windows); a warm arm's
    trials all start from `start` (a `studies.warm_start.Start`)."""
    fixed = {**study.fixed(arm), "device": resources.device}
    if start is not None:
        fixed["init_from"] = start.path
    trainable = resources.wrap(search_trial, split=split, fixed=fixed)
    name = f"{arm}-search"
    init = {None: start} if start is not None else {}

    def build() -> tune.Tuner:
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=study.metric, mode=MODE, num_samples=study.arms[arm].num_samples,
                search_alg=make_searcher(study, study.arms[arm], resources.concurrency),
                scheduler=make_scheduler(study, arm), time_budget_s=resources.time_budget_s,
                reuse_actors=True,  # a new trial reuses a finished trial's worker: no process start, no re-import
            ),
            run_config=resources.run_config(ray_dir, name, study.arms[arm].num_samples, MlflowTrialLogger(
                study_run, arm, "search", fixed, study.epochs_of(arm), init)),
        )

    grid = fit(ray_dir / name, trainable, resume, build)
    close_budget_stopped(study_run, arm, "search", grid)
    return grid


@dataclass(frozen=True)
class Selection:
    """An arm's best search trial: its sampled parameters and best validation metric."""

    arm: str
    trial_id: str
    params: dict[str, Any]
    value: float  # best validation NDCG@10 over the trial's epochs
    checkpoint: str | None = None  # the trial's last checkpoint folder (holds its best state)


def select_best(arm: str, grid: ResultGrid, metric: str) -> Selection | None:
    """Highest best-so-far validation metric among trials that did not fail; None if all failed."""
    key = f"best_{metric}"
    done = [r for r in grid if r.error is None and math.isfinite(r.metrics.get(key, math.nan))]
    if not done:
        return None
    best = max(done, key=lambda r: r.metrics[key])
    return Selection(arm, best.metrics["trial_id"], dict(best.config), float(best.metrics[key]),
                     best.checkpoint.path if best.checkpoint is not None else None)
