"""The flags of `python studies/run_study.py` (also the `idea-study` console script). Parsing needs
only the standard library, so --help answers at once; studies/preflight.py then refuses what it can
without Ray, torch or MLflow, and the study itself is studies/driver.py."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from idea.argparsing import StrictArgumentParser
from studies.catalog import shipped_studies

if TYPE_CHECKING:
    from studies.preflight import Checked

DESCRIPTION = ("Train the ERM backbone, fine-tune it with IDEA and with the plain loss (erm_ft) under Ray Tune + "
               "Optuna on train/validation, retrain each arm's best configuration with several seeds, evaluate "
               "those on the test windows, and track everything in MLflow. See studies/README.md.")


def _number(kind: type, low: float, strict: bool):
    """An argparse type: `kind` (int or float) that is > low (strict) or >= low, so a resource flag out of
    range stops the command at once, before any import, data or Ray start."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


def _gpus(text: str) -> float:
    """--gpus-per-trial: >= 0, and whole above 1 (Ray grants one trial a share of one GPU, or whole GPUs)."""
    value = _number(float, 0, strict=False)(text)
    if value > 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"above 1 must be a whole number, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = StrictArgumentParser(prog="python studies/run_study.py", description=DESCRIPTION)
    p.add_argument("study", help=f"a shipped study (studies/configs/<name>.yaml: {', '.join(shipped_studies())}) "
                                 "or the path of a study YAML file")
    p.add_argument("--num-samples", type=int, help="search trials per arm (default: the study file's)")
    p.add_argument("--max-epochs", type=int, help="cap on every arm's epochs per trial (default: the study file's)")
    p.add_argument("--seeds", type=int, help="final retraining seeds per arm (default: the study file's, 3)")
    p.add_argument("--time-budget-s", type=_number(float, 0, strict=True), help="wall-clock limit of each arm's search, in seconds")
    p.add_argument("--concurrency", type=_number(int, 1, strict=False),
                   help="trials in flight at once (default: what the cluster fits, at most 4, so TPE keeps learning)")
    p.add_argument("--cpus-per-trial", type=_number(float, 0, strict=True), default=1.0, help="CPUs reserved per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=_gpus,
                   help="GPUs per trial, fractions share a GPU (default: the cluster's GPUs split over --concurrency, "
                        "else 0 = CPU)")
    p.add_argument("--max-failures", type=_number(int, 0, strict=False), default=2, help="retries of a crashing trial before it is FAILED")
    p.add_argument("--out", default="outputs", help="output root; the study lives in <out>/<study name>/")
    p.add_argument("--study-name", help="default: the study file's name, e.g. beauty, or beauty-smoke with --smoke")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<out>/<study>/mlflow.db)")
    p.add_argument("--address", help="join an existing Ray cluster (host:port of its head) instead of a local one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study (same flags as its first run)")
    p.add_argument("--retrain-damaged", action="store_true",
                   help="with --resume: train each trial whose checkpoint is damaged again from its start (its MLflow "
                        "run is replaced, and the report says so) instead of refusing to resume")
    p.add_argument("--smoke", action="store_true", help="the study file's tiny variant: few trials, epochs, seeds, users")
    p.add_argument("--data-dir", help="data folder (default: $IDEA_DATA_DIR, else ./data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from idea.data import DataFormatError, DataNotFoundError  # numpy and pandas: after --help
    from studies.preflight import check_study

    try:  # refusals that need no Ray, torch or MLflow come in well under a second
        checked = check_study(args)  # takes the study folder's lock, before the data, Ray and the store
    except (ValueError, DataNotFoundError, DataFormatError) as err:  # StudyConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return run_driver(args, checked)
    finally:
        checked.folder.unlock(checked.lock)


def run_driver(args: argparse.Namespace, checked: Checked) -> int:
    """The study (studies/driver.py), once this driver holds the study folder's lock."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Keeping one checkpoint per trial makes Tune snapshot its state at every checkpoint, which is what a
    # resume wants; Tune warns about that frequency, so its warning is silenced rather than the snapshots.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The console is the study's own (studies/progress.py): no Tune boxes per stage, and no TensorBoard
    # files or hint (MLflow has every metric; Tune's JSON and CSV logs are kept, see Resources.run_config).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # nor MLflow's tqdm bar per artifact download (the report reads study.yaml and describe.json back)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # nor, with a tracking server, MLflow's two "View run ... at: <url>" lines on stdout at every run's end
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from studies.driver import run_cli  # Ray, MLflow, torch: imported once the study passed those checks

    return run_cli(args, checked)
