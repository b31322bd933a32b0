"""MLflow tracking of a study, from the driver only (trials never talk to MLflow).

Layout (docs/conventions.md): one experiment per study, a parent run per
study, one nested run per search trial and per final seed run. A Tune callback
opens a trial's run when the trial starts (or finds it again on resume, by the
`trial_id` tag), logs params once and validation metrics per epoch, and ends it
FINISHED or FAILED; runs Tune ends without a callback (time budget, Ctrl-C)
are closed by the driver, so no run is ever left RUNNING.
"""
from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune

from idea.config import TrainConfig
from idea.contract import (METRIC_NAMES, SELECT_METRIC, SUBSETS, TRUE, VALID, Result, Stage, Tag, best_key,
                           best_state_key, is_epoch_metric, parse_metric_key, run_name, shift_key, valid_key,
                           window_number)
from studies.faults import EnvironmentFault, RetryingClient, diagnose
from studies.interrupts import INTERRUPTED


class StudyExistsError(RuntimeError):
    """The tracking store already holds this study and --resume was not given."""


class StudyStoreError(RuntimeError):
    """On --resume, the tracking store lacks the study's parent run (the store was recreated or replaced)."""


def quoted(value: Any) -> str:
    """`value` as a string literal of an MLflow filter. MLflow's filter grammar has no escapes, so the
    value is quoted with a quote character it does not contain; one holding both kinds is refused."""
    text = str(value)
    for quote in ("'", '"'):
        if quote not in text:
            return f"{quote}{text}{quote}"
    raise ValueError(f"{text!r} holds both quote characters and cannot be matched in an MLflow filter")


def where(**clauses: Any) -> str:
    """An MLflow filter matching all `clauses`: `tag_<name>` (a tag, `tag_parent` the parent run id),
    `status`; None values are left out. Every value is quoted (`quoted`)."""
    parts = []
    for key, value in clauses.items():
        if value is None:
            continue
        if key == "status":
            field = "attributes.status"
        elif key == "tag_parent":
            field = f"tags.`{MLFLOW_PARENT_RUN_ID}`"
        elif key.startswith("tag_"):
            field = f"tags.`{key[4:]}`"
        else:
            raise ValueError(f"unknown filter field {key!r}")
        parts.append(f"{field} = {quoted(value)}")
    return " and ".join(parts)


