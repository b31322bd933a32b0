"""The study folder object (studies.folder.StudyFolder): run.json is parsed once per driver and kept in
step with its writes, and the driver's lock is a context manager that a second driver meets until it ends."""
from __future__ import annotations

import pytest

from studies.config import StudyConfigError, load_study
from studies.folder import StudyFolder

from tests.studies.study_cli import tiny_study


def test_run_json_is_parsed_once_and_follows_the_drivers_writes(tmp_path):
    folder = StudyFolder(tmp_path / "study")
    folder.create(load_study(tiny_study(tmp_path / "tiny.yaml")), "sqlite:///elsewhere.db", "cpu", "d" * 64)
    folder.write_run(parent_run_id="p1")
    folder.run_file.write_text("not json")  # a later read would fail: there is none
    assert folder.run["parent_run_id"] == "p1" and folder.store_uri() == "sqlite:///elsewhere.db"
    folder.check_device("cpu")
    with pytest.raises(StudyConfigError, match="is damaged"):
        StudyFolder(folder.path).run  # another driver's object reads the file


def test_the_lock_is_held_for_its_with_block_only(tmp_path):
    first, second = StudyFolder(tmp_path / "study"), StudyFolder(tmp_path / "study")
    with first.lock():
        with pytest.raises(StudyConfigError, match="in use by another driver \\(pid "):
            second.check_not_in_use()
        with pytest.raises(StudyConfigError, match="in use by another driver"):
            second.lock()
    second.check_not_in_use()
    with second.lock():
        pass


def test_unlock_removes_the_folders_the_lock_created_while_they_hold_nothing_else(tmp_path):
    """The lock is taken before Ray starts; a study refused after that (a resource request the cluster cannot
    grant) still leaves no study folder, nor an --out it created."""
    refused = StudyFolder(tmp_path / "out" / "study")
    refused.unlock(refused.lock())
    assert list(tmp_path.iterdir()) == []
    started = StudyFolder(tmp_path / "started")
    lock = started.lock()
    (started.path / "study.yaml").write_text("dataset: synthetic\n")
    started.unlock(lock)
    assert sorted(p.name for p in started.path.iterdir()) == [".driver.lock", "study.yaml"]
    (started.path / "study.yaml").unlink()
    existing = StudyFolder(started.path)  # there before its lock was taken: kept
    existing.unlock(existing.lock())
    assert [p.name for p in existing.path.iterdir()] == [".driver.lock"]
