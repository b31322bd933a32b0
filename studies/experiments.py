"""The Tune plumbing both stages share (studies/search.py, studies/final.py): per-trial resources and
the run config every stage's experiment gets, building or restoring one experiment (`fit`), and the checks
of Tune's saved state before a resume relies on it."""
from __future__ import annotations

import copy
import json
import logging
import pickletools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ray import tune
from ray.tune import ResultGrid
from ray.train._internal.storage import StorageContext, _FilesystemSyncer
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchGenerator

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

    def run_config(self, path: Path, total: int, logger: tune.Callback) -> tune.RunConfig:
        """Every stage's, for its experiment folder `path`: Ctrl-C stops the study (`WatchSigint`), `logger`
        tracks the trials, and Tune's own console table is replaced by one line per trial event
        (`studies.progress`)."""
        return tune.RunConfig(
            name=path.name, storage_path=str(path.parent),
            callbacks=[WatchSigint(), logger, ProgressPrinter(path.name, total, self.concurrency, logger.max_epochs),
                       JsonLoggerCallback(), CSVLoggerCallback()],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest epoch is all a resume needs
        )


# pyarrow's error when Tune's background upload of a stage's folder opens a state file's temporary copy
# (Tune writes each state file as `.<uuid>-tmp-<name>`, then renames it) that a save renamed after the
# upload listed the folder
_RENAMED_TEMP_COPY = re.compile(r"Failed to open local file '[^']*/\.[^'/]*-tmp-[^'/]*'")


def renamed_temp_copy(record: logging.LogRecord) -> bool:
    """Whether `record` is Tune's report of an upload that met a renamed temporary copy (a race in Tune:
    its next state save runs while the last upload is still copying). Tune launches the next upload right
    after it reports one (`_BackgroundSyncer._launch_sync_process`, `sync_up_experiment_state`), which
    copies the whole state again; the report is a traceback for nothing lost."""
    err = record.exc_info[1] if record.exc_info else None
    if err is not None:
        return isinstance(err, FileNotFoundError) and bool(_RENAMED_TEMP_COPY.search(str(err)))
    last = record.getMessage().rstrip().rpartition("\n")[2]  # a traceback in the text ends with the error
    return last.startswith("FileNotFoundError: ") and bool(_RENAMED_TEMP_COPY.search(last))


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


@dataclass(frozen=True)
class DamagedCheckpoint:
    """A trial checkpoint that cannot be read back: the file, its trial's folder and the reason."""

    file: Path
    trial_dir: str  # the trial's folder under its experiment (Tune's `relative_logdir`)
    error: str


def damaged_checkpoints(path: Path) -> list[DamagedCheckpoint]:
    """The trial checkpoints of the experiment at `path` that are not readable trainer checkpoints."""
    damaged = []
    for file in sorted(path.glob(f"*/checkpoint_*/{CHECKPOINT_FILE}")):
        try:
            read_checkpoint(file)
        except CheckpointError as err:
            damaged.append(DamagedCheckpoint(file, file.parent.parent.name, str(err)))
    return damaged


def check_checkpoints(path: Path) -> None:
    """Before a resume relies on them: every trial checkpoint of the experiment at `path` is a readable
    trainer checkpoint. Tune restores a trial from its checkpoint, and the warm start copies the selected
    trial's; a damaged one would fail that trial on resume (or move the selection to the second best)."""
    if damaged := damaged_checkpoints(path):
        first = damaged[0]
        more = f" (and {len(damaged) - 1} more in {path})" if len(damaged) > 1 else ""
        raise TuneStateError(
            f"a trial checkpoint is damaged ({first.error}){more}. Put {first.file} back from a backup (or a copy "
            "of the study folder) and repeat --resume; or repeat --resume with --retrain-damaged to train each "
            "trial whose checkpoint is damaged again from its start (its MLflow run is replaced, and the report "
            "says so); or start the study again under another --study-name; nothing was changed")


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


def _moved(storage: StorageContext, path: Path) -> StorageContext:
    """`storage` (the one a stage's trial generator pickled in its first run) for the experiment folder at
    `path`, where the study folder is now: as Tune repoints the trials it restores, not those still to create."""
    storage = copy.copy(storage)
    storage.storage_fs_path, storage.experiment_dir_name = path.parent.as_posix(), path.name
    storage.syncer = _FilesystemSyncer(  # a new one, as StorageContext makes: the old one recalls its last upload
        storage_filesystem=storage.storage_filesystem, sync_period=storage.sync_config.sync_period,
        sync_timeout=storage.sync_config.sync_timeout)
    return storage


class MovedSearch(SearchGenerator):
    """A restored search stage's trial generator, creating its new trials in the experiment folder at
    `path` (the saved state names the folder where the stage first ran, which may have moved)."""

    def __init__(self, searcher, path: Path):
        super().__init__(searcher)
        self._path = path

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._experiment.spec["storage"] = self._experiment.storage = _moved(self._experiment.storage, self._path)


class MovedVariants(BasicVariantGenerator):
    """Likewise for a stage without a searcher (final and oracle seeds). Its saved state is its `__dict__`."""

    def __init__(self, path: Path, max_concurrent: int):
        super().__init__(max_concurrent=max_concurrent)
        self._path = path

    def get_state(self):
        state = super().get_state()
        return {k: v for k, v in state.items() if k != "_path"} if state else state

    def set_state(self, state: dict) -> None:
        path = self._path
        super().set_state({k: v for k, v in state.items() if k != "_path"})
        self._path = path
        for iterator in self._iterators:
            iterator.unresolved_spec["storage"] = _moved(iterator.unresolved_spec["storage"], path)


def _create_where_restored(config: tune.TuneConfig, path: Path) -> None:
    """A restored stage's trial generator, replaced by one that creates its new trials in `path` (Tune would
    create them where the stage first ran: a moved study folder's trials would fail on a missing folder)."""
    alg, limit = config.search_alg, config.max_concurrent_trials
    if alg is None:
        config.search_alg = MovedVariants(path, max_concurrent=limit or 0)
    else:
        searcher = alg.searcher if isinstance(alg, SearchGenerator) else alg
        if limit and not isinstance(searcher, ConcurrencyLimiter):
            searcher = ConcurrencyLimiter(searcher, max_concurrent=limit)
        config.search_alg = MovedSearch(searcher, path)
    config.max_concurrent_trials = None


def fit(path: Path, trainable, resume: bool, build: Callable[[tune.RunConfig], tune.Tuner], run_config: tune.RunConfig,
        logged: Callable[[], Iterable[str]] = tuple,
        restored: Callable[[tune.TuneConfig], None] | None = None) -> ResultGrid:
    """Run one experiment: restored (finished trials kept, unfinished continued from their checkpoints,
    errored ones given another chance) when resuming and Tune saved it, else built fresh with `run_config`.
    A restore is checked first (`check_state`, against `logged()`, the trial ids the store ended runs for)
    and runs with the callbacks and failure settings of `run_config`: Tune would otherwise use the ones it
    pickled with the experiment, bound to the study run (and tracking store) of the first driver; `restored`
    gets the restored tune config before the stage runs (to point its searcher at this study folder), and
    the trials a restored stage has yet to create are created in `path` (`MovedSearch`, `MovedVariants`)."""
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
            tune_config = tuner._local_tuner._tune_config  # noqa: SLF001 (as above)
            if restored is not None:
                restored(tune_config)
            _create_where_restored(tune_config, path)
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
