"""Shift-robustness report of one study: ``summary.md``, a CSV per table and PNG plots.

    python -m analysis.report --tracking-uri sqlite:///$PWD/outputs/synthetic-smoke/mlflow.db \\
        --study synthetic-smoke --out outputs/synthetic-smoke/report

`build_tables` and `build_figures` are what both this report and the notebook
(analysis/shift_robustness.ipynb) show; `write_report` writes them to a folder.
"""
from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import yaml

from analysis import plots
from analysis.atomic import atomic_path, write_text
from analysis import mechanism as M
from analysis import stopping as ST
from analysis import summaries as S
from analysis import training_time as TT
from analysis.load import StudyNotFoundError, StudyRead, read_study
from analysis.mlflow_ui import (UI_PORT, chart_view, compare_url, is_server, runs_url, share_view, ui_base_url,
                                ui_command, view_url)
from idea.argparsing import StrictArgumentParser
from idea.contract import (KS, METRICS, SELECTION, TRUE, VALID, Arms, Stage, Tag, best_state_key, metric_name,
                           shift_key)

__all__ = ["TABLES", "build_tables", "build_figures", "headline", "notes", "identical_runs", "missing_parts",
           "history_keys", "read_history", "register_chart_view", "link_runs", "write_report", "main"]

# name -> (section title, one-line explanation); the order of summary.md
TABLES = {
    "per_window_all": ("Metric per window, all targets",
                       "Final runs: mean, std and t-based 95% CI over seeds, per arm and part (valid, then test windows "
                       "later and later in time)."),
    "per_window_warm": ("Metric per window, warm targets",
                        "The same on targets whose item occurs in training (cold items removed)."),
    "degradation": ("Degradation from validation",
                    "rel_drop = (valid - window) / valid per seed, averaged (positive = worse than validation); slope = "
                    "least-squares change of the mean per window step."),
    "worst_window": ("Worst window", "Per seed the minimum over test windows, then averaged per arm."),
    "paired": ("Paired by seed",
               "Each arm against its own control where that is not the base arm (first), then every arm against the "
               "base arm, as the study file sets them. Seed s of every fine-tuning arm starts from the base arm's "
               "final seed s: mean_diff = arm - control over the shared seeds with a t-based 95% interval and the "
               "paired t-test; mde is the minimum detectable effect, the smallest true difference this many seeds "
               "would find with a two-sided test at 0.05 and power 0.8, from the SD of the per-seed differences "
               "(mde_rel: over the control's mean): a difference within ±mde is what these seeds cannot tell from "
               "none; seeds_for_3pct is how many seeds the same spread of differences would need for an mde of "
               f"{100 * S.MDE_TARGET_REL:.0f}% of the control's mean. p_holm is p_paired after Holm's correction for "
               "reading every row of this table at once (the family: each tested pair on each part, validation "
               "included, for this one metric). IDEA against the same fine-tuning without the penalty isolates "
               "IDEA's effect from a restart of training."),
    "mechanism": ("Did IDEA's mechanism act?",
                  "Per IDEA arm, means over its final seeds of the per-epoch telemetry (MLflow: penalty_share, "
                  "extractor_steps, keep_rate_<k>, mask_disagreement, lambda_dominant, risk_var): penalty_share is "
                  "||beta grad penalty|| / ||grad mean risk|| over the recommender's parameters, the median over the "
                  "run's IDEA epochs (each epoch's the median over every 10th step); extractor_steps the extractor "
                  "updates up to the best epoch; keep the mean share of real positions the masks keep, in the first "
                  "IDEA epoch and at the best one (spread: max - min over the extractors; moved: the largest change "
                  "of one extractor's keep rate between the two); disagreement the mean |m_i - m_j| between "
                  "extractors' masks. The verdict: the penalty is negligible under "
                  f"{M.PENALTY_NEGLIGIBLE:.0%} and acting from {M.PENALTY_ACTING:.0%}; the masks moved when an "
                  f"extractor's keep rate or the disagreement changed by {M.MASKS_MOVED} or more by the best epoch; "
                  "active = both."),
    "stopping": ("How each final run ended",
                 "Per final run: the epochs it trained, its best epoch (the state tested), its epoch cap and patience, "
                 f"and what ended it: {ST.EARLY_STOPPING} (patience epochs without a validation gain), the "
                 f"{ST.EPOCH_CAP} (still improving when it was cut off), or {ST.CUT_SHORT} (a "
                 "time budget, or stopped from outside). A fine-tuning arm's epochs count from its warm start, "
                 "and its best epoch is one of its own, never the start: valid_vs_start is its validation metric "
                 "minus that of the base arm's run of its seed, the model it began from (below 0: it never rose "
                 "above its start, so the state tested is worse on validation than the one it was given)."),
    "training_time": ("Training time",
                      "Per arm and stage, every run whatever its status: the epochs they trained and the hours those "
                      "epochs took (training and validation, as each epoch timed itself), summed; s_per_epoch their "
                      "mean; `all` the whole study. Summed over epochs, not read off a clock: hours while the study "
                      "was stopped are not counted, trials run side by side each count theirs, and on a shared "
                      "machine the load of the other work is in them. Not counted: start-up, the final runs' test "
                      "evaluation, an epoch a stop cut off."),
    "warm_gap": ("Warm vs all targets", "gap = warm - all: how much of a window's difficulty comes from cold items."),
    "shift": ("Shift per window",
              "cold_share = share of targets whose item is unseen in training; popularity_js_vs_train = Jensen-Shannon "
              "divergence (bits) of the target-item distribution against training's."),
    "drop_vs_shift": ("Drop vs shift size", "Each arm's drop per window next to the window's shift size."),
    "gain_vs_shift": ("Gain vs shift size",
                      "Each pair of the paired table (arm vs control, paired by seed, 95% interval) per window next to "
                      "the window's shift size."),
    "oracle_per_window": ("Selection on the first test window (oracle): metric per window",
                          "Each arm's configuration picked on the first test window instead of validation (`oracle: "
                          "true`), retrained with the same seeds and starts (when it is the validation pick too, its "
                          "final runs are copied instead, tag `same_as`: then its rows equal the validation "
                          "selection's); shown only on the windows after the one it was picked on. It chooses with "
                          "test data, so it is never a result to claim, and it is no upper bound either: a pick on "
                          "the first window need not be the best on the later ones (in ml100k-sasrec erm_ft's "
                          "first-window pick scored below its validation pick on w2 and w3)."),
    "oracle_paired": ("Selection on the first test window (oracle): paired by seed",
                      "The paired comparisons of the runs selected on the first test window, as in the paired table "
                      "above (p_holm over this table's own rows), on the windows after the first. A fine-tuning "
                      "arm's oracle runs start from the same ERM models as "
                      "its validation pick (so IDEA against erm_ft stays paired by start); the base arm's own "
                      "oracle runs are other models when its oracle pick differs, so a comparison with it is "
                      "paired by seed only."),
    "sensitivity": ("Hyperparameter sensitivity",
                    "Search trials: mean validation metric per value (or quantile bin) of each varying hyperparameter."),
    "param_importances": ("Hyperparameter importances",
                          "Optuna mean-decrease-impurity importances of the searched hyperparameters for the "
                          "validation metric, per arm."),
}


