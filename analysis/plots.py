"""Shift-robustness plots, shared by the report CLI and the notebook.

Each function takes a table from `analysis.summaries` and returns a matplotlib ``Figure`` built
without pyplot: no global figure state and no GUI backend, so the report saves it (Agg) and a
notebook displays it inline.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.summaries import _part_key, arm_order

__all__ = ["ARM_STYLE", "metric_label", "metric_vs_window", "gain_vs_shift", "sensitivity_panel", "sensitivity_figures"]

ARM_STYLE = {"idea": {"color": "#d62728", "marker": "o"}, "erm": {"color": "#1f77b4", "marker": "s"},
             "erm_ft": {"color": "#2ca02c", "marker": "D"}, "dros": {"color": "#9467bd", "marker": "v"}}
_OTHER_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SHIFT_LABELS = {
    "popularity_js_vs_train": "JS divergence of target-item popularity vs training (bits)",
    "cold_share": "share of targets whose item is unseen in training",
}


def metric_label(metric: str, k: int) -> str:
    """``ndcg``, 10 -> ``NDCG@10``."""
    return f"{metric.upper()}@{k}"


def _style(arm: str, i: int) -> dict:
    return ARM_STYLE.get(arm, {"color": _OTHER_COLORS[i % len(_OTHER_COLORS)], "marker": "^"})


def _arms(df: pd.DataFrame) -> list[str]:
    return arm_order(pd.unique(df["arm"]))


def metric_vs_window(per_window: pd.DataFrame, metric: str = "ndcg", k: int = 10, subset: str = "all") -> Figure:
    """Metric per part (valid, w1..wm) for each arm: seed mean with ± std error bars (``per_window`` output)."""
    parts = sorted(pd.unique(per_window["part"]), key=_part_key)
    x_of = {p: i for i, p in enumerate(parts)}
    arms = _arms(per_window)
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
                    label=f"{arm} ({n} seed{'s' if n != 1 else ''})", **_style(arm, i))
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


def _annotate_windows(ax, d: pd.DataFrame, x: str, y: str) -> None:
    for _, r in d.iterrows():
        ax.annotate(r["part"], (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)


def gain_vs_shift(drops: pd.DataFrame, gains: pd.DataFrame | None = None, x: str = "popularity_js_vs_train",
                  metric: str = "ndcg", k: int = 10) -> Figure:
    """Left: each arm's relative drop from validation per test window against the window's shift size
    (`summaries.shift_vs_gain` of ``degradation``). Right, when ``gains`` (`shift_vs_gain` of
    ``idea_vs_erm``) has rows: IDEA's relative gain over ERM per window against the same shift size."""
    with_gain = gains is not None and not gains.empty
    fig = Figure(figsize=(12 if with_gain else 6.5, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if with_gain else 1, squeeze=False)[0]
    ax = axes[0]
    for i, arm in enumerate(_arms(drops)):
        d = drops.loc[drops["arm"] == arm].sort_values(x)
        ax.plot(d[x], 100 * d["rel_drop"], label=arm, linewidth=1.8, **_style(arm, i))
        _annotate_windows(ax, d.assign(rel_drop=100 * d["rel_drop"]), x, "rel_drop")
    ax.set_xlabel(SHIFT_LABELS.get(x, x))
    ax.set_ylabel(f"drop of {metric_label(metric, k)} from validation (%)")
    ax.set_title("Drop vs shift size (higher = worse)")
    ax.grid(alpha=0.3)
    ax.legend()
    if with_gain:
        ax = axes[1]
        d = gains.sort_values(x)
        ax.plot(d[x], 100 * d["rel_gain"], color="#555555", marker="D", linewidth=1.8)
        _annotate_windows(ax, d.assign(rel_gain=100 * d["rel_gain"]), x, "rel_gain")
        ax.axhline(0, color="grey", linewidth=1)
        ax.set_xlabel(SHIFT_LABELS.get(x, x))
        ax.set_ylabel(f"IDEA vs ERM, relative gain in {metric_label(metric, k)} (%)")
        ax.set_title("IDEA's gain over ERM vs shift size")
        ax.grid(alpha=0.3)
    return fig


def _level_key(v):
    return v.left if isinstance(v, pd.Interval) else (v if isinstance(v, (int, float, np.number)) else str(v))


def _level_label(v) -> str:
    if isinstance(v, pd.Interval):
        return f"({v.left:.3g}, {v.right:.3g}]"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3g}"
    return str(v)


def sensitivity_panel(sensitivity: pd.DataFrame, param: str, metric: str = "ndcg", k: int = 10) -> Figure:
    """Mean validation metric of the search trials per value (or quantile bin) of one hyperparameter,
    one line per arm, trial counts annotated (`summaries.sensitivity` output)."""
    s = sensitivity.loc[sensitivity["param"] == param]
    levels = sorted({v for v in s["value_or_bin"]}, key=_level_key)
    x_of = {v: i for i, v in enumerate(levels)}
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, arm in enumerate(_arms(s)):
        d = s.loc[s["arm"] == arm].copy()
        d["x"] = d["value_or_bin"].map(x_of)
        d = d.sort_values("x")
        ax.plot(d["x"], d["mean"], label=arm, linewidth=1.8, **_style(arm, i))
        for _, r in d.iterrows():
            ax.annotate(f"n={r['count']}", (r["x"], r["mean"]), textcoords="offset points", xytext=(4, -12 - 10 * i),
                        fontsize=8, color=_style(arm, i)["color"])
    ax.margins(x=0.1)
    ax.set_xticks(range(len(levels)), [_level_label(v) for v in levels])
    binned = bool(s["binned"].any())
    ax.set_xlabel(f"{param}{' (quantile bins)' if binned else ''}")
    ax.set_ylabel(f"validation {metric_label(metric, k)} (search trials)")
    ax.set_title(f"Sensitivity to {param}")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def sensitivity_figures(sensitivity: pd.DataFrame, metric: str = "ndcg", k: int = 10) -> dict[str, Figure]:
    """One `sensitivity_panel` per hyperparameter present in the table, keyed by parameter name."""
    return {p: sensitivity_panel(sensitivity, p, metric, k) for p in pd.unique(sensitivity["param"])}
