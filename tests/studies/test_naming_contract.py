"""The naming contract end to end without a study: what the trainables report and the MLflow callback
logs parses back, by analysis's reader, into the numbers it came from (a rename on either side fails here
rather than only in the slow smoke study); and an arm's roles survive the trip through run tags."""
from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from analysis.load import parse_metric_key
from idea.contract import KS, METRIC_NAMES, METRICS, Arms, Tag, best_key, parse_metric_key as parse_key, valid_key
from idea.metrics import metrics_frame
from studies.config import load_study
from studies.tracking import shift_series, summary_metrics
from studies.trainable import final_metrics


def evaluated_frame() -> pd.DataFrame:
    """A best state's tidy metrics as `Trainer.evaluate` returns them: valid and two windows, both subsets."""
    rows = [dict(part=part, subset=subset, metric=m, k=k, value=round(0.01 * i + 0.001 * k, 6), n_events=10)
            for i, (part, subset) in enumerate((p, s) for p in ("valid", "w1", "w2") for s in ("all", "warm"))
            for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)]
    return pd.DataFrame(rows)


def test_final_metrics_round_trip_through_the_reader():
    frame = evaluated_frame()
    logged = summary_metrics(final_metrics(frame))  # what the callback logs at a final run's end
    read = {parse_metric_key(key): value for key, value in logged.items()}
    assert None not in read
    expected = {(r.part, r.subset, r.metric, r.k): r.value for r in frame.itertuples()}
    assert read == expected


def test_search_results_are_logged_under_the_names_the_reader_selects():
    result = {**{name: 0.1 for name in METRIC_NAMES}, **{best_key(name): 0.2 for name in METRIC_NAMES}, "epoch": 3}
    read = {parse_metric_key(key): value for key, value in summary_metrics(result).items()}
    assert read == {("valid", "all", m, k): 0.2 for m in METRICS for k in KS}
    assert parse_metric_key(valid_key("ndcg_at_10")) is None  # per epoch: not a selection metric
    assert parse_key(valid_key("ndcg_at_10")).kind == "valid"


def test_shift_series_steps_are_validation_then_the_windows():
    steps = shift_series(final_metrics(evaluated_frame()))
    assert sorted(steps) == [0, 1, 2]
    parsed = parse_key(next(iter(steps[1])))
    assert (parsed.kind, parsed.part) == ("shift", None)
    frame = evaluated_frame().set_index(["part", "subset", "metric", "k"])["value"]
    for step, part in enumerate(("valid", "w1", "w2")):
        for key, value in steps[step].items():
            p = parse_key(key)
            assert value == frame[(part, p.subset, p.metric, p.k)]


@pytest.mark.parametrize("name", ["beauty", "synthetic"])
def test_arm_roles_survive_the_run_tags(name):
    """What the driver tags each run with (`StudyConfig.roles().tags(arm)`) reads back as the study's roles."""
    roles = load_study(name).roles()
    read = Arms.from_tags({arm: {Tag.ARM: arm, **roles.tags(arm)} for arm in reversed(roles.order)})
    assert read == roles
    assert read.pairs()[0] == ("idea", "erm_ft")  # IDEA against the same fine-tuning without the penalty first
    assert Arms.from_tags({arm: {Tag.ARM: arm} for arm in roles.order}) == Arms.legacy(roles.order)  # an old store


def test_evaluation_computes_exactly_the_contracts_metrics():
    """A metric is added in idea/metrics.py and named in idea/contract.py (docs/design.md): the two agree."""
    frame = metrics_frame(np.array([0, 3, 30]), np.array([True, False, True]), "valid")
    assert set(zip(frame["metric"], frame["k"])) == {(m, k) for m in METRICS for k in KS}


@pytest.mark.parametrize("module", ["analysis.report", "analysis.compare", "analysis.positive_control"])
def test_the_commands_offer_the_contracts_metrics_and_cutoffs(module, monkeypatch, capsys):
    """Their --metric and --k choices come from the contract: a metric added there is offered at once."""
    command = importlib.import_module(module)
    monkeypatch.setattr(command, "METRICS", (*METRICS, "auc"))
    for flag, value, offered in (("--metric", "nosuch", (*METRICS, "auc")), ("--k", "7", KS)):
        with pytest.raises(SystemExit):
            command.main([flag, value])
        error = capsys.readouterr().err
        assert f"choose from {', '.join(repr(str(v)) if flag == '--metric' else str(v) for v in offered)}" in error, error
