"""Ray's OptunaSearch, recording in Optuna what the harness selects on, so that optuna.db (and
optuna-dashboard) agrees with the report: every epoch's validation value as an intermediate value, each
trial's best-epoch value as its objective, ASHA's cuts as PRUNED, errors as FAIL. Its pickled state
(Tune's tuner.pkl and searcher-state-*.pkl) names no storage, so a moved or copied study folder records its
search in its own optuna.db (`ArmSearch.attach`)."""
from __future__ import annotations

import math
import pickle
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import ResultGrid
from ray.tune.search.optuna import OptunaSearch

from idea.contract import VALID, Result, best_key, best_state_key

TUNE_TRIAL_ID = "tune_trial_id"  # every Optuna trial's user attribute: its Tune trial id
STOPPED_BY = "stopped_by"  # a PRUNED trial's user attribute: "asha" or "time_budget"
SELECTED = "selected_trial"  # the Optuna study's user attribute: the number of the trial the harness selected
BOUND = ("_storage", "_storage_url", "_ot_study", "_ot_trials")  # an ArmSearch's attributes tied to one optuna.db


def trial_ids(trials: dict[str, optuna.Trial]) -> dict[str, int]:
    """Optuna's trial ids by Tune trial id: what a pickled searcher keeps of its trials (`ArmSearch.attach`)."""
    return {tune_id: trial._trial_id for tune_id, trial in trials.items()}  # noqa: SLF001 (no public id)


class ArmSearch(OptunaSearch):
    """Intermediate values are Tune's per-epoch `metric` (what ASHA stops on); the value told at completion
    is the trial's best epoch's (`best_key(metric)`), named as MLflow names it. Tune passes the result a
    scheduler stops on only to `on_trial_complete`, so that epoch is reported there; ASHA also stops every
    trial at its last epoch (`max_epochs`), which is no cut."""

    def __init__(self, *, metric: str, max_epochs: int, **kwargs: Any):
        self._value_key = best_key(metric)
        self._value_name = best_state_key(VALID, metric)  # MLflow's name of the same value
        self._max_epochs = max_epochs
        self._reported: dict[str, int] = {}  # Tune trial id -> last epoch told to Optuna (pickled for resume)
        storage = kwargs.get("storage")  # `restore` reopens it, or the one `attach` names
        self._storage_url = storage.url if isinstance(storage, optuna.storages.RDBStorage) else None
        super().__init__(metric=metric, **kwargs)

    def _setup_study(self, mode: str) -> None:
        super()._setup_study(mode)
        self._name_metric()

    def _name_metric(self) -> None:
        with warnings.catch_warnings():  # set_metric_names is experimental in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self._value_name])

    def __getstate__(self) -> dict:
        """The state without the storage and the objects bound to it (their URL is the absolute path of the
        folder the study first ran in): Optuna's trials are kept by their ids, for `attach`."""
        state = {k: v for k, v in self.__dict__.items() if k not in BOUND}
        state["_ot_trial_ids"] = trial_ids(self._ot_trials)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._storage = self._storage_url = self._ot_study = None
        self._ot_trials = {}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved state, reopened in the storage `attach` named (a state saved by an earlier version
        of this class held its storage: only its trial ids are kept)."""
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        if "_ot_trial_ids" not in state:
            state["_ot_trial_ids"] = trial_ids(state["_ot_trials"])
        self.__dict__.update({k: v for k, v in state.items() if k not in BOUND})
        if self._storage_url is None:
            raise RuntimeError("ArmSearch.restore needs a storage: build it with one, or call attach(url) first")
        self.attach(self._storage_url)

    def attach(self, storage_url: str) -> None:
        """After unpickling (a restored stage): record into the Optuna study named after the arm in
        `storage_url`, the optuna.db of the study folder being resumed, continuing the trials it holds."""
        self._storage_url = storage_url
        self._storage = optuna.storages.RDBStorage(storage_url)
        self._ot_study = optuna.create_study(storage=self._storage, sampler=self._sampler,
                                             pruner=optuna.pruners.NopPruner(), study_name=self._study_name,
                                             load_if_exists=True,
                                             direction="minimize" if self._mode == "min" else "maximize")
        self._name_metric()
        self._ot_trials = {tune_id: optuna.Trial(self._ot_study, trial_id)
                           for tune_id, trial_id in self._ot_trial_ids.items()}

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The trial as optuna.db holds it. A study stopped by an error (an unreachable tracking server) between
        this searcher's write and Tune's next snapshot of it resumes with the storage ahead of the searcher:
        what the storage has must not be told twice (Optuna refuses to tell a finished trial)."""
        return self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)  # noqa: SLF001

    def _report(self, trial_id: str, result: dict) -> bool:
        """Tell the result's epoch as an intermediate value unless told already; True if it was new."""
        epoch = int(result.get(Result.EPOCH, 0))
        if Result.PERMANENT_ERROR in result or epoch <= self._reported.get(trial_id, 0):
            return False
        stored = self._stored(trial_id)
        if stored.state.is_finished() or epoch in stored.intermediate_values:
            return False
        self._ot_trials[trial_id].report(float(result[self._metric]), epoch)
        self._reported[trial_id] = epoch
        return True

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        if self._stored(trial_id).state.is_finished():  # told before the study stopped (see `_stored`)
            self._completed_trials.add(trial_id)
            return
        result = result or {}
        cut = self._report(trial_id, result) and int(result[Result.EPOCH]) < self._max_epochs
        value = result.get(self._value_key, math.nan)
        ot_trial = self._ot_trials[trial_id]
        if error or Result.PERMANENT_ERROR in result:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif cut or not result:  # ASHA's cut, or stopped before its first result
            if cut:
                ot_trial.set_user_attr(STOPPED_BY, "asha")
            if math.isfinite(value):  # a PRUNED trial's value is its last epoch's, not the one selected on
                ot_trial.set_user_attr(self._value_name, value)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, value)  # a non-finite value (no finite epoch): Optuna records FAIL
        self._completed_trials.add(trial_id)


def settle(storage: str, arm: str, grid: ResultGrid, metric: str, selected: str | None) -> None:
    """After an arm's search: the trials the time budget stopped (Tune tells the searcher nothing) end
    PRUNED, the closest state Optuna has for "ended early, not failed": COMPLETE would claim every epoch
    ran, FAIL an error; their best-epoch value is a user attribute. The study records the selected trial."""
    rdb = optuna.storages.RDBStorage(storage)
    study = optuna.load_study(study_name=arm, storage=rdb)
    last = {r.metrics.get(Result.TRIAL_ID): r.metrics for r in grid if r.metrics}
    study_id = rdb.get_study_id_from_name(arm)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        rdb.set_trial_user_attr(trial_id, STOPPED_BY, "time_budget")
        best = last.get(trial.user_attrs.get(TUNE_TRIAL_ID), {}).get(best_key(metric), math.nan)
        if math.isfinite(best):
            rdb.set_trial_user_attr(trial_id, best_state_key(VALID, metric), float(best))
        study.tell(trial.number, state=TrialState.PRUNED)
    numbers = {t.user_attrs.get(TUNE_TRIAL_ID): t.number for t in study.get_trials(deepcopy=False)}
    if selected in numbers:
        study.set_user_attr(SELECTED, numbers[selected])
