"""Faults of the machine a study runs on, not of the study: a full disk, a read-only folder, a tracking
store another process keeps locked, a tracking server that stays unreachable. They stop the study cleanly
and resumably (studies/driver.py: one message with the cause, the fix and the resume command, exit
ENVIRONMENT_EXIT) instead of failing trials or leaving a wall of tracebacks; a locked store is first waited
for (`RetryingClient`), an unreachable server by MLflow's own retries. Standard library and MLflow only."""
from __future__ import annotations

import errno
import functools
import os
import time
from dataclasses import dataclass, replace

from mlflow import MlflowClient

ENVIRONMENT_EXIT = 75  # sysexits' EX_TEMPFAIL: fix the machine, then --resume
STORE_RETRY_ENV = "IDEA_STUDY_STORE_RETRY_S"  # how long a locked store is retried, beyond MLflow's 20 s busy timeout
STORE_RETRY_S = 120.0
LOCKED = "database is locked"  # SQLite's message once its busy timeout ran out
# MLflow's HTTP client once its retries of a request ran out: the server refused or dropped the connection, or
# kept answering 5xx (its database down)
UNREACHABLE = ("Max retries exceeded", "Failed to establish a new connection")


class EnvironmentFault(RuntimeError):
    """A trial stopped on a fault of the machine (its error text says which): the study stops, since every
    other trial would meet the same fault, and retrying the trial would only fail it."""


@dataclass(frozen=True)
class Fault:
    kind: str  # tagged `interrupted` on the runs it stopped
    cause: str
    fix: str
    closable: bool  # can the open runs still be ended (not while the store stays locked)
    detail: str = ""  # the error's line that shows the fault


def _faults(store: str) -> tuple[tuple[set[int], tuple[str, ...], Fault], ...]:
    retry = os.environ.get(STORE_RETRY_ENV, f"{STORE_RETRY_S:g}")
    http_retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    return (
        ({errno.ENOSPC, errno.EDQUOT}, ("No space left on device", "database or disk is full", "Disk quota exceeded"),
         Fault("disk full", "no space left on the disk (or quota) of the study folder or the tracking store",
               "free space there (Tune's checkpoints are under <study folder>/ray), then resume", True)),
        ({errno.EROFS, errno.EACCES, errno.EPERM}, ("Read-only file system", "readonly database", "Permission denied"),
         Fault("not writable", "the study folder or the tracking store is read-only or not writable",
               "make it writable again, then resume", True)),
        (set(), UNREACHABLE,
         Fault("server unreachable", f"the tracking server {store} did not answer, also after MLflow's client "
                                     f"retried the request {http_retries} times ($MLFLOW_HTTP_REQUEST_MAX_RETRIES; "
                                     "the default 7 take about 4 minutes)",
               "start the server again (or fix the network)", False)),
        (set(), (LOCKED,),
         Fault("store locked", f"the tracking store {store} stayed locked by another process (each write waited "
                               f"MLflow's 20 s busy timeout, and was retried for {retry} s, ${STORE_RETRY_ENV})",
               "end or wait for the process holding it (a long reader such as a database browser, a backup), "
               "then resume", False)),
    )


def diagnose(err: BaseException, store: str = "") -> Fault | None:
    """The machine fault behind `err` (or an exception it was raised from), or None for any other error."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        for errnos, texts, fault in _faults(store):
            shown = [line for line in lines if any(t in line for t in texts)]
            if shown or (isinstance(err, OSError) and err.errno in errnos):
                return replace(fault, detail=(shown or lines)[0].strip())
        err = err.__cause__ or err.__context__
    return None


def store_retry_s() -> float:
    return float(os.environ.get(STORE_RETRY_ENV, STORE_RETRY_S))


class RetryingClient:
    """An MlflowClient whose calls, while another process holds the SQLite store locked beyond MLflow's
    busy timeout, are retried with backoff for `store_retry_s()` seconds before the error is raised.
    MLflow rolls a failed write back whole, so a retry never duplicates it."""

    def __init__(self, tracking_uri: str):
        self._client = MlflowClient(tracking_uri=tracking_uri)

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            deadline, delay = time.monotonic() + store_retry_s(), 0.5
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 (MLflow wraps SQLAlchemy's OperationalError)
                    left = deadline - time.monotonic()
                    if LOCKED not in str(err) or left <= 0:
                        raise
                time.sleep(min(delay, left))
                delay = min(2 * delay, 10.0)

        return call
