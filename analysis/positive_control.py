"""The positive control's answer across strengths: the gain there is to find, and the share of it each arm finds.

    python -m analysis.positive_control --report-dir docs/results/promo-0 --report-dir docs/results/promo-50 \\
        --report-dir docs/results/promo-100 --out docs/results/promo

Each report folder is one `promo-*` study (studies/configs/_promo.yaml). Every arm there fine-tunes the same
ERM models, seed by seed; `clean` is erm_ft with the promotions masked, an oracle that is told which items are
spurious. So per seed, clean - erm_ft is the gain available to fine-tuning, and arm - erm_ft what an arm found
of it; the share is their ratio of means over seeds, with a percentile bootstrap interval over seeds (the seeds
resampled in pairs). `test` is the mean over the test windows per seed. Writes positive_control.csv, .md, .png.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from analysis.compare import from_report
from analysis.plots import metric_label
from idea.argparsing import StrictArgumentParser
from idea.contract import KS, METRICS, SELECTION, VALID, Stage

CLEAN, CONTROL, BASE = "clean", "erm_ft", "erm"
TEST = "test"  # the mean over the test windows, per seed
COLUMNS = ["strength", "part", "arm", "n_seeds", "control_mean", "diff", "ci_low", "ci_high", "share", "share_low",
           "share_high"]


def strength_of(dataset: str | None) -> float:
    """0.5 for synthetic-promo50: the promotions' link strength, from the dataset's name."""
    m = re.fullmatch(r"synthetic-promo(\d+)", str(dataset))
    if m is None:
        raise ValueError(f"dataset {dataset!r} is not a positive-control dataset (synthetic-promo<percent>): give "
                         "the report folders of the promo-* studies")
    return int(m.group(1)) / 100


def seed_values(results: pd.DataFrame, metric: str, k: int) -> pd.DataFrame:
    """Final runs' metric per (part, seed) x arm, all targets, with part `test` = the mean over test windows."""
    df = results.loc[(results["stage"] == Stage.FINAL) & (results["subset"] == "all") & (results["metric"] == metric)
                     & (results["k"] == k)]
    per = df.groupby(["part", "seed", "arm"])["value"].mean().unstack("arm")
    windows = per.loc[[p for p in per.index.get_level_values("part").unique() if p != VALID]]
    test = windows.groupby(level="seed").mean()
    test.index = pd.MultiIndex.from_product([[TEST], test.index], names=["part", "seed"])
    return pd.concat([per, test])


def _interval(diff: np.ndarray) -> tuple[float, float]:
    if len(diff) < 2:
        return np.nan, np.nan
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    return diff.mean() - half, diff.mean() + half


