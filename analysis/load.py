"""Read a study's MLflow runs once into tidy pandas frames (naming contract: docs/conventions.md).

`read_study(tracking_uri, study)` pages the study's runs once and fetches its parent run's ``study.yaml`` and
``describe.json``: a `StudyRead`, from which every frame comes without reading the store again:

- `StudyRead.results`: one row per (run, part, subset, metric, k) of the *selection* metrics:
  ``best_valid_[warm_]<m>_at_<k>`` (part ``valid``) and ``test_<window>_[warm_]<m>_at_<k>``
  (part = the window, e.g. ``w1``, or ``test`` under leave-one-out), with the run's tags
  (study, arm, stage, trial, seed) and its params typed back from MLflow's strings. Per-epoch
  ``valid_*`` metrics are left out: their latest value is the last epoch's, not the selected one.
- `StudyRead.arms`: the study's arms as the driver tagged them (display order, base arm, controls);
  `spaces`, each arm's search space; `parent_tags`, `final_run_ids`, `retrained_runs`.
- `StudyRead.shift`: shift diagnostics per part (cold-item share, JS divergence of target popularity
  against training), from the parent run's ``describe.json`` artifact.
- `StudyRead.history`: per-epoch metric history (learning curves), the one read that goes back to the
  store (a request per run and metric).

`analysis` reads MLflow only: it imports neither torch nor `idea`, bar its standard-library argument parser and
contract. Tag names, stages and the metric-key grammar come from `idea.contract`, the module `studies` writes by.

Everything goes through an ``MlflowClient`` bound to the given tracking URI (any URI MLflow
accepts: ``sqlite:///...``, ``http://host:port``, ``file:...``) rather than `mlflow.search_runs`,
which reads the process-wide tracking URI: loading a report must not re-point a running study's
logging.
"""
from __future__ import annotations

import fnmatch
import json
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.summaries import part_key
from idea.contract import SELECT_METRIC, Arms, Stage, Tag, parse_metric_key as parse_key, valid_key

__all__ = [
    "META_COLUMNS",
    "TIDY_COLUMNS",
    "HISTORY_COLUMNS",
    "SHIFT_FRAME_COLUMNS",
    "PARENT_FILES",
    "StudyNotFoundError",
    "Artifact",
    "StudyRead",
    "read_study",
    "parse_metric_key",
    "type_params",
]

META_COLUMNS = ["study", "arm", "stage", "trial", "seed", "run_id", "run_name", "status"]
TIDY_COLUMNS = ["part", "subset", "metric", "k", "value"]
HISTORY_COLUMNS = ["study", "arm", "stage", "trial", "seed", "run_id", "run_name", "key", "step", "value"]
SHIFT_FRAME_COLUMNS = ["study", "part", "events", "users", "cold_share", "popularity_js_vs_train", "start", "end"]
_INT = r"[+-]?\d+"


class StudyNotFoundError(ValueError):
    """The tracking store has no experiment named after the study."""


# ----------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------


def parse_metric_key(key: str) -> tuple[str, str, str, int] | None:
    """``(part, subset, metric, k)`` of a selection metric name, None for any other metric.

    ``best_valid_ndcg_at_10`` -> ``("valid", "all", "ndcg", 10)``;
    ``test_w2_warm_hr_at_5`` -> ``("w2", "warm", "hr", 5)``; ``valid_ndcg_at_10`` (per epoch),
    ``train_loss``, ``best_epoch`` -> None.
    """
    parsed = parse_key(key)
    if parsed is None or parsed.kind not in ("best_valid", "test"):
        return None
    return parsed.part, parsed.subset, parsed.metric, parsed.k


