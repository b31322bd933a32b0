"""Shift-robustness plots, shared by the report CLI and the notebook.

Each function takes a table from `analysis.summaries` and returns a matplotlib ``Figure`` built
without pyplot: no global figure state and no GUI backend, so the report saves it (Agg) and a
notebook displays it inline. ``arms`` (`analysis.load.StudyRead.arms`) orders the lines and picks their
styles: the base arm blue squares, the other arms `ARM_STYLES` in display order; without it, arms
come in the table's order with no base arm.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.summaries import part_key
from idea.contract import SELECTION, Arms

__all__ = ["ARM_STYLES", "BASE_STYLE", "arm_style", "metric_label", "metric_vs_window", "gain_vs_shift",
           "sensitivity_panel", "sensitivity_figures"]

BASE_STYLE = {"color": "#1f77b4", "marker": "s"}
ARM_STYLES = ({"color": "#d62728", "marker": "o"}, {"color": "#2ca02c", "marker": "D"},
              {"color": "#9467bd", "marker": "v"},
              *({"color": c, "marker": "^"} for c in ("#ff7f0e", "#8c564b", "#e377c2", "#17becf")))
SHIFT_LABELS = {
    "popularity_js_vs_train": "JS divergence of target-item popularity vs training (bits)",
    "cold_share": "share of targets whose item is unseen in training",
}


def metric_label(metric: str, k: int) -> str:
    """``ndcg``, 10 -> ``NDCG@10``."""
    return f"{metric.upper()}@{k}"


def arm_style(arm: str, arms: Arms) -> dict:
    """The base arm's style, else the next of ARM_STYLES by the arm's place among the other arms (its colour is
    also its runs' colour in MLflow's charts, `analysis.mlflow_ui.arm_colours`)."""
    if arm == arms.base:
        return BASE_STYLE
    others = [a for a in arms.order if a != arms.base]
    return ARM_STYLES[others.index(arm) % len(ARM_STYLES)]


def _arms(arms: Arms | None, present) -> Arms:
    """`arms` narrowed to the arms `present` in a table, those it does not know appended in table order."""
    present = list(pd.unique(pd.Series(list(present), dtype=object)))
    known = arms.order if arms is not None else ()
    order = tuple(a for a in known if a in present) + tuple(a for a in present if a not in known)
    base = arms.base if arms is not None and arms.base in order else None
    return Arms(order, base)


def metric_vs_window(per_window: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1], subset: str = "all",
                     arms: Arms | None = None) -> Figure:
    """Metric per part (valid, w1..wm) for each arm: seed mean with ± std error bars (``per_window`` output)."""
    parts = sorted(pd.unique(per_window["part"]), key=part_key)
    x_of = {p: i for i, p in enumerate(parts)}
    shown = _arms(arms, per_window["arm"])
    arms = shown.order
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.08 * (len(arms) - 1)
    for i, arm in enumerate(arms):
        d = per_window.loc[per_window["arm"] == arm]
        d = d.iloc[np.argsort(d["part"].map(x_of).to_numpy(), kind="stable")]  # draw the line in window order
        x = d["part"].map(x_of).to_numpy(dtype=float) - width / 2 + (0.08 * i)
        yerr = np.nan_to_num(d["std"].to_numpy(dtype=float))  # one seed: no bar
        n = int(d["n_seeds"].max())
        ax.errorbar(x, d["mean"].to_numpy(dtype=float), yerr=yerr, capsize=4, linewidth=1.8,
                    label=f"{arm} ({n} seed{'s' if n != 1 else ''})", **arm_style(arm, shown))
    if "valid" in x_of and len(parts) > 1:
        ax.axvline(x_of["valid"] + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(x_of["valid"] + 0.52, 0.02, "test starts (t0)", transform=ax.get_xaxis_transform(), color="grey",
                fontsize=8)
    ax.set_xticks(range(len(parts)), parts)
    ax.set_xlabel("part (later windows lie further from training)")
    ax.set_ylabel(metric_label(metric, k))
    ax.set_title(f"{metric_label(metric, k)} on {subset} targets per window: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _name_windows(ax, windows: pd.DataFrame, x: str) -> None:
    """Each window's name once, as a tick of a top axis at its shift size: every arm has a point per window at
    the same x, so a label per point drew the same name on top of itself."""
    d = windows.drop_duplicates("part").sort_values(x)
    top = ax.secondary_xaxis("top")
    top.set_xticks(d[x].to_numpy(dtype=float), d["part"].tolist(), fontsize=8)
    top.tick_params(length=3)


def _legend_beside(ax) -> None:
    """The legend right of the axes, where it covers no line or error bar."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=9)


