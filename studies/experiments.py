"""The Tune plumbing both stages share (studies/search.py, studies/final.py): per-trial resources and
the run config every stage's experiment gets, building or restoring one experiment (`fit`), and the checks
of Tune's saved state before a resume relies on it."""
from __future__ import annotations

import json
import pickletools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ray import tune
from ray.tune import ResultGrid
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from idea.contract import TRUE, Tag
from idea.trainer import CheckpointError, read_checkpoint

from studies.interrupts import INTERRUPTED, WatchSigint
from studies.progress import ProgressPrinter
from studies.trainable import CHECKPOINT_FILE
from studies.tracking import StudyRun


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a stage; Tune saved its state, so the study can be resumed."""


class TuneStateError(ValueError):
    """A stage's saved Tune state cannot be restored as it was (damaged, or missing trials the tracking
    store has): Tune would log "Failed to restore the run state" and silently start the stage again."""


@dataclass(frozen=True)
class Resources:
    """Per-trial resources and run limits from the CLI (not part of the study's identity), already checked:
    each flag's range by studies/cli.py, what the cluster can grant by `studies.driver.pick_resources`."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional GPUs share one device between trials
    concurrency: int = 2
    max_failures: int = 2  # retries of a crashing trial before it is recorded as FAILED
    time_budget_s: float | None = None  # per arm's search

    @property
    def device(self) -> str:
        """Ray exposes a trial's GPU share as its only visible CUDA device."""
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    def wrap(self, trainable: Callable, **shared: Any):
        """Share big objects through the object store (put once, not per trial) and attach resources."""
        return tune.with_resources(tune.with_parameters(trainable, **shared),
                                   {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})

    def run_config(self, ray_dir: Path, name: str, total: int, logger: tune.Callback) -> tune.RunConfig:
        """Every stage's: Ctrl-C stops the study (`WatchSigint`), `logger` tracks the trials, and Tune's own
        console table is replaced by one line per trial event (`studies.progress`)."""
        return tune.RunConfig(
            name=name, storage_path=str(ray_dir),
            callbacks=[WatchSigint(), logger, ProgressPrinter(name, total, self.concurrency, logger.max_epochs),
                       JsonLoggerCallback(), CSVLoggerCallback()],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest epoch is all a resume needs
        )


# The files Tune reads back on restore (the newest of each pattern), and how each is written.
STATE_FILES = (("tuner.pkl", "pickle"), ("experiment_state-*.json", "json"), ("search_gen_state-*.json", "pickle"),
               ("searcher-state-*.pkl", "pickle"), ("basic-variant-state-*.json", "pickle"))


def _damage(path: Path, kind: str) -> str | None:
    """Why `path` cannot be read back, or None. Pickles are only walked opcode by opcode (never loaded
    here, so nothing in them runs): a truncated one ends before its STOP opcode."""
    data = path.read_bytes()
    if kind == "json":
        try:
            json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"not valid JSON: {err}"
        return None
    last = None
    try:
        for opcode, _, _ in pickletools.genops(data):
            last = opcode.name
    except Exception as err:  # noqa: BLE001 (pickletools raises ValueError and others on bad bytes)
        return f"an incomplete or corrupt pickle: {err}"
    return None if last == "STOP" else "an incomplete pickle (no STOP opcode)"


def _state_error(path: Path, file: Path, problem: str) -> TuneStateError:
    return TuneStateError(
        f"{file} is {problem}: Tune cannot restore the {path.name} stage from it and would start it again, losing "
        f"its trials. Put the file back from a backup (or a copy of the study folder) and repeat --resume, or "
        f"start the study again under another --study-name; nothing was changed")


def check_state(path: Path, logged: Iterable[str] = ()) -> dict[str, str] | None:
    """Before Tune restores the experiment at `path`: every state file it will read is whole, and the
    trials it holds include `logged` (trial ids whose runs the tracking store ended). Returns the status
    of each trial it holds, by trial id; None when Tune never saved a snapshot and nothing was logged
    (the stage can start afresh)."""
    logged = set(logged)
    for pattern, kind in STATE_FILES:
        files = sorted(path.glob(pattern))
        if files and (problem := _damage(files[-1], kind)):
            raise _state_error(path, files[-1], problem)
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        if logged:
            raise TuneStateError(f"{path} has no experiment_state-*.json, but the tracking store has ended runs of "
                                 f"{len(logged)} of its trials: Tune would start the stage again. Put the state "
                                 "back from a backup, or start the study again under another --study-name")
        return None
    try:
        saved = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
        statuses = {trial["trial_id"]: trial["status"] for trial in saved}
    except (KeyError, TypeError, ValueError) as err:
        raise _state_error(path, states[-1], f"not a Tune experiment state ({type(err).__name__}: {err})") from None
    missing = logged - set(statuses)
    if missing:
        raise _state_error(path, states[-1], f"missing trials the tracking store has ended runs for "
                                             f"({', '.join(sorted(missing))}; it holds {len(statuses)})")
    return statuses


def check_checkpoints(path: Path) -> None:
    """Before a resume relies on them: every trial checkpoint of the experiment at `path` is a readable
    trainer checkpoint. Tune restores a trial from its checkpoint, and the warm start copies the selected
    trial's; a damaged one would fail that trial on resume (or move the selection to the second best)."""
    for file in sorted(path.glob(f"*/checkpoint_*/{CHECKPOINT_FILE}")):
        try:
            read_checkpoint(file)
        except CheckpointError as err:
            raise TuneStateError(
                f"a trial checkpoint is damaged ({err}). Put {file} back from a backup (or a copy of the study "
                "folder) and repeat --resume, or start the study again under another --study-name; nothing was "
                "changed") from None


class RestoreCheck(tune.Callback):
    """At the first step of a restored experiment, before any trial starts: every trial of the saved state
    is there. When Tune's own restore fails it only logs "Failed to restore the run state" and restarts
    the experiment empty; this turns that into an error, before the restart runs or logs anything."""

    def __init__(self, path: Path, trial_ids: set[str]):
        self.path, self.trial_ids, self.checked = path, set(trial_ids), False

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.checked:
            return
        self.checked = True
        missing = self.trial_ids - {t.trial_id for t in trials}
        if missing:
            raise TuneStateError(
                f"Tune did not restore {len(missing)} of the {len(self.trial_ids)} trials saved in {self.path} (see "
                "\"Failed to restore the run state\" above): a state file there is damaged. Put the folder back "
                "from a backup and repeat --resume, or start the study again under another --study-name")


def fit(path: Path, trainable, resume: bool, build: Callable[[tune.RunConfig], tune.Tuner], run_config: tune.RunConfig,
        logged: Callable[[], Iterable[str]] = tuple,
        restored: Callable[[tune.TuneConfig], None] | None = None) -> ResultGrid:
    """Run one experiment: restored (finished trials kept, unfinished continued from their checkpoints,
    errored ones given another chance) when resuming and Tune saved it, else built fresh with `run_config`.
    A restore is checked first (`check_state`, against `logged()`, the trial ids the store ended runs for)
    and runs with the callbacks and failure settings of `run_config`: Tune would otherwise use the ones it
    pickled with the experiment, bound to the study run (and tracking store) of the first driver; `restored`
    gets the restored tune config before the stage runs (to point its searcher at this study folder)."""
    if resume and tune.Tuner.can_restore(str(path)):
        statuses = check_state(path, logged())
        if statuses is None:
            tuner = build(run_config)
        else:
            ended = sum(status in ("TERMINATED", "ERROR") for status in statuses.values())
            print(f"[{path.name}] resuming from Tune's saved state: {ended} of its {len(statuses)} trial(s) ended",
                  file=sys.stderr, flush=True)
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
            config = tuner._local_tuner.get_run_config()  # noqa: SLF001 (Tuner.restore takes no callbacks)
            config.callbacks = [*run_config.callbacks, RestoreCheck(path, set(statuses))]
            config.failure_config = run_config.failure_config
            if restored is not None:
                restored(tuner._local_tuner._tune_config)  # noqa: SLF001 (as above)
    else:
        tuner = build(run_config)
    grid = tuner.fit()
    if INTERRUPTED.is_set():
        raise Interrupted(f"interrupted during {path.name}")
    return grid


def ended_trials(study_run: StudyRun, arm: str, stage: str) -> set[str]:
    """Trial ids of the arm's stage runs that ended FINISHED or FAILED (orphans excluded): each such trial
    was in Tune's state, so a restore must bring it back."""
    return {r.data.tags.get(Tag.TRIAL_ID) for r in study_run.nested_runs(arm, stage)
            if r.info.status in ("FINISHED", "FAILED") and r.data.tags.get(Tag.ORPHAN) != TRUE}
