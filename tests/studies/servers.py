"""What the shared-server tests start for real, each private to the test (its own folder and free port) and
stopped by the pid it started: PostgreSQL, an MLflow tracking server on it with proxied artifacts, and a
local Ray cluster of several nodes. studies/README.md's multi-node recipe, on one machine."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PG_USER = "postgres"  # the account initdb and postgres run as when the tests run as root (they refuse root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The folder of PostgreSQL's initdb and postgres: on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    return versions[0].parent if versions else None


def missing() -> str | None:
    """Why a PostgreSQL-backed MLflow server cannot be started here, or None."""
    if pg_bin() is None:
        return "PostgreSQL's initdb and postgres are not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401  (the server's database driver)
    except ImportError:
        return "psycopg is not installed (pip install -e \".[server]\")"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root, and PostgreSQL refuses root: there is no {PG_USER!r} account to run it as"
    return None


def _wait(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {proc.poll()}); its log {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(proc: subprocess.Popen, sig: int, group: bool = False, timeout: float = 60) -> None:
    """Signal the process we started (or its process group, which it leads), and wait for it (and for every
    process of the group: a server restarted on the same port must find it free)."""
    if proc.poll() is None:
        (os.killpg if group else os.kill)(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + timeout
    while group and not _gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group and not _gone(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)


class Postgres:
    """A private PostgreSQL: initdb into a new temporary folder (owned by PG_USER when we are root, so that
    the server may run), started on a free port of 127.0.0.1 with durability off (a test database), stopped
    by its pid (fast shutdown). Its database `postgres` holds MLflow's tables."""

    def __init__(self):
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="idea-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._as = {"user": PG_USER} if os.geteuid() == 0 else {}

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> Postgres:
        if self._as:
            shutil.chown(self.root, PG_USER)
        subprocess.run([self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-locale",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120, **self._as)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [self.bin / "postgres", "-D", self.data, "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"], stdout=log, stderr=subprocess.STDOUT, **self._as)
        _wait(lambda: "ready to accept connections" in self.log.read_text(), self.proc, self.log, "PostgreSQL", 60)
        return self

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on `backend` with artifacts proxied to `artifacts` (`--artifacts-destination`), on a
    free port; `stop` and `spawn` again keep that port (a restart). It leads its own process group, so
    stopping it by its pid also stops its uvicorn worker. Job execution is off: its consumers are of no use
    here and would cost a small machine seconds at every start."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> MlflowServer:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self, timeout: float = 180) -> MlflowServer:
        _wait(self.healthy, self.proc, self.log, "the MLflow server", timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, group=True)  # graceful: requests in flight are answered first


class RayCluster:
    """A local Ray cluster as studies/README.md starts one on several machines: `ray start --head` and
    `ray start --address` per worker node, 1 CPU each, with token authentication (`env`: the variables every
    node and the driver need). Each is `--block`ed and stopped by its pid, never by `ray stop` (which would
    stop every Ray instance on the machine)."""

    def __init__(self, root: Path, nodes: int = 2):
        self.root, self.nodes = root, nodes
        self.ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
        token = root / "ray_token"
        token.write_text(os.urandom(16).hex())
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.port = free_port()
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node(self, *args: str) -> None:
        log = self.root / f"node{len(self.procs)}.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env}
        env.pop("RAY_ADDRESS", None)
        with open(log, "w") as f:
            proc = subprocess.Popen([self.ray, "start", *args, "--num-cpus=1", "--object-store-memory=100000000",
                                     "--block"], env=env, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))

    def spawn_head(self) -> RayCluster:
        self._node("--head", f"--port={self.port}", "--include-dashboard=false")
        return self

    def wait(self, timeout: float = 120) -> RayCluster:
        """Wait for the head, then start the worker nodes and wait for them."""
        for i in range(self.nodes):
            if i == len(self.procs):
                self._node(f"--address={self.address}")
            proc, log = self.procs[i]
            _wait(lambda: "Ray runtime started" in log.read_text(), proc, log, f"Ray node {i}", timeout)
        return self

    def stop(self) -> None:
        for proc, _ in self.procs:  # every node at once: each takes seconds to stop its processes
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
