"""Ctrl-C and SIGTERM in the driver: both stop the running stage the way Tune stops on Ctrl-C (gracefully,
its state saved), and the driver then ends the open runs KILLED and prints the resume line. Tune reports
nothing when Ctrl-C stopped an experiment, so `WatchSigint`, a callback of every stage, records it in
`INTERRUPTED` for the driver not to go on to the next stage."""
from __future__ import annotations

import signal
import threading

from ray import tune

INTERRUPTED = threading.Event()  # Ctrl-C (or SIGTERM, which takes its path) reached a running Tuner
TERMINATED = threading.Event()  # SIGTERM reached the driver


class WatchSigint(tune.Callback):
    """Chains onto Tune's SIGINT handler, which Tune installs before it sets its callbacks up."""

    def setup(self, **info) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or not callable(tune_handler):
            return

        def handler(signum, frame):
            INTERRUPTED.set()
            tune_handler(signum, frame)

        signal.signal(signal.SIGINT, handler)


def stop_on_sigterm() -> None:
    """SIGTERM (how SLURM and Kubernetes stop a job) takes Ctrl-C's path: Tune stops gracefully and saves
    its state, open runs end KILLED, the resume line is printed. Installed after ray.init, whose own
    handlers would exit mid-stage (runs FAILED) or abort with a native stack dump."""
    def handler(signum, frame):
        TERMINATED.set()
        on_sigint = signal.getsignal(signal.SIGINT)  # Tune's while a stage runs, else Python's KeyboardInterrupt
        if not callable(on_sigint):
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, handler)


def interrupted_by() -> str:
    """The signal that stopped the study, for the `interrupted` tag and the exit code."""
    return "SIGTERM" if TERMINATED.is_set() else "SIGINT"
