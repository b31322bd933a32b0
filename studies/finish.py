"""The end of a study: its console summary (summary.txt) and report (report/) are part of finishing it. Each
file is written whole (analysis.atomic) and summary.txt last, so a study whose parent run ended FINISHED is
finished only when `unwritten` finds nothing missing. A report that failed to be written (a disk that filled
up after the last trial) is then written by `--resume`; before, the resume called such a study finished,
with an empty summary.txt and no report/."""
from __future__ import annotations

import errno
import os
from typing import Callable

import pandas as pd

from analysis.atomic import write_text
from analysis.load import read_study
from analysis.report import write_report
from studies.folder import StudyFolder
from studies.tracking import StudyRun

# Test hook: "enospc" makes writing the summary and report fail at once, as a full disk would, so that what
# such a failure leaves, and what --resume does with it, can be tested for real.
REPORT_FAULT_ENV = "IDEA_STUDY_INJECT_REPORT_FAULT"


def unwritten(folder: StudyFolder) -> str | None:
    """What of a study's summary and report is missing, or None when both were written in full."""
    summary, report = folder.summary_file, folder.report_summary
    if not summary.is_file():
        return f"{summary} is missing"
    if not summary.stat().st_size:
        return f"{summary} is empty"
    if not report.is_file():
        return f"{report} is missing"
    return None


def write_outputs(folder: StudyFolder, name: str, tracking_uri: str, study_run: StudyRun,
                  summary: Callable[[pd.DataFrame], str]) -> None:
    """The report (also logged on the parent run), then summary.txt, the last file a finished study gets:
    `summary` of the report's own per-window table, so the console and summary.md show the same numbers."""
    if os.environ.get(REPORT_FAULT_ENV) == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{REPORT_FAULT_ENV}=enospc")
    write_report(read_study(tracking_uri, name), folder.report)
    study_run.client().log_artifacts(study_run.parent_run_id, str(folder.report), folder.report.name)
    write_text(folder.summary_file, summary(pd.read_csv(folder.report_table("per_window_all"))))
