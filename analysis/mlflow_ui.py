"""Links into the MLflow UI (3.x routes, verified against mlflow 3.17 in tests/analysis/test_mlflow_ui.py).

- runs page: ``<base>/#/experiments/<experiment id>/runs``: the experiment's training runs (MLflow 3 opens an
  experiment on its GenAI overview otherwise);
- compare page: ``<base>/#/compare-runs?runs=["<run id>",...]&experiments=["<experiment id>"]``:
  runs side by side (run names, params, tags; the metric rows link to the metric page);
- metric page: ``<base>/#/metric?runs=[...]&metric="<key>"&experiments=[...]&plot_metric_keys=["<key>"]&x_axis=step&show_point=true``:
  one metric per run, drawn against its step; for the stepped series ``shift_<m>_at_<k>`` (step 0 = validation,
  step i = window wi) that is the metric against the window, one line per run.
"""
from __future__ import annotations

import json
import shlex
from typing import Sequence

__all__ = ["PORT", "UI_PORT", "is_server", "ui_base_url", "ui_command", "runs_url", "compare_url", "metric_url"]

PORT = "PORT"  # placeholder for the port a local `mlflow ui` is served on (any free port)
UI_PORT = 5001  # the port of the `mlflow ui` command a study prints: MLflow's default, 5000, is often taken


def _j(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_base_url(tracking_uri: str, ui_url: str | None = None) -> str:
    """Where the UI for this store is: `ui_url` when given, the server itself for http(s) URIs, else a local
    `mlflow ui` on the placeholder port (`ui_command`)."""
    if ui_url:
        return ui_url.rstrip("/")
    return tracking_uri.rstrip("/") if is_server(tracking_uri) else f"http://127.0.0.1:{PORT}"


def ui_command(tracking_uri: str, port: int | str = PORT) -> str | None:
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


def metric_url(base_url: str, experiment_id: str, run_ids: Sequence[str], metric: str) -> str:
    """The page of one metric across these runs, against its step (the compare page's per-metric link)."""
    return (f"{base_url.rstrip('/')}/#/metric?runs={_j(list(run_ids))}&metric={_j(metric)}"
            f"&experiments={_j([str(experiment_id)])}&plot_metric_keys={_j([metric])}&x_axis=step&show_point=true")
