"""A resumed study must run on the data it started on: run.json records the data digest, and a --resume on
changed data is refused before Ray starts (exit 2, both digests named, nothing written)."""
from __future__ import annotations

import json

import pytest

from studies import preflight
from studies.cli import parse_args
from studies.config import StudyConfigError
from studies.folder import StudyFolder

from tests.studies.study_cli import run_cli, tiny_study


def started(tmp_path, digest: str | None):
    """A study folder as a first run leaves it (study.yaml, run.json), with `digest` recorded (None: an
    older folder without one); returns the CLI arguments that resume it."""
    study_file = tiny_study(tmp_path / "changed.yaml")
    args = parse_args([str(study_file), "--out", str(tmp_path), "--resume"])
    checked = preflight.check_study(parse_args([str(study_file), "--out", str(tmp_path)]))
    checked.folder.create(checked.study, checked.tracking_uri, "cpu", digest or checked.split.data_sha256)
    checked.folder.unlock(checked.lock)  # as the first run's driver does at its end
    if digest is None:
        run = dict(checked.folder.run)
        run.pop("data_sha256")
        checked.folder.run_file.write_text(json.dumps(run))
    return args, checked


def test_resume_on_changed_data_is_refused_naming_both_digests(tmp_path):
    args, checked = started(tmp_path, "f" * 64)
    before = sorted(p.name for p in checked.folder.path.iterdir())
    with pytest.raises(StudyConfigError, match="the data changed since the study started") as err:
        preflight.check_study(args)
    assert checked.split.data_sha256[:16] in str(err.value) and "ffffffffffffffff" in str(err.value)
    done = run_cli(str(args.study), "--out", args.out, "--resume")
    assert done.returncode == 2 and "the data changed since the study started" in done.stderr
    assert sorted(p.name for p in checked.folder.path.iterdir()) == before  # nothing written


def test_resume_on_the_same_data_passes_and_old_folders_without_a_digest_too(tmp_path):
    args, checked = started(tmp_path, None)
    assert preflight.check_study(args).split.data_sha256 == checked.split.data_sha256
    assert "data_sha256" not in StudyFolder(checked.folder.path).run
    StudyFolder(checked.folder.path).write_run(data_sha256=checked.split.data_sha256)
    assert preflight.check_study(args).folder.path == checked.folder.path
