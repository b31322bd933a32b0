"""analysis.plots on hand-built summary tables: the plotted numbers and axes are the table's."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis import plots as P


def per_window_table():
    rows = []
    for arm, means, std in (("erm", [0.10, 0.09, 0.07], 0.01), ("idea", [0.10, 0.095, 0.09], 0.02)):
        for part, m in zip(["valid", "w1", "w10"], means):
            rows.append(dict(study="s", arm=arm, part=part, mean=m, std=std, n_seeds=3))
    rows.append(dict(study="s", arm="idea", part="w2", mean=0.092, std=np.nan, n_seeds=1))  # one seed: no bar
    return pd.DataFrame(rows)


def test_metric_vs_window_plots_means_in_window_order_with_std_bars():
    """Parts sort valid, w1, w2, w10 (numerically); each arm's line holds its means; bars are ± std."""
    fig = P.metric_vs_window(per_window_table(), "ndcg", 10, "all")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["valid", "w1", "w2", "w10"]
    assert ax.get_ylabel() == "NDCG@10"
    containers = {c.get_label().split(" ")[0]: c for c in ax.containers}
    assert set(containers) == {"idea", "erm"}
    idea_line = containers["idea"].lines[0]
    x, y = idea_line.get_data()
    assert np.all(np.diff(x) > 0)  # the line runs in window order although w2 came last in the table
    assert list(y) == pytest.approx([0.10, 0.095, 0.092, 0.09])  # valid, w1, w2, w10
    erm_x, erm_y = containers["erm"].lines[0].get_data()
    assert np.round(erm_x).tolist() == [0, 1, 3]  # no w2 for erm: the w10 point sits at position 3
    # error bar of idea at valid: [mean - 0.02, mean + 0.02]; none for the single-seed w2
    seg = containers["idea"].lines[2][0].get_segments()[0]
    assert [seg[0][1], seg[1][1]] == pytest.approx([0.08, 0.12])
    seg_w2 = containers["idea"].lines[2][0].get_segments()[2]
    assert seg_w2[0][1] == pytest.approx(seg_w2[1][1])


def shift_rows(table):
    js = {"w1": 0.1, "w2": 0.3, "w3": 0.2}
    return table.assign(popularity_js_vs_train=table["part"].map(js), cold_share=0.0)


def test_gain_vs_shift_plots_drop_and_paired_gains_with_intervals_against_js():
    """Left panel: each arm's relative drop (%) against JS, sorted by JS; right panel: each pair's gain (%)
    with its paired 95% interval relative to the control's mean as error bars."""
    drops = shift_rows(pd.DataFrame({"arm": ["idea"] * 3 + ["erm"] * 3, "part": ["w1", "w2", "w3"] * 2,
                                     "rel_drop": [0.1, 0.3, 0.2, 0.2, 0.6, 0.4]}))
    gains = shift_rows(pd.DataFrame({
        "arm": ["idea"] * 3 + ["idea"] * 3, "control": ["erm"] * 3 + ["erm_ft"] * 3, "part": ["w1", "w2", "w3"] * 2,
        "control_mean": [0.1] * 6, "rel_gain": [0.05, 0.25, 0.15, 0.0, 0.1, 0.0],
        "mean_diff": [0.005, 0.025, 0.015, 0.0, 0.01, 0.0],
        "ci_low": [0.003, 0.02, 0.01, -0.002, 0.0, float("nan")],
        "ci_high": [0.007, 0.03, 0.02, 0.002, 0.02, float("nan")]}))
    fig = P.gain_vs_shift(drops, gains)
    left, right = fig.axes
    lines = {ln.get_label(): ln for ln in left.get_lines()}
    x, y = lines["erm"].get_data()
    assert list(x) == pytest.approx([0.1, 0.2, 0.3]) and list(y) == pytest.approx([20, 40, 60])
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["idea vs erm", "idea vs erm_ft"]
    gx, gy = right.get_lines()[0].get_data()
    assert list(gx) == pytest.approx([0.1, 0.2, 0.3]) and list(gy) == pytest.approx([5, 15, 25])
    bars = [c for c in right.collections if len(c.get_segments()) == 3]
    # idea vs erm sorted by JS (w1, w3, w2): intervals (ci / 0.1) in %
    assert [tuple(np.round(seg[:, 1], 6)) for seg in bars[0].get_segments()] == [(3, 7), (10, 20), (20, 30)]
    assert "JS divergence" in left.get_xlabel()
    assert len(P.gain_vs_shift(drops, gains.iloc[:0]).axes) == 1  # no pair: drop panel only
    fig.canvas.draw()
    for ax in (left, right):  # each window named once, on a top axis at its JS; the legend beside the lines
        (top,) = ax.child_axes
        assert [t.get_text() for t in top.get_xticklabels()] == ["w1", "w3", "w2"]
        assert top.get_xticks() == pytest.approx([0.1, 0.2, 0.3])
        assert not [t.get_text() for t in ax.texts if t.get_text() in {"w1", "w2", "w3"}]
        assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())


