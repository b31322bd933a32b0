"""The checks a study passes before Ray, torch and MLflow are imported, so that a mistake is refused in
well under a second: the study file and flags, the study name, the study folder (in use by another
driver, already holding a study, or not matching the study a --resume continues, studies/folder.py) and
the data. Imports the standard library, yaml and the project's data and config modules (numpy, pandas),
nothing heavier."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from idea.data.interactions import Interactions
from idea.splits import Split
from studies.catalog import resolve_path
from studies.config import StudyConfig, StudyConfigError, load_study
from studies.data import study_split
from studies.folder import StudyFolder
from studies.server import shown, unreachable

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
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


def check_name(name: str) -> str:
    """Study names become folder names and MLflow filter values: letters, digits, '.', '_', '-' only."""
    if not SAFE_NAME.fullmatch(name):
        raise StudyConfigError(f"study name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
                               "starting with a letter or digit (--study-name, or the study file's name)")
    return name