def history_keys(key: str) -> bool:
    """The per-epoch metric keys `build_tables` reads from the final runs' `StudyRead.history`: the
    mechanism's, stopping's and training time's."""
    return M.is_wanted(key) or ST.is_wanted(key) or TT.is_wanted(key)


def read_history(read: StudyRead) -> pd.DataFrame:
    """The per-epoch history `build_tables` reads: the final runs' `history_keys`, and the epoch seconds of
    the other stages' runs (the training-time table counts every run)."""
    final = read.history(keys=history_keys)
    others = read.history(keys=TT.is_wanted, stages=[s for s in Stage.NESTED if s != Stage.FINAL])
    frames = [f for f in (others, final) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else final


SMOKE_NOTE = ("Smoke study: a check that every stage runs (sampled users, a few trials, epochs and seeds). "
              "Its numbers are not results.")


def build_tables(results: pd.DataFrame, shift: pd.DataFrame, spaces: dict[str, dict], metric: str = SELECTION[0],
                 k: int = SELECTION[1], arms: Arms | None = None,
                 history: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every summary table of the report (keys of TABLES), from a `StudyRead`'s `results`, `shift`, `spaces`
    and `arms` (without `arms`, `summaries.paired`'s pairs), and the per-epoch history `read_history` gives
    (without it, empty mechanism, stopping and training-time tables): the mechanism and stopping tables read
    the final runs of `results` (finished), the training time every run."""
    history = history if history is not None else pd.DataFrame(columns=["stage", "run_id", "key"])
    finished = results.loc[results["stage"] == Stage.FINAL, "run_id"]  # not a seed still running, as elsewhere
    final_history = history.loc[(history["stage"] == Stage.FINAL) & history["run_id"].isin(finished)]
    t = {
        "per_window_all": S.per_window(results, metric, k, "all"),
        "per_window_warm": S.per_window(results, metric, k, "warm"),
        "degradation": S.degradation(results, metric, k, "all"),
        "worst_window": S.worst_window(results, metric, k, "all"),
        "paired": S.paired(results, metric, k, "all", arms.pairs() if arms is not None else None),
        "mechanism": M.mechanism(M.epochs(final_history.loc[final_history["key"].map(M.is_wanted)])),
        "stopping": ST.stopping(final_history, results, arms.base if arms is not None else None, metric, k),
        "training_time": TT.training_time(history, arms.order if arms is not None else ()),
        "warm_gap": S.warm_gap(results, metric, k),
        "shift": shift,
    }
    oracle = S.oracle_view(results)
    t["oracle_per_window"] = S.per_window(oracle, metric, k, "all")
    t["oracle_paired"] = S.paired(oracle, metric, k, "all", arms.pairs() if arms is not None else None)
    t["drop_vs_shift"] = S.shift_vs_gain(t["degradation"], shift)
    t["gain_vs_shift"] = S.shift_vs_gain(t["paired"], shift)
    t["sensitivity"] = S.sensitivity(results, spaces, metric, k)
    imps = [S.param_importances(results, arm, space, metric, k).assign(arm=arm) for arm, space in spaces.items()]
    imps = [i for i in imps if not i.empty]
    t["param_importances"] = (pd.concat(imps, ignore_index=True)[["study", "arm", "param", "importance"]] if imps
                              else pd.DataFrame(columns=["study", "arm", "param", "importance"]))
    return t


def build_figures(tables: dict[str, pd.DataFrame], metric: str = SELECTION[0], k: int = SELECTION[1],
                  arms: Arms | None = None) -> dict:
    """The report's figures, keyed by PNG file stem: metric_vs_window_all/_warm, gain_vs_js,
    sensitivity_<param>; `arms` (`StudyRead.arms`) orders and styles the arms. A figure whose table is empty is
    left out (`notes` says why)."""
    figs = {}
    for subset in ("all", "warm"):
        if not tables[f"per_window_{subset}"].empty:
            figs[f"metric_vs_window_{subset}"] = plots.metric_vs_window(tables[f"per_window_{subset}"], metric, k,
                                                                        subset, arms)
    if not tables["drop_vs_shift"].empty:
        figs["gain_vs_js"] = plots.gain_vs_shift(tables["drop_vs_shift"], tables["gain_vs_shift"], metric=metric, k=k,
                                                 arms=arms)
    for param, fig in plots.sensitivity_figures(tables["sensitivity"], metric, k, arms).items():
        figs[f"sensitivity_{param}"] = fig
    return figs


CLAIMS = {"gains": "gains over", "loses": "loses to"}  # the verdicts that claim a difference, as a sentence says them


def verdict(row) -> str:
    """What a paired row lets a sentence claim: "gains" or "loses" only where its 95% CI excludes 0, else "no
    measurable difference" (a positive mean inside an interval that spans 0 is not a gain)."""
    if pd.isna(row["ci_low"]):
        return "no interval (fewer than 2 paired seeds)"
    if row["ci_low"] > 0:
        return "gains"
    if row["ci_high"] < 0:
        return "loses"
    return "no measurable difference"


def _p_words(row, prefix: str, tests: int | None = None) -> str:
    """The raw p and its Holm-corrected value (with the size of the family it was corrected for, if given), and
    whether a claimed difference survives the correction."""
    family = f" over the paired table's {tests} tests" if tests is not None else ""
    out = f"{prefix} = {row['p_paired']:.3f}, Holm-corrected p = {row['p_holm']:.3f}{family}"
    return out + (" (not significant as one of them)" if row["p_holm"] >= 0.05 and verdict(row) in CLAIMS else "")


def _relative(row) -> str:
    """The row's difference and 95% CI as percentages of the control's mean: one kind of number per sentence."""
    out = f"{100 * row['rel_gain']:+.1f}%"
    if pd.notna(row["ci_low"]):
        out += f", 95% CI [{100 * row['ci_low'] / row['control_mean']:+.1f}%, " \
               f"{100 * row['ci_high'] / row['control_mean']:+.1f}%]"
    return out


def _first_line(r, label: str, family: int) -> str:
    """The verdict a person can act on: the first pair in plain words, its relative difference and interval, and
    whether a claimed difference survives Holm's correction."""
    word = verdict(r)
    if word in CLAIMS:
        holm = f", but not once Holm-corrected over the report's {family} tests" if r["p_holm"] >= 0.05 else ""
        return f"{r['arm']} {CLAIMS[word]} {r['control']} on {r['part']} ({label} {_relative(r)}){holm}."
    if word == "no measurable difference":
        return f"{r['arm']} shows no measurable difference from {r['control']} on {r['part']} ({label} {_relative(r)})."
    return f"{r['arm']} against {r['control']} on {r['part']}: {word}; {label} {_relative(r)}."


def _arm_order(arms_in: list[str], arms: Arms | None) -> list[str]:
    """`arms_in` with the base arm first, then the study's display order (as given without `arms`)."""
    if arms is None:
        return arms_in
    ranked = ([arms.base] if arms.base else []) + [a for a in arms.order if a != arms.base]
    return [a for a in ranked if a in arms_in] + [a for a in arms_in if a not in ranked]


def headline(tables: dict[str, pd.DataFrame], metric: str = SELECTION[0], k: int = SELECTION[1],
             arms: Arms | None = None) -> list[str]:
    """The study's answer on its last test part (the last window, or leave-one-out's test) as sentences: first
    a short verdict on the paired table's first pair (`verdict`'s words, from its 95% CI), then the detail:
    how far each arm falls from validation (windows only; the base arm first), that pair in absolute numbers
    with both p values, and the same arm against the base arm when its first control is another arm. Each
    sentence holds one kind of interval, absolute or relative. Empty without a test part."""
    deg, table = tables["degradation"], tables["paired"]
    label = plots.metric_label(metric, k)
    detail = []
    if not deg.empty:
        last = deg.loc[deg["window"] == deg["window"].max()].set_index("arm")
        part = last["part"].iloc[0]
        drops = ", ".join(f"{a} {100 * last.loc[a, 'rel_drop']:.1f}%" for a in _arm_order(list(last.index), arms))
        detail.append(f"On the last window ({part}) {label} falls from validation by {drops}.")
    else:
        tests = [p for p in table["part"] if p != VALID]
        if not tests:
            return []
        part = tests[-1]
    pair = table.loc[(table["part"] == part) & table["rel_gain"].notna()]
    if pair.empty:
        return detail or [f"On the test part ({part}) no arm has a paired comparison."]
    r = pair.iloc[0]  # the first pair: an arm against its own control, else against the base arm
    family = int(table.loc[table["study"] == r["study"], "p_paired"].notna().sum())
    n = decimals([r["arm_mean"], r["control_mean"]])  # the difference and its interval to the same decimals
    ci = f", 95% CI [{r['ci_low']:+.{n}f}, {r['ci_high']:+.{n}f}]" if pd.notna(r["ci_low"]) else ""
    p = f"; {_p_words(r, 'paired p', family)}" if pd.notna(r["p_paired"]) else ""
    mde = f"; these seeds detect (power 0.8) only differences beyond ±{r['mde']:.{n}f}" if pd.notna(r["mde"]) else ""
    detail.append(f"{r['arm']} against {r['control']} on {part}: {r['arm_mean']:.{n}f} vs {r['control_mean']:.{n}f}, "
                  f"difference {r['mean_diff']:+.{n}f}{ci} over {r['n_pairs']} seed{'s' if r['n_pairs'] != 1 else ''} "
                  f"paired by seed{p}{mde}.")
    if pd.notna(r["mde"]) and r["mde_rel"] > S.MDE_TARGET_REL:
        detail.append(f"That is {100 * r['mde_rel']:.1f}% of {r['control']}'s mean; about {r['seeds_for_3pct']:.0f} "
                      f"seeds would bring it to {100 * S.MDE_TARGET_REL:.0f}%.")
    base = pair.loc[(pair["arm"] == r["arm"]) & (pair.index != pair.index[0])]
    if not base.empty:  # the same arm against the base arm (the pairs' second group)
        b = base.iloc[0]
        p = f", {_p_words(b, 'p')}" if pd.notna(b["p_paired"]) else ""
        detail.append(f"Against {b['control']}, {b['arm']}: {verdict(b)}, {_relative(b)}{p}.")
    return [_first_line(r, label, family), *detail]


def notes(results: pd.DataFrame, tables: dict[str, pd.DataFrame], shift: pd.DataFrame,
          arms: Arms | None = None, metric: str = SELECTION[0], k: int = SELECTION[1],
          retrained: Sequence[tuple[str, str, str]] = ()) -> list[str]:
    """What the report could not show and why (missing runs, a single seed, no shift diagnostics, ...), final
    runs whose values coincide, and runs trained again after a damaged checkpoint (`retrained`, as
    `StudyRead.retrained_runs` lists them); `arms` as for `build_tables`."""
    out = [f"Run `{name}` was trained again from its start: {why}. The run it replaces, {old}, is in MLflow's "
           "trash." for name, why, old in retrained]
    if results.empty:
        return [*out, "No finished search or final runs in this study yet: there is nothing to summarise."]
    final = results.loc[results["stage"] == Stage.FINAL]
    if final.empty:
        out.append("No final runs yet (the study has not reached its test-window evaluation): per-window tables, "
                   "degradation, the paired comparisons and their plots are skipped.")
    else:
        seeds = final.groupby("arm")["seed"].nunique()
        single = sorted(seeds.index[seeds < 2])
        if single:
            out.append(f"Only one seed for {', '.join(single)}: no std, confidence interval, error bars or p-values.")
        pairs = arms.pairs() if arms is not None else Arms.legacy(results["arm"]).pairs()
        missing = [a for a in dict.fromkeys(a for pair in pairs for a in pair) if a not in seeds.index]
        if missing:
            out.append(f"No final runs for arm(s) {', '.join(missing)}: their paired comparisons are skipped.")
        elif tables["paired"].empty:
            out.append("No arm has a control (or base arm) in this study: the paired comparisons are skipped.")
        if tables["per_window_warm"].empty:
            out.append("No warm-target metrics (test_<window>_warm_*): warm tables and plot are skipped.")
        if not S.windows(final):
            out.append("No test windows w1..wm (leave-one-out study?): degradation and shift plots are skipped.")
        if (cut := ST.not_early_stopped(tables["stopping"])):
            out.append(f"{len(cut)} final run(s) did not end by early stopping, so their arm was compared at a budget "
                       f"that bound ({ST.EPOCH_CAP}) or was cut: {', '.join(cut)}.")
        label = plots.metric_label(metric, k)
        for names, parts in identical_runs(final, metric, k):
            out.append(f"Identical {label} on every part ({', '.join(parts)}): {' = '.join(f'`{n}`' for n in names)}; "
                       "in MLflow's charts their lines and bars lie on one another, so only one shows.")
    if results.loc[results["stage"] == Stage.SEARCH].empty:
        out.append("No search trials: sensitivity and importances are skipped.")
    elif tables["sensitivity"].empty:
        out.append("No searched hyperparameter varies across the search trials (or no search run records its space "
                   "in the tag `searched`): sensitivity plots are skipped.")
    if shift.empty:
        out.append(f"Shift diagnostics unavailable, so the gain-vs-shift plot is skipped: {shift.attrs.get('reason')}")
    elif not final.empty and S.windows(shift) != S.windows(final):
        out.append(f"The shift diagnostics' windows {S.windows(shift)} differ from the study's {S.windows(final)}: "
                   f"they may describe another split ({shift.attrs.get('source')}).")
    return out


def identical_runs(final: pd.DataFrame, metric: str = SELECTION[0],
                   k: int = SELECTION[1]) -> list[tuple[list[str], list[str]]]:
    """Groups of final runs (names) with the same value on every part (all targets), and the parts."""
    rows = final.loc[(final["subset"] == "all") & (final["metric"] == metric) & (final["k"] == k)]
    if rows.empty:
        return []
    wide = rows.pivot_table(index="run_name", columns="part", values="value")
    wide = wide[sorted(wide.columns, key=S.part_key)]
    groups: dict[tuple, list[str]] = {}
    for name, values in wide.round(12).fillna(-1.0).iterrows():
        groups.setdefault(tuple(values), []).append(name)
    return [(sorted(names), list(wide.columns)) for names in groups.values() if len(names) > 1]


WHOLE_COLUMNS = {"seeds_for_3pct", "epochs_run", "best_epoch", "epochs", "patience", "runs"}  # counts, when whole
SIGNIFICANT = 4  # digits of a column's largest value; the rest of the column gets the same decimals


def decimals(values) -> int:
    """Decimals that give the largest |value| SIGNIFICANT significant digits (so a column, or the numbers
    of one sentence, share one precision: 0.00463 next to 0.01056, not 0.004633 next to 0.01056)."""
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    return int(min(8, max(0, SIGNIFICANT - 1 - np.floor(np.log10(v.max()))))) if v.size else 0


def _column(name: str, values: pd.Series) -> pd.Series:
    """One column as text: counts (WHOLE_COLUMNS) whole, shares (rel_*) in percent, p-values and t-statistics
    with fixed decimals, other numbers with one precision per column (`decimals`), NaN blank."""
    if name == "value_or_bin":  # values of different hyperparameters: each to its own precision
        return values.map(lambda v: f"({v.left:.4g}, {v.right:.4g}]" if isinstance(v, pd.Interval) else f"{v:.4g}"
                          if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v))
    if not pd.api.types.is_float_dtype(values):
        return values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    if name in WHOLE_COLUMNS and values.dropna().mod(1).eq(0).all():  # not a mean of counts (the mechanism's)
        fmt = "{:.0f}"
    elif name.startswith("rel_"):
        fmt = "{:+.1f}%"
        values = 100 * values
    elif name.startswith("p_"):
        fmt = "{:.3f}"
    elif name.startswith("t_"):
        fmt = "{:.2f}"
    else:
        fmt = f"{{:.{decimals(values)}f}}"
    return values.map(lambda v: "" if pd.isna(v) else fmt.format(v))


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_"
    d = pd.DataFrame({c: _column(c, df[c]) for c in df.columns})
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "left"
             for c in df.columns]
    return d.to_markdown(index=False, disable_numparse=True, colalign=align)


def _runs_table(results: pd.DataFrame) -> pd.DataFrame:
    if results.empty:
        return pd.DataFrame(columns=["stage", "arm", "runs", "seeds"])
    g = results.groupby(["stage", "arm"], sort=True)
    return pd.DataFrame({"runs": g["run_id"].nunique(), "seeds": g["seed"].nunique()}).reset_index()


def _ui_section(read: StudyRead, results: pd.DataFrame, arms: Arms, out_dir: Path, metric: str, k: int,
                ui_url: str | None) -> list[str]:
    """How to open the study in MLflow's UI: the links (their port, and how to rebuild them for another), the
    click path, and the chart view of the final runs, which this registers in the store (`share_view`)."""
    tracking_uri, study, exp_id = read.tracking_uri, read.name, read.experiment_id
    base = ui_base_url(tracking_uri, ui_url)
    lines = ["## MLflow UI", ""]
    if is_server(tracking_uri):
        lines += [f"The store is served at {base}.", ""]
    else:
        printed = " (the command the study printed)" if ui_url is None else ""
        rebuild = shlex.join(["python", "-m", "analysis.report", "--tracking-uri", tracking_uri, "--study", study,
                              "--out", str(out_dir), "--metric", metric, "--k", str(k),
                              "--ui-url", "http://127.0.0.1:<port>"])
        lines += [f"The links expect the UI at {base}: `{ui_command(tracking_uri, urlsplit(base).port or UI_PORT)}`"
                  f"{printed}. For the UI on another port, rebuild this report with `{rebuild}`.", ""]
    runs = read.final_run_ids()
    name = metric_name(metric, k)
    lines += [f"Click path: **Experiments** → `{study}` (MLflow 3 opens it on its GenAI overview: click **Model "
              f"training** at the top left for the runs table) → search `tags.stage = 'final'`, sort by **Run Name** "
              "(sorted by time, the final runs hide under their parent run) → the chart view (the chart icon left of "
              f"the search box) → search the charts for `{shift_key(name)}` (step 0 = validation, step i = window "
              "wi) or `test_`."]
    lines += ["", f"- runs table: <{runs_url(base, exp_id)}>"]
    if runs and (view := register_chart_view(tracking_uri, exp_id, results, metric, k)):
        key, parts = view
        steps = ", ".join(f"{i} = {'validation' if p == VALID else p}" for i, p in enumerate(parts))
        lines += [f"- chart view of every final run: <{view_url(base, exp_id, key)}>. The list of runs at the left is "
                  "the legend: each run in its arm's colour of the figures above (an arm's seeds share it). "
                  f"`{key}` against the step (step {steps}), then a bar chart per part "
                  f"({', '.join(f'`{best_state_key(p, name)}`' for p in parts)})."
                  + (" Runs with identical values draw on top of each other: the notes name them."
                     if identical_runs(results.loc[results["stage"] == Stage.FINAL], metric, k) else "")]
    if runs:
        lines += [f"- compare page: <{compare_url(base, exp_id, link_runs([i for _, i in runs], results, arms))}>"]
    else:
        lines += ["- chart view and compare page: none yet (no finished final runs)"]
    return lines


def register_chart_view(tracking_uri: str, experiment_id: str, results: pd.DataFrame, metric: str = SELECTION[0],
                        k: int = SELECTION[1]) -> tuple[str, list[str]] | None:
    """Store the chart view of the study's final runs (`analysis.mlflow_ui.chart_view`: `shift_<metric>_at_<k>`
    against the step, then a bar chart per part) as the experiment's shared view; returns its key (for
    `view_url`) and the parts, the line's steps; None without final runs."""
    parts = sorted(set(results.loc[results["stage"] == Stage.FINAL, "part"]), key=S.part_key)
    if not parts:
        return None
    name = metric_name(metric, k)
    # the section's title names the line's steps (MLflow titles each chart by its metric key)
    title = "Steps: " + ", ".join(f"{i} {p}" for i, p in enumerate(parts))
    share_view(tracking_uri, experiment_id, shift_key(name),
               chart_view(title, shift_key(name), [best_state_key(p, name) for p in parts]))
    return shift_key(name), parts


def link_runs(run_ids: list[str], results: pd.DataFrame, arms: Arms) -> list[str]:
    """The final runs for the compare page: the base arm's first, then each arm's in display order, by seed."""
    final = results.loc[results["stage"] == Stage.FINAL, ["run_id", "arm", "seed"]].drop_duplicates("run_id")
    where = {r.run_id: (r.arm, int(r.seed)) for r in final.itertuples()}
    order = [arms.base] * (arms.base is not None) + [a for a in arms.order if a != arms.base]
    rank = {arm: i for i, arm in enumerate(order)}
    return sorted(run_ids, key=lambda i: (rank.get(where.get(i, ("", 0))[0], len(rank)), where.get(i, ("", 0))[1]))


def missing_parts(read: StudyRead) -> list[str]:
    """What keeps the study from being complete, from MLflow alone (empty when complete): its parent run
    not FINISHED, final seeds missing per arm of its study.yaml (an artifact of the parent run), runs
    still RUNNING, arms without a result; and how to continue. A report must not read as final when
    the driver was stopped, or ran out of budget, before the end."""
    parent = read.parent
    if parent is None:
        return ["the study's parent run (stage=study) is missing from the store"]
    ours = [r for r in read.runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    out = []
    if parent.info.status != "FINISHED":
        by = parent.data.tags.get(Tag.INTERRUPTED)
        out.append(f"the study run is {parent.info.status}" + (f" (stopped by {by})" if by else
                                                               " (the driver stopped, or is still running)"))
    try:
        spec = yaml.safe_load(read.parent_files["study.yaml"].checked())
        arms, seed, seeds = list(spec["arms"]), int(spec["seed"]), int(spec["seeds"])
        stages = Stage.RETRAINED if spec.get("oracle") else (Stage.FINAL,)
    except Exception as err:  # noqa: BLE001 (any unreadable artifact: say so, list what the runs show)
        out.append(f"the parent run's study.yaml could not be read ({type(err).__name__}), so the arms and "
                   "final seeds it expects are unknown")
        arms, seed, seeds, stages = [], 0, 0, ()
    no_result = [a for a in parent.data.tags.get(Tag.ARMS_WITHOUT_RESULT, "").split(",") if a]
    for arm, stage in ((a, s) for a in arms for s in stages):
        done = {int(r.data.tags.get(Tag.SEED, -1)) for r in ours if r.data.tags.get(Tag.ARM) == arm
                and r.data.tags.get(Tag.STAGE) == stage and r.info.status == "FINISHED"}
        lacking = [s for s in range(seed + 1, seed + 1 + seeds) if s not in done]
        if arm in no_result:
            if stage == Stage.FINAL:
                out.append(f"arm {arm}: no result (no search trial completed, or it needed one of an arm that has "
                           "none); a --resume changes nothing: start the study again, e.g. with a larger "
                           "--time-budget-s")
        elif lacking:
            what = "final seed(s)" if stage == Stage.FINAL else "oracle-selection seed(s)"
            out.append(f"arm {arm}: {what} {', '.join(map(str, lacking))} of {seeds} missing")
    running = sorted(r.info.run_name for r in ours if r.info.status == "RUNNING")
    if running:
        out.append(f"{len(running)} run(s) still RUNNING (a driver running, or killed without closing them): "
                   f"{', '.join(running[:10])}{' ...' if len(running) > 10 else ''}")
    if out and parent.info.status != "FINISHED":
        command = parent.data.tags.get(Tag.RESUME_COMMAND)
        out.append(f"resume with `{command}`" if command else "resume with the study's command and --resume")
    return out


RESULTS_FILE = "results.csv"  # the tidy frame every table comes from (`StudyRead.results`)
ABOUT_FILE = "study.json"  # what the study is (dataset, protocol, backbone, arm roles): analysis.compare reads both


def about(study: str, tags: dict[str, str], shift: pd.DataFrame, arms: Arms) -> dict:
    """The study's labels (from its parent run's `tags`) and arm roles, so a report folder can be compared
    without its store."""
    return {"study": study, "dataset": tags.get(Tag.DATASET), "protocol": shift.attrs.get("protocol"),
            "backbone": tags.get(Tag.BACKBONE), "git_sha": tags.get(Tag.GIT_SHA),
            "arms": {"order": list(arms.order), "base": arms.base, "controls": dict(arms.controls)}}


def write_report(read: StudyRead, out_dir: Path, metric: str = SELECTION[0], k: int = SELECTION[1],
                 ui_url: str | None = None) -> Path:
    """Write the report of a study read once (`read_study`): ``out_dir/summary.md``, ``<table>.csv`` for every
    table (plus the tidy ``results.csv``) and ``<figure>.png`` for every figure; return the summary.md path.
    Missing pieces (no final runs, one seed, no trials, no shift diagnostics) become notes in summary.md. `ui_url`
    is where the MLflow UI of a local store is served, for the links (default: port `UI_PORT`, as a study's
    printed command serves it). The chart view the links open is stored in the store, as an experiment tag."""
    tracking_uri, study = read.tracking_uri, read.name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read.results()
    shift = read.shift()
    arms = read.arms()
    tables = build_tables(results, shift, read.spaces(), metric, k, arms, read_history(read))
    figures = build_figures(tables, metric, k, arms)

    with atomic_path(out_dir / RESULTS_FILE) as tmp:
        results.to_csv(tmp, index=False)
    tags = read.parent_tags()
    write_text(out_dir / ABOUT_FILE, json.dumps(about(study, tags, shift, arms), indent=1) + "\n")
    for name, df in tables.items():
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
    for name, fig in figures.items():
        with atomic_path(out_dir / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=110)

    label = plots.metric_label(metric, k)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    missing = missing_parts(read)
    state = f" (UNFINISHED: {len(missing)} item(s) under \"What is missing\")" if missing else ""
    md = [f"# Shift robustness of study `{study}`{state}", "",
          f"Tracking URI `{tracking_uri}` · metric {label} · generated {now}. "
          "Every table is also a CSV next to this file; `results.csv` is the tidy frame they come from, "
          "`study.json` what the study is (for `python -m analysis.compare --report-dir`).", ""]
    if missing:
        md += ["## What is missing", "", "The study is not complete; the tables below cover what exists.", "",
               *[f"- {m}" for m in missing], ""]
    if tags.get(Tag.SMOKE) == TRUE:
        md += [f"> **{SMOKE_NOTE}**", ""]
    if (lines := headline(tables, metric, k, arms)):
        md += [f"**{lines[0]}**", "", *([" ".join(lines[1:]), ""] if lines[1:] else [])]
    md += ["Runs:", "", _markdown(_runs_table(results)), ""]
    if (ns := notes(results, tables, shift, arms, metric, k, read.retrained_runs())):
        md += ["## Notes", "", *[f"- {n}" for n in ns], ""]
    figure_after = {"per_window_all": ["metric_vs_window_all"], "per_window_warm": ["metric_vs_window_warm"],
                    "gain_vs_shift": ["gain_vs_js"],
                    "sensitivity": [f for f in figures if f.startswith("sensitivity_")]}
    with_history = ("mechanism", "stopping", "training_time")  # the mechanism: of IDEA arms only
    shown = {n: v for n, v in TABLES.items()  # oracle: true only
             if not ((n.startswith("oracle_") or n in with_history) and tables[n].empty)}
    for i, (name, (title, what)) in enumerate(shown.items(), 1):
        md += [f"## {i}. {title}", "", what, ""]
        if name == "shift" and shift.attrs.get("source"):
            md += [f"Source: {shift.attrs['source']}.", ""]
        md += [_markdown(tables[name]), ""]
        md += [f"![{f}]({f}.png)\n" for f in figure_after.get(name, []) if f in figures]
    md += _ui_section(read, results, arms, out_dir, metric, k, ui_url)
    path = out_dir / "summary.md"
    write_text(path, "\n".join(md) + "\n")  # last: a summary.md means the report is whole
    return path


def main(argv: list[str] | None = None) -> int:
    p = StrictArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///<abs path>/mlflow.db")
    p.add_argument("--study", required=True, help="study name (= MLflow experiment name)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--metric", default=SELECTION[0], choices=METRICS)
    p.add_argument("--k", type=int, default=SELECTION[1], choices=KS)
    p.add_argument("--ui-url", help="where you serve the MLflow UI of a local store, for the links in summary.md; "
                                    f"default: http://127.0.0.1:{UI_PORT}, as the study's printed `mlflow ui` serves it")
    args = p.parse_args(argv)
    try:
        read = read_study(args.tracking_uri, args.study)
        path = write_report(read, args.out, args.metric, args.k, args.ui_url)
    except (StudyNotFoundError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    if missing_parts(read):
        print(f"note: study {args.study} is unfinished; summary.md lists what is missing", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