def test_sensitivity_counts_stay_inside_the_axes():
    """The trial counts of points at the top and bottom of the axes, of four arms, are drawn inside the axes
    (a count below a point at the bottom fell under the x axis)."""
    sens = pd.DataFrame([dict(study="s", arm=arm, param="dropout", value_or_bin=x, binned=False, log=False,
                              mean=y + 0.001 * i, count=1)
                         for i, arm in enumerate(("idea", "erm_ft", "dros", "erm"))
                         for x, y in ((0.1, 0.0065), (0.2, 0.0095), (0.3, 0.008))])
    fig = P.sensitivity_panel(sens, "dropout")
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_window_extent()
    counts = [t for t in ax.texts if t.get_text() == "n=1"]
    assert len(counts) == 12
    for t in counts:
        label = t.get_window_extent()
        assert box.x0 <= label.x0 and label.x1 <= box.x1, t.get_position()
        assert box.y0 <= label.y0 and label.y1 <= box.y1, t.get_position()


def test_sensitivity_panel_draws_numbers_on_numeric_axes_log_where_searched_so():
    """Values sit at their own x (2 and 10, not at category slots 0 and 1); bins at their midpoint (geometric
    on a log axis) with their edges as x error bars; a log-searched parameter gets a log axis; names stay
    categorical."""
    sens = pd.DataFrame([
        dict(study="s", arm="idea", param="K", value_or_bin=10, binned=False, log=False, mean=0.3, count=1),
        dict(study="s", arm="idea", param="K", value_or_bin=2, binned=False, log=False, mean=0.1, count=2),
        dict(study="s", arm="idea", param="lr", value_or_bin=pd.Interval(0.01, 0.1), binned=True, log=True, mean=0.5,
             count=4),
        dict(study="s", arm="idea", param="lr", value_or_bin=pd.Interval(0.001, 0.01), binned=True, log=True, mean=0.4,
             count=4),
        dict(study="s", arm="idea", param="penalty", value_or_bin="vrex", binned=False, log=False, mean=0.2, count=3),
        dict(study="s", arm="idea", param="penalty", value_or_bin="irmv1", binned=False, log=False, mean=0.1, count=3),
    ])
    figs = P.sensitivity_figures(sens)
    assert set(figs) == {"K", "lr", "penalty"}
    ax = figs["K"].axes[0]
    x, y = ax.get_lines()[0].get_data()
    assert list(x) == pytest.approx([2, 10]) and list(y) == pytest.approx([0.1, 0.3])
    assert ax.get_xscale() == "linear"
    lr = figs["lr"].axes[0]
    x, y = lr.get_lines()[0].get_data()
    assert list(x) == pytest.approx([10 ** -2.5, 10 ** -1.5]) and list(y) == pytest.approx([0.4, 0.5])
    assert lr.get_xscale() == "log" and "log scale" in lr.get_xlabel() and "midpoints" in lr.get_xlabel()
    (bars,) = [c for c in lr.collections if len(c.get_segments()) == 2]  # the bins' extents
    assert sorted(tuple(np.round(seg[:, 0], 6)) for seg in bars.get_segments()) == [(0.001, 0.01), (0.01, 0.1)]
    pen = figs["penalty"].axes[0]
    assert [t.get_text() for t in pen.get_xticklabels()] == ["irmv1", "vrex"]