def git_sha(root: Path) -> str:
    """The project's commit, for the `git_sha` tag; "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@dataclass(frozen=True)
class StudyRun:
    """Where a study's runs live: plain strings, so Tune can pickle callbacks holding it."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: Mapping[str, str]  # study, dataset, backbone, git_sha, data_sha256

    def client(self) -> RetryingClient:
        return RetryingClient(self.tracking_uri)

    def runs(self, filter_string: str = "", view: int = ViewType.ACTIVE_ONLY) -> Iterator:
        """All runs of the study's experiment matching `filter_string` (every page); `view` DELETED_ONLY for
        the runs in the store's trash."""
        client, token = self.client(), None
        while True:
            page = client.search_runs([self.experiment_id], filter_string, view, max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def nested_runs(self, arm: str | None = None, stage: str | None = None, status: str | None = None,
                    view: int = ViewType.ACTIVE_ONLY, trial_id: str | None = None) -> list:
        return list(self.runs(where(tag_study=self.tags[Tag.STUDY], tag_parent=self.parent_run_id, tag_arm=arm or None,
                                    tag_stage=stage or None, tag_trial_id=trial_id, status=status or None), view))

    def create_trial_run(self, client: RetryingClient, name: str, tags: Mapping[str, str],
                         start_time: int | None = None) -> str:
        """A new nested run for one trial (`tags` hold its arm, stage and trial_id), made once
        (`create_once`): callers create a run only for a trial the store holds no open run of (the trial
        logger, the oracle's copies), so every RUNNING run of the trial is this creation's."""
        arm, stage, trial_id = tags[Tag.ARM], tags[Tag.STAGE], tags[Tag.TRIAL_ID]
        return create_once(client, lambda: client.create_run(self.experiment_id, run_name=name, tags=tags,
                                                             start_time=start_time).info.run_id,
                           lambda: self.nested_runs(arm, stage, "RUNNING", trial_id=trial_id))

    def replace_run(self, arm: str, stage: str, trial_id: str, reason: str) -> str | None:
        """Before a trial is trained again from its start (`studies.retrain`): its run, if any, ends KILLED
        (when still RUNNING), is tagged with `reason` and deleted (MLflow keeps it in the trash), so the
        retraining logs its epochs in a new run (`MlflowTrialLogger` tags that one); returns its id."""
        client = self.client()
        for run in self.nested_runs(arm, stage, trial_id=trial_id):
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
            client.set_tag(run.info.run_id, Tag.RETRAINED_DAMAGED, reason)
            client.delete_run(run.info.run_id)
            return run.info.run_id
        return None

    def close_open_runs(self, status: str, tags: Mapping[str, str] | None = None, parent: bool = True) -> int:
        """End every RUNNING run of the study (nested, and the parent if `parent`); returns how many."""
        client = self.client()
        open_runs = self.nested_runs(status="RUNNING")
        for run in open_runs:
            for key, value in (tags or {}).items():
                client.set_tag(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id, status)
        if parent and client.get_run(self.parent_run_id).info.status == "RUNNING":
            client.set_terminated(self.parent_run_id, status)
        return len(open_runs)


def create_once(client: RetryingClient, create: Callable[[], str], made: Callable[[], list]) -> str:
    """Create a run with `create` (its id) so that the store holds exactly one, where `made()` lists the
    RUNNING runs this creation can have made (none before it). A creation's reply can be lost (a proxy's
    503, a read timeout) after the server made the run: MLflow's client before 3.18 then posts again, and
    the server makes a second run; from 3.18 it raises instead. After an error, the run the server made is
    used (none: the error is raised); a second run is a twin: it ends KILLED, tagged duplicate_of, in the trash."""
    try:
        run_id, runs = create(), made()
    except MlflowException:
        runs = made()
        if not runs:
            raise
        run_id = min(runs, key=lambda run: run.info.start_time).info.run_id
    for twin in runs:
        if twin.info.run_id != run_id:
            client.set_tag(twin.info.run_id, Tag.DUPLICATE_OF, run_id)
            client.set_terminated(twin.info.run_id, "KILLED")
            client.delete_run(twin.info.run_id)
    return run_id


def open_study(tracking_uri: str, study: str, tags: Mapping[str, str], artifact_dir: Path | None,
               resume: bool, parent_run_id: str | None = None, require_parent: bool = False) -> StudyRun:
    """The study's experiment and parent run: created, or (with `resume`) found again and reopened. On
    resume, `parent_run_id` (the one the study folder recorded; or, with `require_parent`, any) must be in
    the store: a store recreated or replaced under a study whose trials ran would get them attached to a
    parent it does not hold. That is refused before anything is written."""
    client = RetryingClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    parents = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], where(tag_study=study, tag_stage=Stage.STUDY))
    if resume and (parent_run_id or require_parent):
        found = [r.info.run_id for r in parents]
        if (parent_run_id and parent_run_id not in found) or not found:
            what = f"the study's parent run {parent_run_id}" if parent_run_id else "a parent run of the study"
            raise StudyStoreError(
                f"the tracking store {tracking_uri} has no {what} (experiment {study!r}"
                f"{' is missing' if experiment is None else f' holds {found or None}'}), but the study folder holds "
                "trials that ran against it: the store was recreated or replaced. Put the study's store back "
                "(for the default store, the study folder's mlflow.db) and repeat --resume, or start the study "
                "again under another --study-name; nothing was changed")
    if experiment is None:
        location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
        try:
            experiment_id = client.create_experiment(study, artifact_location=location)
        except MlflowException:  # a lost reply after the server made it (or an older client's second post)
            if (experiment := client.get_experiment_by_name(study)) is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    if parents and not resume:
        raise StudyExistsError(f"the tracking store {tracking_uri} already holds study {study!r} "
                               f"(run {parents[0].info.run_id}); continue it with --resume or pick --study-name")
    if parents:
        run_id = parent_run_id or parents[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        parent_tags = {**tags, Tag.STAGE: Stage.STUDY}
        run_id = create_once(client, lambda: client.create_run(experiment_id, run_name=study, tags=parent_tags).info.run_id,
                             lambda: client.search_runs([experiment_id], where(tag_study=study, tag_stage=Stage.STUDY,
                                                                               status="RUNNING")))
    return StudyRun(tracking_uri, experiment_id, run_id, dict(tags))


def relocate_artifacts(db: Path, study: str, artifact_dir: Path) -> bool:
    """Point the study's experiment and runs in the SQLite store `db` at `artifact_dir` (the study folder's
    mlartifacts where the folder is now). MLflow records artifact locations as absolute URIs and has no call
    to change them, so a moved or copied study folder would log its artifacts into the old place: the rows
    are rewritten here, in MLflow's own tables, before anything is logged. True if they pointed elsewhere."""
    new = artifact_dir.resolve().as_uri()
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        row = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?", (study,)).fetchone()
        if row is None or row[1] == new:
            return False
        experiment_id, old = row
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, experiment_id))
        con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                    (new, len(old) + 1, experiment_id, len(old), old))
    return True


