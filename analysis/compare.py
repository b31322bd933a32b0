"""Several studies in one table: every arm against its control, paired by seed, per study and part, with
the smallest effect each comparison could have detected; and a forest plot of the last window.

    python -m analysis.compare --study-dir outputs/beauty --study-dir outputs/sports-gpu --out outputs/compare
    python -m analysis.compare --tracking-uri sqlite:///$PWD/outputs/all.db --pattern 'beauty*' --out DIR
    python -m analysis.compare --report-dir docs/results/beauty-gru4rec --report-dir ... --out DIR

A study folder (`--study-dir`) stands for its own store and the study named after the folder; with
`--tracking-uri`, `--study NAME` (repeatable) or `--pattern GLOB` picks the studies of that store (default:
every study in it); a report folder (`--report-dir`, what `analysis.report` writes and docs/results keeps)
stands for its study through `results.csv` and `study.json`, so committed reports compare without their
stores. Writes `compare.csv`, `compare.md` and `forest.png` under `--out`.
"""
from __future__ import annotations

import fnmatch
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import summaries as S
from analysis.load import StudyNotFoundError, read_study, study_names
from analysis.plots import metric_label
from analysis.report import ABOUT_FILE, RESULTS_FILE
from idea.argparsing import StrictArgumentParser
from idea.contract import KS, METRICS, SELECTION, VALID, Arms, Tag

COMPARE_COLUMNS = ["study", "dataset", "protocol", "backbone", "selection", "arm", "control", "part", "control_mean",
                   "mean_diff", "rel_gain", "ci_low", "ci_high", "p_paired", "p_holm", "n_pairs", "mde", "mde_rel"]


@dataclass(frozen=True)
class StudyData:
    """What the table needs of one study: its tidy results frame, its (arm, control) pairs and its labels."""

    results: pd.DataFrame
    pairs: list[tuple[str, str]]
    dataset: str | None
    protocol: str | None
    backbone: str | None


def from_store(tracking_uri: str, study: str) -> StudyData:
    """A study as its MLflow store holds it (`read_study`: its runs read once)."""
    read = read_study(tracking_uri, study)
    tags = read.parent_tags()
    return StudyData(read.results(), read.arms().pairs(), tags.get(Tag.DATASET), read.shift().attrs.get("protocol"),
                     tags.get(Tag.BACKBONE))


def from_report(folder: Path) -> StudyData:
    """A study as its report folder keeps it: `results.csv` (the frame `StudyRead.results` gave) and `study.json`."""
    folder = Path(folder)
    for name in (RESULTS_FILE, ABOUT_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} does not exist: --report-dir takes a folder that "
                                    f"`python -m analysis.report` wrote (it holds {RESULTS_FILE} and {ABOUT_FILE})")
    about = json.loads((folder / ABOUT_FILE).read_text())
    arms = Arms(tuple(about["arms"]["order"]), about["arms"].get("base"), about["arms"].get("controls", {}))
    return StudyData(pd.read_csv(folder / RESULTS_FILE), arms.pairs(), about.get("dataset"), about.get("protocol"),
                     about.get("backbone"))


def compare(studies: list[tuple[str, str] | StudyData], metric: str = SELECTION[0], k: int = SELECTION[1],
            subset: str = "all") -> pd.DataFrame:
    """One row per study x selection x (arm, control) x part, from `(tracking_uri, study)` pairs or `StudyData`:
    the paired differences (`analysis.summaries.paired`, the study's own pairs; p_holm corrected over the rows of
    one study and selection) with its dataset, protocol and backbone; `selection` is validation, or oracle
    (`analysis.summaries.oracle_view`: selection on the first test window, on the windows after it) for a study
    run with `oracle: true`."""
    frames = []
    for item in studies:
        data = item if isinstance(item, StudyData) else from_store(*item)
        tables = [S.paired(data.results, metric, k, subset, data.pairs).assign(selection="validation"),
                  S.paired(S.oracle_view(data.results), metric, k, subset, data.pairs).assign(selection="oracle")]
        tables = [t for t in tables if not t.empty]
        if tables:
            frames.append(pd.concat(tables, ignore_index=True).assign(
                dataset=data.dataset, protocol=data.protocol, backbone=data.backbone))
    if not frames:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[COMPARE_COLUMNS]


def last_windows(table: pd.DataFrame) -> pd.DataFrame:
    """Each study's rows of its last test part: its last window, or leave-one-out's test part."""
    def last(rows: pd.DataFrame) -> str | None:
        tests = S.windows(rows) or [p for p in pd.unique(rows["part"]) if p != VALID]
        return tests[-1] if tests else None

    ends = {study: last(rows) for study, rows in table.groupby("study")}
    return table[[ends.get(s) == p for s, p in zip(table["study"], table["part"])]].reset_index(drop=True)


