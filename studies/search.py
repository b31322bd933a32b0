"""The search stage: one Tune experiment per arm (`StudyFolder.experiment(arm, "search")`), TPE + ASHA,
resumable with its searcher state; and the selection of each arm's best trial on validation only."""
from __future__ import annotations

import json
import math

from ray import tune
from ray.tune import ResultGrid

from idea.contract import TRUE, Result, Stage, Tag, best_key

from studies.experiments import ended_trials, fit
from studies.optuna_search import settle
from studies.ranges import spec_dict
from studies.space import MODE, make_scheduler, make_searcher
from studies.plan import ArmPlan, Selection, StageContext
from studies.trainable import failed, search_trial
from studies.tracking import MlflowTrialLogger, StudyRun, summary_metrics


def close_budget_stopped(study_run: StudyRun, arm: str, stage: str, grid: ResultGrid) -> None:
    """Trials Tune ended without a callback (the time budget) still have a RUNNING run: end it FINISHED,
    tagged budget_stopped, with its best-so-far metrics. A RUNNING run whose trial failed in the grid (its
    callback never reached the store: a tracking outage) ends FAILED with the grid's error. A RUNNING run
    whose trial the grid does not hold (the driver died right after creating it, and Tune never kept the
    trial) is an orphan: it ends KILLED, tagged orphan, and counts as no trial."""
    client = study_run.client()
    results = {r.metrics.get(Result.TRIAL_ID): r for r in grid if r.metrics}
    for run in study_run.nested_runs(arm, stage, status="RUNNING"):
        result = results.get(run.data.tags.get(Tag.TRIAL_ID))
        if result is None:
            client.set_tag(run.info.run_id, Tag.ORPHAN, TRUE)
            client.set_terminated(run.info.run_id, "KILLED")
            continue
        if failed(result):
            error = result.error if result.error is not None else result.metrics[Result.PERMANENT_ERROR]
            client.set_tag(run.info.run_id, Tag.ERROR, str(error)[:500])
            client.set_terminated(run.info.run_id, "FAILED")
            continue
        for key, value in summary_metrics(result.metrics).items():
            client.log_metric(run.info.run_id, key, float(value))
        client.set_tag(run.info.run_id, Tag.BUDGET_STOPPED, TRUE)
        client.set_terminated(run.info.run_id, "FINISHED")


def run_search(ctx: StageContext, plan: ArmPlan) -> ResultGrid:
    """Search one arm on train + validation only (`ctx.search_split`); a fine-tuning arm's trials all start
    from the base arm's selected search trial (`plan.search_fixed`)."""
    study, arm, resources, study_run = ctx.study, plan.arm, ctx.resources, ctx.study_run
    fixed = plan.search_fixed
    trainable = resources.wrap(search_trial, split=ctx.search_split, fixed=fixed, scratch=ctx.folder.scratch_key)
    init = {None: plan.starts.search} if plan.starts is not None else {}

    def build(run_config: tune.RunConfig) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=study.metric, mode=MODE, num_samples=study.arms[arm].num_samples,
                search_alg=make_searcher(study, study.arms[arm], resources.concurrency, ctx.folder.optuna_uri),
                scheduler=make_scheduler(study, arm), time_budget_s=resources.time_budget_s,
                reuse_actors=True,  # a new trial reuses a finished trial's worker: no process start, no re-import
            ),
            run_config=run_config,
        )

    searched = json.dumps({k: spec_dict(v) for k, v in study.arms[arm].space.items()})  # read by analysis
    path = ctx.folder.experiment(arm, Stage.SEARCH)
    run_config = resources.run_config(path, study.arms[arm].num_samples, MlflowTrialLogger(
        study_run, arm, Stage.SEARCH, fixed, plan.epochs, init, tags={Tag.SEARCHED: searched, **plan.tags}))

    def attach(tune_config: tune.TuneConfig) -> None:  # Tune pickled the searcher without its storage
        tune_config.search_alg.searcher.attach(ctx.folder.optuna_uri)

    grid = fit(path, trainable, ctx.resume, build, run_config, lambda: ended_trials(study_run, arm, Stage.SEARCH),
               attach)
    close_budget_stopped(study_run, arm, Stage.SEARCH, grid)
    selection = select_best(arm, grid, study.metric)  # the driver's selection: the same function, the same grid
    settle(ctx.folder.optuna_uri, arm, grid, study.metric, selection and selection.trial_id)
    return grid


def select_best(arm: str, grid: ResultGrid, metric: str) -> Selection | None:
    """Highest best-so-far validation metric among trials that did not fail; None if all failed."""
    key = best_key(metric)
    done = [r for r in grid if not failed(r) and math.isfinite(r.metrics.get(key, math.nan))]
    if not done:
        return None
    best = max(done, key=lambda r: r.metrics[key])
    return Selection(arm, best.metrics[Result.TRIAL_ID], dict(best.config), float(best.metrics[key]),
                     best.checkpoint.path if best.checkpoint is not None else None)
