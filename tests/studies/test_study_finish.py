"""The report is part of finishing a study (issue 34, item 2): its files are written whole or not at all
(analysis.atomic), and a study whose summary.txt is missing or empty, or whose report/summary.md is missing,
was not finished (studies.finish.unwritten), whatever its parent run says. The study that shows it end to
end is tests/studies/test_study_environment.py::test_a_report_that_failed_to_be_written_is_written_by_the_resume."""
from __future__ import annotations

import errno
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from analysis.atomic import atomic_path, write_text  # noqa: E402
from studies.finish import unwritten  # noqa: E402
from studies.folder import StudyFolder  # noqa: E402


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("the old results\n")
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_text() == "the old results\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]
    write_text(path, "the new results\n")
    assert path.read_text() == "the new results\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_a_written_file_keeps_its_format_and_the_usual_permissions(tmp_path):
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    with atomic_path(tmp_path / "curve.png") as tmp:
        figure.savefig(tmp)  # the format comes from the suffix
    plt.close(figure)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "curve.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_study_is_finished_only_with_a_whole_summary_and_a_report(tmp_path):
    folder = StudyFolder(tmp_path)
    assert unwritten(folder) == f"{tmp_path / 'summary.txt'} is missing"
    (tmp_path / "summary.txt").write_text("")  # what a full disk left before the writes were atomic
    assert unwritten(folder) == f"{tmp_path / 'summary.txt'} is empty"
    (tmp_path / "summary.txt").write_text("Study s (selection on validation ndcg_at_10; ...):\n")
    assert unwritten(folder) == f"{tmp_path / 'report' / 'summary.md'} is missing"
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.md").write_text("# Shift robustness of study `s`\n")
    assert unwritten(folder) is None
