"""A tracking server whose reply to a creation is lost after it made the run (or experiment), and the study
must still hold one experiment, one parent run and one run per trial. A real `mlflow server` behind a proxy
that forwards every request and, once armed, either answers the next creation with 503 after the server
made it (as a load balancer timing out would: MLflow's client from 3.18 raises, and none here retries) or
forwards it twice (what MLflow's client before 3.18 did after such a 503: the server makes two runs)."""
from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from typing import Iterator

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from studies.oracle import copy_run
from studies.tracking import StudyRun, open_study
from tests.studies.servers import MlflowServer, free_port

CREATE_RUN, CREATE_EXPERIMENT = "/api/2.0/mlflow/runs/create", "/api/2.0/mlflow/experiments/create"
DROP, TWICE = "drop", "twice"  # what the proxy does to the next creation (of a run, or of `target`)


class LossyProxy(http.server.ThreadingHTTPServer):
    """Forwards to `upstream`; once `armed` (DROP or TWICE), the next creation at `target` (a run's, unless
    set) is made upstream and answered 503, or made upstream twice and answered with the second reply (`hit`
    counts them)."""

    def __init__(self, upstream: str):
        self.upstream, self.armed, self.hit, self.target = upstream, None, 0, CREATE_RUN
        super().__init__(("127.0.0.1", free_port()), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    server: LossyProxy

    def _upstream(self, body: bytes | None) -> tuple[int, bytes, str | None]:
        request = urllib.request.Request(self.server.upstream + self.path, data=body, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type")

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        status, payload, kind = self._upstream(body)
        armed = self.server.armed if self.command == "POST" and self.path.startswith(self.server.target) else None
        if armed is not None:
            self.server.armed, self.server.hit = None, self.server.hit + 1
        if armed == DROP:
            status, payload, kind = 503, b"upstream reply lost", "text/plain"
        elif armed == TWICE:
            status, payload, kind = self._upstream(body)
        self.send_response(status)
        self.send_header("Content-Type", kind or "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def lossy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LossyProxy]:
    tmp_path = tmp_path_factory.mktemp("lossy")
    server = MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path / "server.log")
    server.spawn()
    try:
        server.wait()
        proxy = LossyProxy(server.url)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        yield proxy
        proxy.shutdown()
        proxy.server_close()
    finally:
        server.stop()


def _disarm(proxy: LossyProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy disarmed, its count reset; MLflow's client retries nothing (as from 3.18 for a run's
    creation), so the proxy alone says what the server got."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    proxy.armed, proxy.hit, proxy.target = None, 0, CREATE_RUN


def _study(proxy: LossyProxy, name: str, monkeypatch: pytest.MonkeyPatch) -> StudyRun:
    """A fresh study (its own experiment and parent run) in the proxied store, the proxy disarmed."""
    _disarm(proxy, monkeypatch)
    client = MlflowClient(tracking_uri=proxy.url)
    experiment = client.create_experiment(name)
    parent = client.create_run(experiment, tags={"study": "s", "stage": "study"}).info.run_id
    return StudyRun(proxy.url, experiment, parent, {"study": "s"})


def _trial_tags(study_run: StudyRun, arm: str, stage: str, trial_id: str) -> dict[str, str]:
    return {"study": "s", MLFLOW_PARENT_RUN_ID: study_run.parent_run_id, "arm": arm, "stage": stage,
            "trial_id": trial_id}


def test_a_run_whose_creation_reply_was_lost_is_found_and_used(lossy_server, monkeypatch):
    study_run = _study(lossy_server, "lost", monkeypatch)
    lossy_server.armed = DROP
    run_id = study_run.create_trial_run(study_run.client(), "idea-trial-t1", _trial_tags(study_run, "idea", "search", "t1"))

    assert lossy_server.hit == 1  # the server made the run, and the client was answered 503
    runs = study_run.nested_runs("idea", "search")
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].data.tags["trial_id"] == "t1"
    assert study_run.nested_runs("idea", "search", view=ViewType.DELETED_ONLY) == []


def test_a_run_created_twice_leaves_one_run_for_the_trial(lossy_server, monkeypatch):
    study_run = _study(lossy_server, "twice", monkeypatch)
    lossy_server.armed = TWICE
    run_id = study_run.create_trial_run(study_run.client(), "idea-trial-t1", _trial_tags(study_run, "idea", "search", "t1"))

    assert lossy_server.hit == 1
    assert [r.info.run_id for r in study_run.nested_runs("idea", "search")] == [run_id]
    twins = study_run.nested_runs("idea", "search", view=ViewType.DELETED_ONLY)
    assert len(twins) == 1 and twins[0].info.status == "KILLED"
    assert twins[0].data.tags["duplicate_of"] == run_id and twins[0].data.tags["trial_id"] == "t1"


@pytest.mark.parametrize("fault", [DROP, TWICE])
def test_an_oracle_copy_whose_creation_went_wrong_leaves_one_copy(lossy_server, monkeypatch, fault):
    study_run = _study(lossy_server, f"copy-{fault}", monkeypatch)
    client = study_run.client()
    final_id = client.create_run(study_run.experiment_id,
                                 tags={**_trial_tags(study_run, "erm", "final", "f1"), "seed": "1"}).info.run_id
    client.log_metric(final_id, "test_ndcg_at_10", 0.03)
    client.set_terminated(final_id, "FINISHED")
    lossy_server.armed = fault
    copy_id = copy_run(study_run, client.get_run(final_id), "oracle")

    assert lossy_server.hit == 1
    copies = study_run.nested_runs("erm", "oracle")
    assert [r.info.run_id for r in copies] == [copy_id] and copies[0].info.status == "FINISHED"
    assert copies[0].data.metrics["test_ndcg_at_10"] == 0.03 and copies[0].data.tags["same_as"] == final_id
    twins = study_run.nested_runs("erm", "oracle", view=ViewType.DELETED_ONLY)
    assert [(t.info.status, t.data.tags["duplicate_of"]) for t in twins] == ([("KILLED", copy_id)] if fault == TWICE else [])


@pytest.mark.parametrize("fault", [DROP, TWICE])
def test_a_study_whose_experiment_creation_went_wrong_opens_on_it(lossy_server, monkeypatch, fault):
    _disarm(lossy_server, monkeypatch)
    lossy_server.armed, lossy_server.target = fault, CREATE_EXPERIMENT  # TWICE: the second post finds it made
    study_run = open_study(lossy_server.url, f"exp-{fault}", {"study": f"exp-{fault}"}, None, resume=False)

    assert lossy_server.hit == 1
    client = MlflowClient(tracking_uri=lossy_server.url)
    experiment = client.get_experiment_by_name(f"exp-{fault}")
    assert study_run.experiment_id == experiment.experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [study_run.parent_run_id]


@pytest.mark.parametrize("fault", [DROP, TWICE])
def test_a_parent_run_whose_creation_went_wrong_is_the_study_s_one_parent(lossy_server, monkeypatch, fault):
    _disarm(lossy_server, monkeypatch)
    lossy_server.armed = fault
    study_run = open_study(lossy_server.url, f"parent-{fault}", {"study": f"parent-{fault}"}, None, resume=False)

    assert lossy_server.hit == 1
    client = MlflowClient(tracking_uri=lossy_server.url)
    runs = client.search_runs([study_run.experiment_id])
    assert [(r.info.run_id, r.info.status, r.data.tags["stage"]) for r in runs] == [(study_run.parent_run_id, "RUNNING",
                                                                                     "study")]
    twins = client.search_runs([study_run.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [(t.info.status, t.data.tags["duplicate_of"]) for t in twins] == (
        [("KILLED", study_run.parent_run_id)] if fault == TWICE else [])