def is_finished(tracking_uri: str, study: str) -> bool:
    """Did the study's parent run end FINISHED (every stage done, results and report written)?"""
    client = RetryingClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return False
    parents = client.search_runs([experiment.experiment_id], where(tag_study=study, tag_stage=Stage.STUDY))
    return bool(parents) and parents[0].info.status == "FINISHED"


def summary_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """End-of-trial metrics from a trial's last result: best_valid_* (search trials report them as
    best_<m>), the final runs' best_valid_warm_* and test_*, and best_epoch."""
    out = {best_state_key(VALID, m): result[best_key(m)] for m in METRIC_NAMES if best_key(m) in result}
    out.update({k: v for k, v in result.items() if (key := parse_metric_key(k)) and key.kind in ("best_valid", "test")})
    if Result.BEST_EPOCH in result:
        out[Result.BEST_EPOCH] = result[Result.BEST_EPOCH]
    return out


def shift_series(result: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """A final run's metrics per part as stepped series, so MLflow's chart view draws metric against
    window: step 0 = validation, step i = the i-th test window (w1..wm; `test` for leave-one-out);
    keys `shift_<m>_at_<k>` (all targets) and `shift_warm_<m>_at_<k>`."""
    parts = sorted({key.part for k in result if (key := parse_metric_key(k)) and key.kind == "test"},
                   key=lambda p: window_number(p) or 0)
    steps: dict[int, dict[str, float]] = {}
    for step, part in enumerate([VALID, *parts]):
        for subset in SUBSETS:
            for name in METRIC_NAMES:
                if best_state_key(part, name, subset) in result:
                    steps.setdefault(step, {})[shift_key(name, subset)] = result[best_state_key(part, name, subset)]
    return steps


def _last_error_line(trial) -> str:
    """The last line of the trial's error: from the file Tune has just written on the driver (the copy in
    the study folder, which `get_error` reads, may not be synced yet), else from that copy."""
    local = Path(trial.error_file) if trial.error_file else None
    text = local.read_text() if local is not None and local.is_file() else (trial.get_error() or "")
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"


class MlflowTrialLogger(tune.Callback):
    """Driver-side Tune callback: one nested MLflow run per trial of one arm and stage (search|final|oracle)."""

    def __init__(self, study_run: StudyRun, arm: str, stage: str, fixed: Mapping[str, Any], max_epochs: int,
                 starts: Mapping[int | None, Any] | None = None, tags: Mapping[str, str] | None = None):
        self.study_run = study_run
        self.arm, self.stage = arm, stage
        self.fixed = dict(fixed)
        self.tags = dict(tags or {})  # set on every run of this arm and stage (search runs: `searched`)
        self.max_epochs = max_epochs
        self.starts = dict(starts or {})  # seed (None: every trial) -> studies.warm_start.Start of a warm arm
        self._client: RetryingClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_step: dict[str, int] = {}  # trial_id -> last epoch logged (resume must not log twice)
        self._running: set[str] = set()  # trial_ids whose run this session has (re)opened
        self._replaced: dict[str, Any] = {}  # trial_id -> its deleted run, for a trial retrained from its start

    def __getstate__(self) -> dict:
        """Tune pickles callbacks with the experiment; the client and run index are rebuilt in setup."""
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _last_step={}, _running=set(), _replaced={})
        return state

    def setup(self, **info) -> None:
        self._client = self.study_run.client()
        for run in self.study_run.nested_runs(self.arm, self.stage):
            trial_id = run.data.tags.get(Tag.TRIAL_ID)
            self._runs[trial_id] = run.info.run_id
            history = self._client.get_metric_history(run.info.run_id, valid_key(SELECT_METRIC))
            self._last_step[trial_id] = max((m.step for m in history), default=0)
        for run in self.study_run.nested_runs(self.arm, self.stage, view=ViewType.DELETED_ONLY):
            if Tag.RETRAINED_DAMAGED in run.data.tags:
                self._replaced[run.data.tags.get(Tag.TRIAL_ID)] = run

    # ----- runs ---------------------------------------------------------------------------------------
    def _run_name(self, trial) -> str:
        return run_name(self.arm, self.stage, trial.config.get("seed"), trial.trial_id)

    def _open(self, trial) -> str:
        """The trial's run: reopened if it exists (retry, resume), else created with tags and params once."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            if trial.trial_id not in self._running:
                self._client.update_run(run_id, status="RUNNING")
                self._running.add(trial.trial_id)
            return run_id
        start = self.starts.get(trial.config.get("seed"), self.starts.get(None))
        config = TrainConfig.from_dict({**self.fixed, **trial.config,
                                        **({"init_from": start.logged} if start is not None else {})})
        tags = {**self.study_run.tags, **self.tags, MLFLOW_PARENT_RUN_ID: self.study_run.parent_run_id,
                Tag.ARM: self.arm, Tag.METHOD: config.method, Tag.SEED: str(config.seed), Tag.STAGE: self.stage,
                Tag.TRIAL_ID: trial.trial_id}
        if start is not None and start.run_id:
            tags[Tag.INIT_RUN_ID] = start.run_id  # the base arm's run whose best state this run fine-tunes
        if (replaced := self._replaced.get(trial.trial_id)) is not None:  # retrained from its start
            tags.update({Tag.RETRAINED_DAMAGED: replaced.data.tags[Tag.RETRAINED_DAMAGED],
                         Tag.REPLACES: replaced.info.run_id})
        run_id = self.study_run.create_trial_run(self._client, self._run_name(trial), tags)
        params = [Param(k, str(v)) for k, v in config.used().items()]  # only what its method reads
        self._client.log_batch(run_id, params=params)
        self._runs[trial.trial_id] = run_id
        self._last_step[trial.trial_id] = 0
        self._running.add(trial.trial_id)
        return run_id

    def _log(self, run_id: str, values: Mapping[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        if metrics:
            self._client.log_batch(run_id, metrics=metrics)

    def _end(self, trial, status: str, tags: Mapping[str, str] | None = None) -> None:
        run_id = self._open(trial)
        result = trial.last_result or {}
        self._log(run_id, summary_metrics(result))
        if self.stage in Stage.RETRAINED:
            for step, values in shift_series(result).items():
                self._log(run_id, values, step=step)
        tags = {**{k: result[k] for k in (Result.BEST_PHASE, Result.INIT_DIGEST) if result.get(k)}, **(tags or {})}
        for key, value in (tags or {}).items():
            self._client.set_tag(run_id, key, value)
        self._client.set_terminated(run_id, status)
        self._running.discard(trial.trial_id)

    # ----- Tune hooks ---------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._open(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if Result.EVALUATED in result or Result.PERMANENT_ERROR in result:  # logged once, when the trial completes
            return
        run_id, epoch = self._open(trial), int(result[Result.EPOCH])
        if epoch > self._last_step.get(trial.trial_id, 0):
            values = {valid_key(m): result[m] for m in METRIC_NAMES if m in result}
            values.update({k: v for k, v in result.items() if is_epoch_metric(k)})
            self._log(run_id, values, step=epoch)
            self._last_step[trial.trial_id] = epoch
        # Tune marks a result `done` when the scheduler stops the trial on it; at max epochs that is no cut.
        if result.get("done") and epoch < self.max_epochs:
            self._client.set_tag(run_id, Tag.ASHA_STOPPED, TRUE)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        error = (trial.last_result or {}).get(Result.PERMANENT_ERROR)
        if error is None:
            self._end(trial, RunStatus.to_string(RunStatus.FINISHED))
            return
        run_id = self._open(trial)  # a trial that stopped on an error a retry would repeat: not retried
        for key, value in {Tag.FAILURES: "0", Tag.ERROR: error[:500], Tag.RETRIED: "false (would fail the same way)"}.items():
            self._client.set_tag(run_id, key, value)
        self._client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        self._running.discard(trial.trial_id)

    def on_experiment_end(self, trials, **info) -> None:
        """The time budget stops trials without a per-trial callback, some before they even started: their
        runs end here, tagged budget_stopped, FINISHED with their best-so-far metrics or KILLED when no
        epoch completed. After Ctrl-C or SIGTERM, or when Tune ends the experiment because an error is
        propagating (`sys.exc_info()`: Tune's cleanup runs in its `except` block), the driver ends them instead."""
        if INTERRUPTED.is_set() or sys.exc_info()[0] is not None:
            return
        for trial in trials:
            if trial.trial_id in self._running or trial.trial_id not in self._runs:
                completed = (trial.last_result or {}).get(Result.EPOCH, 0) > 0
                self._end(trial, RunStatus.to_string(RunStatus.FINISHED if completed else RunStatus.KILLED),
                          {Tag.BUDGET_STOPPED: TRUE})

    @staticmethod
    def _stop_on_machine_fault(trial) -> None:
        """A trial that failed on a full disk or a read-only folder stops the study (every trial would meet
        the fault, and retries would seal the arm as failed): the error propagates out of Tune's loop."""
        line = _last_error_line(trial)
        if diagnose(EnvironmentFault(line)) is not None:
            raise EnvironmentFault(f"trial {trial.trial_id}: {line}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._stop_on_machine_fault(trial)
        self._client.set_tag(self._open(trial), Tag.FAILURES, str(trial.num_failures))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._stop_on_machine_fault(trial)
        self._end(trial, RunStatus.to_string(RunStatus.FAILED),
                  {Tag.FAILURES: str(trial.num_failures), Tag.ERROR: _last_error_line(trial)})


def trials_frame(study_run: StudyRun) -> pd.DataFrame:
    """All search trials of the study, one row each: arm, ids, status, stop reason, best metrics, params."""
    rows = []
    for run in study_run.nested_runs(stage=Stage.SEARCH):
        tags, data = run.data.tags, run.data
        if tags.get(Tag.ORPHAN) == TRUE:  # a run without a Tune trial (see search.close_budget_stopped)
            continue
        rows.append({
            "arm": tags.get(Tag.ARM), "trial_id": tags.get(Tag.TRIAL_ID), "run_id": run.info.run_id,
            "status": run.info.status, "asha_stopped": tags.get(Tag.ASHA_STOPPED) == TRUE,
            "budget_stopped": tags.get(Tag.BUDGET_STOPPED) == TRUE, "failures": int(tags.get(Tag.FAILURES, 0)),
            "error": tags.get(Tag.ERROR), **{k: v for k, v in data.metrics.items() if k.startswith("best_")},
            **data.params,
        })
    frame = pd.DataFrame(rows)
    return frame.sort_values(["arm", "trial_id"], ignore_index=True) if rows else frame
