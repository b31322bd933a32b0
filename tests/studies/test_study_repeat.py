"""What studies/README.md claims about reproducibility: at --concurrency 1 the same study file gives the
same search (configurations, in order) and the same final numbers, run after run. The first run also shows
that a study leaves no temporary checkpoint folders (issue 21, item 8): trials' folders carry their study's
name (`studies.folder.StudyFolder.scratch_key`), and the driver removes its study's at its start (left by an earlier
driver that died) and at its end, and no other study's."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from studies.folder import StudyFolder
from tests.studies.study_cli import run_study, tiny_study


def seed_leftovers(tmp: Path, study_dir: Path) -> Path:
    """Folders a driver killed with -9 leaves for `study_dir`, and another study's running one; returns the latter."""
    key = StudyFolder(study_dir.resolve()).scratch_key
    other = tmp / f"idea-ckpt-{StudyFolder(study_dir.parent / 'other' / study_dir.name).scratch_key}-running"  # kept
    for path in (tmp / f"idea-ckpt-{key}-stale", tmp / f"idea-final-{key}-stale", other):
        path.mkdir()
        (path / "trainer.pt").write_bytes(b"x")
    return other


def test_one_trial_at_a_time_repeats_the_study_exactly_and_leaves_no_temporary_folders(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="t21-"))  # the studies' TMPDIR (short: Ray puts its sockets there)
    try:
        other = seed_leftovers(tmp, tmp_path / "first")
        outcomes = []
        for attempt in ("first", "second"):
            study = tiny_study(tmp_path / f"{attempt}.yaml", ("erm", "idea"))
            done = run_study(str(study), "--out", str(tmp_path), "--concurrency", "1", timeout=400, TMPDIR=str(tmp))
            assert done.returncode == 0, done.stderr[-3000:]
            assert sorted(p.name for p in tmp.glob("idea-*")) == [other.name]
            trials = pd.read_csv(tmp_path / attempt / "trials.csv")
            results = pd.read_csv(tmp_path / attempt / "final_results.csv")
            params = [c for c in trials.columns if c in ("lr", "dropout", "N")]
            outcomes.append((trials[["arm", *params]].sort_values(["arm", *params]).reset_index(drop=True),  # ids differ
                             results.sort_values(["arm", "seed", "part", "subset", "metric", "k"])
                             [["arm", "seed", "part", "subset", "metric", "k", "value"]].reset_index(drop=True)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (trials_a, results_a), (trials_b, results_b) = outcomes
    pd.testing.assert_frame_equal(trials_a, trials_b)
    pd.testing.assert_frame_equal(results_a, results_b, check_exact=True)
