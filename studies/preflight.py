"""The checks a study passes before Ray, torch and MLflow are imported, so that a mistake is refused in
well under a second: the study file and flags, the study name, the study folder (in use by another
driver, already holding a study, or not matching the study a --resume continues) and the data. Also the
study folder's own files (study.yaml, run.json, the driver's lock), which the driver writes. Imports the
standard library, yaml and the project's data and config modules (numpy, pandas), nothing heavier."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from idea.data.interactions import Interactions
from idea.splits import Split
from studies.catalog import resolve_path
from studies.config import StudyConfig, StudyConfigError, from_dict, load_study
from studies.data import study_split
from studies.server import shown, unreachable

RUN_FILE = "run.json"  # how the study runs: tracking URI and trial device, which a resume must keep
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LOCK_FILE = ".driver.lock"  # flock'ed by the running driver; its text names the holder
SUMMARY_FILE = "summary.txt"  # the console summary of a finished study, reprinted by a later --resume
MIN_FREE_ENV = "IDEA_STUDY_MIN_FREE_MB"  # free space a study needs to start (default MIN_FREE_MB)
MIN_FREE_MB = 1024


@dataclass(frozen=True)
class Checked:
    """What the checks found, for the driver: the study, its name, folder and tracking URI, its data, and the
    folder's lock, which this driver now holds."""

    study: StudyConfig
    name: str
    folder: StudyFolder
    tracking_uri: str
    data: Interactions
    split: Split
    lock: TextIO  # the study folder's lock, held by this driver (`StudyFolder.unlock` releases it)


def check_study(args: argparse.Namespace) -> Checked:
    """Every check of `python studies/run_study.py` that needs no Ray, torch or MLflow, in the order a user
    meets them; raises StudyConfigError (a ValueError), DataNotFoundError or DataFormatError, each naming
    the problem and the fix. A folder in use is refused before any advice about what the folder holds, and
    the folder's lock is taken before the data is read: a second driver stops within a second or two."""
    if args.retrain_damaged and not args.resume:
        raise StudyConfigError("--retrain-damaged retrains trials of a study being resumed: add --resume")
    study = load_study(args.study, smoke=args.smoke).with_overrides(args.num_samples, args.max_epochs, args.seeds)
    stem = resolve_path(args.study).stem
    name = check_name(args.study_name or (f"{stem}-smoke" if args.smoke else stem))
    folder = StudyFolder((Path(args.out) / name).resolve())
    folder.check_not_in_use()
    tracking_uri = folder.check(study, args.resume, args.tracking_uri)
    check_tracking_server(tracking_uri)
    check_writable(folder.path)
    lock = folder.lock()
    try:
        data, split = study_split(study, args.data_dir)
        if args.resume:
            folder.check_data(split)
    except BaseException:
        folder.unlock(lock)
        raise
    return Checked(study, name, folder, tracking_uri, data, split, lock)


def check_tracking_server(tracking_uri: str) -> None:
    """A tracking store on a server (MLflow's, or a database's) answers now: else the study is refused here,
    naming it, rather than after Ray started and MLflow's client spent minutes retrying."""
    problem = unreachable(tracking_uri)
    if problem is not None:
        raise StudyConfigError(f"the tracking server {shown(tracking_uri)} cannot be reached ({problem}): start it, or "
                               "check the URI and the network, then run the same command again; nothing was written")


def check_writable(study_dir: Path) -> None:
    """The study folder (or, before it exists, the nearest folder above it) takes files and its disk has
    MIN_FREE_MB free: a read-only, full or misplaced --out is refused here, not by an OSError mid-study."""
    base = study_dir
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise StudyConfigError(f"{base} is a file, so the study folder {study_dir} cannot be created there: "
                               "choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise StudyConfigError(f"{base} is not writable ({err.strerror}), and the study writes {study_dir}: make it "
                               "writable (or mount it read-write) or choose another --out") from None
    minimum = float(os.environ.get(MIN_FREE_ENV, MIN_FREE_MB))
    free = shutil.disk_usage(base).free / 2**20
    if free < minimum:
        raise StudyConfigError(f"only {free:,.0f} MiB free on the disk of {base}; a study needs at least {minimum:,.0f} "
                               f"MiB (${MIN_FREE_ENV}) for its checkpoints and store: free space there, or choose "
                               "another --out")


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


