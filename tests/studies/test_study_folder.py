"""The study folder object (studies.preflight.StudyFolder): run.json is parsed once per driver and kept in
step with its writes, and the driver's lock is a context manager that a second driver meets until it ends."""
from __future__ import annotations

import pytest

from studies.config import StudyConfigError, load_study
from studies.preflight import RUN_FILE, StudyFolder

from tests.studies.study_cli import tiny_study


def test_run_json_is_parsed_once_and_follows_the_drivers_writes(tmp_path):
    folder = StudyFolder(tmp_path / "study")
    folder.create(load_study(tiny_study(tmp_path / "tiny.yaml")), "sqlite:///elsewhere.db", "cpu", "d" * 64)
    folder.write_run(parent_run_id="p1")
    (folder.path / RUN_FILE).write_text("not json")  # a later read would fail: there is none
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
