"""IDEA's Step 1 in a study: the base arm's trained (ERM) models, kept as start files for the arms that
fine-tune them (`idea_init: erm`). Search trials of a fine-tuning arm start from the base arm's selected
search trial; final seed s starts from its final seed s, so each seed's comparison is paired."""
from __future__ import annotations

import shutil
from pathlib import Path

from ray.tune import ResultGrid

from idea.contract import Result, Tag

from studies.folder import StudyFolder
from studies.plan import Selection, Start, Starts
from studies.trainable import CHECKPOINT_FILE, failed
from studies.tracking import StudyRun


def _copy(checkpoint_dir: str, folder: StudyFolder, dest: Path, run_id: str | None) -> Start:
    """Copy a trial's trainer checkpoint (its best state is the start) out of Tune's folders, which
    keep only the latest checkpoint and may be pruned."""
    source = Path(checkpoint_dir) / CHECKPOINT_FILE
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    return Start(str(dest), run_id, dest.relative_to(folder.path).as_posix())


def save_starts(folder: StudyFolder, selection: Selection, final: ResultGrid, study_run: StudyRun) -> Starts:
    """The base arm's selected search trial (none when it has no search) and final seeds as start files
    (`StudyFolder.start_file`), from the base arm's selection and final seeds (`selection.arm` is the base arm)."""
    base = selection.arm
    folder.starts.mkdir(parents=True, exist_ok=True)
    if selection.searched and selection.checkpoint is None:
        raise RuntimeError(f"the selected {base} trial {selection.trial_id} left no checkpoint to start from")
    run_ids = {r.data.tags.get(Tag.TRIAL_ID): r.info.run_id for r in study_run.nested_runs(base)}
    search = _copy(selection.checkpoint, folder, folder.start_file(base, "search"),
                   run_ids.get(selection.trial_id)) if selection.searched else None
    seeds = {}
    for result in final:
        if not failed(result) and result.checkpoint is not None:
            seed = int(result.config["seed"])
            seeds[seed] = _copy(result.checkpoint.path, folder, folder.start_file(base, f"seed{seed}"),
                                run_ids.get(result.metrics.get(Result.TRIAL_ID)))
    return Starts(search, dict(sorted(seeds.items())))
