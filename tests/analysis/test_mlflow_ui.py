"""The study as the MLflow UI shows it: `mlflow server` on the fake store, its REST API, and the report's links
(runs table, compare page, chart view) rendered by headless Chromium (Debian's `chromium` package)."""
from __future__ import annotations

import html
import json
import re
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from analysis.load import read_study
from analysis.mlflow_ui import arm_colours, compare_url, runs_url, ui_base_url, ui_command, view_url
from analysis.report import write_report
from tests.analysis import fake_store as F

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FINAL = ["idea-seed1", "idea-seed2", "erm-seed1", "erm-seed2"]


def get_json(url: str, body: dict | None = None) -> dict:
    """GET (or POST ``body`` as JSON) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_ui_links_have_the_3x_route_format():
    """Hash routes with JSON lists, as MLflow's own compare button builds them."""
    assert compare_url("http://h:1/", "7", ["a", "b"]) == 'http://h:1/#/compare-runs?runs=["a","b"]&experiments=["7"]'
    assert view_url("http://h:1/", "7", "shift_ndcg_at_10") == (
        "http://h:1/#/experiments/7/runs?compareRunsMode=CHART&viewStateShareKey=shift_ndcg_at_10")
    assert runs_url("http://h:1/", "7") == "http://h:1/#/experiments/7/runs"
    # a local store: the port of the `mlflow ui` command a study prints, or where the reader says the UI is
    assert ui_command("sqlite:////x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db --host 127.0.0.1 --port 5001"
    assert ui_base_url("sqlite:////x/mlflow.db") == "http://127.0.0.1:5001"
    assert ui_base_url("sqlite:////x/mlflow.db", "http://127.0.0.1:5123/") == "http://127.0.0.1:5123"
    assert ui_command("http://srv:5000") is None and ui_base_url("http://srv:5000/") == "http://srv:5000"


@pytest.mark.parametrize("uri", ["sqlite:////my data/out/mlflow.db", "sqlite:////it's/mlflow.db"])
def test_ui_command_is_shell_quoted(uri):
    """A path with a space (or a quote) reaches mlflow as one argument when the printed command is pasted."""
    assert shlex.split(ui_command(uri, 5001)) == ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                                  "--port", "5001"]


