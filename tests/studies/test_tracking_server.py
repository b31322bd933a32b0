"""Studies on a shared MLflow tracking server, for real (tests/studies/servers.py): PostgreSQL, `mlflow
server` on it with artifacts proxied through it, and, in one module fixture, three tiny studies at once:

- `near` through the server on a private local Ray instance, one trial at a time;
- `far` through the same server on a two-node local Ray cluster (`--address`, token authentication);
- `near`'s twin: the same study file on the default SQLite store, the reference the server must match.

Once both server studies have logged an epoch, the server is stopped and started again (20-45 s down).
`near` waits for it (MLflow's client retries each request for about 4 minutes) and finishes; `far`, whose
client is told not to retry, stops with exit 75 and its resume line, and `--resume` finishes it."""
from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from tests.studies import servers
from tests.studies.servers import MlflowServer, Postgres, RayCluster
from tests.studies.study_cli import PROJECT_ROOT, run_cli, start_study, tiny_study

NEAR, FAR = "near", "far"
# The server is started again this long after it stopped; its own start adds 5-30 s (5 s on a quiet machine, so
# the wait alone makes the outage 15 s or more). An outage of less than 28 s is waited out by MLflow's 4th retry
# (0, 4, 12 and 28 s after the first failure), a longer one by its 5th (60 s).
RESTART_AFTER_S = 15
ENVIRONMENT_EXIT = 75


@dataclass
class Study:
    name: str
    folder: Path
    code: int  # the first run's exit code
    log: str  # the first run's console


@dataclass
class Scenario:
    server: MlflowServer
    cluster: str  # the Ray cluster's address (far's --address)
    near: Study
    far: Study
    far_resumed: Study  # its --resume, once the server was back
    twin: Study  # `near` on its own SQLite store
    outage_s: float  # how long the server was down
    far_left: dict[str, str]  # far's runs (name: status) as its first run left them, before the resume
    notebook: Study  # the notebook executed on `near` from the server (papermill), `folder` the executed copy


