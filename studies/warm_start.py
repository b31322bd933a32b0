"""IDEA's Step 1 in a study: the ERM arm's trained models, kept as start files for the arms that
fine-tune them (`idea_init: erm`). Search trials of a warm arm start from the selected ERM search
trial; final seed s starts from ERM final seed s, so each seed's comparison is paired."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ray.tune import ResultGrid

from studies.search import Selection
from studies.trainable import CHECKPOINT_FILE, failed
from studies.tracking import StudyRun


@dataclass(frozen=True)
class Start:
    """A trained ERM model a warm arm starts from: its checkpoint file and MLflow run."""

    path: str
    run_id: str | None


@dataclass(frozen=True)
class Starts:
    """Where every trial of a warm arm starts: `search` for search trials, `seeds[s]` for final seed s."""

    search: Start
    seeds: dict[int, Start]


def _copy(checkpoint_dir: str, dest: Path) -> str:
    """Copy a trial's trainer checkpoint (its best state is the start) out of Tune's folders, which
    keep only the latest checkpoint and may be pruned."""
    source = Path(checkpoint_dir) / CHECKPOINT_FILE
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    return str(dest)


def save_starts(study_dir: Path, selection: Selection, final: ResultGrid, study_run: StudyRun) -> Starts:
    """`<study>/starts/erm-search.pt` and `erm-seed<s>.pt` from the ERM arm's selection and final seeds."""
    folder = study_dir / "starts"
    folder.mkdir(parents=True, exist_ok=True)
    if selection.checkpoint is None:
        raise RuntimeError(f"the selected erm trial {selection.trial_id} left no checkpoint to start from")
    run_ids = {r.data.tags.get("trial_id"): r.info.run_id for r in study_run.nested_runs("erm")}
    search = Start(_copy(selection.checkpoint, folder / "erm-search.pt"), run_ids.get(selection.trial_id))
    seeds = {}
    for result in final:
        if not failed(result) and result.checkpoint is not None:
            seed = int(result.config["seed"])
            seeds[seed] = Start(_copy(result.checkpoint.path, folder / f"erm-seed{seed}.pt"),
                                run_ids.get(result.metrics.get("trial_id")))
    return Starts(search, dict(sorted(seeds.items())))
