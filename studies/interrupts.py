"""Ctrl-C, SIGTERM and SIGHUP in the driver: each stops the running stage the way Tune stops on Ctrl-C
(gracefully, its state saved), and the driver then ends the open runs KILLED and prints the resume line.
Tune reports nothing when Ctrl-C stopped an experiment, so `WatchSigint`, a callback of every stage,
records it in `INTERRUPTED` for the driver not to go on to the next stage."""
from __future__ import annotations

import os
import signal
import threading

from ray import tune

INTERRUPTED = threading.Event()  # Ctrl-C (or a signal that takes its path) reached a running Tuner
SIGNALLED: list[str] = []  # the termination signals (SIGTERM, SIGHUP) that reached the driver, in order
TERMINATING = (signal.SIGTERM, signal.SIGHUP)  # how schedulers and `timeout` stop a job; a closed terminal


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


def quiet_hung_up_output() -> None:
    """After a terminal hung up, writing to it fails (EIO) and would crash the graceful stop: stdout and
    stderr that no longer take a write go to /dev/null (the store and the `resume_command` tag keep what
    the console would have said)."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


def stop_on_signals() -> None:
    """SIGTERM (how SLURM, Kubernetes and `timeout` stop a job) and SIGHUP (a closed terminal or dropped ssh
    session) take Ctrl-C's path: Tune stops gracefully and saves its state, open runs end KILLED, the resume
    line is printed. Installed after ray.init, whose own handlers would exit mid-stage (runs FAILED) or abort
    with a native stack dump."""
    def handler(signum, frame):
        SIGNALLED.append(signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            quiet_hung_up_output()
        on_sigint = signal.getsignal(signal.SIGINT)  # Tune's while a stage runs, else Python's KeyboardInterrupt
        if not callable(on_sigint):
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)

    for signum in TERMINATING:
        signal.signal(signum, handler)


def interrupted_by() -> str:
    """The signal that stopped the study (the first that came), for the `interrupted` tag and the exit code."""
    return SIGNALLED[0] if SIGNALLED else "SIGINT"
