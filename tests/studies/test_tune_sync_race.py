"""Tune's upload of a stage's state can race its next save (the upload lists a state file's temporary copy,
the save renames it, the upload fails to open it). Tune logs the failure with a traceback and uploads again
at once; the study's console leaves that traceback out (`studies.driver.quiet_logs`) and keeps every other
failed upload. Driven through Tune's own syncer and experiment-state manager, with pyarrow's own error."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.fs
import pytest
from ray.train._internal.storage import StorageContext
from ray.train._internal.syncer import _BackgroundProcess
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from studies.driver import quiet_logs

STATE = "search_gen_state-2026-12-08_05-13-15.json"


def open_error(path: Path) -> FileNotFoundError:
    """What pyarrow raises when the upload opens `path` after it vanished."""
    with pytest.raises(FileNotFoundError) as caught:
        pyarrow.fs.LocalFileSystem().open_input_stream(str(path))
    return caught.value


@pytest.fixture
def storage(tmp_path) -> StorageContext:
    storage = StorageContext(storage_path=str(tmp_path / "storage"), experiment_dir_name="erm-search")
    storage._get_session_path = lambda: str(tmp_path / "session")  # Ray's session folder, without starting Ray
    Path(storage.experiment_driver_staging_path).mkdir(parents=True, exist_ok=True)
    return storage


def fail_last_upload(storage: StorageContext, err: OSError) -> None:
    """The upload now ending is one that met `err`."""

    def upload():
        raise err

    storage.syncer._sync_process = _BackgroundProcess(upload)
    storage.syncer._sync_process.start()


def report(storage: StorageContext, err: OSError, save=lambda: None) -> None:
    """Both of Tune's reports of an upload that met `err`: its state manager's, on a save that waits for the
    last upload (`save` writes the state), then its syncer's, on starting the next upload."""
    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period=0)
    fail_last_upload(storage, err)
    manager.sync_up_experiment_state(save, force=True, wait=True)
    fail_last_upload(storage, err)
    storage.syncer.sync_up(storage.experiment_driver_staging_path, storage.experiment_fs_path)
    storage.syncer.wait()


@pytest.fixture(scope="module", autouse=True)
def quiet() -> None:
    quiet_logs()


class Kept(logging.Handler):
    """Collects what the loggers pass on (Ray's loggers do not propagate to pytest's handler)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records():
    kept = Kept()
    loggers = [logging.getLogger(name) for name in ("ray.tune.execution.experiment_state", "ray.train._internal.syncer")]
    for logger in loggers:
        logger.addHandler(kept)
    yield lambda: kept.records
    for logger in loggers:
        logger.removeHandler(kept)


def test_a_renamed_temporary_copy_is_left_out_and_the_next_upload_copies_the_state(storage, records):
    staging = Path(storage.experiment_driver_staging_path)
    temp = staging / f".43c1c9e4-787c-40af-afae-8f2f7cbb516e-tmp-{STATE}"  # as Tune's `_atomic_save` names it
    report(storage, open_error(temp), save=lambda: (staging / STATE).write_text("{}"))
    assert records() == []
    assert (Path(storage.experiment_fs_path) / STATE).read_text() == "{}"


def test_any_other_failed_upload_is_still_reported(storage, records):
    staging = Path(storage.experiment_driver_staging_path)
    errors = (open_error(staging / STATE),  # the state file itself, not a temporary copy of it
              PermissionError(f"[Errno 13] Failed to open local file '{staging / ('.0a1b-tmp-' + STATE)}'"))
    for err in errors:
        report(storage, err)
    reported = records()
    assert [r.name for r in reported] == ["ray.tune.execution.experiment_state", "ray.train._internal.syncer"] * 2
    for err, (by_manager, by_syncer) in zip(errors, (reported[:2], reported[2:])):
        assert by_manager.exc_info[1] is err and by_syncer.getMessage().endswith(f"{type(err).__name__}: {err}\n")