def _type_column(raw: pd.Series) -> pd.Series:
    """One param column from MLflow strings: all True/False -> bool, all integers -> int64, all numbers
    -> float64, else strings. ``"None"``/missing -> NaN (an int column with NaN becomes float64)."""
    s = raw.astype(object).where(raw.notna() & ~raw.isin(["None", ""]), np.nan)
    present = s.dropna().astype(str)
    if present.empty:
        return pd.Series(np.nan, index=s.index, dtype="float64")
    if present.isin(["True", "False"]).all():
        b = s.map({"True": True, "False": False})
        return b.astype(bool) if b.notna().all() else b.astype(object)
    if present.str.fullmatch(_INT).all():
        n = pd.to_numeric(s)
        return n.astype("int64") if n.notna().all() else n.astype("float64")
    try:
        return pd.to_numeric(s, errors="raise").astype("float64")
    except (ValueError, TypeError):
        return s


def type_params(params: pd.DataFrame) -> pd.DataFrame:
    """Type every column of a frame of MLflow param strings (one row per run), column by column."""
    return pd.DataFrame({c: _type_column(params[c]) for c in params.columns}, index=params.index)


def _param_order(names: Iterable[str], searched: Iterable[str]) -> list[str]:
    """The searched hyperparameters first (in the order of the search spaces), then the rest alphabetically."""
    names = list(names)
    first = [p for p in dict.fromkeys(searched) if p in names]
    return first + sorted(n for n in names if n not in first)


def _spaces(runs) -> dict[str, dict[str, dict]]:
    """{arm: search space} from the tag `searched` of the arms' search runs, arms in display order."""
    spaces: dict[str, dict[str, dict]] = {}
    for run in runs:
        try:
            space = json.loads(run.data.tags.get(Tag.SEARCHED, "{}"))
        except json.JSONDecodeError:
            continue
        arm = run.data.tags.get(Tag.ARM)
        if arm and space and isinstance(space, dict):
            spaces.setdefault(arm, space)
    return {arm: spaces[arm] for arm in _arms(runs).order if arm in spaces}


def _arms(runs) -> Arms:
    """The arms of `runs` from their role tags (`Arms.from_tags`: one run per arm, one with the tags where
    any has them, so a study resumed across the change reads by its new runs)."""
    tags: dict[str, dict] = {}
    for run in runs:
        arm = run.data.tags.get(Tag.ARM)
        if arm and (arm not in tags or Tag.ARM_RANK not in tags[arm]):
            tags[arm] = run.data.tags
    return Arms.from_tags(tags)


# ----------------------------------------------------------------------------
# MLflow access
# ----------------------------------------------------------------------------


PARENT_FILES = ("study.yaml", "describe.json")  # the parent run's artifacts a report reads


@dataclass(frozen=True)
class Artifact:
    """A top-level artifact of the parent run: its text, None when the run has none of that name or it could not
    be read (then `error` says why)."""

    text: str | None
    error: Exception | None = None

    def checked(self) -> str | None:
        """The text; the error that kept it from being read is raised here, where the file is used."""
        if self.error is not None:
            raise self.error
        return self.text