def gain_vs_shift(drops: pd.DataFrame, gains: pd.DataFrame | None = None, x: str = "popularity_js_vs_train",
                  metric: str = SELECTION[0], k: int = SELECTION[1], arms: Arms | None = None) -> Figure:
    """Left: each arm's relative drop from validation per test window against the window's shift size
    (`summaries.shift_vs_gain` of ``degradation``). Right, when ``gains`` (`shift_vs_gain` of ``paired``)
    has rows: each arm's relative gain over its control per window against the same shift size, one line
    per (arm, control) pair (solid against the base arm, dashed against another control), with the paired
    95% interval over seeds (ci / control mean) as error bars."""
    with_gain = gains is not None and not gains.empty
    fig = Figure(figsize=(14 if with_gain else 7.5, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if with_gain else 1, squeeze=False)[0]
    ax = axes[0]
    shown = _arms(arms, [*drops["arm"], *(gains["arm"] if with_gain else [])])
    for arm in (a for a in shown.order if a in set(drops["arm"])):
        d = drops.loc[drops["arm"] == arm].sort_values(x)
        ax.plot(d[x], 100 * d["rel_drop"], label=arm, linewidth=1.8, **arm_style(arm, shown))
    _name_windows(ax, drops, x)
    ax.set_xlabel(SHIFT_LABELS.get(x, x))
    ax.set_ylabel(f"drop of {metric_label(metric, k)} from validation (%)")
    ax.set_title("Drop vs shift size (higher = worse)")
    ax.grid(alpha=0.3)
    _legend_beside(ax)
    if with_gain:
        ax = axes[1]
        pairs = list(dict.fromkeys(zip(gains["arm"], gains["control"])))
        for arm, control in sorted(pairs, key=lambda p: (shown.order.index(p[0]), p[1])):
            d = gains.loc[(gains["arm"] == arm) & (gains["control"] == control)].sort_values(x)
            base = d["control_mean"].to_numpy(dtype=float)
            y = 100 * d["rel_gain"].to_numpy(dtype=float)
            low = np.nan_to_num(100 * (d["mean_diff"] - d["ci_low"]).to_numpy(dtype=float) / base)  # one seed: no bar
            high = np.nan_to_num(100 * (d["ci_high"] - d["mean_diff"]).to_numpy(dtype=float) / base)
            ax.errorbar(d[x].to_numpy(dtype=float), y, yerr=[low, high], capsize=4, linewidth=1.8,
                        linestyle="-" if control == shown.base else "--", label=f"{arm} vs {control}",
                        **arm_style(arm, shown))
        _name_windows(ax, gains, x)
        ax.axhline(0, color="grey", linewidth=1)
        ax.set_xlabel(SHIFT_LABELS.get(x, x))
        ax.set_ylabel(f"relative gain in {metric_label(metric, k)} over the control (%)")
        ax.set_title("Gain vs shift size: paired by seed, 95% interval")
        ax.grid(alpha=0.3)
        _legend_beside(ax)
    return fig


def _numeric(levels) -> bool:
    return all(isinstance(v, pd.Interval) or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool))
               for v in levels)


def _position(v, log: bool) -> tuple[float, float, float]:
    """(x, left, right) of a level on a numeric axis: a value itself, a bin its (geometric on a log axis)
    midpoint with its edges."""
    if not isinstance(v, pd.Interval):
        return float(v), float(v), float(v)
    left, right = float(v.left), float(v.right)
    mid = float(np.sqrt(left * right)) if log and left > 0 else (left + right) / 2
    return mid, left, right


def sensitivity_panel(sensitivity: pd.DataFrame, param: str, metric: str = SELECTION[0], k: int = SELECTION[1],
                      arms: Arms | None = None) -> Figure:
    """Mean validation metric of the search trials per value (or quantile bin, drawn at its midpoint with
    its extent as a horizontal bar) of one hyperparameter, one line per arm, trial counts annotated
    (`summaries.sensitivity` output). Numbers go on a numeric axis, logarithmic where the parameter was
    searched on a log scale; other values (a choice of names) on a categorical one."""
    s = sensitivity.loc[sensitivity["param"] == param]
    numeric = _numeric(s["value_or_bin"])
    log = numeric and bool(s["log"].any())
    categories = {v: i for i, v in enumerate(sorted(set(map(str, s["value_or_bin"]))))}
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    shown = _arms(arms, s["arm"])
    counts = []  # (x, y, trials, arm's place, colour) of every point
    for i, arm in enumerate(shown.order):
        d = s.loc[s["arm"] == arm]
        if numeric:
            pos = np.array([_position(v, log) for v in d["value_or_bin"]]).reshape(-1, 3)  # [levels, 3]
        else:
            x = d["value_or_bin"].map(lambda v: categories[str(v)]).to_numpy(dtype=float)
            pos = np.stack([x, x, x], axis=1)
        order = np.argsort(pos[:, 0], kind="stable")
        pos, mean, count = pos[order], d["mean"].to_numpy(dtype=float)[order], d["count"].to_numpy()[order]
        style = arm_style(arm, shown)
        ax.errorbar(pos[:, 0], mean, xerr=[pos[:, 0] - pos[:, 1], pos[:, 2] - pos[:, 0]], capsize=3, linewidth=1.8,
                    label=arm, **style)
        counts += [(x, y, n, i, style["color"]) for x, y, n in zip(pos[:, 0], mean, count)]
    if log:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(list(categories.values()), list(categories))
    ax.margins(x=0.1)
    middle = np.mean(ax.get_ylim())  # the limits once every line is drawn: the counts are placed inside them
    for x, y, n, i, color in counts:
        below = y > middle  # towards the middle of the axes, so a point at the edge keeps its count inside
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -12 - 10 * i if below else 4 + 10 * i),
                    fontsize=8, color=color)
    binned = bool(s["binned"].any())
    scale = " (log scale)" if log else ""
    ax.set_xlabel(f"{param}{scale}{'; bins drawn at their midpoints' if binned else ''}")
    ax.set_ylabel(f"validation {metric_label(metric, k)} (search trials)")
    ax.set_title(f"Sensitivity to {param}")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def sensitivity_figures(sensitivity: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1],
                        arms: Arms | None = None) -> dict[str, Figure]:
    """One `sensitivity_panel` per hyperparameter present in the table, keyed by parameter name."""
    return {p: sensitivity_panel(sensitivity, p, metric, k, arms) for p in pd.unique(sensitivity["param"])}