def check_name(name: str) -> str:
    """Study names become folder names and MLflow filter values: letters, digits, '.', '_', '-' only."""
    if not SAFE_NAME.fullmatch(name):
        raise StudyConfigError(f"study name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
                               "starting with a letter or digit (--study-name, or the study file's name)")
    return name


class StudyFolder:
    """A study's folder and its own files: study.yaml (the resolved settings), run.json (how the study
    runs: tracking URI, trials' device, data digest, parent run; parsed once, on first use, and kept in
    step with what this driver writes) and the driver's lock. A resume checks against these files."""

    def __init__(self, path: Path):
        self.path = path
        self._run: dict | None = None
        self._created: Path | None = None  # the topmost folder `lock` created, to remove it if nothing else comes

    @property
    def run(self) -> dict:
        """run.json (tracking URI and device of the study's first run, and more), or an error naming it."""
        if self._run is None:
            path = self.path / RUN_FILE
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
        saved = self.path / "study.yaml"
        if not resume:
            if self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
                raise StudyConfigError(f"{self.path} already holds a study: continue it with --resume, "
                                       "or choose another --out or --study-name")
            return tracking_uri or sqlite_uri(self.path / "mlflow.db")
        if not saved.is_file():
            missing = next((p for p in (self.path.parent, self.path) if not p.exists()), None)
            raise StudyConfigError(f"nothing to resume: {saved} does not exist"
                                   + (f" ({missing} does not exist: check --out and --study-name)" if missing else ""))
        try:
            before = from_dict(yaml.safe_load(saved.read_text())).to_dict()
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
        stores = {"optuna.db": "the arms' searches, from which the searcher continues"}
        if self.run.get("default_store"):
            stores = {"mlflow.db": "the study's runs, metrics and tags", **stores}
        for name, holds in stores.items():
            path = self.path / name
            if path.is_file() and (problem := sqlite_damage(path)):
                raise StudyConfigError(
                    f"{path} is damaged ({problem}): it holds {holds}, and --resume cannot rebuild it. Put it back "
                    "from a copy of the study folder and repeat --resume, or start the study again under another "
                    "--study-name; nothing was changed")

    def store_uri(self) -> str:
        """The study's tracking URI. The default store is the study folder's own mlflow.db wherever the folder
        now is, so a moved or copied study folder resumes into its own store, not the original's."""
        return sqlite_uri(self.path / "mlflow.db") if self.run.get("default_store") else self.run["tracking_uri"]

    def check_data(self, split: Split) -> None:
        """A resumed study must run on the data it started on (the digest of its source files and sample, which
        run.json records): trials on changed data would mix two datasets in one study, or fail on a warm start
        of another item count and seal an arm as failed. Folders from before the digest was recorded pass."""
        recorded = self.run.get("data_sha256")
        if recorded is not None and recorded != split.data_sha256:
            raise StudyConfigError(
                f"the data changed since the study started: {split.dataset!r} now has digest "
                f"{split.data_sha256[:16]}…, the study ran on {recorded[:16]}… ({self.path / RUN_FILE}). Put back the "
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
        path = self.path / RUN_FILE
        run = {**(self.run if path.is_file() else {}), **fields}
        tmp = path.with_name(f".{RUN_FILE}.tmp")
        tmp.write_text(json.dumps(run) + "\n")
        os.replace(tmp, path)
        self._run = run

    def create(self, study: StudyConfig, tracking_uri: str, device: str, data_sha256: str) -> None:
        """The folder with the resolved settings, tracking URI, device and data digest, which --resume
        checks against; study.yaml last, whole (renamed into place): a folder holding it holds the study."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_run(tracking_uri=tracking_uri, device=device, data_sha256=data_sha256,
                       default_store=tracking_uri == sqlite_uri(self.path / "mlflow.db"))
        tmp = self.path / ".study.yaml.tmp"
        tmp.write_text(yaml.safe_dump(study.to_dict(), sort_keys=False))
        os.replace(tmp, self.path / "study.yaml")

    def check_not_in_use(self) -> None:
        """Refuse a folder whose lock another driver holds, before any advice about what the folder holds (the
        lock itself is taken by `lock`, once the folder is known to be usable)."""
        path = self.path / LOCK_FILE
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
        handle = open(self.path / LOCK_FILE, "a+")
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
            if self._created is not None and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
                (self.path / LOCK_FILE).unlink()
                for folder in (self.path, *self.path.parents):
                    folder.rmdir()  # fails if another driver has put its lock file there meanwhile: it stays
                    if folder == self._created:
                        break
        except OSError:
            pass
        finally:
            lock.close()
