"""A study's folder as one object: its layout (every path under it is named by `StudyFolder`, nothing else
joins paths under a study folder) and its own files: study.yaml and run.json, which a resume checks against,
and the driver's lock. Standard library and yaml only, so the checks before Ray (studies/preflight.py) stay
fast."""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
from pathlib import Path
from typing import TextIO

import yaml

from idea.contract import Stage
from idea.splits import Split
from studies.config import StudyConfig, StudyConfigError, from_dict, with_implied_controls


def sqlite_damage(path: Path) -> str | None:
    """Why SQLite cannot read the database file `path` whole (opened read-only; `PRAGMA quick_check`), or None."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            problems = [row[0] for row in con.execute("PRAGMA quick_check") if row[0] != "ok"]
    except sqlite3.DatabaseError as err:
        return str(err)
    return "; ".join(problems[:3]) or None


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"



class StudyFolder:
    """A study's folder: its layout, and its own files: study.yaml (the resolved settings), run.json (how the
    study runs: tracking URI, trials' device, data digest, parent run; parsed once, on first use, and kept in
    step with what this driver writes) and the driver's lock. A resume checks against these files."""

    def __init__(self, path: Path):
        self.path = path
        self._run: dict | None = None
        self._created: Path | None = None  # the topmost folder `lock` created, to remove it if nothing else comes

    # ----- the layout: every path under the study folder is named here ---------------------------------
    @property
    def study_file(self) -> Path:
        """The resolved study settings (file + --smoke + overrides), which --resume checks against."""
        return self.path / "study.yaml"

    @property
    def run_file(self) -> Path:
        """How the study runs: tracking URI, trials' device, data digest, parent run."""
        return self.path / "run.json"

    @property
    def lock_file(self) -> Path:
        """flock'ed by the running driver; its text names the holder."""
        return self.path / ".driver.lock"

    @property
    def mlflow_db(self) -> Path:
        """The default tracking store (without --tracking-uri)."""
        return self.path / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        """The default store's artifacts (a server keeps its own)."""
        return self.path / "mlartifacts"

    @property
    def optuna_db(self) -> Path:
        """Every arm's search as an Optuna study named after the arm, for optuna-dashboard."""
        return self.path / "optuna.db"

    @property
    def optuna_uri(self) -> str:
        return sqlite_uri(self.optuna_db)

    @property
    def ray(self) -> Path:
        """Tune's experiments, one per arm and stage."""
        return self.path / "ray"

    def experiment(self, arm: str, stage: str) -> Path:
        """The Tune experiment of one arm's stage (search, final, oracle)."""
        return self.ray / f"{arm}-{stage}"

    @staticmethod
    def arm_stage(experiment: Path) -> tuple[str, str]:
        """The arm and stage of an experiment folder (the inverse of `experiment`)."""
        arm, _, stage = experiment.name.rpartition("-")
        if not arm or stage not in Stage.NESTED:
            raise ValueError(f"{experiment} is not a study stage's experiment folder (<arm>-<stage>)")
        return arm, stage

    def experiments(self) -> list[Path]:
        """The stages' experiments Tune has saved (each holds its tuner.pkl), by name."""
        return sorted(p.parent for p in self.ray.glob("*/tuner.pkl"))

    @property
    def starts(self) -> Path:
        """The base arm's trained models the fine-tuning arms start from (studies/warm_start.py)."""
        return self.path / "starts"

    def start_file(self, arm: str, which: str) -> Path:
        """One start file: the base arm's selected search trial (`which` "search") or final seed s ("seed<s>")."""
        return self.starts / f"{arm}-{which}.pt"

    @property
    def describe_file(self) -> Path:
        """The split's shift diagnostics (idea.data.describe)."""
        return self.path / "describe.json"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def final_results_csv(self) -> Path:
        return self.path / "final_results.csv"

    @property
    def summary_file(self) -> Path:
        """The console summary of a finished study, reprinted by a later --resume; written last."""
        return self.path / "summary.txt"

    @property
    def report(self) -> Path:
        """The report folder (analysis.report)."""
        return self.path / "report"

    @property
    def report_summary(self) -> Path:
        return self.report / "summary.md"

    def report_table(self, name: str) -> Path:
        """One of the report's tables (`analysis.report.TABLES`), as its CSV."""
        return self.report / f"{name}.csv"

    @property
    def scratch_key(self) -> str:
        """The study's part of its trials' temporary folder names (studies.trainable), so the driver finds them:
        the folder name and a digest of its path, as two studies may share a name."""
        return f"{self.path.name}-{hashlib.sha256(str(self.path).encode()).hexdigest()[:8]}"

    @property
    def run(self) -> dict:
        """run.json (tracking URI and device of the study's first run, and more), or an error naming it."""
        if self._run is None:
            path = self.run_file
            try:
                run = json.loads(path.read_text())
            except FileNotFoundError:
                raise StudyConfigError(f"{path} is missing: the study folder is incomplete (its first run stopped "
                                       "before Ray started?); start the study again without --resume under another "
                                       "name") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise StudyConfigError(f"{path} is damaged ({err}); it should hold the study's tracking_uri and "
                                       "device") from None
            if not isinstance(run, dict) or not {"tracking_uri", "device"} <= set(run):
                raise StudyConfigError(f"{path} lacks tracking_uri or device; it should hold both")
            self._run = run
        return self._run

    def check(self, study: StudyConfig, resume: bool, tracking_uri: str | None) -> str:
        """Check the folder before anything starts; returns the tracking URI. A resumed study must be the
        same study: its resolved settings and tracking store cannot change underneath finished trials."""
        saved = self.study_file
        if not resume:
            if self.path.exists() and any(p != self.lock_file for p in self.path.iterdir()):
                raise StudyConfigError(f"{self.path} already holds a study: continue it with --resume, "
                                       "or choose another --out or --study-name")
            return tracking_uri or sqlite_uri(self.mlflow_db)
        if not saved.is_file():
            missing = next((p for p in (self.path.parent, self.path) if not p.exists()), None)
            raise StudyConfigError(f"nothing to resume: {saved} does not exist"
                                   + (f" ({missing} does not exist: check --out and --study-name)" if missing else ""))
        try:
            before = from_dict(with_implied_controls(yaml.safe_load(saved.read_text()))).to_dict()
        except (yaml.YAMLError, ValueError, TypeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise StudyConfigError(f"{saved} is damaged ({first}): the study's resolved settings cannot be read, so "
                                   "it cannot be resumed safely; start it again under another --study-name") from None
        changed = sorted(k for k, v in study.to_dict().items() if before.get(k) != v)
        if changed:
            raise StudyConfigError(f"--resume with different study settings ({changed}) than {saved}; "
                                   "repeat the first run's flags")
        recorded = self.store_uri()
        if tracking_uri and tracking_uri != recorded:
            raise StudyConfigError(f"--resume with --tracking-uri {tracking_uri}, but the study tracks to {recorded}")
        self.check_stores()
        return recorded

    def check_stores(self) -> None:
        """Before a resume opens them: the study folder's SQLite stores read whole. Neither can be rebuilt by a
        resume (the runs are only in mlflow.db; TPE continues from the trials in optuna.db), so a damaged one
        is named with what can be done, rather than failing in MLflow or Optuna with a traceback."""
        stores = {self.optuna_db: "the arms' searches, from which the searcher continues"}
        if self.run.get("default_store"):
            stores = {self.mlflow_db: "the study's runs, metrics and tags", **stores}
        for path, holds in stores.items():
            if path.is_file() and (problem := sqlite_damage(path)):
                raise StudyConfigError(
                    f"{path} is damaged ({problem}): it holds {holds}, and --resume cannot rebuild it. Put it back "
                    "from a copy of the study folder and repeat --resume, or start the study again under another "
                    "--study-name; nothing was changed")

    def store_uri(self) -> str:
        """The study's tracking URI. The default store is the study folder's own mlflow.db wherever the folder
        now is, so a moved or copied study folder resumes into its own store, not the original's."""
        return sqlite_uri(self.mlflow_db) if self.run.get("default_store") else self.run["tracking_uri"]

    def check_data(self, split: Split) -> None:
        """A resumed study must run on the data it started on (the digest of its source files and sample, which
        run.json records): trials on changed data would mix two datasets in one study, or fail on a warm start
        of another item count and seal an arm as failed. Folders from before the digest was recorded pass."""
        recorded = self.run.get("data_sha256")
        if recorded is not None and recorded != split.data_sha256:
            raise StudyConfigError(
                f"the data changed since the study started: {split.dataset!r} now has digest "
                f"{split.data_sha256[:16]}…, the study ran on {recorded[:16]}… ({self.run_file}). Put back the "
                "data it ran on (the same --data-dir files) and repeat --resume, or start a new study under another "
                "--study-name; nothing was changed")

    def check_device(self, device: str) -> None:
        """Tune restores each trial with its original config, device included, so a switch would
        apply to new trials only and mix devices (and their timings) within one study."""
        recorded = self.run["device"]
        if device != recorded:
            raise ValueError(f"the study's trials ran on {recorded!r}, this resume would use {device!r}: "
                             f"use --gpus-per-trial {'0' if recorded == 'cpu' else '> 0'}, as in the first run")

    def write_run(self, **fields) -> None:
        """run.json updated with `fields`, written whole (a temporary file renamed over it)."""
        path = self.run_file
        run = {**(self.run if path.is_file() else {}), **fields}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(run) + "\n")
        os.replace(tmp, path)
        self._run = run

    def create(self, study: StudyConfig, tracking_uri: str, device: str, data_sha256: str) -> None:
        """The folder with the resolved settings, tracking URI, device and data digest, which --resume
        checks against; study.yaml last, whole (renamed into place): a folder holding it holds the study."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_run(tracking_uri=tracking_uri, device=device, data_sha256=data_sha256,
                       default_store=tracking_uri == sqlite_uri(self.mlflow_db))
        tmp = self.path / f".{self.study_file.name}.tmp"
        tmp.write_text(yaml.safe_dump(study.to_dict(), sort_keys=False))
        os.replace(tmp, self.study_file)

    def check_not_in_use(self) -> None:
        """Refuse a folder whose lock another driver holds, before any advice about what the folder holds (the
        lock itself is taken by `lock`, once the folder is known to be usable)."""
        path = self.lock_file
        if not path.is_file():
            return
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
            except BlockingIOError:
                raise self._in_use(handle.read()) from None

    def _in_use(self, holder: str) -> StudyConfigError:
        return StudyConfigError(f"{self.path} is in use by another driver ({holder.strip() or 'unknown'}); wait for "
                                "it to end, or choose another --out or --study-name")

    def lock(self) -> TextIO:
        """An exclusive lock on the folder, taken now, before Ray or the tracking store: a second driver on the
        same study stops, naming the holder, and touches nothing. Returns the open lock file, for `unlock`."""
        self._created = next((p for p in reversed((self.path, *self.path.parents)) if not p.exists()), None)
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise self._in_use(holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}\n")
        handle.flush()
        return handle

    def unlock(self, lock: TextIO) -> None:
        """Release `lock`. A folder that `lock` created and that holds nothing else goes with it (and the
        folders above it that `lock` created): a study refused before it wrote anything leaves nothing."""
        try:
            if self._created is not None and [p.name for p in self.path.iterdir()] == [self.lock_file.name]:
                (self.lock_file).unlink()
                for folder in (self.path, *self.path.parents):
                    folder.rmdir()  # fails if another driver has put its lock file there meanwhile: it stays
                    if folder == self._created:
                        break
        except OSError:
            pass
        finally:
            lock.close()
