"""`python studies/run_study.py <dataset>`: tune IDEA and its ERM control with Ray Tune + Optuna on
train/validation, retrain each arm's best configuration with several seeds, evaluate those on the
test windows, and track everything in MLflow. See studies/README.md."""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the `studies` package, never its files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Keeping one checkpoint per trial makes Tune snapshot its state at every checkpoint, which is what a
# resume wants; Tune warns about that frequency, so its warning is silenced rather than the snapshots.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402

import pandas as pd  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402

from idea.data import DataFormatError, DataNotFoundError  # noqa: E402
from idea.data.describe import describe  # noqa: E402
from idea.data.interactions import Interactions  # noqa: E402
from idea.splits import Split  # noqa: E402
from studies.config import (StudyConfig, StudyConfigError, from_dict, load_study, resolve_path,  # noqa: E402
                            shipped_studies)
from studies.data import study_split, without_tests  # noqa: E402
from studies.final import final_results, run_final  # noqa: E402
from studies.search import Resources, Selection, run_search, select_best  # noqa: E402
from studies.warm_start import save_starts  # noqa: E402
from studies.tracking import (StudyExistsError, StudyRun, git_sha, open_study, sqlite_uri,  # noqa: E402
                              trials_frame)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INTERRUPTED_EXIT = 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python studies/run_study.py", description=__doc__)
    p.add_argument("study", help=f"a shipped study (studies/configs/<name>.yaml: {', '.join(shipped_studies())}) "
                                 "or the path of a study YAML file")
    p.add_argument("--num-samples", type=int, help="search trials per arm (default: the study file's)")
    p.add_argument("--max-epochs", type=int, help="cap on every arm's epochs per trial (default: the study file's)")
    p.add_argument("--seeds", type=int, help="final retraining seeds per arm (default: the study file's, 3)")
    p.add_argument("--time-budget-s", type=float, help="wall-clock limit of each arm's search, in seconds")
    p.add_argument("--concurrency", type=int,
                   help="trials in flight at once (default: what the cluster fits, at most 4, so TPE keeps learning)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractions share a GPU (default: the cluster's GPUs split over --concurrency, "
                        "else 0 = CPU)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashing trial before it is FAILED")
    p.add_argument("--out", default="outputs", help="output root; the study lives in <out>/<study name>/")
    p.add_argument("--study-name", help="default: the study file's name, e.g. beauty, or beauty-smoke with --smoke")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<out>/<study>/mlflow.db)")
    p.add_argument("--address", help="join an existing Ray cluster (host:port of its head) instead of a local one")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study (same flags as its first run)")
    p.add_argument("--smoke", action="store_true", help="the study file's tiny variant: few trials, epochs, seeds, users")
    p.add_argument("--data-dir", help="data folder (default: $IDEA_DATA_DIR, else ./data)")
    return p.parse_args(argv)


# ----- the study folder -------------------------------------------------------------------------------

RUN_FILE = "run.json"  # how the study runs: tracking URI and trial device, which a resume must keep


def check_dir(study_dir: Path, study: StudyConfig, resume: bool, tracking_uri: str | None) -> str:
    """Check the study folder before anything starts; returns the tracking URI. A resumed study must be
    the same study: its resolved settings and tracking store cannot change underneath finished trials."""
    saved = study_dir / "study.yaml"
    if not resume:
        if study_dir.exists() and any(study_dir.iterdir()):
            raise StudyConfigError(f"{study_dir} already holds a study: continue it with --resume, "
                                   "or choose another --out or --study-name")
        return tracking_uri or sqlite_uri(study_dir / "mlflow.db")
    if not saved.is_file():
        raise StudyConfigError(f"nothing to resume: {saved} does not exist")
    before = from_dict(yaml.safe_load(saved.read_text())).to_dict()
    changed = sorted(k for k, v in study.to_dict().items() if before.get(k) != v)
    if changed:
        raise StudyConfigError(f"--resume with different study settings ({changed}) than {saved}; "
                               "repeat the first run's flags")
    recorded = json.loads((study_dir / RUN_FILE).read_text())["tracking_uri"]
    if tracking_uri and tracking_uri != recorded:
        raise StudyConfigError(f"--resume with --tracking-uri {tracking_uri}, but the study tracks to {recorded}")
    return recorded


def check_device(study_dir: Path, device: str) -> None:
    """Tune restores each trial with its original config, device included, so a switch would
    apply to new trials only and mix devices (and their timings) within one study."""
    recorded = json.loads((study_dir / RUN_FILE).read_text())["device"]
    if device != recorded:
        raise ValueError(f"the study's trials ran on {recorded!r}, this resume would use {device!r}: "
                         f"use --gpus-per-trial {'0' if recorded == 'cpu' else '> 0'}, as in the first run")