def _wait_for(what: str, ready, procs: dict[Path, subprocess.Popen], timeout: float = 300) -> None:
    """Wait until `ready()`; fail, with the logs of the processes that ended, if one ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        ended = "".join(f"\n--- {log}:\n{log.read_text()[-2000:]}" for log, p in procs.items() if p.poll() is not None)
        assert not ended and time.monotonic() < deadline, f"{what}: not seen in time{ended}"
        time.sleep(0.3)


def _server_runs(server: MlflowServer, study: str, filter_string: str = "") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(study)
    return [] if experiment is None else client.search_runs([experiment.experiment_id], filter_string)


def _logged_an_epoch(server: MlflowServer, study: str) -> bool:
    return bool(_server_runs(server, study, "metrics.valid_ndcg_at_10 >= 0"))


def _finish(proc: subprocess.Popen, log: Path, name: str, folder: Path, timeout: float = 400) -> Study:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return Study(name, folder / name, code, log.read_text())


@contextlib.contextmanager
def run_scenario(root: Path) -> Iterator[Scenario]:
    """The module's studies, with the server's outage (see the module's docstring); everything it started is
    stopped by its pid at the end."""
    near_file, far_file = tiny_study(root / f"{NEAR}.yaml", ("erm", "idea")), tiny_study(root / f"{FAR}.yaml")
    postgres, cluster, procs = Postgres(), RayCluster(root), []
    server = MlflowServer(postgres.uri, root / "artifacts", root / "mlflow-server.log")
    try:
        postgres.start()
        server.spawn()
        cluster.spawn_head()
        twin = start_study(str(near_file), "--out", str(root / "sqlite"), "--concurrency", "1", "--num-samples", "2",
                           log=root / "twin.log")  # needs no server: it starts at once
        procs.append(twin)
        server.wait()
        near = start_study(str(near_file), "--out", str(root / "server"), "--tracking-uri", server.url,
                           "--concurrency", "1", "--num-samples", "2", log=root / "near.log")
        procs.append(near)
        cluster.wait()
        far_args = (str(far_file), "--out", str(root / "server"), "--tracking-uri", server.url,
                    "--address", cluster.address)
        far = start_study(*far_args, log=root / "far.log", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", **cluster.env)
        procs.append(far)
        _wait_for("an epoch of both server studies", lambda: all(_logged_an_epoch(server, n) for n in (NEAR, FAR)),
                  {root / "twin.log": twin, root / "near.log": near, root / "far.log": far})
        server.stop()
        stopped = time.monotonic()
        far_first = _finish(far, root / "far.log", FAR, root / "server", timeout=RESTART_AFTER_S + 60)
        time.sleep(max(0.0, stopped + RESTART_AFTER_S - time.monotonic()))
        server.spawn().wait()
        outage = time.monotonic() - stopped
        left = {r.info.run_name: r.info.status for r in _server_runs(server, FAR)}
        resume = start_study(*far_args, "--resume", log=root / "far-resumed.log", **cluster.env)
        procs.append(resume)
        near_done = _finish(near, root / "near.log", NEAR, root / "server")
        with open(root / "notebook.log", "w") as log:  # while far's resume runs
            notebook = subprocess.Popen(
                ["papermill", "analysis/shift_robustness.ipynb", str(root / "notebook.ipynb"), "-p", "tracking_uri",
                 server.url, "-p", "study", NEAR], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append(notebook)
        yield Scenario(server, cluster.address, near_done, far_first,
                       _finish(resume, root / "far-resumed.log", FAR, root / "server"),
                       _finish(twin, root / "twin.log", NEAR, root / "sqlite"), outage, left,
                       _finish(notebook, root / "notebook.log", "notebook.ipynb", root))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        cluster.stop()
        server.stop()
        postgres.close()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Iterator[Scenario]:
    if reason := servers.missing():
        pytest.skip(reason)
    with run_scenario(tmp_path_factory.mktemp("server")) as done:
        yield done


def test_an_unreachable_server_is_refused_before_ray_starts(tmp_path):
    """Nothing listens on the port: exit 2 at once, naming the URI, before the study line that precedes Ray's
    start; nothing written."""
    uri = f"http://127.0.0.1:{servers.free_port()}"
    started = time.monotonic()
    proc = run_cli(str(tiny_study(tmp_path / "nowhere.yaml")), "--out", str(tmp_path / "out"), "--tracking-uri", uri)
    assert proc.returncode == 2, proc.stderr
    assert f"the tracking server {uri} cannot be reached" in proc.stderr and "Connection refused" in proc.stderr
    assert "folder" not in proc.stderr and time.monotonic() - started < 30  # refused before the data and Ray
    assert not (tmp_path / "out").exists()


def test_the_reachability_check_takes_any_answer_and_hides_passwords():
    """Any HTTP answer shows a server is there (an error status here, as from a path prefix or a proxy's page); a
    database URI is reached on its port; a file store needs nothing; a password never appears in what is shown."""
    import http.server
    import threading

    from studies.server import shown, unreachable

    answering = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to every GET
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    try:
        assert unreachable(f"http://127.0.0.1:{answering.server_port}/prefix") is None
    finally:
        answering.shutdown()
    database = f"postgresql+psycopg://mlflow:secret@127.0.0.1:{servers.free_port()}/mlflow"
    assert "refused" in unreachable(database)
    assert shown(database) == database.replace(":secret@", ":***@") and unreachable("sqlite:////tmp/x.db") is None


def _client(scenario: Scenario, study: Study):
    from mlflow import MlflowClient

    twin = study is scenario.twin
    return MlflowClient(f"sqlite:///{study.folder / 'mlflow.db'}" if twin else scenario.server.url)


def _runs(scenario: Scenario, study: Study) -> list:
    client = _client(scenario, study)
    experiment = client.get_experiment_by_name(study.name)
    assert experiment is not None, f"no experiment {study.name!r} in {client.tracking_uri}"
    return client.search_runs([experiment.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])


def _labels(runs: list, folder: Path) -> dict[str, str]:
    """What differs between two stores of one study, to be ignored: ids (run ids and Tune's trial ids, named by
    stage, arm and order of start instead) and the study folder."""
    labels, count = {str(folder): "<study folder>"}, {}
    for run in runs:
        tags = run.data.tags
        key = (tags["stage"], tags.get("arm", ""))
        count[key] = count.get(key, 0) + 1
        labels[run.info.run_id] = f"<run {':'.join(key)}:{count[key]}>"
        if "trial_id" in tags:
            labels[tags["trial_id"]] = f"<trial {':'.join(key)}:{count[key]}>"
    return labels


def _normalised(value, labels: dict[str, str]):
    if isinstance(value, str):
        for old, new in labels.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {_normalised(k, labels): _normalised(v, labels) for k, v in value.items()}
    return value


WHERE_IT_RAN = ("ray_cluster", "resume_command")  # tags that name the Ray cluster and the command line
TIMES = ("epoch_seconds",)  # metrics that are durations
TIMED_COLUMNS = {"training_time.csv": ["hours", "s_per_epoch"]}  # report tables' columns of durations


def _store_view(runs: list, labels: dict[str, str]) -> dict:
    """Every run of a study as its store holds it, ids and times left out: name, status, tags, params and last
    metric values, keyed by stage, arm and order of start."""
    return {labels[r.info.run_id]: _normalised({
        "name": r.info.run_name, "status": r.info.status, "params": r.data.params,
        "metrics": {k: v for k, v in r.data.metrics.items() if k not in TIMES},
        "tags": {k: v for k, v in r.data.tags.items() if k not in WHERE_IT_RAN}}, labels) for r in runs}


def _tidy(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    frame = frame.drop(columns=["run_id", "trial", "run_name"]).map(lambda v: _normalised(v, labels))
    return frame.sort_values(list(frame.columns), ignore_index=True)


def _artifacts(client, runs: list, labels: dict[str, str], into: Path) -> dict[str, str]:
    """The parent run's artifacts, downloaded: text files as text (ids and folder normalised, a table's rows
    sorted; the report's lines that name the store or link its UI, its MLflow UI section, and its durations
    (the training-time section, that table's hours) left out), figures as whether they hold a figure."""
    (parent,) = [r for r in runs if r.data.tags["stage"] == "study"]
    local = Path(client.download_artifacts(parent.info.run_id, "", str(into)))
    out = {}
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        if path.suffix == ".png":
            out[str(path.relative_to(local))] = "png" if path.stat().st_size > 1000 else "empty"
            continue
        text = path.read_text()
        if path.name == "summary.md":
            text = re.sub(r"\n## MLflow UI\n.*?(?=\n## |\Z)", "", text, flags=re.S)
            text = re.sub(r"\n## \d+\. Training time\n.*?(?=\n## |\Z)", "", text, flags=re.S)  # durations
            text = "\n".join(line for line in text.splitlines() if not re.search(r"Tracking URI|http://|sqlite:", line))
        if path.name in TIMED_COLUMNS:  # the epochs and runs stay compared
            text = pd.read_csv(io.StringIO(text)).drop(columns=TIMED_COLUMNS[path.name]).to_csv(index=False)
        text = _normalised(text, labels)
        if path.suffix == ".csv":  # rows in the order of Tune's trial ids, which differ
            header, *rows = text.splitlines()
            text = "\n".join([header, *sorted(rows)])
        out[str(path.relative_to(local))] = text
    return out


def test_the_study_tracks_to_the_server_not_to_a_local_store(scenario):
    """The runs, and their artifacts, are the server's: proxied to its --artifacts-destination, nothing in the
    study folder; the console holds no MLflow "View run" lines."""
    near = scenario.near
    assert near.code == 0, near.log[-5000:]
    assert json.loads((near.folder / "run.json").read_text())["tracking_uri"] == scenario.server.url
    for study in (near, scenario.far):
        assert not (study.folder / "mlflow.db").exists() and not (study.folder / "mlartifacts").exists()
    experiment = _client(scenario, near).get_experiment_by_name(NEAR)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    (parent,) = [r for r in _runs(scenario, near) if r.data.tags["stage"] == "study"]
    stored = scenario.server.artifacts / experiment.experiment_id / parent.info.run_id / "artifacts"
    assert (stored / "report" / "summary.md").is_file() and (stored / "study.yaml").is_file()
    assert "View run" not in near.log and "View experiment" not in near.log


def test_the_server_holds_what_the_sqlite_store_holds(scenario, tmp_path):
    """The same study file on the default SQLite store (its twin): the same runs, tags, params, metrics (to
    the last bit), per-epoch histories, tidy frames and artifacts; only ids, times, the study folder and
    where it ran differ."""
    from analysis.load import read_study

    views = {}
    for study in (scenario.near, scenario.twin):
        assert study.code == 0, study.log[-5000:]
        client, runs = _client(scenario, study), _runs(scenario, study)
        labels = _labels(runs, study.folder)
        read = read_study(client.tracking_uri, NEAR)
        frames = [_tidy(frame, labels) for frame in (
            read.results(statuses=None), read.history(keys=lambda key: key not in TIMES, stages=("search", "final")))]
        views[study.folder.parent.name] = (_store_view(runs, labels), frames,
                                           _artifacts(client, runs, labels, tmp_path / study.folder.parent.name))
    (runs, frames, files), (twin_runs, twin_frames, twin_files) = views["server"], views["sqlite"]
    assert runs == twin_runs
    for frame, twin_frame in zip(frames, twin_frames):
        assert len(frame) > 100
        pd.testing.assert_frame_equal(frame, twin_frame, check_exact=True)
    assert {"study.yaml", "describe.json", "trials.csv", "final_results.csv", "report/summary.md",
            "report/paired.csv", "report/metric_vs_window_all.png"} <= set(files)
    assert files == twin_files


def test_report_compare_and_notebook_read_the_study_from_the_server(scenario, tmp_path):
    """`python -m analysis.report` and `python -m analysis.compare` with `--tracking-uri` the server, and the
    notebook with `tracking_uri` the server: the report's tables are the twin's (made from the SQLite store),
    compare finds the study's pair, the notebook draws its figures and links the server's UI."""
    import nbformat

    from analysis import compare, report

    url = scenario.server.url
    assert report.main(["--tracking-uri", url, "--study", NEAR, "--out", str(tmp_path / "report")]) == 0
    for table in ("per_window_all.csv", "paired.csv", "degradation.csv"):
        assert (tmp_path / "report" / table).read_text() == (scenario.twin.folder / "report" / table).read_text()
    assert compare.main(["--tracking-uri", url, "--study", NEAR, "--out", str(tmp_path / "compare")]) == 0
    table = pd.read_csv(tmp_path / "compare" / "compare.csv")
    assert set(table["study"]) == {NEAR} and set(zip(table["arm"], table["control"])) == {("idea", "erm")}
    notebook = scenario.notebook
    assert notebook.code == 0, notebook.log[-3000:]
    cells = nbformat.read(notebook.folder, as_version=4).cells
    outputs = [o for c in cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    experiment = _client(scenario, scenario.near).get_experiment_by_name(NEAR).experiment_id
    assert f"{url}/#/experiments/{experiment}" in "".join(o.get("text", "") for o in outputs)  # its UI links


def test_two_studies_at_once_each_see_only_their_own_runs(scenario):
    """`far` ran on the two-node cluster (both nodes' CPUs: two trials at a time) while `near` ran on its own
    Ray instance, both against the server; each report, trials.csv and final_results.csv holds its own runs
    only."""
    far_console = scenario.far.log + scenario.far_resumed.log
    assert "trials: 2 at a time" in far_console
    parents = {}
    for study in (scenario.near, scenario.far):
        (parent,) = [r for r in _runs(scenario, study) if r.data.tags["stage"] == "study"]
        parents[study.name] = parent
        assert parent.data.tags["study"] == study.name
    assert parents[FAR].data.tags["ray_cluster"].endswith(":" + scenario.cluster.split(":")[1])
    assert parents[NEAR].data.tags["ray_cluster"] != parents[FAR].data.tags["ray_cluster"]
    ids = {study.name: {r.info.run_id for r in _runs(scenario, study)} for study in (scenario.near, scenario.far)}
    for study, other in ((scenario.near, scenario.far), (scenario.far, scenario.near)):
        written = "".join(p.read_text() for p in [*study.folder.glob("*.csv"), *(study.folder / "report").glob("*.*")]
                          if p.suffix in (".csv", ".md"))
        assert not [run_id for run_id in ids[other.name] if run_id in written], study.name
        assert set(pd.read_csv(study.folder / "trials.csv")["run_id"]) <= ids[study.name]
        assert set(pd.read_csv(study.folder / "final_results.csv")["study"]) == {study.name}


EXPECTED = {NEAR: {("study", ""): 1, ("search", "erm"): 2, ("search", "idea"): 2, ("final", "erm"): 1,
                   ("final", "idea"): 1},
            FAR: {("study", ""): 1, ("search", "erm"): 2, ("final", "erm"): 1}}


def test_a_server_restart_mid_search_is_waited_out_or_resumed_never_leaving_a_run_running(scenario):
    """The server was down for 20-45 s while both studies searched. Afterwards no run of either study is
    RUNNING, every run ended FINISHED, each trial has one run and each epoch was logged once: `near` waited
    (MLflow's client retries) and finished; `far`, whose client did not retry, stopped with exit 75 (its
    runs left RUNNING: the server could not be told), one message naming the server, no traceback, and the
    --resume line, and the resume finished it."""
    assert scenario.outage_s >= 15
    for study in (scenario.near, scenario.far):
        client, runs = _client(scenario, study), _runs(scenario, study)
        assert [(r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED"] == [], study.name
        kinds = {}
        for run in runs:
            key = (run.data.tags["stage"], run.data.tags.get("arm", ""))
            kinds[key] = kinds.get(key, 0) + 1
        assert kinds == EXPECTED[study.name]
        assert len({r.info.run_name for r in runs}) == len(runs)
        for run in runs:
            if run.data.tags["stage"] != "study":
                steps = [m.step for m in client.get_metric_history(run.info.run_id, "valid_ndcg_at_10")]
                assert steps == [1], (study.name, run.info.run_name, steps)
    near, far, resumed = scenario.near, scenario.far, scenario.far_resumed
    assert near.code == 0, near.log[-5000:]
    assert far.code == ENVIRONMENT_EXIT, far.log[-5000:]
    assert f"the tracking server {scenario.server.url} did not answer" in far.log and "Traceback" not in far.log
    assert re.search(r"resume with:\n  .*run_study\.py .*--resume$", far.log, re.M | re.I), far.log[-3000:]
    assert "RUNNING" in scenario.far_left.values(), scenario.far_left  # the parent at least
    assert resumed.code == 0 and "Traceback" not in resumed.log, resumed.log[-5000:]
