"""ArmSearch and settle without Ray: the callbacks Tune makes for each way a trial ends, and what the
Optuna study holds afterwards (the smoke study checks the same against a real study's MLflow runs)."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from studies.optuna_search import ArmSearch, settle

METRIC = "ndcg_at_10"


def result(trial_id: str, epoch: int, value: float, best: float, **extra) -> dict:
    return {"trial_id": trial_id, "epoch": epoch, METRIC: value, f"best_{METRIC}": best, **extra}


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def searcher(storage: str) -> ArmSearch:
    return ArmSearch(space={"lr": FloatDistribution(0.1, 1.0)}, metric=METRIC, max_epochs=3, mode="max",
                     study_name="arm", storage=optuna.storages.RDBStorage(storage))


def run(search: ArmSearch, trial_id: str, told: list[dict], last: dict | None, error: bool = False) -> None:
    """A trial as Tune drives it: `told` through on_trial_result, then the completion with `last`."""
    search.suggest(trial_id)
    for r in told:
        search.on_trial_result(trial_id, r)
    search.on_trial_complete(trial_id, result=last, error=error)


def test_each_way_a_trial_ends_gets_its_state_value_and_every_epoch(storage, tmp_path):
    search = searcher(storage)
    run(search, "full", [result("full", 1, .1, .1), result("full", 2, .3, .3)], result("full", 3, .2, .3))
    run(search, "asha", [result("asha", 1, .5, .5)], result("asha", 2, .4, .5, done=True))
    run(search, "patience", [result("patience", 1, .6, .6), result("patience", 2, .1, .6)],
        result("patience", 2, .1, .6, done=True))  # Tune's duplicate of the last result
    run(search, "crash", [result("crash", 1, .2, .2)], None, error=True)
    run(search, "nan", [], result("nan", 0, float("nan"), float("nan"), permanent_error="NonFiniteLossError"))
    run(search, "unstarted", [], None)  # Tune stopped it before its first result
    search.suggest("resumed")
    search.on_trial_result("resumed", result("resumed", 1, .2, .2))
    search.save(str(tmp_path / "searcher.pkl"))  # Tune pickles the searcher; a resumed study restores it
    resumed = searcher(storage)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("resumed", result("resumed", 2, .25, .25))
    resumed.on_trial_complete("resumed", result("resumed", 3, .3, .3))
    study = optuna.load_study(study_name="arm", storage=storage)
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert study.metric_names == ["best_valid_ndcg_at_10"]
    assert {k: t.state for k, t in trials.items()} == {
        "full": TrialState.COMPLETE, "asha": TrialState.PRUNED, "patience": TrialState.COMPLETE,
        "crash": TrialState.FAIL, "nan": TrialState.FAIL, "unstarted": TrialState.PRUNED,
        "resumed": TrialState.COMPLETE}
    assert trials["full"].intermediate_values == {1: .1, 2: .3, 3: .2} and trials["full"].value == .3
    assert trials["asha"].intermediate_values == {1: .5, 2: .4}
    assert trials["asha"].user_attrs == {"tune_trial_id": "asha", "stopped_by": "asha", "best_valid_ndcg_at_10": .5}
    assert trials["patience"].intermediate_values == {1: .6, 2: .1} and trials["patience"].value == .6
    assert trials["nan"].intermediate_values == {} and trials["unstarted"].intermediate_values == {}
    assert trials["resumed"].intermediate_values == {1: .2, 2: .25, 3: .3} and trials["resumed"].value == .3
    assert study.best_trial.user_attrs["tune_trial_id"] == "patience"


def test_settle_prunes_what_the_time_budget_stopped_and_records_the_selection(storage):
    search = searcher(storage)
    run(search, "done", [result("done", 1, .1, .1)], result("done", 3, .2, .2))
    search.suggest("budget")
    search.on_trial_result("budget", result("budget", 1, .4, .4))
    grid = [SimpleNamespace(metrics=result("budget", 1, .4, .4)), SimpleNamespace(metrics=result("done", 3, .2, .2))]
    settle(storage, "arm", grid, METRIC, "budget")
    study = optuna.load_study(study_name="arm", storage=storage)
    budget = [t for t in study.trials if t.user_attrs["tune_trial_id"] == "budget"][0]
    assert budget.state == TrialState.PRUNED and budget.intermediate_values == {1: .4}
    assert budget.user_attrs == {"tune_trial_id": "budget", "stopped_by": "time_budget", "best_valid_ndcg_at_10": .4}
    assert study.user_attrs == {"selected_trial": budget.number}


def test_what_optuna_db_holds_already_is_not_told_again(storage):
    """A study stopped by an error (a tracking server that stayed unreachable) between the searcher's write to
    optuna.db and Tune's next snapshot resumes with a searcher behind the storage: Tune reruns the trial, and
    its epoch and its end, already in optuna.db, are not told again (Optuna warns on the one, refuses the other)."""
    import warnings

    search = searcher(storage)
    search.suggest("ahead")
    ahead = search._ot_trials["ahead"]  # noqa: SLF001 (what the stopped driver wrote: the epoch, then the end)
    ahead.report(.4, 1)
    search._ot_study.tell(ahead, .4)  # noqa: SLF001
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.on_trial_result("ahead", result("ahead", 1, .4, .4))
        search.on_trial_complete("ahead", result("ahead", 1, .4, .4, done=True))
    (trial,) = optuna.load_study(study_name="arm", storage=storage).trials
    assert trial.state == TrialState.COMPLETE and trial.value == .4 and trial.intermediate_values == {1: .4}


def test_a_pickled_searcher_names_no_storage_and_records_where_it_is_attached(tmp_path):
    """Tune pickles the searcher (tuner.pkl, searcher-state-*.pkl) with the study folder; a copied folder's
    resume must record into its own optuna.db, and the original's must stay as it was."""
    import pickle
    import shutil

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    search = searcher(f"sqlite:///{original / 'optuna.db'}")
    search.suggest("t1")
    search.on_trial_result("t1", result("t1", 1, .1, .1))
    search.save(str(original / "searcher.pkl"))
    pickled = pickle.dumps(search)
    for state in (pickled, (original / "searcher.pkl").read_bytes()):
        assert str(original).encode() not in state
    shutil.copytree(original, copy)
    before = (original / "optuna.db").read_bytes()
    resumed = pickle.loads(pickled)  # as Tuner.restore unpickles tuner.pkl, then attaches and restores
    resumed.attach(f"sqlite:///{copy / 'optuna.db'}")
    resumed.restore(str(copy / "searcher.pkl"))
    resumed.on_trial_result("t1", result("t1", 2, .3, .3))
    resumed.on_trial_complete("t1", result("t1", 3, .2, .3))
    assert (original / "optuna.db").read_bytes() == before
    (trial,) = optuna.load_study(study_name="arm", storage=f"sqlite:///{copy / 'optuna.db'}").trials
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values == {1: .1, 2: .3, 3: .2}