def create_dir(study_dir: Path, study: StudyConfig, tracking_uri: str, device: str) -> None:
    """The study folder with the resolved settings, tracking URI and device, which --resume checks against."""
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study.yaml").write_text(yaml.safe_dump(study.to_dict(), sort_keys=False))
    (study_dir / RUN_FILE).write_text(json.dumps({"tracking_uri": tracking_uri, "device": device}) + "\n")


def init_ray(address: str | None) -> None:
    """A private local Ray instance ("local": never silently attach to a cluster found on this machine),
    or the cluster at `address`."""
    if not address:
        ray.init(address="local", include_dashboard=False)
        return
    try:
        ray.init(address=address)
    except ConnectionError as err:
        raise ConnectionError(
            f"{err}\nIf the cluster uses token authentication (Ray >= 2.52; `ray start` turns it on when a token "
            "exists), set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or "
            "~/.ray/auth_token) for this command too; see studies/README.md") from None


def pick_resources(args: argparse.Namespace) -> Resources:
    """Defaults fitted to the cluster: concurrency = trials that fit (at most 4), GPUs split between them."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 1), total.get("GPU", 0)
    concurrency = args.concurrency or max(1, min(4, int(cpus // args.cpus_per_trial)))
    gpus_per_trial = args.gpus_per_trial
    if gpus_per_trial is None:
        gpus_per_trial = min(1.0, gpus / concurrency) if gpus else 0.0
    return Resources(args.cpus_per_trial, gpus_per_trial, concurrency, args.max_failures, args.time_budget_s)


# ----- reporting ------------------------------------------------------------------------------------

def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def summary_table(selections: dict[str, Selection | None], trials: pd.DataFrame, results: pd.DataFrame,
                  metric: str = "ndcg", k: int = 10) -> str:
    """Per arm: trials run, best validation NDCG@10 and its configuration, and test NDCG@10 per window
    (all targets) as mean ± std over the final seeds."""
    rows = []
    for arm, sel in selections.items():
        arm_trials = trials[trials["arm"] == arm] if len(trials) else trials
        row = {"arm": arm, "trials": f"{int((arm_trials['status'] == 'FINISHED').sum())} ok / "
                                      f"{int((arm_trials['status'] == 'FAILED').sum())} failed" if len(arm_trials) else "0",
               f"best valid {metric.upper()}@{k}": f"{sel.value:.4f}" if sel else "-",
               "configuration": fmt_params(sel.params) if sel else "no successful trial"}
        tests = results[(results["arm"] == arm) & (results["part"] != "valid") & (results["subset"] == "all")
                        & (results["metric"] == metric) & (results["k"] == k)]
        for part, values in tests.groupby("part", sort=False)["value"]:
            std = f"{values.std():.4f}" if len(values) > 1 else "-"
            row[f"{part} (n={len(values)})"] = f"{values.mean():.4f} ± {std}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-").to_string(index=False)


def ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    return f"open {tracking_uri} (MLflow tracking server)"


def log_inputs(study_dir: Path, study_run: StudyRun, data: Interactions, split: Split) -> None:
    """At the start, on the parent run: the resolved study.yaml and describe.json (the split's shift
    diagnostics, `idea.data.describe`), so even an interrupted study says what it ran on."""
    (study_dir / "describe.json").write_text(json.dumps(describe(data, split), indent=1) + "\n")
    for name in ("study.yaml", "describe.json"):
        study_run.client().log_artifact(study_run.parent_run_id, str(study_dir / name))


def write_results(study_dir: Path, study_run: StudyRun, trials: pd.DataFrame, results: pd.DataFrame) -> None:
    """trials.csv and final_results.csv, in the study folder and on the parent run."""
    trials.to_csv(study_dir / "trials.csv", index=False)
    results.to_csv(study_dir / "final_results.csv", index=False)
    for name in ("trials.csv", "final_results.csv"):
        study_run.client().log_artifact(study_run.parent_run_id, str(study_dir / name))


# ----- the study ------------------------------------------------------------------------------------

def run(study: StudyConfig, name: str, split: Split, resources: Resources, study_dir: Path, study_run: StudyRun,
        resume: bool) -> tuple[dict[str, Selection | None], pd.DataFrame, pd.DataFrame]:
    """Per arm (ERM first when the others fine-tune its models): search, select on validation, retrain
    the selection with the final seeds and test it; returns selections, trials and results."""
    ray_dir = study_dir / "ray"
    search_split = without_tests(split)
    selections, frames, starts = {}, [], None
    order = study.arm_order()
    for i, arm in enumerate(order, start=1):
        warm = study.warm(arm)
        print(f"\n== arm {i}/{len(order)}: {arm}" + (" (fine-tunes the trained ERM models)" if warm else ""),
              file=sys.stderr, flush=True)
        if warm and starts is None:
            raise RuntimeError(f"{arm} fine-tunes the erm arm's models, but every erm trial failed")
        grid = run_search(study, arm, search_split, resources, ray_dir, study_run, resume,
                          starts.search if warm else None)
        selections[arm] = selection = select_best(arm, grid, study.metric)
        if selection is None:
            print(f"warning: every {arm} trial failed; no final runs for this arm", file=sys.stderr)
            continue
        grid = run_final(study, selection, split, resources, ray_dir, study_run, resume,
                         starts.seeds if warm else None)
        frames.append(final_results(name, arm, grid, study_run))
        if arm == "erm" and any(study.warm(a) for a in order):
            starts = save_starts(study_dir, selection, grid, study_run)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return selections, trials_frame(study_run), results


def track(study: StudyConfig, name: str, split: Split, resources: Resources, study_dir: Path, study_run: StudyRun,
          resume: bool) -> tuple[dict[str, Selection | None], pd.DataFrame, pd.DataFrame] | None:
    """`run` with the store kept consistent: on Ctrl-C open runs end KILLED (None is returned), on an
    error FAILED; on success the artifacts are logged and the parent run ends FINISHED."""
    try:
        outcome = run(study, name, split, resources, study_dir, study_run, resume)
        write_results(study_dir, study_run, *outcome[1:])
    except KeyboardInterrupt:
        closed = study_run.close_open_runs("KILLED")
        resume_cmd = shlex.join([sys.executable, *sys.argv] + ([] if resume else ["--resume"]))
        print(f"\ninterrupted: the study run and {closed} open trial run(s) marked KILLED; Tune saved its state. "
              f"Resume with:\n  {resume_cmd}", file=sys.stderr)
        return None
    except BaseException:
        study_run.close_open_runs("FAILED")
        raise
    study_run.client().set_terminated(study_run.parent_run_id, "FINISHED")
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # everything that can be checked before Ray starts
        study = load_study(args.study, smoke=args.smoke).with_overrides(args.num_samples, args.max_epochs, args.seeds)
        stem = resolve_path(args.study).stem
        name = args.study_name or (f"{stem}-smoke" if args.smoke else stem)
        study_dir = (Path(args.out) / name).resolve()
        tracking_uri = check_dir(study_dir, study, args.resume, args.tracking_uri)
        data, split = study_split(study, args.data_dir)
    except (ValueError, DataNotFoundError, DataFormatError) as err:  # StudyConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"study {name}: {split.dataset} ({split.protocol}), {len(split.train):,} training events, "
          f"{len(split.valid):,} validation, tests {', '.join(f'{k}={len(v):,}' for k, v in split.tests.items())}; "
          f"folder {study_dir}", file=sys.stderr)
    try:
        try:  # a cluster, flag or tracking-store problem
            init_ray(args.address)
            resources = pick_resources(args)
            print(f"trials: {resources.concurrency} at a time, {resources.cpus_per_trial:g} CPU and "
                  f"{resources.gpus_per_trial:g} GPU each (device {resources.device})", file=sys.stderr)
            if args.resume:
                check_device(study_dir, resources.device)
            else:
                create_dir(study_dir, study, tracking_uri, resources.device)
            tags = {"study": name, "dataset": study.dataset, "backbone": study.backbone,
                    "git_sha": git_sha(PROJECT_ROOT), "data_sha256": split.data_sha256,
                    "ray_cluster": ray.get_runtime_context().gcs_address}
            default_store = tracking_uri == sqlite_uri(study_dir / "mlflow.db")
            artifacts = study_dir / "mlartifacts" if default_store else None  # a server keeps its own artifacts
            study_run = open_study(tracking_uri, name, tags, artifacts, resume=args.resume)
            log_inputs(study_dir, study_run, data, split)
        except (ConnectionError, ValueError, StudyExistsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        outcome = track(study, name, split, resources, study_dir, study_run, args.resume)
    finally:
        ray.shutdown()
    if outcome is None:
        return INTERRUPTED_EXIT

    selections, trials, results = outcome
    print(f"\nStudy {name} (selection on validation {study.metric}; test metrics of the selected configurations "
          f"retrained with seeds {study.final_seeds()}):")
    print(summary_table(selections, trials, results))
    print(f"\nMLflow: experiment {name!r}; open the UI with\n  {ui_hint(tracking_uri)}")
    try:
        from analysis.report import write_report
    except ImportError:
        return 0
    print(f"report: {write_report(tracking_uri, name, study_dir / 'report')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
