"""The search stage: one Tune experiment per arm (`<study dir>/ray/<arm>-search`), TPE + ASHA,
resumable with its searcher state; and the selection of each arm's best trial on validation only."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import ResultGrid

from idea.contract import TRUE, Result, Stage, Tag, best_key
from idea.splits import Split

from studies.config import StudyConfig
from studies.experiments import Resources, ended_trials, fit
from studies.optuna_search import settle
from studies.ranges import spec_dict
from studies.space import MODE, make_scheduler, make_searcher
from studies.trainable import failed, scratch_key, search_trial
from studies.tracking import MlflowTrialLogger, StudyRun, summary_metrics


def close_budget_stopped(study_run: StudyRun, arm: str, stage: str, grid: ResultGrid) -> None:
    """Trials Tune ended without a callback (the time budget) still have a RUNNING run: end it FINISHED,
    tagged budget_stopped, with its best-so-far metrics. A RUNNING run whose trial the grid does not
    hold (the driver died right after creating it, and Tune never kept the trial) is an orphan: it ends
    KILLED, tagged orphan, and counts as no trial."""
    client = study_run.client()
    last = {r.metrics.get(Result.TRIAL_ID): r.metrics for r in grid if r.metrics}
    for run in study_run.nested_runs(arm, stage, status="RUNNING"):
        if run.data.tags.get(Tag.TRIAL_ID) not in last:
            client.set_tag(run.info.run_id, Tag.ORPHAN, TRUE)
            client.set_terminated(run.info.run_id, "KILLED")
            continue
        metrics = summary_metrics(last.get(run.data.tags.get(Tag.TRIAL_ID), {}))
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, float(value))
        client.set_tag(run.info.run_id, Tag.BUDGET_STOPPED, TRUE)
        client.set_terminated(run.info.run_id, "FINISHED")


OPTUNA_FILE = "optuna.db"  # every arm's search as an Optuna study (named after the arm), for optuna-dashboard


def optuna_storage(study_dir: Path) -> str:
    """The study folder's Optuna storage URL (SQLite)."""
    return f"sqlite:///{(study_dir / OPTUNA_FILE).resolve()}"


def run_search(study: StudyConfig, arm: str, split: Split, resources: Resources, ray_dir: Path,
               study_run: StudyRun, resume: bool, start: Any = None) -> ResultGrid:
    """Search one arm on train + validation only (`split` must come without test windows); a warm arm's
    trials all start from `start` (a `studies.warm_start.Start`)."""
    fixed = {**study.fixed(arm), "device": resources.device}
    if start is not None:
        fixed["init_from"] = start.path
    trainable = resources.wrap(search_trial, split=split, fixed=fixed, scratch=scratch_key(ray_dir.parent))
    name = f"{arm}-search"
    init = {None: start} if start is not None else {}

    def build(run_config: tune.RunConfig) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=study.metric, mode=MODE, num_samples=study.arms[arm].num_samples,
                search_alg=make_searcher(study, study.arms[arm], resources.concurrency,
                                         optuna_storage(ray_dir.parent)),
                scheduler=make_scheduler(study, arm), time_budget_s=resources.time_budget_s,
                reuse_actors=True,  # a new trial reuses a finished trial's worker: no process start, no re-import
            ),
            run_config=run_config,
        )

    searched = json.dumps({k: spec_dict(v) for k, v in study.arms[arm].space.items()})  # read by analysis
    run_config = resources.run_config(ray_dir, name, study.arms[arm].num_samples, MlflowTrialLogger(
        study_run, arm, Stage.SEARCH, fixed, study.epochs_of(arm), init,
        tags={Tag.SEARCHED: searched, **study.roles().tags(arm)}))
    def attach(tune_config: tune.TuneConfig) -> None:  # Tune pickled the searcher without its storage
        tune_config.search_alg.searcher.attach(optuna_storage(ray_dir.parent))

    grid = fit(ray_dir / name, trainable, resume, build, run_config, lambda: ended_trials(study_run, arm, Stage.SEARCH),
               attach)
    close_budget_stopped(study_run, arm, Stage.SEARCH, grid)
    selection = select_best(arm, grid, study.metric)  # the driver's selection: the same function, the same grid
    settle(optuna_storage(ray_dir.parent), arm, grid, study.metric, selection and selection.trial_id)
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
    key = best_key(metric)
    done = [r for r in grid if not failed(r) and math.isfinite(r.metrics.get(key, math.nan))]
    if not done:
        return None
    best = max(done, key=lambda r: r.metrics[key])
    return Selection(arm, best.metrics[Result.TRIAL_ID], dict(best.config), float(best.metrics[key]),
                     best.checkpoint.path if best.checkpoint is not None else None)