def forest(table: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1]) -> Figure:
    """One row per study x pair on its last window: the relative difference (arm − control) / control with
    its paired 95% interval as a bar, the ± minimum detectable effect as a grey band, and a zero line."""
    rows = last_windows(table)
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(len(rows), 1)))
    ax = fig.add_subplot()
    ax.axvline(0, color="black", lw=1)
    for y, r in enumerate(rows.itertuples()):
        scale = 100 / r.control_mean if r.control_mean else np.nan
        if pd.notna(r.mde):
            ax.fill_betweenx([y - 0.3, y + 0.3], -r.mde * scale, r.mde * scale, color="0.88", lw=0)
        if pd.notna(r.ci_low):
            ax.plot([r.ci_low * scale, r.ci_high * scale], [y, y], color="#1f77b4", lw=2)
        ax.plot([r.mean_diff * scale], [y], "o", color="#1f77b4")
    ax.set_yticks(range(len(rows)), [f"{r.study}: {r.arm} vs {r.control} ({r.part})"
                                     + (" [oracle]" if r.selection == "oracle" else "") for r in rows.itertuples()])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric_label(metric, k)}: arm − control, % of the control")
    ax.set_title("dot: mean paired difference · bar: its 95% CI\ngrey: ± minimum detectable effect", fontsize=9)
    fig.tight_layout()
    return fig


def _markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for col in ("control_mean", "mean_diff", "ci_low", "ci_high", "mde"):
        shown[col] = shown[col].map(lambda v: f"{v:+.2e}" if col != "control_mean" and pd.notna(v) else
                                    (f"{v:.4g}" if pd.notna(v) else "-"))
    shown["rel_gain"] = shown["rel_gain"].map(lambda v: f"{100 * v:+.1f}%" if pd.notna(v) else "-")
    shown["mde_rel"] = shown["mde_rel"].map(lambda v: f"±{100 * v:.1f}%" if pd.notna(v) else "-")
    for col in ("p_paired", "p_holm"):
        shown[col] = shown[col].map(lambda v: f"{v:.3f}" if pd.notna(v) else "-")
    return shown.to_markdown(index=False, disable_numparse=True)


def write_compare(studies: list[tuple[str, str] | StudyData], out_dir: Path, metric: str = SELECTION[0],
                  k: int = SELECTION[1]) -> Path:
    """`compare.csv`, `compare.md` (the table, the last windows first) and `forest.png` under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = compare(studies, metric, k)
    table.to_csv(out_dir / "compare.csv", index=False)
    forest(table, metric, k).savefig(out_dir / "forest.png", dpi=120)
    label = metric_label(metric, k)
    md = [f"# Studies compared on {label}: {', '.join(dict.fromkeys(table['study']))}", "",
          "Every arm against its control, paired by seed (the studies' own pairs); mde is the smallest true "
          "difference the seeds could detect (two-sided 0.05, power 0.8): a difference inside ±mde is what "
          "they cannot tell from none. p_holm is p_paired after Holm's correction over one study's rows of one "
          "selection (every pair and part: what its report's paired table holds). Rows with selection `oracle` "
          "(studies run with `oracle: true`) pick each arm's configuration on the first test window and cover the "
          "later windows only: selection on the first test window, which uses test data, so never a result, and no "
          "upper bound either: a pick on the first window need not be the best on the later ones (in ml100k-sasrec "
          "erm_ft's first-window pick scored below its validation pick). ![forest](forest.png)", "", "## Last test part of each study", "",
          _markdown(last_windows(table)), "", "## Every part", "", _markdown(table), ""]
    path = out_dir / "compare.md"
    path.write_text("\n".join(md))
    return path


def main(argv: list[str] | None = None) -> int:
    p = StrictArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--study-dir", action="append", default=[], help="a study folder (its mlflow.db); repeatable")
    p.add_argument("--tracking-uri", action="append", default=[], help="an MLflow store; repeatable")
    p.add_argument("--study", action="append", default=[], help="a study of the --tracking-uri stores; repeatable")
    p.add_argument("--pattern", help="studies of the --tracking-uri stores whose names match this glob")
    p.add_argument("--report-dir", action="append", default=[],
                   help="a report folder (results.csv and study.json, as analysis.report writes it); repeatable")
    p.add_argument("--out", required=True, help="folder for compare.csv, compare.md and forest.png")
    p.add_argument("--metric", default=SELECTION[0], choices=METRICS)
    p.add_argument("--k", type=int, default=SELECTION[1], choices=KS)
    args = p.parse_args(argv)
    studies = []
    for folder in args.study_dir:
        db = Path(folder).resolve() / "mlflow.db"
        if not db.is_file():
            print(f"error: {db} does not exist: --study-dir takes a study folder (<out>/<study>)", file=sys.stderr)
            return 2
        studies.append((f"sqlite:///{db}", db.parent.name))
    try:
        for uri in args.tracking_uri:
            names = args.study or study_names(uri, args.pattern)
            studies += [(uri, name) for name in names if args.pattern is None or fnmatch.fnmatch(name, args.pattern)]
        studies += [from_report(Path(folder)) for folder in args.report_dir]
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not studies:
        print("error: no study to compare: give --study-dir, --report-dir, or --tracking-uri with studies in it",
              file=sys.stderr)
        return 2
    try:
        path = write_compare(studies, Path(args.out), args.metric, args.k)
    except StudyNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"compared {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
