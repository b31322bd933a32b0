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

from analysis.load import read_study
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
    # the port of the `mlflow ui` command a study prints (studies/driver.py), not a placeholder to fill in
    assert ":5000" not in ui and "PORT" not in ui and "--port 5001`" in ui
    assert "<http://127.0.0.1:5001/#/experiments/1/runs>" in ui
    assert "<http://127.0.0.1:5001/#/experiments/1/runs?compareRunsMode=CHART&viewStateShareKey=shift_ndcg_at_10>" in ui


def test_ui_links_use_the_given_ui_url(store, tmp_path):
    md = write_report(read_study(store, F.STUDY), tmp_path / "r", ui_url="http://127.0.0.1:5123").read_text()
    ui = md[md.index("## MLflow UI"):]
    assert ":5001" not in ui and "--port 5123" in ui and "<http://127.0.0.1:5123/#/experiments/1/runs>" in ui


def test_printed_commands_survive_a_path_with_a_space(store, tmp_path):
    """The serve and rebuild commands in summary.md are shell-quoted: pasted, each path stays one argument."""
    out = tmp_path / "my report"
    md = write_report(read_study(store, F.STUDY), out, metric="hr", k=5).read_text()
    commands = [shlex.split(c) for c in re.findall(r"`((?:mlflow ui|python -m analysis\.report) [^`]+)`", md)]
    serve = next(c for c in commands if c[:2] == ["mlflow", "ui"])
    rebuild = next(c for c in commands if c[:3] == ["python", "-m", "analysis.report"])
    assert serve[serve.index("--backend-store-uri") + 1] == store
    assert rebuild[rebuild.index("--out") + 1] == str(out) and rebuild[rebuild.index("--tracking-uri") + 1] == store
    assert rebuild[-2:] == ["--ui-url", "http://127.0.0.1:<port>"] and "--metric" in rebuild and "hr" in rebuild


def test_the_paired_section_pairs_the_arms_the_store_names(report):
    """One comparison table, paired by seed, with the pairs the runs' tags give (idea against erm here)."""
    out, _ = report
    md = (out / "summary.md").read_text()
    assert "IDEA vs ERM" not in md and not (out / "idea_vs_erm.csv").exists()
    rows = table_rows(section(md, "Paired by seed"))
    assert {(r[1], r[2]) for r in rows} == {("idea", "erm")} and len(rows) == 4  # valid, w1..w3


def test_the_stopping_section_says_how_each_final_run_ended(report):
    """One row per final run from its logged epochs: three epochs, best at 2, patience 1: early stopping; counts
    are written whole. IDEA's validation against its seed's ERM run (0.102 - 0.101, 0.098 - 0.099); none for
    ERM, the base arm."""
    out, _ = report
    rows = table_rows(section((out / "summary.md").read_text(), "How each final run ended"))
    assert sorted(r[3] for r in rows) == ["erm-seed1", "erm-seed2", "idea-seed1", "idea-seed2"]
    assert {tuple(r[4:9]) for r in rows} == {("3", "2", "3", "1", "early stopping")}
    assert {r[3]: r[9] for r in rows} == {"idea-seed1": "0.001000", "idea-seed2": "-0.001000", "erm-seed1": "",
                                          "erm-seed2": ""}


def test_the_training_time_section_counts_every_run_of_every_stage(report):
    """Epochs and their seconds per arm and stage, from every run whatever its status (idea's search: 4 finished
    trials and a failed one), in the study's order of arms; each run logs 1 + 2 + 3 s over 3 epochs."""
    out, _ = report
    rows = table_rows(section((out / "summary.md").read_text(), "Training time"))
    assert [r[1:5] for r in rows] == [["idea", "search", "5", "15"], ["idea", "final", "2", "6"],
                                      ["erm", "search", "3", "9"], ["erm", "final", "2", "6"],
                                      ["all", "all", "12", "36"]]
    assert [float(r[5]) for r in rows] == pytest.approx([30 / 3600, 12 / 3600, 18 / 3600, 12 / 3600, 72 / 3600],
                                                       abs=5e-6)  # to the column's 5 decimals
    assert {r[6] for r in rows} == {"2.000"}


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
    assert "idea against erm on w3: 0.08500 vs 0.07000, difference +0.01500" in md
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
    md = write_report(read_study(store, F.OTHER), tmp_path / "other").read_text()
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
    md = write_report(read_study(store, F.LOGGED), tmp_path / "empty").read_text()
    assert "nothing to summarise" in md
    assert not list((tmp_path / "empty").glob("*.png"))
    assert "none yet" in md  # no final runs to compare in the UI


