"""The study as the MLflow UI shows it: `mlflow server` on the fake store, its REST API, and the compare
page rendered by headless Chromium (Debian's `chromium` package)."""
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

from analysis.load import final_run_ids
from analysis.mlflow_ui import compare_url, metric_url, runs_url, ui_base_url, ui_command
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
    assert metric_url("http://h:1", "7", ["a"], "shift_ndcg_at_10") == (
        'http://h:1/#/metric?runs=["a"]&metric="shift_ndcg_at_10"&experiments=["7"]'
        '&plot_metric_keys=["shift_ndcg_at_10"]&x_axis=step&show_point=true')
    assert runs_url("http://h:1/", "7") == "http://h:1/#/experiments/7/runs"
    # a local store has no port of its own: a placeholder, or where the reader says the UI is
    assert ui_command("sqlite:////x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db --host 127.0.0.1 --port PORT"
    assert ui_base_url("sqlite:////x/mlflow.db") == "http://127.0.0.1:PORT"
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


def render(url: str, tmp: Path, name: str) -> tuple[str, Path]:
    """Load `url` in headless Chromium: (text of the DOM after 15 s of virtual time, screenshot path)."""
    shot = tmp / f"{name}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / f'profile-{name}'}", "--virtual-time-budget=15000", "--window-size=1600,1000",
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
    exp_id, runs = final_run_ids(store, F.STUDY)
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


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run does)")
@pytest.mark.timeout(300)
def test_metric_against_window_chart_draws_a_line_per_final_run(mlflow_server, store, tmp_path):
    """The `shift_ndcg_at_10` page (the report's link; in the UI: Compare, the metric, X-axis Step) plots the
    metric against the window (step 0 = validation, step i = wi) with one line per final run. Its screenshot
    is docs/mlflow_shift_chart.png."""
    exp_id, runs = final_run_ids(store, F.STUDY)
    text, shot = render(metric_url(mlflow_server, exp_id, [i for _, i in runs], "shift_ndcg_at_10"), tmp_path, "shift")
    assert "X-axis: Step" in text and " Step " in text.split("Download data", 1)[1]  # the step axis, titled
    for name in FINAL:
        assert f"{name} (shift_ndcg_at_10)" in text  # a line (legend entry) per run
    # idea-seed1: 0.1 + 0.002 at validation (step 0), 0.1 * 0.85 + 0.002 on w3 (step 3); erm-seed2 0.099 -> 0.069
    assert "idea-seed1 0.087 (step=3) 0.087 (step=3) 0.102 (step=0)" in text
    assert "erm-seed2 0.069 (step=3) 0.069 (step=3) 0.099 (step=0)" in text
    assert_real_screenshot(shot)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run does)")
@pytest.mark.timeout(300)
def test_one_seed_per_arm_chart_labels_every_arm_baseline_first(mlflow_server, store, tmp_path):
    """The report's one-seed-per-arm link: the chart's legend has an entry for every arm, the base arm's
    (erm) before the others, so the baseline is never the entry a crowded legend drops."""
    from analysis.load import load_arms, load_study
    from analysis.report import link_runs

    exp_id, runs = final_run_ids(store, F.STUDY)
    ids, one = link_runs([i for _, i in runs], load_study(store, F.STUDY), load_arms(store, F.STUDY))
    names = {i: n for n, i in runs}
    assert [names[i] for i in one] == ["erm-seed1", "idea-seed1"]
    text, shot = render(metric_url(mlflow_server, exp_id, one, "shift_ndcg_at_10"), tmp_path, "one-seed")
    entries = [text.find(f"{names[i]} (shift_ndcg_at_10)") for i in one]
    assert all(e >= 0 for e in entries) and entries == sorted(entries), entries  # every arm, baseline first
    assert_real_screenshot(shot)
