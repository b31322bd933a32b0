"""analysis/shift_robustness.ipynb executed headlessly with the documented papermill command on the fake
store draws every report figure."""
from __future__ import annotations

import base64
import logging
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.analysis import fake_store as F

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "analysis" / "shift_robustness.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_notebook_is_parameterised_and_stored_without_outputs():
    """The parameters cell defines tracking_uri and study; the stored notebook carries no outputs."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in ("tracking_uri", "study"):
        assert f"\n{name} = " in "\n" + params[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_parameters_cell_parses_cleanly_under_papermill(caplog):
    """papermill reads every parameter of the cell without a warning: an `=` inside a comment makes it
    skip the line ("Unable to parse line 3", then "Passed unknown parameter: study")."""
    import papermill

    with caplog.at_level(logging.WARNING, logger="papermill"):
        params = papermill.inspect_notebook(str(NOTEBOOK))
    assert {"tracking_uri", "study", "metric", "k"} <= set(params)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_documented_papermill_commands_write_under_the_ignored_outputs_folder():
    """The README's and the notebook's commands leave the executed copy in outputs/, not the repository root."""
    texts = [(ROOT / "README.md").read_text(), NOTEBOOK.read_text()]
    targets = [m for text in texts for m in re.findall(r"papermill analysis/shift_robustness\.ipynb (\S+)", text)]
    assert len(targets) >= 2 and all(t.startswith("outputs/") for t in targets), targets
    ignored = subprocess.run(["git", "check-ignore", "-q", targets[0]], cwd=ROOT)
    assert ignored.returncode == 0, f"{targets[0]} is not ignored by git"


@pytest.mark.timeout(300)
def test_notebook_executes_and_draws_its_figures(store, tmp_path):
    """`papermill analysis/shift_robustness.ipynb OUT -p tracking_uri URI -p study NAME` (the README's and
    the notebook's command) runs from the project root: every figure the report would draw appears
    inline as a valid PNG, no cell errors, and it opens with summary.md's verdict and links the runs in
    summary.md's order, and shows how each final run ended."""
    from analysis.load import read_study
    from analysis.report import build_figures, build_tables, write_report

    out = tmp_path / "executed.ipynb"  # kept for inspection when the test fails
    proc = subprocess.run(["papermill", "analysis/shift_robustness.ipynb", str(out), "-p", "tracking_uri", store,
                           "-p", "study", F.STUDY], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Unable to parse" not in proc.stderr and "unknown parameter" not in proc.stderr, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert all(p[:8] == PNG_MAGIC and len(p) > 5000 for p in pngs)

    read = read_study(store, F.STUDY)
    expected = build_figures(build_tables(read.results(), read.shift(), read.spaces()))
    assert len(expected) == 11  # metric vs window (all, warm), gain vs JS, 8 sensitivity panels
    assert len(pngs) == len(expected)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "+21.4%" in text  # the headline (IDEA vs ERM on w3) is shown
    html = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert html.count("early stopping") == 4  # how each of the 4 final runs ended, as summary.md's table says
    assert "s_per_epoch" in html and "<td>36</td>" in html  # the training time: 36 epochs in all
    assert "#/compare-runs?runs=[" in text and "#/experiments/1/runs" in text and "shift_ndcg_at_10" in text
    # the arms in summary.md's order (the base arm first): the same verdict and the same runs in the links
    summary = write_report(read, tmp_path / "report").read_text()
    verdict = summary.split("\n**", 1)[1].split("**\n", 1)[0]
    assert f"**{verdict}**" in text
    linked = r"compare-runs\?runs=(\[[^\]]*\])"
    assert re.findall(linked, text) == re.findall(linked, summary)
