"""Ctrl-C is watched by a callback of its own in every stage, not by the MLflow logger: a stage run with
any logger still records the Ctrl-C that stops it, so the driver does not go on to the next stage."""
from __future__ import annotations

import signal
import subprocess
import sys

from ray import tune

from studies.experiments import Resources
from studies.interrupts import INTERRUPTED
from tests.studies.study_cli import PROJECT_ROOT


class PlainLogger(tune.Callback):
    """A stage logger that knows nothing of signals."""

    max_epochs = 1


def test_every_stage_records_ctrl_c_whatever_its_logger(tmp_path):
    tune_saw = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: tune_saw.append(signum))  # stands in for Tune's
    try:
        for callback in Resources().run_config(tmp_path / "arm-search", 1, PlainLogger()).callbacks:
            callback.setup()
        assert not INTERRUPTED.is_set()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert INTERRUPTED.is_set() and tune_saw == [signal.SIGINT]  # recorded, and Tune still stops gracefully
    finally:
        signal.signal(signal.SIGINT, before)
        INTERRUPTED.clear()


HUNG_UP = """import os, sys
from studies.interrupts import quiet_hung_up_output
main, terminal = os.openpty()
os.dup2(terminal, 1)  # stdout on a terminal that then hangs up; stderr stays the test's pipe
os.close(main)
quiet_hung_up_output()
print("to the terminal that hung up", flush=True)
print("to the pipe", file=sys.stderr, flush=True)
"""


def test_output_to_a_terminal_that_hung_up_goes_to_dev_null_and_other_output_stays():
    """After SIGHUP from a closed terminal, a write to it fails (EIO) and would crash the graceful stop."""
    done = subprocess.run([sys.executable, "-c", HUNG_UP], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == "to the pipe\n", (done.returncode, done.stderr[-2000:])
