"""Oracle selection (`oracle: true` in a study file): an upper bound beside the validation selection, as
the domain-generalisation literature reports one (DomainBed, Gulrajani & Lopez-Paz, ICLR'21). Selection on
validation cannot see robustness to a shift that happens after it; the oracle may. After an arm's search and
final stages, every completed search trial's best state is scored on the *first* test window alone, the best
one's configuration is retrained with the final seeds (stage `oracle`, experiment `<arm>-oracle`, the same
warm starts as the validation pick's seeds), and analysis reports those runs only on the windows after the
first (`analysis.summaries.oracle_view`). It chooses with test data, so it is never the headline.
When the oracle picks the validation pick, retraining would repeat the final stage (the same configuration,
seeds and warm starts): the final runs are copied as the oracle's instead (`reuse_final`).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import ray
from mlflow.entities import Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.tune import ResultGrid

from idea.config import TrainConfig
from idea.contract import Result, Stage, Tag, oracle_key, run_name
from idea.metrics import summary
from idea.splits import Events, Split
from idea.trainer import Trainer

from studies.data import without_tests
from studies.experiments import Resources
from studies.final import RESULT_COLUMNS, final_results, run_final
from studies.plan import ArmPlan, Selection, StageContext
from studies.trainable import CHECKPOINT_FILE, failed, prepare_worker
from studies.tracking import StudyRun

PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's limits on one log_batch call


def selection_window(split: Split) -> str:
    """The window the oracle selects on: the first test window; the study must have later ones to report."""
    windows = list(split.tests)
    if len(windows) < 2:
        raise ValueError(f"oracle selection needs at least two test windows (it selects on the first and reports "
                         f"the others), but the split has {windows}: use protocol temporal, or oracle: false")
    return windows[0]


def score_trial(checkpoint_dir: str, config: Mapping[str, Any], search_split: Split, window: str, events: Events,
                metric: str) -> float:
    """`metric` of a search trial's best state on one window's `events`. The trainer is rebuilt on the split
    the trial trained on (no test windows: its checkpoint is checked against it), so the only test data this
    reads is `events`."""
    trainer = Trainer(TrainConfig.from_dict(dict(config)), search_split)
    trainer.load(Path(checkpoint_dir) / CHECKPOINT_FILE)
    frame = trainer.evaluate_events(events, window, trainer.best_model())
    return float(summary(frame, window, "all")[metric])


def _score_task(checkpoint_dir: str, config: Mapping[str, Any], search_split: Split, window: str, events: Events,
                metric: str) -> float:
    """`score_trial` as a Ray task holding a trial's resources (a GPU share included)."""
    prepare_worker()
    return score_trial(checkpoint_dir, config, search_split, window, events, metric)


@dataclass(frozen=True)
class OracleScore:
    """One search trial's best state scored on the selection window."""

    trial_id: str
    params: dict[str, Any]
    value: float
    checkpoint: str


def score_search(search: ResultGrid, split: Split, fixed: Mapping[str, Any], metric: str,
                 resources: Resources) -> list[OracleScore]:
    """Every completed search trial (not failed, with a checkpoint) scored on the first test window, as Ray
    tasks that each hold a trial's CPUs and GPU share (so they never oversubscribe the cluster). A resumed
    study scores them again: evaluation only, and the same numbers."""
    window = selection_window(split)
    shared_split, shared_events = ray.put(without_tests(split)), ray.put(split.tests[window])
    task = ray.remote(_score_task).options(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial,
                                           max_retries=resources.max_failures)
    done = [r for r in search if not failed(r) and r.checkpoint is not None]
    refs = [task.remote(r.checkpoint.path, {**fixed, **r.config}, shared_split, window, shared_events, metric)
            for r in done]
    values = ray.get(refs)
    return [OracleScore(r.metrics[Result.TRIAL_ID], dict(r.config), v, r.checkpoint.path)
            for r, v in zip(done, values)]


def select_oracle(arm: str, scores: list[OracleScore]) -> Selection | None:
    """The trial with the highest first-window score (ties: the first listed); None without a finite one."""
    finite = [s for s in scores if math.isfinite(s.value)]
    if not finite:
        return None
    best = max(finite, key=lambda s: s.value)
    return Selection(arm, best.trial_id, best.params, best.value, best.checkpoint)


def log_scores(study_run: StudyRun, arm: str, scores: list[OracleScore], key: str) -> None:
    """Each search run gets its first-window score as metric `key` (shown in the MLflow UI beside validation)."""
    client = study_run.client()
    runs = {r.data.tags.get(Tag.TRIAL_ID): r.info.run_id for r in study_run.nested_runs(arm, Stage.SEARCH)}
    for score in scores:
        if score.trial_id in runs and math.isfinite(score.value):
            client.log_metric(runs[score.trial_id], key, score.value)


