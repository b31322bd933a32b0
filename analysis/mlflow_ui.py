"""Links into the MLflow UI (3.x routes, verified against mlflow 3.17 in tests/analysis/test_mlflow_ui.py), and the
chart view the report's link opens.

- runs page: ``<base>/#/experiments/<experiment id>/runs``: the experiment's training runs (MLflow 3 opens an
  experiment on its GenAI overview otherwise);
- compare page: ``<base>/#/compare-runs?runs=["<run id>",...]&experiments=["<experiment id>"]``:
  runs side by side (run names, params, tags);
- chart view: ``<base>/#/experiments/<experiment id>/runs?compareRunsMode=CHART&viewStateShareKey=<key>``: the runs
  page's charts in the state that the experiment tag ``mlflow.sharedViewState.<key>`` holds, which is how MLflow
  shares a view (`share_view`; its UI applies the state only when the link carries no search of its own).
  `chart_view` is such a state: the final runs listed flat by name, a list that is the charts' legend (each run
  with its colour), every run drawn (MLflow draws the first 10 otherwise), a metric against its step and a bar
  chart per part. MLflow draws a run in the colour of its tag ``mlflow.runColor`` (`RUN_COLOR_TAG`, read by the
  UI's run-colour store), else in one hashed from the run id, which two runs may share; a study sets its final
  runs' tag to their arm's colour in the report's figures (`arm_colours`). MLflow's older metric page
  (``#/metric?runs=...``) uses the hashed colours only, and its legend drops the entries that do not fit.
"""
from __future__ import annotations

import json
import shlex
from typing import Sequence

from analysis.plots import arm_style
from idea.contract import Arms, Stage, Tag

__all__ = ["UI_PORT", "RUN_COLOR_TAG", "VIEW_TAG", "arm_colours", "is_server", "ui_base_url", "ui_command",
           "runs_url", "compare_url", "view_url", "chart_view", "share_view"]

UI_PORT = 5001  # the port of the `mlflow ui` command a study prints: MLflow's default, 5000, is often taken
RUN_COLOR_TAG = "mlflow.runColor"
VIEW_TAG = "mlflow.sharedViewState."  # + the key of a shared view of the runs page
BY_RUN_NAME = "tags.`mlflow.runName`"  # a sort other than by start time lists nested runs flat, not under their parent


def _j(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def arm_colours(arms: Arms) -> dict[str, str]:
    """Each arm's colour in the report's figures (`analysis.plots.arm_style`), for its runs' `RUN_COLOR_TAG`."""
    return {arm: arm_style(arm, arms)["color"] for arm in arms.order}


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_base_url(tracking_uri: str, ui_url: str | None = None) -> str:
    """Where the UI for this store is: `ui_url` when given, the server itself for http(s) URIs, else the local
    `mlflow ui` a study's printed command serves (port `UI_PORT`)."""
    if ui_url:
        return ui_url.rstrip("/")
    return tracking_uri.rstrip("/") if is_server(tracking_uri) else f"http://127.0.0.1:{UI_PORT}"


def ui_command(tracking_uri: str, port: int | str = UI_PORT) -> str | None:
    """Shell command that serves the UI on a local store, the URI shell-quoted (a path may hold spaces);
    None when the URI is already a server."""
    if is_server(tracking_uri):
        return None
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port {port}"


def runs_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def compare_url(base_url: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The compare-runs page for these runs of one experiment."""
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={_j(list(run_ids))}&experiments={_j([str(experiment_id)])}"


def view_url(base_url: str, experiment_id: str, key: str) -> str:
    """The runs page's chart view in the shared view `key` (`share_view`)."""
    return f"{runs_url(base_url, experiment_id)}?compareRunsMode=CHART&viewStateShareKey={key}"


def chart_view(title: str, line_key: str, bar_keys: Sequence[str]) -> dict:
    """A runs-page state of MLflow 3.17 (the fields its saved views hold) showing the final runs: one section
    `title`, two charts a row, `line_key` against its step, then a bar chart of each of `bar_keys`."""
    section = "final-runs"

    def card(i: int, kind: str, key: str, **fields) -> dict:
        return {"uuid": f"{section}-{i}", "type": kind, "metricSectionId": section, "metricKey": key,
                "runsCountToCompare": 1000, "isGenerated": False, "deleted": False, **fields}

    line = card(0, "LINE", line_key, selectedMetricKeys=[line_key], xAxisKey="step", selectedXAxisMetricKey="",
                lineSmoothness=0, xAxisScaleType="linear", scaleType="linear", range={}, displayPoints=True,
                yAxisKey="METRIC", yAxisExpressions=[], ignoreOutliers=False, useGlobalXaxisKey=False,
                useGlobalLineSmoothing=False)
    return {"searchFilter": f"tags.{Tag.STAGE} = '{Stage.FINAL}'", "orderByKey": BY_RUN_NAME, "orderByAsc": True,
            "runsHiddenMode": "SHOW_ALL", "compareRunCharts": [line, *(card(i, "BAR", key) for i, key in
                                                                       enumerate(bar_keys, 1))],
            "compareRunSections": [{"uuid": section, "name": title, "display": True, "isReordered": True,
                                    "deleted": False, "isGenerated": False, "columns": 2, "cardHeight": 430}],
            "isAccordionReordered": True, "hideEmptyCharts": True,
            "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}


def share_view(tracking_uri: str, experiment_id: str, key: str, state: dict) -> None:
    """Store `state` as the experiment's shared view `key`, which `view_url` opens (rewritten each time)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_experiment_tag(experiment_id, VIEW_TAG + key, _j(state))
