"""The study driver behind `python studies/run_study.py` (see studies/cli.py for the flags): once
studies/preflight.py has checked what it can without Ray, torch or MLflow, check the rest, start Ray,
run the arms (studies/search.py, studies/final.py), track them in MLflow and write the report. See
studies/README.md."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import optuna
import pandas as pd
import ray

from analysis.atomic import atomic_path, write_text
from analysis.mlflow_ui import UI_PORT, ui_command
from idea.data.describe import describe
from idea.contract import SELECTION, VALID, Tag
from idea.data.interactions import Interactions
from idea.splits import Split
from studies.experiments import Resources, TuneStateError, check_checkpoints, check_state, renamed_temp_copy
from studies.retrain import retrain_damaged
from studies.faults import ENVIRONMENT_EXIT, LOCKED, Fault, diagnose
from studies.final import final_results, run_final
from studies.finish import unwritten, write_outputs
from studies.folder import StudyFolder
from studies.interrupts import interrupted_by, stop_on_signals
from studies.oracle import run_oracle
from studies.plan import Selection, StageContext, first_point
from studies.preflight import Checked
from studies.progress import begin, study_plan
from studies.ray_groups import own_process_groups
from studies.search import run_search, select_best
from studies.trainable import failed, remove_scratch
from studies.tracking import (StudyExistsError, StudyRun, StudyStoreError, git_sha, is_finished, open_study,
                              relocate_artifacts, trials_frame)
from studies.warm_start import save_starts

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NO_RESULT_EXIT = 3  # the study ran to its end, but some arm has no result (time budget, every trial failed)
INTERRUPTED_EXIT = {"SIGINT": 130, "SIGHUP": 129, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it


def quiet_logs() -> None:
    """The console keeps the study's own lines: Ray's note per stage that it wrote its state and its note
    that it started, Optuna's per new searcher and MLflow's on creating a new store's tables are left out,
    and so is Tune's note on which state file a resumed stage restores (the stage's own resume line says
    what it restored), and its note on trials the time budget stopped before a first result (the study
    records them as budget-stopped)."""
    logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)
    # On Ctrl-C Tune advises `Tuner.restore(...)`; the study prints its own `--resume` line instead.
    logging.getLogger("ray.tune.tune").addFilter(lambda r: not r.getMessage().startswith("Experiment has been interrupted"))
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.WARNING)
    # a trial's traceback for a full disk or read-only folder: the study stops with its own message instead
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(
        lambda r: not (r.exc_info and diagnose(r.exc_info[1])))
    # Tune's traceback for an upload of a stage's state that raced the next save; the next upload repairs it
    for name in ("ray.tune.execution.experiment_state", "ray.train._internal.syncer"):
        logging.getLogger(name).addFilter(lambda r: not renamed_temp_copy(r))
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # MLflow logs a traceback per write that met a locked store; the writes are retried (studies.faults)
    logging.getLogger("mlflow.store.db.utils").addFilter(lambda r: LOCKED not in r.getMessage())
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database ..."
    logging.getLogger("ray._private.worker").setLevel(logging.WARNING)  # "Started a local Ray instance."
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def init_ray(address: str | None) -> None:
    """A private local Ray instance ("local": never silently attach to a cluster found on this machine),
    or the cluster at `address`, with the console kept to the study's own lines (`quiet_logs`; for a local
    instance, which only this driver uses, also without the token-authentication notice). Trial workers'
    own output is not forwarded (`log_to_driver=False`): the study's callbacks say what each trial does, a
    failed trial's traceback is in its error.txt, and the rest stays in Ray's session logs; without this,
    normal shutdown printed the workers' SIGTERM tracebacks and each restored trial Tune's checkpoint line.
    A local instance's processes lead process groups of their own (`studies.ray_groups`): a signal to the
    driver's group reaches the driver alone, which stops the study gracefully."""
    quiet_logs()
    if not address:
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with own_process_groups():
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        raise ConnectionError(
            f"{err}\nIf the cluster uses token authentication (Ray >= 2.52; `ray start` turns it on when a token "
            "exists), set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or "
            "~/.ray/auth_token) for this command too; see studies/README.md") from None


