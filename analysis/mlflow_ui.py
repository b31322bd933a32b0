"""Links into the MLflow UI (3.x routes, verified against mlflow 3.17 in tests/analysis/test_mlflow_ui.py).

- compare page: ``<base>/#/compare-runs?runs=["<run id>",...]&experiments=["<experiment id>"]``:
  runs side by side (run names, params, tags; the metric rows link to the metric page);
- metric page: ``<base>/#/metric?runs=[...]&metric="<key>"&experiments=[...]&plot_metric_keys=["<key>"]``:
  one metric (e.g. ``test_w1_ndcg_at_10``) per run, latest/min/max table.
"""
from __future__ import annotations

import json
from typing import Sequence

__all__ = ["DEFAULT_UI", "ui_base_url", "ui_command", "compare_url", "metric_url"]

DEFAULT_UI = "http://127.0.0.1:5000"


def _j(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def ui_base_url(tracking_uri: str) -> str:
    """Where the UI for this store is served: the server itself for http(s) URIs, else a local `mlflow ui`."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI


def ui_command(tracking_uri: str, port: int = 5000) -> str | None:
    """Shell command that serves the UI on a local store; None when the URI is already a server."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri '{tracking_uri}' --host 127.0.0.1 --port {port}"


def compare_url(base_url: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The compare-runs page for these runs of one experiment."""
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={_j(list(run_ids))}&experiments={_j([str(experiment_id)])}"


def metric_url(base_url: str, experiment_id: str, run_ids: Sequence[str], metric: str) -> str:
    """The page of one metric across these runs (the compare page's per-metric link)."""
    return (f"{base_url.rstrip('/')}/#/metric?runs={_j(list(run_ids))}&metric={_j(metric)}"
            f"&experiments={_j([str(experiment_id)])}&plot_metric_keys={_j([metric])}")