def test_rest_api_lists_the_studys_runs_and_metrics(mlflow_server):
    """Through the server's REST API: the study's experiment, its final runs by name with per-window
    metrics and params, and all of its runs."""
    exp = get_json(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name={F.STUDY}")["experiment"]
    search = f"{mlflow_server}/api/2.0/mlflow/runs/search"
    everything = get_json(search, {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    assert len(everything) == 1 + 8 + 4  # parent, 5 idea + 3 erm trials (one FAILED), 4 finals
    runs = get_json(search, {"experiment_ids": [exp["experiment_id"]], "filter": "tags.stage = 'final'",
                             "max_results": 100})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert sorted(by_name) == sorted(FINAL)
    for name, r in by_name.items():
        arm, seed = name.split("-seed")
        metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
        for w in F.WINDOWS:
            assert metrics[f"test_{w}_ndcg_at_10"] == pytest.approx(F.final_value(arm, int(seed), w, "all", "ndcg", 10))
            assert f"test_{w}_warm_ndcg_at_10" in metrics
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        assert {"K", "N", "lambda_low", "lambda_high", "alpha", "tau", "beta", "T", "lr", "dropout"} <= set(params)
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert (tags["arm"], tags["seed"], tags["study"]) == (arm, seed, F.STUDY)


def page_text(dom: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def render(url: str, tmp: Path, name: str, budget_ms: int = 15000) -> tuple[str, Path]:
    """Load `url` in headless Chromium: (text of the DOM after `budget_ms` of virtual time, screenshot path); the DOM
    itself is kept as <name>.html."""
    shot = tmp / f"{name}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / f'profile-{name}'}", f"--virtual-time-budget={budget_ms}", "--window-size=1600,1000",
           f"--screenshot={shot}", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp / f"{name}.html").write_text(proc.stdout)
    return page_text(proc.stdout), shot


def assert_real_screenshot(path: Path) -> None:
    """A 1600x1000 PNG that is not a blank page."""
    from PIL import Image, ImageStat

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    with Image.open(path) as im:
        assert im.size == (1600, 1000)
        gray = im.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10
        dark = sum(n for n, v in gray.getcolors(256 * 256) if v < 128)
        assert dark > 0.005 * 1600 * 1000  # text and lines drawn, not an empty shell


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run does)")
@pytest.mark.timeout(300)
def test_compare_page_renders_idea_and_erm_side_by_side(mlflow_server, store, tmp_path):
    """The compare page of the final runs shows the four run names, their params and metrics; the runs link
    opens the experiment's runs table, not MLflow 3's GenAI overview."""
    read = read_study(store, F.STUDY)
    exp_id, runs = read.experiment_id, read.final_run_ids()
    ids = [i for _, i in runs]
    text, shot = render(compare_url(mlflow_server, exp_id, ids), tmp_path, "compare")
    assert "Comparing 4 Runs from 1 Experiment" in text
    assert re.search(r"Run Name: idea-seed1 idea-seed2 erm-seed1 erm-seed2", text)
    for key in ("lambda_low", "beta", "best_valid_ndcg_at_10"):
        assert key in text
    assert "K 4 4 3 3" in text  # the params row: IDEA's selected K=4 next to ERM's default K=3
    assert_real_screenshot(shot)

    text, shot = render(runs_url(mlflow_server, exp_id), tmp_path, "runs")
    assert "Training runs" in text and "synthetic-smoke" in text and "Traces 0" not in text  # not the GenAI overview
    assert_real_screenshot(shot)


LEGEND_ENTRY = re.compile(r'stroke: (rgb\([^)]*\));"></path></svg><span[^>]*>([\w-]+) \(shift_ndcg_at_10\)</span>')
RUN_LIST_ENTRY = re.compile(r'value="(#[0-9a-f]{6})"></label><a [^>]*><span[^>]*>([\w-]+)</span>')  # colour, run name


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run does)")
@pytest.mark.timeout(300)
def test_chart_view_draws_every_final_run_in_its_arms_colour(mlflow_server, store, tmp_path):
    """The report's chart-view link opens the view the report stored in the experiment: every final run in the
    legend of `shift_ndcg_at_10` against the step, each in its arm's colour (the runs' tag `mlflow.runColor`,
    which MLflow's UI draws a run in), and so in the run list beside it, the arms' colours distinct; the section's
    title names the steps, and a bar chart per part follows. Its screenshot on a real smoke study:
    docs/screenshots/mlflow_chart_view.png."""
    md = write_report(read_study(store, F.STUDY), tmp_path / "report", ui_url=mlflow_server).read_text()
    (url,) = re.findall(r"<(http[^>]*viewStateShareKey=[^>]+)>", md)
    text, shot = render(url, tmp_path, "chart-view", budget_ms=60000)  # MLflow draws the charts after ~30 s of it
    dom = (tmp_path / "chart-view.html").read_text()
    colours = arm_colours(F.ROLES)
    assert len(set(colours.values())) == len(F.ARMS)  # each arm its own colour
    listed = {name: colour for colour, name in RUN_LIST_ENTRY.findall(dom)}  # the run list: the page's legend
    assert listed == {name: colours[name.split("-seed")[0]] for name in FINAL}, listed
    drawn = {name: colour for colour, name in LEGEND_ENTRY.findall(dom)}  # the line chart's legend
    rgb = {arm: "rgb({}, {}, {})".format(*(int(c[i:i + 2], 16) for i in (1, 3, 5))) for arm, c in colours.items()}
    assert drawn == {name: rgb[name.split("-seed")[0]] for name in FINAL}, drawn
    assert "Steps: 0 valid, 1 w1, 2 w2, 3 w3 (5)" in text  # the line and a bar chart per part; those in view drawn
    assert "best_valid_ndcg_at_10" in text and "test_w1_ndcg_at_10" in text
    assert_real_screenshot(shot)