def _client(tracking_uri: str):
    """MlflowClient for the URI; a ``sqlite:///`` file that does not exist is an error here (MLflow
    would silently create an empty store)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise FileNotFoundError(f"no MLflow store at {db} (tracking URI {tracking_uri}); "
                                    "a study writes <out>/<study>/mlflow.db")
    return MlflowClient(tracking_uri)


def _every_page(search: Callable[..., list]) -> list:
    """Every item of an MLflow search (`search(page_token=...)`, a paged list): all pages."""
    items, token = [], None
    while True:
        page = search(page_token=token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def study_names(tracking_uri: str, pattern: str | None = None) -> list[str]:
    """The studies of a store (experiments holding a study run), optionally those whose names match a glob."""
    client = _client(tracking_uri)
    names = [exp.name for exp in _every_page(partial(client.search_experiments, max_results=1000))
             if client.search_runs([exp.experiment_id], f"tags.`{Tag.STAGE}` = '{Stage.STUDY}'", max_results=1)]
    return sorted(n for n in names if pattern is None or fnmatch.fnmatch(n, pattern))


def _experiment(client, tracking_uri: str, study: str):
    exp = client.get_experiment_by_name(study)
    if exp is None or exp.lifecycle_stage != "active":
        names = [e.name for e in _every_page(partial(client.search_experiments, max_results=1000))]
        raise StudyNotFoundError(
            f"no study (MLflow experiment) named {study!r} at {tracking_uri}; experiments there: {sorted(names)}"
        )
    return exp


def _download(client, run_id: str, name: str, tmp: str) -> str:
    """Text of an artifact of the run (no download progress bar)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        return Path(client.download_artifacts(run_id, name, dst_path=tmp)).read_text()
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _parent_files(client, run_id: str) -> dict[str, Artifact]:
    """`PARENT_FILES` of the parent run; an unreadable one holds its error (neither may sink the report)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            present = {a.path for a in client.list_artifacts(run_id)}
            return {name: Artifact(_download(client, run_id, name, tmp) if name in present else None)
                    for name in PARENT_FILES}
        except Exception as err:  # noqa: BLE001 (a server's artifact store down: say so where the file is used)
            return {name: Artifact(None, err) for name in PARENT_FILES}


def _parent(runs):
    """The first run tagged stage=study (a study has one), None without one."""
    return next((r for r in runs if r.data.tags.get(Tag.STAGE) == Stage.STUDY), None)


def _meta(run, study: str) -> dict:
    tags, params = run.data.tags, run.data.params
    seed = tags.get(Tag.SEED, params.get("seed"))
    return {
        "study": tags.get(Tag.STUDY, study),
        "arm": tags.get(Tag.ARM, tags.get(Tag.METHOD)),
        "stage": tags.get(Tag.STAGE),
        "trial": tags.get(Tag.TRIAL_ID, np.nan),
        "seed": seed if seed is not None else np.nan,
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
    }


def _runs_frame(runs, study: str) -> pd.DataFrame:
    """One row per run: META_COLUMNS then typed params (a param named like a tidy column is renamed
    ``param_<name>``; the ``seed`` param only stands in for a missing seed tag)."""
    meta = pd.DataFrame([_meta(r, study) for r in runs], columns=META_COLUMNS)
    raw = pd.DataFrame([r.data.params for r in runs], index=meta.index, dtype=object)
    raw = raw.drop(columns="seed", errors="ignore")
    raw = raw.rename(columns={c: f"param_{c}" for c in raw.columns if c in META_COLUMNS + TIDY_COLUMNS})
    searched = [p for space in _spaces(runs).values() for p in space]
    params = type_params(raw)[_param_order(raw.columns, searched)] if len(raw.columns) else raw
    seed = pd.to_numeric(meta["seed"], errors="coerce")
    meta["seed"] = seed.astype("int64") if seed.notna().all() else seed
    return pd.concat([meta, params], axis=1)


def _sorted(df: pd.DataFrame, extra: Sequence[str]) -> pd.DataFrame:
    keys = df.assign(
        _stage=df["stage"].map({s: i for i, s in enumerate(Stage.NESTED)}),
        _trial=df["trial"].astype(str),
        _part=df["part"].map(part_key) if "part" in df.columns else 0,
    )
    order = keys.sort_values(["_stage", "arm", "_trial", "seed", "_part", *extra], kind="stable").index
    return df.loc[order].reset_index(drop=True)


# ----------------------------------------------------------------------------
# a study, read once
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRead:
    """A study as its MLflow store holds it, read once by `read_study`: every active run of its experiment and the
    parent run's `PARENT_FILES`. Its frames come from these without reading the store again (bar `history`), so a
    report pages the runs once and its tables describe one moment of a study that may still be running."""

    tracking_uri: str
    name: str
    experiment_id: str
    runs: tuple  # mlflow.entities.Run, in MLflow's search order
    parent_files: Mapping[str, Artifact]

    @property
    def parent(self):
        """The study's parent run (tagged stage=study), None without one."""
        return _parent(self.runs)

    def nested(self, stages: Sequence[str], statuses: Sequence[str] | None = None) -> list:
        """The runs tagged with one of ``stages`` whose status is in ``statuses`` (None: any)."""
        return [r for r in self.runs
                if r.data.tags.get(Tag.STAGE) in stages and (statuses is None or r.info.status in statuses)]

    def results(self, statuses: Sequence[str] | None = ("FINISHED",)) -> pd.DataFrame:
        """The search and final runs as one tidy frame (the input of `analysis.summaries`).

        Columns: META_COLUMNS (study, arm, stage, trial, seed, run_id, run_name, status), the runs' params
        typed back (the searched ones first, in the order of the arms' spaces, then the rest alphabetically;
        "None" -> NaN, "True"/"False" -> bool), then part, subset, metric, k, value. Only runs tagged ``stage``
        search|final whose status is in ``statuses`` (None: any; the default keeps FINISHED runs, ASHA-stopped
        ones included, and drops FAILED/KILLED ones).
        """
        runs = self.nested(Stage.NESTED, statuses)
        metric_rows = [
            (r.info.run_id, *parsed, float(v))
            for r in runs
            for key, v in r.data.metrics.items()
            if (parsed := parse_metric_key(key)) is not None
        ]
        if not metric_rows:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in META_COLUMNS + TIDY_COLUMNS})
        metrics = pd.DataFrame(metric_rows, columns=["run_id", *TIDY_COLUMNS])
        metrics = metrics.astype({"k": "int64", "value": "float64"})
        out = _runs_frame(runs, self.name).merge(metrics, on="run_id", how="inner")
        return _sorted(out, ["subset", "metric", "k"])

    def spaces(self) -> dict[str, dict[str, dict]]:
        """Each arm's search space, {arm: {param: entry}}, entries as the study file writes them
        (``{"type": "float", "low": 1e-4, "high": 1e-2, "log": true}``, ``{"type": "choice", "values": [...]}``),
        from the ``searched`` tag of the arm's search runs. Arms without the tag are left out."""
        return _spaces(self.nested((Stage.SEARCH,)))

    def arms(self) -> Arms:
        """The study's arms (`idea.contract.Arms`): display order, base arm and each arm's control, from the
        tags its runs carry, so the report pairs and orders arms without knowing their names."""
        return _arms(self.nested(Stage.NESTED))

    def parent_tags(self) -> dict[str, str]:
        """Tags of the parent run: smoke, git_sha, data_sha256, ...; empty without one."""
        return dict(self.parent.data.tags) if self.parent is not None else {}

    def retrained_runs(self) -> list[tuple[str, str, str]]:
        """(run name, why, id of the run it replaces) of each run that `--retrain-damaged` trained again from
        its start, by name."""
        return sorted((r.info.run_name, r.data.tags[Tag.RETRAINED_DAMAGED], r.data.tags.get(Tag.REPLACES, ""))
                      for r in self.runs if Tag.RETRAINED_DAMAGED in r.data.tags)

    def final_run_ids(self) -> list[tuple[str, str]]:
        """[(run name, run id), ...] of the FINISHED final runs, arms in display order, then by seed."""
        runs = self.nested((Stage.FINAL,), ("FINISHED",))
        rank = {arm: i for i, arm in enumerate(_arms(runs).order)}
        runs.sort(key=lambda r: (rank.get(r.data.tags.get(Tag.ARM), len(rank)), int(r.data.tags.get(Tag.SEED, 0)),
                                 r.info.run_name))
        return [(r.info.run_name, r.info.run_id) for r in runs]

    def shift(self) -> pd.DataFrame:
        """Shift diagnostics per part (train, valid, w1..wm) of the study's split, from the parent run's
        ``describe.json`` artifact (``python -m idea.data describe --json`` output, logged by every study
        at its start).

        Columns: study, part, events, users, cold_share, popularity_js_vs_train, start, end. Never raises:
        without the artifact it returns an empty frame whose ``attrs["reason"]`` says why (``attrs["source"]``
        says where non-empty ones came from).
        """
        if self.parent is None:
            return _empty_shift("the study has no parent run (tag stage=study)")
        logged = self.parent_files["describe.json"]
        if logged.error is None and logged.text is None:
            return _empty_shift("the parent run has no describe.json artifact (every study logs it at its start; "
                                "for another store, log `python -m idea.data describe <dataset> --json` there)")
        try:
            return _shift_frame(self.name, json.loads(logged.checked()), "describe.json artifact of the parent run")
        except Exception as err:  # an unreadable or malformed artifact must not sink the report
            return _empty_shift(f"could not read the parent run's describe.json: {type(err).__name__}: {err}")

    def history(
        self,
        keys: Sequence[str] | Callable[[str], bool] = (valid_key(SELECT_METRIC), "train_loss"),
        stages: Sequence[str] = (Stage.FINAL,),
    ) -> pd.DataFrame:
        """Per-epoch history (step = epoch) of the given metric keys (or of every key a predicate accepts, such
        as `idea.contract.is_mechanism_metric`) for the runs of ``stages``, for learning curves: read from the
        store now, one request per run and key. Columns: HISTORY_COLUMNS."""
        client = _client(self.tracking_uri)
        wanted = keys if callable(keys) else set(keys).__contains__
        rows = []
        for r in self.nested(stages):
            meta = _meta(r, self.name)
            for key in sorted(k for k in r.data.metrics if wanted(k)):
                history = client.get_metric_history(r.info.run_id, key)
                rows += [{**meta, "key": key, "step": m.step, "value": m.value} for m in history]
        out = pd.DataFrame(rows, columns=META_COLUMNS + ["key", "step", "value"])
        if out.empty:
            return out[HISTORY_COLUMNS]
        out["seed"] = pd.to_numeric(out["seed"], errors="coerce")
        return _sorted(out, ["key", "step"])[HISTORY_COLUMNS]


