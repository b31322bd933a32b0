"""The console's per-trial lines (studies/progress.py): a line names the trial's whole configuration."""
from __future__ import annotations

from types import SimpleNamespace

from idea.contract import Result
from studies.progress import ProgressPrinter

# a configuration of the idea arm's eight searched parameters (the smoke study's selected trial)
IDEA_TRIAL = {"K": 4, "N": 5, "T": 10, "beta": 18.66, "dropout": 0.2644, "lambda_low": 0.7712, "lr": 0.0003832,
              "tau": 0.3732}


def test_an_epoch_line_shows_every_searched_parameter(capsys):
    printer = ProgressPrinter("idea-search", total=3, concurrency=2, max_epochs=2)
    trial = SimpleNamespace(trial_id="f7d6daed", config=IDEA_TRIAL, status="RUNNING")
    printer.on_trial_result(0, [trial], trial, {Result.EPOCH: 1, "ndcg_at_10": 0.0096, "phase": "idea"})
    line = capsys.readouterr().err
    assert line.startswith("[idea-search] trial f7d6daed epoch 1 [idea] valid ndcg@10 0.0096 "), line
    assert " K=4 N=5 T=10 beta=18.7 dropout=0.264 lambda_low=0.771 lr=0.000383 tau=0.373 | 0/3 done" in line, line
