"""`--retrain-damaged`: each trial whose checkpoint is damaged is set back to its start, so the resume trains
it again. Tune resumes an unfinished trial from its latest checkpoint and never reruns a finished one, so
the trial's entry in the experiment's saved state is edited (PENDING, no checkpoint, no results) and its
checkpoint folders are removed. Its MLflow run is deleted (kept in the store's trash, restorable) and tagged
with why; the run the retraining logs is tagged likewise and names the one it replaces, so the report
says which runs were retrained. The edit runs before any trial starts, and repeating it is harmless: a
resume stopped in the middle finds the same damaged checkpoints and sets the same trials back again."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.tune.trainable.metadata import _TrainingRunMetadata

from studies.experiments import DamagedCheckpoint, damaged_checkpoints
from studies.folder import StudyFolder
from analysis.atomic import write_text
from studies.tracking import StudyRun


def _reset(trial_json: str, runtime_json: str) -> list[str]:
    """A trial's two saved JSON states as those of a trial that never ran (same id, config and folder)."""
    trial = json.loads(trial_json)
    trial.update(status="PENDING", restore_path=None, _restore_checkpoint_result=None, _state_json=None)
    saved = _TrainingRunMetadata.from_json_state(runtime_json)  # Tune's own state: Tune unpickles it too
    fresh = _TrainingRunMetadata()
    fresh.checkpoint_manager = _CheckpointManager(checkpoint_config=saved.checkpoint_manager.checkpoint_config)
    return [json.dumps(trial, indent=2), fresh.get_json_state()]


def reset_trials(path: Path, trial_dirs: set[str]) -> dict[str, str]:
    """Set the trials of the experiment at `path` that live in `trial_dirs` back to their start in its
    newest saved state (the one Tune restores), and remove their checkpoints; returns their ids by folder."""
    state_file = sorted(path.glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    ids = {}
    for i, (trial_json, runtime_json) in enumerate(state["trial_data"]):
        trial = json.loads(trial_json)
        if trial["relative_logdir"] in trial_dirs:
            state["trial_data"][i] = _reset(trial_json, runtime_json)
            ids[trial["relative_logdir"]] = trial["trial_id"]
    write_text(state_file, json.dumps(state))
    for folder in ids:
        for checkpoint in (path / folder).glob("checkpoint_*"):
            shutil.rmtree(checkpoint)
    return ids


def retrain_damaged(folder: StudyFolder, study_run: StudyRun) -> list[DamagedCheckpoint]:
    """Every stage of the study in `folder`: its trials with a damaged checkpoint set back to their start,
    their runs replaced; returns the damaged checkpoints it found."""
    found = []
    for experiment in folder.experiments():
        damaged = damaged_checkpoints(experiment)
        if not damaged:
            continue
        arm, stage = folder.arm_stage(experiment)
        reasons = {d.trial_dir: f"its checkpoint was damaged ({d.error[:300]}); trained again from its start by "
                                "--retrain-damaged" for d in damaged}
        for folder, trial_id in reset_trials(experiment, set(reasons)).items():
            replaced = study_run.replace_run(arm, stage, trial_id, reasons[folder])
            print(f"[{experiment.name}] trial {trial_id} will be trained again from its start: its checkpoint is "
                  f"damaged" + (f"; its run {replaced} is deleted (in MLflow's trash) and replaced" if replaced else ""),
                  file=sys.stderr, flush=True)
        found += damaged
    return found