def copy_run(study_run: StudyRun, run: Any, stage: str) -> str:
    """A new nested run of `stage` holding `run`'s tags, params and every metric's history,
    ended with its status; returns its id. `Tag.SAME_AS` is set at creation, so a copy cut short is found
    (and ended KILLED) like any open run, and never taken for a whole one: only FINISHED copies count. It is
    created as its trial's run (`StudyRun.create_trial_run`), so a creation posted twice leaves one copy."""
    client = study_run.client()
    source = run.info.run_id
    kept = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or k == MLFLOW_PARENT_RUN_ID}
    new_tags = {**kept, Tag.STAGE: stage, Tag.SAME_AS: source}
    name = run_name(new_tags[Tag.ARM], stage, new_tags[Tag.SEED])
    run_id = study_run.create_trial_run(client, name, new_tags, start_time=run.info.start_time)
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i:i + PARAMS_PER_BATCH])
    metrics = [m for key in sorted(run.data.metrics) for m in client.get_metric_history(source, key)]
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])
    client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
    return run_id


def reuse_final(study_run: StudyRun, arm: str, final: pd.DataFrame) -> pd.DataFrame:
    """The oracle's runs of `arm` when it picked the validation pick: each FINISHED final run copied as an
    oracle run (`copy_run`, tagged `same_as` the final run), once: a resume keeps the FINISHED copies it
    finds. Returns the arm's final results `final` as the oracle's (stage oracle, the copies' run ids)."""
    copies = {r.data.tags[Tag.SAME_AS]: r.info.run_id
              for r in study_run.nested_runs(arm, Stage.ORACLE, RunStatus.to_string(RunStatus.FINISHED))
              if r.data.tags.get(Tag.SAME_AS)}
    for run in study_run.nested_runs(arm, Stage.FINAL, RunStatus.to_string(RunStatus.FINISHED)):
        if run.info.run_id not in copies:
            copies[run.info.run_id] = copy_run(study_run, run, Stage.ORACLE)
    return final.assign(stage=Stage.ORACLE, run_id=final["run_id"].map(copies))


def run_oracle(ctx: StageContext, plan: ArmPlan, search: ResultGrid, validation: Selection,
               final: pd.DataFrame) -> pd.DataFrame:
    """Score the arm's search trials on the first test window, retrain the best with the final seeds and test
    it; returns the tidy results, stage `oracle`. When the best is the validation pick (`validation`), the
    arm's final runs and results (`final`) are the oracle's instead (`reuse_final`), unless an earlier run of
    this study already began retraining it (its Tune experiment exists), which then continues. A resume keeps
    the first run's choice the other way too: once final runs were copied, a re-scoring that now ties
    differently does not retrain beside them. A fine-tuning arm starts from the same models as its search
    and validation pick (`plan.starts`): the oracle chooses the arm's configuration, not the ERM model it
    starts from."""
    study, arm, study_run = ctx.study, plan.arm, ctx.study_run
    window = selection_window(ctx.split)
    # the search trials' own fixed fields (a fine-tuning arm's start included), so their checkpoints load
    scores = score_search(search, ctx.split, plan.search_fixed, study.metric, ctx.resources)
    log_scores(study_run, arm, scores, oracle_key(window, study.metric))
    selection = select_oracle(arm, scores)
    if selection is None:
        print(f"warning: [{arm}-oracle] no search trial could be scored on {window}; no oracle runs", file=sys.stderr)
        return pd.DataFrame(columns=RESULT_COLUMNS)
    pick = f"[{arm}-oracle] {window} {study.metric} {selection.value:.4f}: trial {selection.trial_id}"
    same_pick = selection.trial_id == validation.trial_id
    retraining = ctx.folder.experiment(arm, Stage.ORACLE).exists()
    copied = any(r.data.tags.get(Tag.SAME_AS) for r in study_run.nested_runs(arm, Stage.ORACLE))
    if not retraining and (same_pick or copied):
        if same_pick:
            note = (f"{pick} (the validation pick too): its final runs are the oracle's, not retrained (the same "
                    f"configuration, seeds and starts); reported on the windows after {window} only")
        else:
            note = (f"warning: {pick}, but this study's first run of the oracle picked the validation pick "
                    f"{validation.trial_id} and copied its final runs (re-scoring tied otherwise, e.g. on a GPU's "
                    f"reductions); it keeps that first pick")
        print(note, file=sys.stderr, flush=True)
        return reuse_final(study_run, arm, final)
    same = " (the validation pick too)" if same_pick else f" (validation picked {validation.trial_id})"
    print(f"{pick}{same}; retrained with seeds {study.final_seeds()}, reported on the windows after {window} only",
          file=sys.stderr, flush=True)
    grid = run_final(ctx, plan, selection, stage=Stage.ORACLE)
    return final_results(ctx, plan, grid, stage=Stage.ORACLE)