def recovery(results: pd.DataFrame, strength: float, metric: str = SELECTION[0], k: int = SELECTION[1],
             draws: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per part and arm: arm - erm_ft over the seeds both have (mean, t-based 95% interval) and, where the
    available gain (clean - erm_ft) has an interval above 0, the share of it the arm found with its bootstrap
    interval; the clean row is the available gain itself."""
    values = seed_values(results, metric, k)
    rng = np.random.default_rng(seed)
    rows = []
    for part, table in values.groupby(level="part", sort=False):
        table = table.droplevel("part")
        if CLEAN not in table or CONTROL not in table:
            continue
        avail = (table[CLEAN] - table[CONTROL]).dropna()
        available = len(avail) >= 2 and _interval(avail.to_numpy())[0] > 0
        for arm in [a for a in table.columns if a != CONTROL]:
            both = table[list(dict.fromkeys([arm, CLEAN, CONTROL]))].dropna()
            diff = (both[arm] - both[CONTROL]).to_numpy()
            gain = (both[CLEAN] - both[CONTROL]).to_numpy()
            share = lo = hi = np.nan
            if available and len(both) >= 2:
                share = diff.mean() / gain.mean()
                idx = rng.integers(0, len(both), (draws, len(both)))  # seeds resampled, pairs kept
                boot = diff[idx].mean(1) / gain[idx].mean(1)
                lo, hi = np.percentile(boot, [2.5, 97.5])
            ci_low, ci_high = _interval(diff)
            rows.append({"strength": strength, "part": part, "arm": arm, "n_seeds": len(both),
                         "control_mean": both[CONTROL].mean(), "diff": diff.mean(), "ci_low": ci_low,
                         "ci_high": ci_high, "share": share, "share_low": lo, "share_high": hi})
    return pd.DataFrame(rows, columns=COLUMNS)


def words(rows: pd.DataFrame) -> list[str]:
    """One sentence per strength on the test windows' mean: the gain available, then each arm's share of it,
    worded from the intervals only."""
    out = []
    for strength, g in rows.loc[rows["part"] == TEST].groupby("strength"):
        clean = g.loc[g["arm"] == CLEAN].iloc[0]
        gain = f"{clean['diff']:+.4f} (95% CI [{clean['ci_low']:+.4f}, {clean['ci_high']:+.4f}])"
        if not clean["ci_low"] > 0:
            out.append(f"Strength {strength:g}: no gain available (masking the promotions changes erm_ft by {gain}), "
                       "so no arm has anything to recover.")
            continue
        parts = []
        others = g.loc[~g["arm"].isin([CLEAN, BASE])]
        for _, r in others.sort_values("arm", key=lambda a: a != "idea", kind="stable").iterrows():  # idea first
            if r["ci_low"] > 0:
                found = (f"finds {r['share']:.0%} of it ({r['diff']:+.4f}; bootstrap 95% CI of the share "
                         f"[{r['share_low']:.0%}, {r['share_high']:.0%}])")
            elif r["ci_high"] < 0:
                found = f"does worse than erm_ft ({r['share']:.0%} of the gain)"
            else:
                found = (f"finds no measurable part of it ({r['diff']:+.4f}, 95% CI [{r['ci_low']:+.4f}, "
                         f"{r['ci_high']:+.4f}])")
            parts.append(f"{r['arm']} {found}")
        if (g["arm"] == BASE).any():  # whether plain fine-tuning already moved from its start
            r = g.loc[g["arm"] == BASE].iloc[0]
            moved = "gains" if r["ci_high"] < 0 else "loses" if r["ci_low"] > 0 else "shows no measurable change"
            parts.append(f"erm_ft itself {moved} against its ERM start ({-r['diff']:+.4f}, 95% CI "
                         f"[{-r['ci_high']:+.4f}, {-r['ci_low']:+.4f}])")
        out.append(f"Strength {strength:g}: masking the promotions gains {gain} over erm_ft on the test windows; "
                   + "; ".join(parts) + ".")
    return out


def dose_response(rows: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1]) -> Figure:
    """Each arm's difference from erm_ft on the test windows' mean against the strength, with 95% intervals."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    test = rows.loc[rows["part"] == TEST]
    arms = list(dict.fromkeys(test["arm"]))
    for i, arm in enumerate(arms):
        g = test.loc[test["arm"] == arm].sort_values("strength")
        x = g["strength"] + (i - (len(arms) - 1) / 2) * 0.015  # side by side, not on top of each other
        ax.errorbar(x, g["diff"], yerr=[g["diff"] - g["ci_low"], g["ci_high"] - g["diff"]], marker="o", capsize=3,
                    label=f"{arm} (oracle: told the spurious items)" if arm == CLEAN else arm)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("strength of the promotions' spurious link")
    ax.set_ylabel(f"{metric_label(metric, k)} minus erm_ft (test windows)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write(folders: list[Path], out_dir: Path, metric: str = SELECTION[0], k: int = SELECTION[1]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    for folder in folders:
        data = from_report(folder)
        frames.append(recovery(data.results, strength_of(data.dataset), metric, k))
    rows = pd.concat(frames, ignore_index=True).sort_values(["strength", "part"], kind="stable")
    rows.to_csv(out_dir / "positive_control.csv", index=False)
    dose_response(rows, metric, k).savefig(out_dir / "positive_control.png", dpi=110)
    table = rows.loc[rows["part"] == TEST].round(4).to_markdown(index=False)
    md = ["# Positive control: the gain there is to find, and what each arm finds", "",
          *words(rows), "", f"Test windows' mean ({metric_label(metric, k)}), every arm against erm_ft:", "", table, "",
          "![dose-response](positive_control.png)", "",
          "Per window and on validation: `positive_control.csv`. " + __doc__.split("\n\n")[2].replace("\n", " "), ""]
    path = out_dir / "positive_control.md"
    path.write_text("\n".join(md))
    return path


def main(argv: list[str] | None = None) -> int:
    p = StrictArgumentParser(prog="python -m analysis.positive_control", description=__doc__.split("\n\n")[0])
    p.add_argument("--report-dir", action="append", required=True,
                   help="the report folder of one promo-* study (results.csv and study.json); repeatable")
    p.add_argument("--out", required=True, help="folder for positive_control.csv, .md and .png")
    p.add_argument("--metric", default=SELECTION[0], choices=METRICS)
    p.add_argument("--k", type=int, default=SELECTION[1], choices=KS)
    args = p.parse_args(argv)
    try:
        path = write([Path(f) for f in args.report_dir], Path(args.out), args.metric, args.k)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"positive control: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