def test_a_report_reads_the_study_from_mlflow_once(store, tmp_path, monkeypatch):
    """`python -m analysis.report` pages the study's runs once (the fake store fits one page) and downloads
    each parent file once, however many tables, notes and checks of completeness use them."""
    from collections import Counter

    from mlflow.tracking import MlflowClient

    from analysis.report import main

    calls = Counter()
    for name in ("search_runs", "download_artifacts"):
        def counted(self, *args, _real=getattr(MlflowClient, name), _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(MlflowClient, name, counted)
    assert main(["--tracking-uri", store, "--study", F.STUDY, "--out", str(tmp_path / "report")]) == 0
    assert calls == {"search_runs": 1, "download_artifacts": 2}  # study.yaml and describe.json


def test_cli_unknown_study_exits_2_with_the_experiments(store, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--tracking-uri", store, "--study", "typo", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "typo" in proc.stderr and F.STUDY in proc.stderr


def test_notes_on_a_hand_built_frame():
    """notes() flags a single seed, a missing arm (one the study pairs, from `StudyRead.arms`), missing warm
    metrics, no trials, and shift diagnostics whose windows are not the study's."""
    from analysis.report import build_tables, notes
    from idea.contract import Arms

    rows = [dict(study="s", arm="idea", stage="final", trial=float("nan"), seed=1, part=p, subset="all",
                 metric="ndcg", k=10, value=v, run_id="r1", run_name="idea-seed1")
            for p, v in (("valid", 0.2), ("w1", 0.1), ("w2", 0.05))]
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


def test_compare_link_puts_the_base_arm_first():
    """The compare page lists the runs in the link's order: the base arm's first, then the display order."""
    from analysis.report import link_runs
    from idea.contract import Arms

    rows = [("r-idea-1", "idea", 1), ("r-idea-2", "idea", 2), ("r-ft-2", "erm_ft", 2), ("r-ft-3", "erm_ft", 3),
            ("r-erm-1", "erm", 1), ("r-erm-2", "erm", 2), ("r-erm-3", "erm", 3)]
    results = pd.DataFrame([{"stage": "final", "run_id": i, "arm": a, "seed": s, "part": p}
                            for i, a, s in rows for p in ("valid", "w1")])
    arms = Arms(("idea", "erm_ft", "erm"), "erm", {"idea": "erm_ft"})
    assert link_runs([i for i, _, _ in rows], results, arms) == [
        "r-erm-1", "r-erm-2", "r-erm-3", "r-idea-1", "r-idea-2", "r-ft-2", "r-ft-3"]


def test_notes_name_final_runs_whose_values_coincide():
    """Two final runs with the same value on every part draw one line in MLflow's charts: the notes name them (and
    only them: a run equal to another on some parts only is not named)."""
    from analysis.report import build_tables, notes

    values = {"dros-seed1": (0.2, 0.1, 0.05), "erm_ft-seed1": (0.2, 0.1, 0.05), "idea-seed1": (0.2, 0.1, 0.06),
              "erm-seed1": (0.21, 0.1, 0.05)}
    results = pd.DataFrame([dict(study="s", arm=n.split("-")[0], stage="final", trial=float("nan"), seed=1, part=p,
                                 subset="all", metric="ndcg", k=10, value=v, run_id=n, run_name=n)
                            for n, vs in values.items() for p, v in zip(("valid", "w1", "w2"), vs)])
    shift = pd.DataFrame({"study": "s", "part": ["w1", "w2"], "cold_share": 0.0, "popularity_js_vs_train": 0.1})
    said = [n for n in notes(results, build_tables(results, shift, {}), shift) if n.startswith("Identical")]
    assert said == ["Identical NDCG@10 on every part (valid, w1, w2): `dros-seed1` = `erm_ft-seed1`; in MLflow's "
                    "charts their lines and bars lie on one another, so only one shows."]


VERDICTS = ("gains over", "loses to", "shows no measurable difference from", "no interval")


def assert_headline_form(lines: list[str]) -> None:
    """The first line is one short sentence with one verdict; no sentence mixes an absolute interval with a
    relative one or with any percentage."""
    first = lines[0]
    assert len(first.split()) <= 30 and re.fullmatch(r"[^.]*(\.\d[^.]*)*\.", first), first  # one sentence
    assert sum(v in first for v in VERDICTS) == 1, first
    for sentence in re.split(r"(?<=\.) (?=[A-Za-z])", " ".join(lines)):
        intervals = re.findall(r"\[([^\]]+)\]", sentence)
        relative = {all(end.strip().endswith("%") for end in iv.split(",")) for iv in intervals}
        assert len(relative) <= 1, sentence  # one kind of interval
        # never an absolute CI beside a relative %
        assert relative != {False} or "%" not in sentence.replace("95% CI", ""), sentence


def test_the_report_opens_with_a_short_verdict_then_the_detail(report):
    """summary.md's first bold line is the verdict on the first pair; the detail follows it, the base arm (erm)
    first where a sentence lists the arms."""
    out, _ = report
    md = (out / "summary.md").read_text()
    first, detail = md.split("\n**", 1)[1].split("\n\n", 2)[:2]
    assert first == ("idea gains over erm on w3 (NDCG@10 +21.4%, 95% CI [+3.3%, +39.6%]), but not once Holm-corrected "
                     "over the report's 4 tests.**")
    assert detail.startswith("On the last window (w3) NDCG@10 falls from validation by erm 30.0%, idea 15.0%. idea "
                             "against erm on w3: 0.08500 vs 0.07000, difference +0.01500, 95% CI [+0.00229, +0.02771]")
    assert_headline_form([first.removesuffix("**"), *re.split(r"(?<=\.) (?=[A-Za-z])", detail)])


def test_headline_of_a_leave_one_out_study_names_the_test_part_and_the_base_arm():
    """No windows (leave-one-out): the verdict is the first pair on `test`, and IDEA against the base arm
    follows when its first control (erm_ft) is another arm, in a sentence of its own."""
    from analysis import summaries as S
    from analysis.report import headline
    from idea.contract import Arms

    rows = [dict(study="s", arm=a, stage="final", trial=0, seed=s, part=p, subset="all", metric="ndcg", k=10, value=v)
            for a, base in (("idea", 0.030), ("erm_ft", 0.031), ("erm", 0.032)) for s in (1, 2, 3)
            for p, v in (("valid", 0.04), ("test", base + 0.001 * s * (a == "idea")))]
    results = pd.DataFrame(rows)
    arms = Arms(("idea", "erm_ft", "erm"), "erm", {"idea": "erm_ft", "erm_ft": "erm"})
    tables = {"degradation": S.degradation(results), "paired": S.paired(results, pairs=arms.pairs())}
    lines = headline(tables, arms=arms)
    assert lines[0] == ("idea shows no measurable difference from erm_ft on test (NDCG@10 +3.2%, 95% CI [-4.8%, "
                        "+11.2%]).")
    assert lines[1].startswith("idea against erm_ft on test: 0.03200 vs 0.03100, difference +0.00100, 95% CI "
                               "[-0.00148, +0.00348] over 3 seeds paired by seed; paired p = 0.225, ")
    # the MDE (3.264 x the differences' SD of 0.001 over 3 pairs) is 10.5% of erm_ft's 0.031: the seeds for 3%
    assert lines[2] == "That is 10.5% of erm_ft's mean; about 12 seeds would bring it to 3%."
    assert lines[3] == ("Against erm, idea: no measurable difference, +0.0%, 95% CI [-7.8%, +7.8%], p = 1.000, "
                        "Holm-corrected p = 1.000.")
    assert_headline_form(lines)


def _headline_of(diffs: list[float], control: float = 0.05, arms=None) -> list[str]:
    """The headline of a study whose only pair, idea against erm, differs by `diffs` seed by seed (on valid and
    w1; dros, an arm without a pair, scores as erm), with `arms`' roles."""
    from analysis import summaries as S
    from analysis.report import headline

    rows = [dict(study="s", arm=a, stage="final", trial=0, seed=s, part=p, subset="all", metric="ndcg", k=10,
                 value=control * (1 if p == "valid" else 0.9) + d * (a == "idea"))
            for a in ("idea", "erm", "dros") for s, d in enumerate(diffs, 1) for p in ("valid", "w1")]
    results = pd.DataFrame(rows)
    return headline({"degradation": S.degradation(results), "paired": S.paired(results, pairs=[("idea", "erm")])},
                    arms=arms)


def test_a_difference_whose_interval_spans_zero_is_never_worded_as_a_gain():
    """A positive mean (+0.002) with a 95% CI across 0 is "no measurable difference", whatever its sign; only an
    interval that excludes 0 is a gain or a loss, and a p cited comes with its Holm-corrected value. Each first
    line is short, holds one verdict, and each sentence one kind of interval."""
    spans = _headline_of([0.004, -0.002, 0.004])
    assert spans[0] == "idea shows no measurable difference from erm on w1 (NDCG@10 +4.4%, 95% CI [-14.7%, +23.6%])."
    assert spans[2].startswith("idea against erm on w1: 0.04700 vs 0.04500, difference +0.00200, 95% CI [-0.00661, "
                               "+0.01061] over 3 seeds paired by seed; paired p = 0.423, Holm-corrected p = 0.845 over "
                               "the paired table's 2 tests;")  # valid and w1
    assert not re.search(r"\b(gain|lose)", " ".join(spans))
    gains = _headline_of([0.004, 0.003, 0.005])
    assert gains[0] == "idea gains over erm on w1 (NDCG@10 +8.9%, 95% CI [+3.4%, +14.4%])."  # Holm-corrected 0.040
    assert "paired p = 0.020, Holm-corrected p = 0.040 over" in gains[2] and "not significant" not in gains[2]
    loses = _headline_of([-0.001, -0.0012, -0.0008])
    assert loses[0] == "idea loses to erm on w1 (NDCG@10 -2.2%, 95% CI [-3.3%, -1.1%])."
    single = _headline_of([0.004])
    assert single[0] == "idea against erm on w1: no interval (fewer than 2 paired seeds); NDCG@10 +8.9%."
    for lines in (spans, gains, loses, single):
        assert_headline_form(lines)


def test_the_headline_lists_the_base_arm_first_then_the_study_order():
    """The degradation sentence names the base arm first (erm), then the arms in the study's order, not the
    table's alphabetical one (dros, erm, idea)."""
    from idea.contract import Arms

    lines = _headline_of([0.004, 0.003, 0.005], arms=Arms(("idea", "dros", "erm"), "erm", {}))
    assert lines[1] == "On the last window (w1) NDCG@10 falls from validation by erm 10.0%, idea 9.3%, dros 10.0%."
