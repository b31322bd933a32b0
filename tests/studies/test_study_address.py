"""`--address` joins a separately started Ray head (with Ray 2.60 token authentication, as a
multi-node cluster would run) instead of starting a local instance."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.studies.study_cli import Store, run_study, study_env, tiny_study

STUDY = "joined"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in a subprocess; stopped by its pid afterwards (never `ray stop`,
    which would stop every Ray instance on the machine)."""
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    token = tmp_path / "ray_token"
    token.write_text(uuid.uuid4().hex)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    log = tmp_path / "head.log"
    with open(log, "w") as f:
        head = subprocess.Popen([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2",
                                 "--include-dashboard=false", "--block"], env=study_env(**auth), stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield port, auth
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def test_study_joins_an_existing_ray_head(tmp_path, ray_head):
    """Also with a tracking store outside the study folder (--tracking-uri): the runs go there, their
    artifacts into the study folder (never ./mlruns of the working directory)."""
    port, auth = ray_head
    study_file = tiny_study(tmp_path / f"{STUDY}.yaml", ("erm", "idea"))
    db = tmp_path / "elsewhere" / "other.db"
    db.parent.mkdir()
    proc = run_study(str(study_file), "--num-samples", "1", "--out", str(tmp_path / "out"),
                     "--address", f"127.0.0.1:{port}", "--tracking-uri", f"sqlite:///{db}", timeout=300, **auth)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    study_dir = tmp_path / "out" / STUDY
    assert not (study_dir / "mlflow.db").exists()
    store = Store(study_dir, STUDY, db)
    (parent,) = store.runs("tags.stage = 'study'")
    assert parent.info.artifact_uri.startswith((study_dir / "mlartifacts").as_uri())
    assert (study_dir / "mlartifacts" / parent.info.run_id / "artifacts" / "report" / "summary.md").is_file()
    assert parent.data.tags["ray_cluster"].endswith(f":{port}")  # it joined the head (Ray's own lines are quiet)
    assert parent.info.status == "FINISHED"
    assert len(store.nested("final", "idea")) == 1 and len(store.nested("final", "erm")) == 1
