"""The final stage: retrain each arm's selected configuration with fresh seeds, then (and only then)
evaluate the best state on every test window. One Tune experiment per arm and stage (`<arm>-final`, and
`<arm>-oracle` for the oracle selection, studies/oracle.py), so seeds run in parallel, checkpoint per epoch
and resume like search trials."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from ray import tune
from ray.tune import ResultGrid

from analysis.mlflow_ui import RUN_COLOR_TAG
from idea.contract import Result, Stage, Tag

from studies.experiments import ended_trials, fit
from studies.plan import ArmPlan, Selection, StageContext
from studies.trainable import RESULTS_FILE, failed, final_trial
from studies.tracking import MlflowTrialLogger

RESULT_COLUMNS = ["study", "arm", "method", "stage", "seed", "trial_id", "run_id", "part", "subset", "metric", "k",
                  "value", "n_events"]


def run_final(ctx: StageContext, plan: ArmPlan, selection: Selection, stage: str = Stage.FINAL) -> ResultGrid:
    """Seeds `study.final_seeds()` of the selected configuration on the full split (with test windows);
    a fine-tuning arm's seed s starts from the base arm's final seed s (`plan.starts`), and seeds without
    one are skipped. `stage` (one of `Stage.RETRAINED`) says which selection this is: it names the
    experiment and tags the runs."""
    study, arm, starts = ctx.study, plan.arm, plan.starts.seeds if plan.starts is not None else None
    seeds = study.final_seeds()
    if starts is not None:
        missing = [s for s in seeds if s not in starts]
        if missing:
            print(f"warning: {study.base()} final seed(s) {missing} failed, so {arm} has no start for them; skipping",
                  file=sys.stderr)
        seeds = [s for s in seeds if s in starts]
    trainable = ctx.resources.wrap(final_trial, split=ctx.split, fixed=plan.fixed, scratch=ctx.folder.scratch_key,
                                   starts={s: starts[s].path for s in seeds} if starts is not None else None)
    init = {s: starts[s] for s in seeds} if starts is not None else {}

    def build(run_config: tune.RunConfig) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            param_space={**selection.params, "seed": tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(max_concurrent_trials=ctx.resources.concurrency),
            run_config=run_config,
        )

    tags = {**plan.tags, Tag.SELECTED_TRIAL: selection.trial_id, RUN_COLOR_TAG: plan.colour}
    path = ctx.folder.experiment(arm, stage)
    run_config = ctx.resources.run_config(path, len(seeds), MlflowTrialLogger(
        ctx.study_run, arm, stage, plan.fixed, plan.epochs, init, tags=tags))
    return fit(path, trainable, ctx.resume, build, run_config, lambda: ended_trials(ctx.study_run, arm, stage))


def final_results(ctx: StageContext, plan: ArmPlan, grid: ResultGrid, stage: str = Stage.FINAL) -> pd.DataFrame:
    """Tidy per-window results of an arm's final (or oracle) runs (one row per seed, part, subset, metric,
    k), read from each run's last checkpoint; failed seeds are absent."""
    run_ids = {r.data.tags.get(Tag.TRIAL_ID): r.info.run_id for r in ctx.study_run.nested_runs(plan.arm, stage)}
    frames = []
    for result in grid:
        if failed(result) or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as d:
            path = Path(d) / RESULTS_FILE
            if not path.is_file():  # a checkpoint from before the evaluation: the run did not finish
                continue
            frame = pd.read_csv(path)
        trial_id = result.metrics[Result.TRIAL_ID]
        frames.append(frame.assign(study=ctx.name, arm=plan.arm, method=plan.method, stage=stage,
                                   seed=result.config["seed"], trial_id=trial_id, run_id=run_ids.get(trial_id)))
    if not frames:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]
