"""Ctrl-C is watched by a callback of its own in every stage, not by the MLflow logger: a stage run with
any logger still records the Ctrl-C that stops it, so the driver does not go on to the next stage."""
from __future__ import annotations

import signal

from ray import tune

from studies.experiments import Resources
from studies.interrupts import INTERRUPTED


class PlainLogger(tune.Callback):
    """A stage logger that knows nothing of signals."""

    max_epochs = 1


def test_every_stage_records_ctrl_c_whatever_its_logger(tmp_path):
    tune_saw = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: tune_saw.append(signum))  # stands in for Tune's
    try:
        for callback in Resources().run_config(tmp_path, "arm-search", 1, PlainLogger()).callbacks:
            callback.setup()
        assert not INTERRUPTED.is_set()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert INTERRUPTED.is_set() and tune_saw == [signal.SIGINT]  # recorded, and Tune still stops gracefully
    finally:
        signal.signal(signal.SIGINT, before)
        INTERRUPTED.clear()

