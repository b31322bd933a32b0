"""No leftovers (issue 21, item 8): trials' temporary checkpoint folders carry their study's name
(`studies.trainable.scratch_key`), and the driver removes its study's at its start (left by an earlier
driver that died) and at its end, and no other study's."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from studies.trainable import scratch_key

from tests.studies.study_cli import run_study, tiny_study

STUDY = "leftovers"


def test_a_study_leaves_no_temporary_folders_and_removes_its_stale_ones(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="t21-"))  # the study's TMPDIR (short: Ray puts its sockets there)
    try:
        check(tmp_path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(tmp_path, tmp):
    out = tmp_path / "out"
    key = scratch_key((out / STUDY).resolve())
    stale = [tmp / f"idea-ckpt-{key}-stale", tmp / f"idea-final-{key}-stale"]  # as a driver killed with -9 leaves
    other = tmp / f"idea-ckpt-{scratch_key(tmp_path / 'other' / STUDY)}-running"  # another study's: kept
    for path in (*stale, other):
        path.mkdir()
        (path / "trainer.pt").write_bytes(b"x")
    done = run_study(str(tiny_study(tmp_path / f"{STUDY}.yaml")), "--out", str(out), "--concurrency", "1",
                     timeout=300, TMPDIR=str(tmp))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp.glob("idea-*")) == [other.name]