def pick_resources(args: argparse.Namespace) -> Resources:
    """Defaults fitted to the cluster: concurrency = trials that fit (at most 4), GPUs split between them.
    A request the cluster can never grant is refused here, before the study folder exists (Tune would
    leave such trials PENDING forever)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 1), total.get("GPU", 0)
    if args.cpus_per_trial > cpus:
        raise ValueError(f"--cpus-per-trial {args.cpus_per_trial:g} exceeds the cluster's {cpus:g} CPUs")
    if args.gpus_per_trial and args.gpus_per_trial > gpus:
        raise ValueError(f"--gpus-per-trial {args.gpus_per_trial:g} but the cluster has {gpus:g} GPUs"
                         + ("; use --gpus-per-trial 0 to train on the CPU" if not gpus else ""))
    concurrency = args.concurrency if args.concurrency is not None else max(1, min(4, int(cpus // args.cpus_per_trial)))
    gpus_per_trial = args.gpus_per_trial
    if gpus_per_trial is None:
        gpus_per_trial = min(1.0, gpus / concurrency) if gpus else 0.0
    return Resources(args.cpus_per_trial, gpus_per_trial, concurrency, args.max_failures, args.time_budget_s)


# ----- reporting ------------------------------------------------------------------------------------

def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def summary_table(selections: dict[str, Selection | None], trials: pd.DataFrame, windows: pd.DataFrame) -> str:
    """Per arm: trials run, best validation NDCG@10 and its configuration, and test NDCG@10 per window
    (all targets) as mean ± std over the final seeds, from the report's per-window table (`windows`)."""
    rows = []
    for arm, sel in selections.items():
        arm_trials = trials[trials["arm"] == arm] if len(trials) else trials
        if sel is not None and not sel.searched:
            ran = "no search"
        elif len(arm_trials):
            unfinished = int(((arm_trials["status"] == "KILLED") & arm_trials["budget_stopped"]).sum())
            ran = (f"{int((arm_trials['status'] == 'FINISHED').sum())} ok / {int((arm_trials['status'] == 'FAILED').sum())} "
                   "failed" + (f" / {unfinished} stopped by the budget before an epoch" if unfinished else ""))
        else:
            ran = "0"
        row = {"arm": arm, "trials": ran,
               f"best valid {SELECTION[0].upper()}@{SELECTION[1]}": f"{sel.value:.4f}" if sel and sel.searched else "-",
               "configuration": fmt_params(sel.params) if sel else "no completed trial"}
        for w in windows[(windows["arm"] == arm) & (windows["part"] != VALID)].itertuples():
            std = f"{w.std:.4f}" if w.n_seeds > 1 else "-"
            row[f"{w.part} (n={w.n_seeds})"] = f"{w.mean:.4f} ± {std}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-").to_string(index=False)


def ui_hint(tracking_uri: str) -> str:
    """The `mlflow ui` command for a local store (quoted, on port 5001: 5000 is often taken), or the server."""
    return ui_command(tracking_uri, UI_PORT) or f"open {tracking_uri} (MLflow tracking server)"


def resume_command(argv: list[str], resume: bool) -> str:
    """The command line that continues an interrupted study: this one, with --resume, shell-quoted (without
    --retrain-damaged: retraining is asked for each time, once damage has been seen)."""
    return shlex.join([sys.executable, *(a for a in argv if a != "--retrain-damaged")] + ([] if resume else ["--resume"]))


def log_inputs(folder: StudyFolder, study_run: StudyRun, data: Interactions, split: Split) -> None:
    """At the start, on the parent run: the resolved study.yaml and describe.json (the split's shift
    diagnostics, `idea.data.describe`), so even an interrupted study says what it ran on."""
    write_text(folder.describe_file, json.dumps(describe(data, split), indent=1) + "\n")
    for path in (folder.study_file, folder.describe_file):
        study_run.client().log_artifact(study_run.parent_run_id, str(path))


