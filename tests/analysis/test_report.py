"""The report CLI on the fake store: summary.md with a per-window table for both arms, CSVs, valid PNGs,
and notes instead of crashes when pieces of a study are missing."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import write_report
from tests.analysis import fake_store as F

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEARCHED_VARYING = ["K", "N", "lambda_low", "tau", "beta", "T", "lr", "dropout"]  # alpha varies only with NaNs


@pytest.fixture(scope="module")
def report(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Run the CLI exactly as documented: `python -m analysis.report ...` from the repo root."""
    out = tmp_path_factory.mktemp("report")
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--tracking-uri", store, "--study", F.STUDY, "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def section(md: str, title: str) -> str:
    """Text of the `## <n>. <title>` section of summary.md."""
    start = md.index(f". {title}\n")
    end = md.find("\n## ", start)
    return md[start:end if end >= 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the markdown table rows (header and rule excluded)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_cli_prints_where_the_report_is(report):
    out, proc = report
    assert proc.stdout.strip() == f"report: {out / 'summary.md'}"


def test_summary_has_per_window_table_for_both_arms(report):
    """The per-window table lists valid and w1..w3 for idea and erm with the seed means."""
    out, _ = report
    md = (out / "summary.md").read_text()
    rows = table_rows(section(md, "Metric per window, all targets"))
    got = {(r[1], r[2]): float(r[3]) for r in rows}
    assert set(got) == {(a, p) for a in ("idea", "erm") for p in ("valid", "w1", "w2", "w3")}
    assert got[("idea", "w3")] == pytest.approx(0.085) and got[("erm", "w3")] == pytest.approx(0.07)
    assert "![metric_vs_window_all](metric_vs_window_all.png)" in md
    # the headline answers the question: ERM drops 30% by w3, IDEA 15%, IDEA +21.4% there
    assert "erm 30.0%" in md and "idea 15.0%" in md and "+21.4%" in md
    assert "## Notes" not in md  # nothing missing in this study
    assert "#/compare-runs?runs=[" in md
    ui = md[md.index("## MLflow UI"):]
    assert ":5000" not in ui and "--port PORT" in ui and "http://127.0.0.1:PORT/#/experiments/1/runs" in ui
    assert '&metric="shift_ndcg_at_10"' in ui and "x_axis=step" in ui


def test_ui_links_use_the_given_ui_url(store, tmp_path):
    md = write_report(store, F.STUDY, tmp_path / "r", ui_url="http://127.0.0.1:5123").read_text()
    ui = md[md.index("## MLflow UI"):]
    assert "PORT" not in ui and "--port 5123" in ui and "<http://127.0.0.1:5123/#/experiments/1/runs>" in ui


def test_printed_commands_survive_a_path_with_a_space(store, tmp_path):
    """The serve and rebuild commands in summary.md are shell-quoted: pasted, each path stays one argument."""
    out = tmp_path / "my report"
    md = write_report(store, F.STUDY, out, metric="hr", k=5).read_text()
    commands = [shlex.split(c) for c in re.findall(r"`((?:mlflow ui|python -m analysis\.report) [^`]+)`", md)]
    serve = next(c for c in commands if c[:2] == ["mlflow", "ui"])
    rebuild = next(c for c in commands if c[:3] == ["python", "-m", "analysis.report"])
    assert serve[serve.index("--backend-store-uri") + 1] == store
    assert rebuild[rebuild.index("--out") + 1] == str(out) and rebuild[rebuild.index("--tracking-uri") + 1] == store
    assert rebuild[-2:] == ["--ui-url", "http://127.0.0.1:5001"] and "--metric" in rebuild and "hr" in rebuild


def test_the_paired_section_pairs_the_arms_the_store_names(report):
    """One comparison table, paired by seed, with the pairs the runs' tags give (idea against erm here)."""
    out, _ = report
    md = (out / "summary.md").read_text()
    assert "IDEA vs ERM" not in md and not (out / "idea_vs_erm.csv").exists()
    rows = table_rows(section(md, "Paired by seed"))
    assert {(r[1], r[2]) for r in rows} == {("idea", "erm")} and len(rows) == 4  # valid, w1..w3


def test_numbers_share_one_precision_per_column(report):
    """Each number column has one count of decimals (4 significant digits of its largest value), shares are
    percentages, p-values have 3 decimals; the headline's means share theirs."""
    out, _ = report
    md = (out / "summary.md").read_text()
    rows = table_rows(section(md, "Metric per window, all targets"))
    for column in (3, 4, 6, 7):  # mean, std, ci95_low, ci95_high
        assert len({len(r[column].split(".")[1]) for r in rows}) == 1, [r[column] for r in rows]
    assert [r[3] for r in rows if r[2] == "w3"] == ["0.0700", "0.0850"]  # erm, idea: 0.1 is the column's largest
    paired = table_rows(section(md, "Paired by seed"))
    assert {r[6] for r in paired if r[3] == "w3"} == {"+21.4%"} and all(len(r[12]) == len(r[13]) == 5 for r in paired)
    assert "idea gains over erm, 0.08500 vs 0.07000 (+21.4%; difference +0.01500" in md
    # its interval excludes 0, but not once corrected for the 4 tests of the paired table (1 x 0.042 ... 4 x 0.042)
    assert ("paired p = 0.042, Holm-corrected p = 0.170 over the paired table's 4 tests (not significant as one of "
            "them)") in md


def test_every_table_is_a_csv(report):
    """A CSV per table; per_window_all.csv carries the exact numbers."""
    out, _ = report
    for name in ("results", "per_window_all", "per_window_warm", "degradation", "worst_window", "paired", "warm_gap", "shift", "drop_vs_shift", "gain_vs_shift", "sensitivity", "param_importances"):
        assert (out / f"{name}.csv").is_file(), name
    pw = pd.read_csv(out / "per_window_all.csv").set_index(["arm", "part"])
    assert pw.loc[("idea", "w2"), "mean"] == pytest.approx(0.09)
    assert pw.loc[("erm", "w1"), "std"] == pytest.approx(((0.001 ** 2) * 2 / 1) ** 0.5)  # seeds 0.091, 0.089
    assert len(pd.read_csv(out / "results.csv")) == 7 * 9 + 4 * 4 * 2 * 9
    gains = pd.read_csv(out / "gain_vs_shift.csv")
    assert gains["part"].tolist() == ["w1", "w2", "w3"]
    assert gains["popularity_js_vs_train"].is_monotonic_increasing  # the synthetic shift grows with time


def test_plots_are_valid_pngs(report):
    """Every promised plot exists, starts with the PNG signature and decodes to a real image."""
    from PIL import Image

    out, _ = report
    names = ["metric_vs_window_all", "metric_vs_window_warm", "gain_vs_js"] + [f"sensitivity_{p}" for p in SEARCHED_VARYING]
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names)
    for name in names:
        path = out / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] > 400 and im.size[1] > 300
            assert len(im.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20  # not a blank canvas


def test_report_notes_instead_of_crashing(store, tmp_path):
    """One arm, one seed, no search trials, no shift diagnostics: notes, and no plot that needs them."""
    md = write_report(store, F.OTHER, tmp_path / "other").read_text()
    notes = md.split("## Notes\n", 1)[1].split("\n## ", 1)[0]
    assert "Only one seed for idea" in notes
    assert "the paired comparisons are skipped" in notes
    assert "No search trials" in notes
    assert "Shift diagnostics unavailable" in notes and "no describe.json" in notes
    assert "No warm-target metrics" in notes
    pngs = sorted(p.name for p in (tmp_path / "other").glob("*.png"))
    assert pngs == ["metric_vs_window_all.png"]


def test_report_on_a_study_without_runs(store, tmp_path):
    """A study with only its parent run (nothing finished yet) still gets a summary saying so."""
    md = write_report(store, F.LOGGED, tmp_path / "empty").read_text()
    assert "nothing to summarise" in md
    assert not list((tmp_path / "empty").glob("*.png"))
    assert "none yet" in md  # no final runs to compare in the UI


def test_cli_unknown_study_exits_2_with_the_experiments(store, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--tracking-uri", store, "--study", "typo", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "typo" in proc.stderr and F.STUDY in proc.stderr


def test_notes_on_a_hand_built_frame():
    """notes() flags a single seed, a missing arm (one the study pairs, from `load_arms`), missing warm
    metrics, no trials, and shift diagnostics whose windows are not the study's."""
    from analysis.report import build_tables, notes
    from idea.contract import Arms

    rows = [dict(study="s", arm="idea", stage="final", trial=float("nan"), seed=1, part=p, subset="all",
                 metric="ndcg", k=10, value=v, run_id="r1") for p, v in (("valid", 0.2), ("w1", 0.1), ("w2", 0.05))]
    results = pd.DataFrame(rows)
    shift = pd.DataFrame({"study": "s", "part": ["valid", "w1"], "cold_share": 0.0, "popularity_js_vs_train": [0.1, 0.2]})
    shift.attrs["source"] = "test"
    arms = Arms(("idea", "erm"), "erm", {"idea": "erm"})
    text = "\n".join(notes(results, build_tables(results, shift, {}, arms=arms), shift, arms))
    assert "Only one seed for idea" in text
    assert "No final runs for arm(s) erm" in text
    assert "No warm-target metrics" in text
    assert "No search trials" in text
    assert "['w1'] differ from the study's ['w1', 'w2']" in text
    both = shift.assign(part=["w1", "w2"])
    assert "differ" not in "\n".join(notes(results, build_tables(results, both, {}), both))


def test_ui_links_put_the_base_arm_first_and_one_seed_per_arm():
    """MLflow's chart legend lists runs in the link's order and drops what does not fit: the baseline first,
    and a link with one run per arm (the lowest seed all arms have), so every arm gets a legend entry."""
    from analysis.report import link_runs
    from idea.contract import Arms

    rows = [("r-idea-1", "idea", 1), ("r-idea-2", "idea", 2), ("r-ft-2", "erm_ft", 2), ("r-ft-3", "erm_ft", 3),
            ("r-erm-1", "erm", 1), ("r-erm-2", "erm", 2), ("r-erm-3", "erm", 3)]
    results = pd.DataFrame([{"stage": "final", "run_id": i, "arm": a, "seed": s, "part": p}
                            for i, a, s in rows for p in ("valid", "w1")])
    arms = Arms(("idea", "erm_ft", "erm"), "erm", {"idea": "erm_ft"})
    ids, one = link_runs([i for i, _, _ in rows], results, arms)
    assert ids == ["r-erm-1", "r-erm-2", "r-erm-3", "r-idea-1", "r-idea-2", "r-ft-2", "r-ft-3"]
    assert one == ["r-erm-2", "r-idea-2", "r-ft-2"]  # seed 2 is the one every arm has


def test_headline_of_a_leave_one_out_study_names_the_test_part_and_the_base_arm():
    """No windows (leave-one-out): the headline is the first pair on `test`, and IDEA against the base arm
    follows when its first control (erm_ft) is another arm."""
    from analysis import summaries as S
    from analysis.report import headline
    from idea.contract import Arms

    rows = [dict(study="s", arm=a, stage="final", trial=0, seed=s, part=p, subset="all", metric="ndcg", k=10, value=v)
            for a, base in (("idea", 0.030), ("erm_ft", 0.031), ("erm", 0.032)) for s in (1, 2, 3)
            for p, v in (("valid", 0.04), ("test", base + 0.001 * s * (a == "idea")))]
    results = pd.DataFrame(rows)
    pairs = Arms(("idea", "erm_ft", "erm"), "erm", {"idea": "erm_ft", "erm_ft": "erm"}).pairs()
    tables = {"degradation": S.degradation(results), "paired": S.paired(results, pairs=pairs)}
    line = headline(tables)
    assert line.startswith("On the test part (test), NDCG@10: idea against erm_ft: no measurable difference, "
                           "0.03200 vs 0.03100 (+3.2%")
    assert line.endswith("; against erm (0.03200): no measurable difference, +0.0%, 95% CI [-7.8%, +7.8%], p = 1.000, "
                         "Holm-corrected p = 1.000.")


def _headline_of(diffs: list[float], control: float = 0.05) -> str:
    """The headline of a study whose only pair, idea against erm on w1, differs by `diffs` seed by seed."""
    from analysis import summaries as S
    from analysis.report import headline

    rows = [dict(study="s", arm=a, stage="final", trial=0, seed=s, part=p, subset="all", metric="ndcg", k=10,
                 value=control + d * (a == "idea"))
            for a in ("idea", "erm") for s, d in enumerate(diffs, 1) for p in ("valid", "w1")]
    results = pd.DataFrame(rows)
    return headline({"degradation": S.degradation(results), "paired": S.paired(results, pairs=[("idea", "erm")])})


def test_a_difference_whose_interval_spans_zero_is_never_worded_as_a_gain():
    """A positive mean (+0.002) with a 95% CI across 0 is "no measurable difference", whatever its sign; only an
    interval that excludes 0 is a gain or a loss, and a p cited comes with its Holm-corrected value."""
    line = _headline_of([0.004, -0.002, 0.004])
    assert "idea against erm: no measurable difference, 0.05200 vs 0.05000 (+4.0%" in line
    assert "95% CI [-0.00661, +0.01061]" in line
    assert not re.search(r"\b(gain|lose)", line)
    assert "paired p = 0.423, Holm-corrected p = 0.845 over the paired table's 2 tests;" in line  # valid and w1
    gains = _headline_of([0.004, 0.003, 0.005])
    assert "idea gains over erm, 0.05400 vs 0.05000" in gains and "no measurable" not in gains
    assert "paired p = 0.020, Holm-corrected p = 0.040 over" in gains and "not significant" not in gains
    assert "idea loses to erm, 0.04900 vs 0.05000" in _headline_of([-0.001, -0.0012, -0.0008])
