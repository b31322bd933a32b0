"""Shared fixtures of the analysis tests: a fake study store (built once) and an `mlflow server` on it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.analysis.fake_store import make_fake_store

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """Tracking URI of the fake study store (tests/analysis/fake_store.py); read-only for the tests."""
    return make_fake_store(tmp_path_factory.mktemp("store"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(store, tmp_path_factory):
    """Base URL of `mlflow server` serving the fake store on 127.0.0.1 (stopped after the session)."""
    workdir = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = open(workdir / "server.log", "w")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--artifacts-destination", str(workdir / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up on {base}:\n{(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: uvicorn and its worker go together
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