def write_results(folder: StudyFolder, study_run: StudyRun, trials: pd.DataFrame, results: pd.DataFrame) -> None:
    """trials.csv and final_results.csv, each written whole, in the study folder and on the parent run."""
    for path, frame in ((folder.trials_csv, trials), (folder.final_results_csv, results)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        study_run.client().log_artifact(study_run.parent_run_id, str(path))


# ----- the study ------------------------------------------------------------------------------------

def no_result(arm: str, grid, budget: float | None) -> str:
    """Why an arm's search selected nothing: every trial failed, or none completed an epoch in the budget."""
    crashed = sum(failed(r) for r in grid)
    if crashed == len(grid):
        return f"every {arm} trial failed ({crashed})"
    stopped = f"stopped by --time-budget-s {budget:g}" if budget else "ended"
    return f"no {arm} trial completed an epoch ({len(grid) - crashed} {stopped} before their first, {crashed} failed)"


def run(ctx: StageContext) -> tuple[dict[str, Selection | None], pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Per arm (the base arm first when the others fine-tune its models): search, select on validation,
    retrain the selection with the final seeds and test it (with `oracle: true`, also the selection on the
    first test window, studies/oracle.py); returns selections, trials, results and, per arm without a
    result, why."""
    study = ctx.study
    selections, frames, starts, missing = {}, [], None, {}
    order = study.arm_order()
    begin(study_plan(study), ctx.resources.concurrency, ctx.resources.time_budget_s)
    for i, arm in enumerate(order, start=1):
        finetunes = study.finetunes(arm)
        print(f"\n== arm {i}/{len(order)}: {arm}" + (" (fine-tunes the trained ERM models)" if finetunes else ""),
              file=sys.stderr, flush=True)
        if finetunes and starts is None:
            selections[arm] = None
            missing[arm] = f"not run: it fine-tunes the {study.base()} arm's models, and {study.base()} has none"
            print(f"warning: {arm} {missing[arm]}", file=sys.stderr)
            continue
        plan = ctx.plan(arm, starts if finetunes else None)
        if study.arms[arm].searches:
            search = run_search(ctx, plan)
            selections[arm] = selection = select_best(arm, search, study.metric)
        else:
            print(f"[{arm}] no search (num_samples 0): the final seeds train its first point", file=sys.stderr, flush=True)
            selections[arm] = selection = first_point(study, arm)
        if selection is None:
            missing[arm] = no_result(arm, search, ctx.resources.time_budget_s)
            print(f"warning: {missing[arm]}; no final runs for this arm", file=sys.stderr)
            continue
        final = run_final(ctx, plan, selection)
        frames.append(final_results(ctx, plan, final))
        if study.oracle:
            frames.append(run_oracle(ctx, plan, search, selection, frames[-1]))
        if arm == study.base() and any(study.finetunes(a) for a in order):
            starts = save_starts(ctx.folder, selection, final, ctx.study_run)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return selections, trials_frame(ctx.study_run), results, missing


def track(ctx: StageContext) -> tuple[dict[str, Selection | None], pd.DataFrame, pd.DataFrame, dict[str, str]] | None:
    """`run` with the store kept consistent: on Ctrl-C, SIGTERM or SIGHUP open runs end KILLED, tagged
    `interrupted` with the signal (None is returned), on an error FAILED; on success the artifacts are
    logged and the parent run ends FINISHED (tagged `arms_without_result` when some arm has none: a
    --resume would change nothing)."""
    study_run, resume = ctx.study_run, ctx.resume
    try:
        outcome = run(ctx)
        write_results(ctx.folder, study_run, *outcome[1:3])
        if outcome[3]:
            study_run.client().set_tag(study_run.parent_run_id, Tag.ARMS_WITHOUT_RESULT, ",".join(outcome[3]))
    except KeyboardInterrupt:
        by = interrupted_by()
        study_run.client().set_tag(study_run.parent_run_id, Tag.INTERRUPTED, by)
        closed = study_run.close_open_runs("KILLED", tags={Tag.INTERRUPTED: by})
        print(f"\n{'interrupted' if by == 'SIGINT' else f'terminated ({by})'}: the study run and {closed} open "
              f"trial run(s) marked KILLED; Tune saved its state. Resume with:\n  {resume_command(sys.argv, resume)}",
              file=sys.stderr)
        return None
    except TuneStateError:  # nothing ran: the study stays resumable once the state is put back
        study_run.close_open_runs("KILLED")
        raise
    except BaseException as err:
        fault = diagnose(err)
        if fault is None:
            study_run.close_open_runs("FAILED")
        elif fault.closable:  # resumable: KILLED like an interruption, if the disk still takes the writes
            try:
                study_run.client().set_tag(study_run.parent_run_id, Tag.INTERRUPTED, fault.kind)
                study_run.close_open_runs("KILLED", tags={Tag.INTERRUPTED: fault.kind})
            except Exception:  # noqa: BLE001 (the resume ends or continues the runs left RUNNING)
                pass
        raise
    study_run.client().set_terminated(study_run.parent_run_id, "FINISHED")
    return outcome


def run_cli(args: argparse.Namespace, checked: Checked) -> int:
    """The whole study for parsed arguments that passed `studies.preflight.check_study`; returns the exit
    code (0, 2 bad input, 3 an arm without result, 75 a fault of the machine, 130 interrupted by Ctrl-C,
    143 by SIGTERM, 129 by SIGHUP)."""
    try:
        return run_checked(args, checked)
    except KeyboardInterrupt:  # outside the stages, which `track` stops: setting up, or writing the report
        by = interrupted_by()
        print(f"\n{'interrupted' if by == 'SIGINT' else f'terminated ({by})'} outside the study's stages (while "
              f"setting it up or writing its report); {continuation(checked.folder, args.resume)}",
              file=sys.stderr)
        return INTERRUPTED_EXIT[by]
    except Exception as err:
        fault = diagnose(err, checked.tracking_uri)
        if fault is None:
            raise
        print_fault(fault, err, checked.folder, args.resume)
        return ENVIRONMENT_EXIT


def continuation(folder: StudyFolder, resume: bool) -> str:
    """How to go on: the resume command once the study folder holds the study, else the same command."""
    if folder.study_file.is_file():
        return f"resume with:\n  {resume_command(sys.argv, resume)}"
    return "the study had not started; run the same command again."


def print_fault(fault: Fault, err: BaseException, folder: StudyFolder, resume: bool) -> None:
    """One message for a fault of the machine: its cause, the error's line that shows it, the fix, the resume
    command."""
    runs = (f"open runs it could end are KILLED, tagged interrupted={fault.kind!r}" if fault.closable
            else "open runs stay RUNNING until the resume continues them")
    where = continuation(folder, resume)
    print(f"\nerror: {fault.cause} ({fault.detail[:300]}).\nThe study stopped; {runs}. To continue: {fault.fix}; "
          f"{where}", file=sys.stderr)


def run_checked(args: argparse.Namespace, checked: Checked) -> int:
    """`run_cli` without the handling of machine faults."""
    name, folder, tracking_uri, split = checked.name, checked.folder, checked.tracking_uri, checked.split
    try:  # what needs MLflow or Tune's state, before Ray starts
        if args.resume and is_finished(tracking_uri, name):
            if (missing := unwritten(folder)) is None:
                print(f"study {name} has already finished; nothing to resume, nothing changed", file=sys.stderr)
                print_finished(folder, name, tracking_uri)
                return 0
            print(f"study {name} has finished, but its summary and report were not written in full ({missing}): "
                  "writing them", file=sys.stderr)
        if args.resume:  # Tune's state files (run_search/run_final check them against the store)
            for experiment in folder.experiments():
                check_state(experiment)
                if not args.retrain_damaged:  # else set back to their start once the store is open
                    check_checkpoints(experiment)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"study {name}: {split.dataset} ({split.protocol}), {len(split.train):,} training events, "
          f"{len(split.valid):,} validation, tests {', '.join(f'{k}={len(v):,}' for k, v in split.tests.items())}; "
          f"folder {folder.path}", file=sys.stderr)
    try:
        init_ray(args.address)
        stop_on_signals()
        resources = pick_resources(args)  # before anything is written: a request that can never run
    except (ConnectionError, ValueError) as err:  # a cluster or flag problem
        print(f"error: {err}", file=sys.stderr)
        ray.shutdown()
        return 2
    except BaseException:
        ray.shutdown()
        raise
    return run_on_ray(args, checked, resources)


def run_on_ray(args: argparse.Namespace, checked: Checked, resources: Resources) -> int:
    """The study once Ray runs: Ray (started by `run_checked`) is shut down and the study's temporary
    checkpoint folders are removed on every exit; then the summary and the report."""
    study, name, folder, tracking_uri = checked.study, checked.name, checked.folder, checked.tracking_uri
    data, split = checked.data, checked.split
    study_run = None
    try:
        try:  # a flag or tracking-store problem
            remove_scratch(folder.scratch_key)  # left by an earlier driver of this study that died
            print(f"trials: {resources.concurrency} at a time, {resources.cpus_per_trial:g} CPU and "
                  f"{resources.gpus_per_trial:g} GPU each (device {resources.device})", file=sys.stderr)
            if args.resume:
                folder.check_device(resources.device)
            else:
                folder.create(study, tracking_uri, resources.device, split.data_sha256)
            tags = {Tag.STUDY: name, Tag.DATASET: study.dataset, Tag.BACKBONE: study.backbone,
                    Tag.GIT_SHA: git_sha(PROJECT_ROOT), Tag.DATA_SHA256: split.data_sha256,
                    Tag.RAY_CLUSTER: ray.get_runtime_context().gcs_address, Tag.SMOKE: str(args.smoke).lower()}
            # a server keeps its own artifacts; a local store's go in the study folder, never ./mlruns
            server = tracking_uri.startswith(("http://", "https://"))
            artifacts = None if server else folder.artifacts
            recorded = folder.run.get("parent_run_id")  # None for a new study
            ran = bool(folder.experiments())  # trials ran against some parent run
            study_run = open_study(tracking_uri, name, tags, artifacts, resume=args.resume,
                                   parent_run_id=recorded, require_parent=ran)
            if args.resume and folder.run.get("default_store"):  # recorded where the folder first ran: now here
                folder.write_run(tracking_uri=tracking_uri)
                relocate_artifacts(folder.mlflow_db, name, artifacts)
            if recorded is None:
                folder.write_run(parent_run_id=study_run.parent_run_id)
            # how to continue, for a report of an unfinished study (analysis reads MLflow only)
            study_run.client().set_tag(study_run.parent_run_id, Tag.RESUME_COMMAND, resume_command(sys.argv, args.resume))
            log_inputs(folder, study_run, data, split)
            if args.retrain_damaged:
                retrain_damaged(folder, study_run)
        except (ConnectionError, ValueError, StudyExistsError, StudyStoreError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # while setting up the folder and the store: `run_cli` says so
            if study_run is not None:
                study_run.client().set_tag(study_run.parent_run_id, Tag.INTERRUPTED, interrupted_by())
                study_run.close_open_runs("KILLED")
            raise
        try:
            outcome = track(StageContext(study, name, split, resources, folder, study_run, args.resume))
        except TuneStateError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    finally:
        ray.shutdown()
        remove_scratch(folder.scratch_key)  # this driver's study: folders of trials Ray stopped or killed
    if outcome is None:
        return INTERRUPTED_EXIT[interrupted_by()]

    selections, trials, _, missing = outcome
    smoke = " SMOKE RUN: it checks that every stage works; its numbers are not results." if args.smoke else ""
    head = (f"Study {name} (selection on validation {study.metric}; test metrics of the selected configurations "
            f"retrained with seeds {study.final_seeds()}):{smoke}\n")
    write_outputs(folder, name, tracking_uri, study_run,
                  lambda windows: f"{head}{summary_table(selections, trials, windows)}\n")
    print_finished(folder, name, tracking_uri)
    if missing:
        print(f"\nstudy {name} ended without a result for arm(s) {', '.join(missing)}:\n"
              + "".join(f"  {arm}: {why}\n" for arm, why in missing.items())
              + "The report covers what exists. For results, start the study again under another --study-name"
              + (f" with a larger --time-budget-s than {args.time_budget_s:g}" if args.time_budget_s else "")
              + ".", file=sys.stderr)
        return NO_RESULT_EXIT
    return 0


def print_finished(folder: StudyFolder, name: str, tracking_uri: str) -> None:
    print("\n" + folder.summary_file.read_text(), end="")
    print(f"\nMLflow: experiment {name!r}; open the UI with\n  {ui_hint(tracking_uri)}")
    print(f"report: {folder.report_summary}")
    if folder.optuna_db.exists():  # absent when no arm searched
        print(f"Optuna searches (one study per arm; pip install optuna-dashboard):\n  "
              f"{shlex.join(['optuna-dashboard', folder.optuna_uri])}")

