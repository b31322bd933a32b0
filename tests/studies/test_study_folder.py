"""The study folder object (studies.folder.StudyFolder): run.json is parsed once per driver and kept in
step with its writes, and the driver's lock is a context manager that a second driver meets until it ends."""
from __future__ import annotations

import pytest
import yaml

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


def test_a_study_saved_when_ideas_control_was_implied_resumes_and_other_changes_are_still_refused(tmp_path):
    """study.yaml files written before `control: erm_ft` was in _base.yaml saved idea's control as null (then
    meaning erm_ft, the study having that arm): the same study file resumes them; a real change does not."""
    study = load_study("synthetic", smoke=True)
    folder = StudyFolder(tmp_path / "study")
    folder.create(study, "sqlite:///elsewhere.db", "cpu", "d" * 64)
    saved = yaml.safe_load(folder.study_file.read_text())
    saved["arms"]["idea"]["control"] = None
    folder.study_file.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert folder.check(study, resume=True, tracking_uri=None) == "sqlite:///elsewhere.db"
    saved["arms"]["idea"]["control"] = "erm"  # written by hand: a different study
    folder.study_file.write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(StudyConfigError, match=r"different study settings \(\['arms'\]\)"):
        folder.check(study, resume=True, tracking_uri=None)


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