def read_study(tracking_uri: str, study: str) -> StudyRead:
    """The study's runs (every page, once) and its parent run's `PARENT_FILES`. Raises StudyNotFoundError,
    listing the experiments present, when the store has no such study, and FileNotFoundError for a
    ``sqlite:///`` file that does not exist."""
    client = _client(tracking_uri)
    exp_id = _experiment(client, tracking_uri, study).experiment_id
    runs = tuple(_every_page(partial(client.search_runs, [exp_id], max_results=1000)))
    parent = _parent(runs)
    files = ({name: Artifact(None) for name in PARENT_FILES} if parent is None
             else _parent_files(client, parent.info.run_id))
    return StudyRead(tracking_uri, study, exp_id, runs, files)


# ----------------------------------------------------------------------------
# shift diagnostics
# ----------------------------------------------------------------------------


def _empty_shift(reason: str) -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype="object") for c in SHIFT_FRAME_COLUMNS})
    out.attrs.update(source=None, reason=reason)
    return out


def _shift_frame(study: str, desc: dict, source: str) -> pd.DataFrame:
    """`idea.data.describe.describe` output -> one row per part."""
    rows = [{"study": study, "part": p["name"], **{c: p.get(c) for c in SHIFT_FRAME_COLUMNS[2:]}} for p in desc["parts"]]
    out = pd.DataFrame(rows, columns=SHIFT_FRAME_COLUMNS)
    out[["cold_share", "popularity_js_vs_train"]] = out[["cold_share", "popularity_js_vs_train"]].astype("float64")
    out.attrs.update(source=source, reason=None, protocol=desc.get("protocol"))
    return out
