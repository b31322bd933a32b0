"""Hand-computed checks of analysis.summaries on tiny results frames."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, stats
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from analysis import summaries as S
from idea.contract import Arms

NAN = float("nan")


def row(arm, part, seed, value, *, stage="final", study="s", subset="all", metric="ndcg", k=10, trial=NAN, **params):
    """One results-frame row; params (K, lr, ...) as extra columns."""
    return dict(study=study, arm=arm, stage=stage, trial=trial, seed=seed, part=part,
                subset=subset, metric=metric, k=k, value=value, **params)


def frame(rows):
    return pd.DataFrame(rows)


def noise(arm="idea", part="w1", seed=0, stage="final"):
    """Rows that must be filtered out (other metric, other k, other subset) with absurd values."""
    return [
        row(arm, part, seed, 99.0, stage=stage, metric="hr"),
        row(arm, part, seed, 99.0, stage=stage, k=20),
        row(arm, part, seed, 99.0, stage=stage, subset="warm"),
    ]


# ---------------------------------------------------------------- helpers


def test_window_index_parses_number_and_rejects_valid():
    assert S.window_index("w1") == 1
    assert S.window_index("w10") == 10
    with pytest.raises(ValueError, match="valid"):
        S.window_index("valid")


def test_windows_sorted_numerically_not_lexically():
    df = frame([row("idea", p, 0, 0.1) for p in ["w10", "valid", "w2", "w1", "w9"]])
    assert S.windows(df) == ["w1", "w2", "w9", "w10"]


# ---------------------------------------------------------------- per_window


def test_per_window_mean_std_ci_and_order():
    rows = [row("idea", "w10", s, v) for s, v in enumerate([0.1, 0.2, 0.3])]
    rows += [row("idea", "w2", s, v) for s, v in enumerate([0.4, 0.4, 0.4])]
    rows += [row("idea", "valid", 0, 0.5)]
    rows += [row("erm", "w10", 0, 0.7)]
    rows += noise("idea", "w10", 0)
    out = S.per_window(frame(rows))
    assert list(out.columns) == ["study", "arm", "part", "mean", "std", "n_seeds", "ci95_low", "ci95_high"]
    assert list(zip(out["arm"], out["part"])) == [("erm", "w10"), ("idea", "valid"), ("idea", "w2"), ("idea", "w10")]
    r = out.iloc[3]
    # mean 0.2, std (ddof=1) = sqrt((0.01+0+0.01)/2) = 0.1;
    # t_{0.975,2} = 0.95*sqrt(2/(1-0.95^2)) = 4.302652729749; half = 4.302652729749*0.1/sqrt(3) = 0.248413771175
    assert r["mean"] == pytest.approx(0.2)
    assert r["std"] == pytest.approx(0.1)
    assert r["n_seeds"] == 3
    assert r["ci95_low"] == pytest.approx(0.2 - 0.248413771175)
    assert r["ci95_high"] == pytest.approx(0.2 + 0.248413771175)
    w2 = out.iloc[2]
    assert (w2["mean"], w2["std"], w2["ci95_low"], w2["ci95_high"]) == pytest.approx((0.4, 0.0, 0.4, 0.4))
    one = out.iloc[0]  # a single seed: no spread, no CI
    assert one["mean"] == pytest.approx(0.7) and one["n_seeds"] == 1
    assert math.isnan(one["std"]) and math.isnan(one["ci95_low"]) and math.isnan(one["ci95_high"])


def test_per_window_averages_duplicate_rows_of_a_seed_and_keeps_studies_apart():
    rows = [row("idea", "w1", 0, 0.1), row("idea", "w1", 0, 0.3), row("idea", "w1", 1, 0.4),
            row("idea", "w1", 0, 0.9, study="t")]
    rows += [row("idea", "w1", 0, 0.5, stage="search", trial="t0")]
    out = S.per_window(frame(rows))
    # study s: seed 0 -> (0.1+0.3)/2 = 0.2, seed 1 -> 0.4; mean 0.3, n 2
    assert list(out["study"]) == ["s", "t"]
    assert out["mean"].tolist() == pytest.approx([0.3, 0.9])
    assert out["n_seeds"].tolist() == [2, 1]


def test_per_window_other_metric_selected():
    rows = [row("idea", "w1", 0, 0.2, metric="hr", k=5), row("idea", "w1", 1, 0.6, metric="hr", k=5),
            row("idea", "w1", 0, 0.9)]
    out = S.per_window(frame(rows), metric="hr", k=5)
    assert out["mean"].tolist() == pytest.approx([0.4])


# ---------------------------------------------------------------- degradation


def test_degradation_relative_drop_and_slope():
    rows = []
    # idea: seed 0 valid 0.2, w1 0.1, w2 0.1, w3 0.05; seed 1 valid 0.4, w1 0.3, w2 0.2, w3 0.1
    for seed, vals in {0: [0.2, 0.1, 0.1, 0.05], 1: [0.4, 0.3, 0.2, 0.1]}.items():
        for part, v in zip(["valid", "w1", "w2", "w3"], vals):
            rows.append(row("idea", part, seed, v))
    # erm: seed 0 valid 0.5, w1 0.4; seed 1 has no validation row, w1 0.2
    rows += [row("erm", "valid", 0, 0.5), row("erm", "w1", 0, 0.4), row("erm", "w1", 1, 0.2)]
    rows += noise("idea", "w2", 0) + noise("idea", "valid", 1)
    out = S.degradation(frame(rows))
    assert list(out.columns) == ["study", "arm", "part", "window", "mean", "valid_mean", "rel_drop", "n_seeds", "slope"]
    idea = out[out["arm"] == "idea"]
    assert idea["part"].tolist() == ["w1", "w2", "w3"]
    assert idea["window"].tolist() == [1, 2, 3]
    # w1 drops: (0.2-0.1)/0.2 = 0.5, (0.4-0.3)/0.4 = 0.25 -> 0.375; w2: 0.5, 0.5; w3: 0.75, 0.75
    assert idea["rel_drop"].tolist() == pytest.approx([0.375, 0.5, 0.75])
    assert idea["mean"].tolist() == pytest.approx([0.2, 0.15, 0.075])
    assert idea["valid_mean"].tolist() == pytest.approx([0.3, 0.3, 0.3])
    assert idea["n_seeds"].tolist() == [2, 2, 2]
    # slope of (0.2, 0.15, 0.075) on (1, 2, 3): sum (x-2)(y-ybar) / sum (x-2)^2 = (-0.2 + 0.075)/2 = -0.0625
    assert idea["slope"].tolist() == pytest.approx([-0.0625] * 3)
    erm = out[out["arm"] == "erm"].iloc[0]
    # only seed 0 has a validation value: (0.5-0.4)/0.5 = 0.2; window mean (0.4+0.2)/2 = 0.3
    assert erm["rel_drop"] == pytest.approx(0.2)
    assert erm["n_seeds"] == 1
    assert erm["mean"] == pytest.approx(0.3)
    assert erm["valid_mean"] == pytest.approx(0.5)
    assert math.isnan(erm["slope"])  # one window: no slope


def test_degradation_slope_uses_window_numbers():
    # windows w1, w2, w10 sort numerically; metric = 1 - 0.01*index -> slope exactly -0.01
    rows = [row("idea", "valid", 0, 1.0)] + [row("idea", f"w{i}", 0, 1 - 0.01 * i) for i in (10, 1, 2)]
    out = S.degradation(frame(rows))
    assert out["part"].tolist() == ["w1", "w2", "w10"]
    assert out["slope"].iloc[0] == pytest.approx(-0.01)
    assert out["rel_drop"].tolist() == pytest.approx([0.01, 0.02, 0.10])


# ---------------------------------------------------------------- worst_window


def _worst_rows():
    rows = []
    idea = {0: [0.3, 0.1, 0.2], 1: [0.2, 0.4, 0.2], 2: [0.5, 0.3, 0.6]}
    for seed, vals in idea.items():
        rows += [row("idea", f"w{i}", seed, v) for i, v in zip((1, 2, 3), vals)]
        rows.append(row("idea", "valid", seed, 0.01))  # validation is not a window
    rows += [row("erm", "w2", 0, 0.5), row("erm", "w10", 0, 0.1), row("erm", "w2", 1, 0.2), row("erm", "w10", 1, 0.3)]
    return rows + noise("idea", "w1", 0)


def test_worst_window_per_seed():
    out = S.worst_window(frame(_worst_rows()), by_seed=True)
    assert list(out.columns) == ["study", "arm", "seed", "worst_value", "worst_part"]
    got = {(a, s): (v, p) for a, s, v, p in zip(out["arm"], out["seed"], out["worst_value"], out["worst_part"])}
    # idea seed 1 ties 0.2 at w1 and w3 -> the earlier w1
    assert got[("idea", 0)] == (pytest.approx(0.1), "w2")
    assert got[("idea", 1)] == (pytest.approx(0.2), "w1")
    assert got[("idea", 2)] == (pytest.approx(0.3), "w2")
    assert got[("erm", 0)] == (pytest.approx(0.1), "w10")
    assert got[("erm", 1)] == (pytest.approx(0.2), "w2")


def test_worst_window_per_arm():
    out = S.worst_window(frame(_worst_rows())).set_index("arm")
    idea = out.loc["idea"]
    # per-seed minima 0.1, 0.2, 0.3 -> mean 0.2, std 0.1; w2 worst for 2 of 3 seeds
    assert idea["worst_value"] == pytest.approx(0.2)
    assert idea["worst_std"] == pytest.approx(0.1)
    assert idea["n_seeds"] == 3
    assert idea["worst_part"] == "w2"
    assert idea["worst_part_share"] == pytest.approx(2 / 3)
    # seed-mean curve: w1 1.0/3, w2 0.8/3, w3 1.0/3 -> min 0.26667 at w2
    assert idea["min_of_mean"] == pytest.approx(0.8 / 3)
    assert idea["min_of_mean_part"] == "w2"
    erm = out.loc["erm"]
    # minima 0.1 (w10) and 0.2 (w2): tie in counts -> earlier window w2; std = sqrt(2*0.05^2/1)
    assert erm["worst_value"] == pytest.approx(0.15)
    assert erm["worst_std"] == pytest.approx(math.sqrt(0.005))
    assert erm["worst_part"] == "w2"
    assert erm["worst_part_share"] == pytest.approx(0.5)
    # curve: w2 (0.5+0.2)/2 = 0.35, w10 (0.1+0.3)/2 = 0.2
    assert erm["min_of_mean"] == pytest.approx(0.2)
    assert erm["min_of_mean_part"] == "w10"


# ---------------------------------------------------------------- paired


def _gain_rows():
    rows = []
    rows += [row("idea", "w1", s, v) for s, v in zip((0, 1, 2), (0.3, 0.5, 0.4))]
    rows += [row("erm", "w1", s, v) for s, v in zip((0, 1, 2), (0.2, 0.3, 0.4))]
    rows += [row("idea", "w2", s, v) for s, v in zip((0, 1), (0.2, 0.4))]
    rows += [row("erm", "w2", s, v) for s, v in zip((0, 2), (0.1, 0.3))]
    rows += [row("idea", "w3", s, v) for s, v in zip((0, 1), (0.2, 0.4))]
    rows += [row("erm", "w3", s, 0.1) for s in (5, 6, 7)]
    rows += [row("idea", "valid", 0, 0.6), row("erm", "valid", 0, 0.4)]
    return rows + noise("idea", "w1", 0) + noise("erm", "w2", 2)


def test_paired_by_seed_with_interval_for_every_pair_present():
    rows = [row("idea", "w1", s, v) for s, v in zip((1, 2, 3), (0.12, 0.14, 0.11))]
    rows += [row("erm_ft", "w1", s, v) for s, v in zip((1, 2, 3, 4), (0.11, 0.12, 0.11, 0.50))]  # seed 4 unpaired
    rows += [row("erm", "w1", s, v) for s, v in zip((1, 2, 3), (0.10, 0.10, 0.10))]
    rows += noise("idea", "w1", 1) + noise("erm_ft", "w1", 1)
    out = S.paired(frame(rows))
    assert list(out.columns) == S.PAIRED_COLUMNS
    assert list(zip(out["arm"], out["control"])) == [("idea", "erm_ft"), ("idea", "erm"), ("erm_ft", "erm")]
    first = out.iloc[0]
    # idea - erm_ft over seeds 1..3: 0.01, 0.02, 0.00 -> mean 0.01, sd 0.01; t(0.975, df 2) = 4.302652729749464
    half = 4.302652729749464 * 0.01 / math.sqrt(3)
    assert first["n_pairs"] == 3 and first["mean_diff"] == pytest.approx(0.01)
    assert (first["ci_low"], first["ci_high"]) == pytest.approx((0.01 - half, 0.01 + half))
    assert first["t_paired"] == pytest.approx(math.sqrt(3)) and first["p_paired"] == pytest.approx(1 - math.sqrt(3 / 5))
    assert (first["arm_mean"], first["control_mean"]) == pytest.approx((0.37 / 3, 0.34 / 3))
    assert first["rel_gain"] == pytest.approx(0.01 / (0.34 / 3))
    assert out.iloc[2]["mean_diff"] == pytest.approx((0.01 + 0.02 + 0.01) / 3)  # erm_ft - erm, seed 4 left out
    only_two = S.paired(frame([r for r in rows if r["arm"] != "erm_ft"]))
    assert list(zip(only_two["arm"], only_two["control"])) == [("idea", "erm")]


def test_every_arm_is_paired_with_erm():
    """Without the study's pairs (a hand-built frame, an old store): any arm (DROS, ablations) is compared
    with ERM, IDEA with erm_ft first, as before arms carried their roles."""
    arms = ("erm", "idea_nomix", "dros", "idea", "erm_ft")
    assert Arms.legacy(arms).order == ("idea", "erm_ft", "dros", "erm", "idea_nomix")
    assert Arms.legacy(arms).pairs() == [("idea", "erm_ft"), ("idea", "erm"), ("erm_ft", "erm"), ("dros", "erm"),
                                         ("idea_nomix", "erm")]
    assert Arms.legacy(("dros", "idea")).pairs() == []  # no control present
    rows = [row(arm, "w1", s, 0.1 + 0.01 * i + 0.001 * s) for i, arm in enumerate(("erm", "dros", "idea_nomix"))
            for s in (1, 2)]
    out = S.paired(frame(rows))
    assert list(zip(out["arm"], out["control"])) == [("dros", "erm"), ("idea_nomix", "erm")]
    assert out["mean_diff"].tolist() == pytest.approx([0.01, 0.02])


def test_paired_follows_the_given_pairs_seed_by_seed():
    """The study's own pairs (`StudyRead.arms().pairs()`) decide what is compared, whatever the arms' names."""
    out = S.paired(frame(_gain_rows()), pairs=[("idea", "erm")])
    assert out["part"].tolist() == ["valid", "w1", "w2", "w3"]
    w1 = out.iloc[1]
    assert (w1["arm_mean"], w1["control_mean"]) == pytest.approx((0.4, 0.3))
    assert w1["rel_gain"] == pytest.approx(1 / 3)  # (0.4-0.3)/0.3
    assert w1["n_pairs"] == 3
    # diffs 0.1, 0.2, 0.0: mean 0.1, sd 0.1 -> t = 0.1/(0.1/sqrt 3) = sqrt 3;
    # df 2: F(t) = 1/2 + t/(2 sqrt(2+t^2)) = 1/2 + sqrt3/(2 sqrt5) -> p = 1 - sqrt(3/5) = 0.225403330758517
    assert w1["mean_diff"] == pytest.approx(0.1)
    assert w1["t_paired"] == pytest.approx(math.sqrt(3))
    assert w1["p_paired"] == pytest.approx(1 - math.sqrt(3 / 5))
    w2 = out.iloc[2]
    # idea seeds {0,1}, erm seeds {0,2}: one pair (seed 0) -> no paired test, means over that seed only
    assert (w2["arm_mean"], w2["control_mean"], w2["rel_gain"]) == pytest.approx((0.2, 0.1, 1.0))
    assert w2["n_pairs"] == 1 and w2["mean_diff"] == pytest.approx(0.1)  # seed 0: 0.2 - 0.1
    assert math.isnan(w2["t_paired"]) and math.isnan(w2["p_paired"])
    w3 = out.iloc[3]  # no common seeds
    assert w3["n_pairs"] == 0 and math.isnan(w3["mean_diff"]) and math.isnan(w3["p_paired"])
    v = out.iloc[0]
    assert v["rel_gain"] == pytest.approx(0.5)  # (0.6-0.4)/0.4
    assert math.isnan(v["p_paired"])
    renamed = frame([{**r, "arm": {"idea": "a", "erm": "b"}[r["arm"]]} for r in _gain_rows()])
    assert S.paired(renamed, pairs=[("a", "b")])["mean_diff"].tolist() == pytest.approx(out["mean_diff"].tolist(),
                                                                                       nan_ok=True)
    assert S.paired(renamed).empty  # names the legacy rule does not know: no pairs unless given


def test_holm_by_hand():
    """m = 4 tested p-values (NaN is no test): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 gives 0.02, 0.03,
    0.06, 0.04; the last is raised to 0.06 so that a smaller raw p never gets a larger adjusted one."""
    out = S.holm([0.01, NAN, 0.04, 0.03, 0.005])
    assert out[[0, 2, 3, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(out[1])
    assert S.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 2 x 0.6 = 1.2: no adjusted p above 1
    assert S.holm([0.2]) == pytest.approx([0.2]) and S.holm([]).size == 0


def test_holm_keeps_the_order_of_the_raw_p_and_never_lowers_one():
    rng = np.random.default_rng(0)
    for m in (2, 3, 8, 12, 40):
        p = rng.uniform(0, 1, m) ** rng.uniform(1, 4)  # mostly small, some near 1
        p[rng.integers(m)] = p[rng.integers(m)]  # a tie
        adj = S.holm(p)
        assert np.all(adj >= p) and np.all(adj <= 1)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adj[order]) >= 0)
        assert adj[order[0]] == pytest.approx(min(1, m * p[order[0]]))  # the smallest is Bonferroni's


def test_paired_corrects_each_study_over_every_row_of_its_table():
    """The family is one study's table (all pairs and parts with a test); another study's rows are not in it."""
    noise = iter(np.random.default_rng(1).normal(0, 0.002, 36))
    rows = [row(arm, part, s, base + next(noise), study=study)
            for study, parts in (("a", ("valid", "w1", "w2")), ("b", ("w1",)))
            for part, d in zip(parts, (0.002, 0.001, 0.004)) for s in (1, 2, 3)
            for arm, base in (("erm", 0.1), ("erm_ft", 0.1 + d), ("idea", 0.1 + 2 * d))]
    out = S.paired(frame(rows))
    assert out["p_paired"].notna().all()
    assert out.groupby("study").size().to_dict() == {"a": 9, "b": 3}
    for study, g in out.groupby("study"):
        assert g["p_holm"].to_numpy() == pytest.approx(S.holm(g["p_paired"].to_numpy()))
    assert (out["p_holm"] >= out["p_paired"]).all() and (out["p_holm"] > out["p_paired"]).any()


# ---------------------------------------------------------------- warm_gap


def test_warm_gap():
    rows = [row("idea", "w1", 0, 0.3, subset="warm"), row("idea", "w1", 1, 0.5, subset="warm"),
            row("idea", "w1", 0, 0.2), row("idea", "w1", 1, 0.2),
            row("idea", "valid", 0, 0.25, subset="warm"), row("idea", "valid", 0, 0.2),
            row("erm", "w1", 0, 0.4)]
    rows += [row("idea", "w1", 0, 99.0, metric="mrr"), row("idea", "w1", 0, 99.0, subset="warm", k=5)]
    out = S.warm_gap(frame(rows))
    assert list(out.columns) == ["study", "arm", "part", "warm", "all", "gap", "rel_gap"]
    idea = out[out["arm"] == "idea"]
    assert idea["part"].tolist() == ["valid", "w1"]
    # w1: warm (0.3+0.5)/2 = 0.4, all 0.2 -> gap 0.2, rel 1.0; valid: 0.25 vs 0.2 -> 0.05, 0.25
    assert idea["warm"].tolist() == pytest.approx([0.25, 0.4])
    assert idea["all"].tolist() == pytest.approx([0.2, 0.2])
    assert idea["gap"].tolist() == pytest.approx([0.05, 0.2])
    assert idea["rel_gap"].tolist() == pytest.approx([0.25, 1.0])
    erm = out[out["arm"] == "erm"].iloc[0]
    assert erm["all"] == pytest.approx(0.4)
    assert math.isnan(erm["warm"]) and math.isnan(erm["gap"]) and math.isnan(erm["rel_gap"])


# ---------------------------------------------------------------- sensitivity


INT = {"type": "int", "low": 2, "high": 8, "log": False}
LOG = {"type": "float", "low": 1.0e-4, "high": 10.0, "log": True}


def test_sensitivity_discrete_values_skip_constant_and_nan():
    rows = [row("idea", "valid", 0, v, stage="search", trial=f"t{i}", K=K, N=3, alpha=NAN, lr=0.1 * (i + 1))
            for i, (K, v) in enumerate([(2, 0.1), (2, 0.3), (4, 0.5), (4, 0.7)])]
    rows += [row("idea", "w1", 0, 99.0, stage="final", K=2, N=3, alpha=NAN),
             row("idea", "valid", 0, 99.0, stage="final", K=2, N=3, alpha=NAN),
             row("idea", "valid", 0, 99.0, stage="search", trial="t0", metric="hr", K=2, N=3, alpha=NAN)]
    space = {"K": INT, "N": INT, "alpha": LOG, "beta": LOG}  # lr varies but was not searched
    out = S.sensitivity(frame(rows), {"idea": space})
    assert list(out.columns) == ["study", "arm", "param", "value_or_bin", "binned", "log", "mean", "count"]
    # N is constant, alpha all NaN, beta absent, lr not in the space: only K remains
    assert out["param"].tolist() == ["K", "K"]
    assert out["value_or_bin"].tolist() == [2, 4]
    assert out["mean"].tolist() == pytest.approx([0.2, 0.6])
    assert out["count"].tolist() == [2, 2]
    assert not out["binned"].any() and not out["log"].any()
    assert S.sensitivity(frame(rows), {"erm": space}).empty  # an arm is read with its own space only


def test_sensitivity_bins_many_values_into_quantiles():
    # tau = 1..10 with value = tau: 5 quantile bins of 2 trials each, means 1.5, 3.5, ..., 9.5
    rows = [row("erm", "valid", 0, float(t), stage="search", trial=f"t{t}", tau=float(t)) for t in range(1, 11)]
    out = S.sensitivity(frame(rows), {"erm": {"tau": LOG}})
    assert out["arm"].tolist() == ["erm"] * 5
    assert out["binned"].all() and out["log"].all()  # tau was searched on a log scale
    assert out["mean"].tolist() == pytest.approx([1.5, 3.5, 5.5, 7.5, 9.5])
    assert out["count"].tolist() == [2] * 5
    assert all(isinstance(b, pd.Interval) for b in out["value_or_bin"])
    assert out["value_or_bin"].iloc[-1].right == pytest.approx(10.0)


def test_sensitivity_drops_duplicate_quantile_edges():
    # eight 1s then 2..7: quantile edges at 1 collapse; all 14 trials still counted, 1s in the first bin
    taus = [1.0] * 8 + [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    rows = [row("idea", "valid", 0, 0.5, stage="search", trial=f"t{i}", tau=t) for i, t in enumerate(taus)]
    out = S.sensitivity(frame(rows), {"idea": {"tau": LOG}})
    assert out["count"].sum() == 14
    assert len(out) < 5
    assert out["count"].iloc[0] >= 8


# ---------------------------------------------------------------- param_importances


def test_distributions_are_the_searched_spaces():
    assert S._distribution({"type": "int", "low": 2, "high": 8, "log": False}) == IntDistribution(2, 8)
    assert S._distribution({"type": "float", "low": 1e-4, "high": 1e-2, "log": True}) == \
        FloatDistribution(1e-4, 1e-2, log=True)
    assert S._distribution({"type": "float", "low": 0.0, "high": 0.5, "log": False}) == FloatDistribution(0.0, 0.5)
    assert S._distribution({"type": "choice", "values": [1, 2, 5]}) == CategoricalDistribution([1, 2, 5])


IMPORTANCE_SPACE = {"K": INT, "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True}, "N": INT,
                    "tau": LOG}


def _importance_rows():
    # full factorial K x lr, twice; value depends only on K -> K carries all importance
    rows, i = [], 0
    for _ in range(2):
        for K in (2, 8):
            for lr in (1e-3, 1e-1):
                rows.append(row("idea", "valid", 0, 0.1 * K, stage="search", trial=f"t{i}",
                                K=K, lr=lr, N=4, tau=NAN))
                i += 1
    rows.append(row("erm", "valid", 0, 0.3, stage="search", trial="e0", K=NAN, lr=1e-3))
    return rows


def test_param_importances_value_driven_by_one_param():
    out = S.param_importances(frame(_importance_rows()), "idea", IMPORTANCE_SPACE)
    assert list(out.columns) == ["study", "param", "importance"]
    assert out["param"].tolist() == ["K", "lr"]  # N constant, tau all NaN
    assert out["importance"].tolist() == pytest.approx([1.0, 0.0], abs=1e-9)


def test_param_importances_empty_cases():
    cols = ["study", "param", "importance"]
    one = S.param_importances(frame(_importance_rows()), "erm", {"lr": IMPORTANCE_SPACE["lr"]})  # a single trial
    assert list(one.columns) == cols and one.empty
    flat = [row("idea", "valid", 0, v, stage="search", trial=f"t{i}", K=2) for i, v in enumerate([0.1, 0.2])]
    none = S.param_importances(frame(flat), "idea", {"K": INT})  # nothing varies
    assert list(none.columns) == cols and none.empty


# ---------------------------------------------------------------- shift_vs_gain


def test_shift_vs_gain_merges_windows_in_order():
    gains = S.paired(frame(_gain_rows() + [row("idea", "w10", 0, 0.2), row("erm", "w10", 0, 0.1)]))
    shift = pd.DataFrame({"part": ["w10", "valid", "w1", "w2", "w7"], "cold_share": [0.3, 0.0, 0.1, 0.2, 0.9],
                          "popularity_js_vs_train": [0.03, 0.0, 0.01, 0.02, 0.09]})
    out = S.shift_vs_gain(gains, shift)
    # valid is not a window; w3 has no shift row and w7 no gain row (inner merge); w10 sorts last
    assert out["part"].tolist() == ["w1", "w2", "w10"]
    assert out["window"].tolist() == [1, 2, 10]
    assert out["cold_share"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert out["popularity_js_vs_train"].tolist() == pytest.approx([0.01, 0.02, 0.03])
    assert out["rel_gain"].tolist() == pytest.approx([1 / 3, 1.0, 1.0])  # w2: seed 0 alone is paired
    with pytest.raises(ValueError, match="cold_share"):
        S.shift_vs_gain(gains, shift.drop(columns="cold_share"))


def test_shift_vs_gain_matches_study_when_both_have_it():
    gains = pd.DataFrame({"study": ["a", "b"], "part": ["w1", "w1"], "rel_gain": [0.1, 0.2]})
    shift = pd.DataFrame({"study": ["a", "b"], "part": ["w1", "w1"], "cold_share": [0.5, 0.7],
                          "popularity_js_vs_train": [0.05, 0.07]})
    out = S.shift_vs_gain(gains, shift)
    assert out["cold_share"].tolist() == pytest.approx([0.5, 0.7])
    assert out["rel_gain"].tolist() == pytest.approx([0.1, 0.2])


# ---------------------------------------------------------------- imports


def test_summaries_does_not_import_ray_or_torch():
    code = ("import sys, analysis.summaries; "
            "bad = [m for m in ('ray', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minimum_detectable_effect_comes_from_the_paired_differences():
    """Seeds that move arm and control together (a shared warm start) leave paired differences with a small
    SD: the MDE must come from those (for 3 pairs, 3.264 x the SD of the differences), not from the arms' own
    spread across seeds, which is a hundred times larger here."""
    from analysis.summaries import min_detectable_effect, paired

    rows = []
    for seed, (level, delta) in enumerate([(0.10, 0.001), (0.20, 0.002), (0.30, 0.003)], start=1):
        rows += [dict(study="s", arm="erm", stage="final", seed=seed, part="w1", subset="all", metric="ndcg", k=10,
                      value=level),
                 dict(study="s", arm="idea", stage="final", seed=seed, part="w1", subset="all", metric="ndcg", k=10,
                      value=level + delta)]
    out = paired(pd.DataFrame(rows), pairs=[("idea", "erm")])
    r = out.iloc[0]
    sd_paired = float(np.std([0.001, 0.002, 0.003], ddof=1))  # 0.001
    assert r["mde"] == pytest.approx(min_detectable_effect(sd_paired, 3)) and r["mde"] == pytest.approx(0.003264, rel=1e-3)
    unpaired = min_detectable_effect(float(np.std([0.1, 0.2, 0.3], ddof=1)) * np.sqrt(2), 3)
    assert r["mde"] < unpaired / 50
    assert r["mde_rel"] == pytest.approx(r["mde"] / 0.2)
    # the defining property: at the MDE the paired t-test rejects with probability 0.8 (scipy's noncentral t)
    crit = stats.t.ppf(0.975, 2)
    ncp = r["mde"] / sd_paired * np.sqrt(3)
    assert stats.nct.sf(crit, 2, ncp) + stats.nct.cdf(-crit, 2, ncp) == pytest.approx(0.8, abs=1e-6)


# ---------------------------------------------------------------- oracle selection

def test_oracle_view_keeps_only_the_windows_after_the_one_it_picked_on():
    """Oracle runs enter the summaries as final runs, without validation and w1 (the selection window); the
    validation selection's own final runs, with absurd values here, never mix in."""
    rows = [row(a, p, s, v, stage="oracle") for a, base in (("idea", 0.3), ("erm", 0.2))
            for s in (1, 2, 3) for p, v in (("valid", 9.0), ("w1", 9.0), ("w2", base + 0.01 * s),
                                             ("w3", base - 0.01 * s))]
    rows += [row("idea", p, s, 99.0) for s in (1, 2, 3) for p in ("valid", "w1", "w2", "w3")]
    view = S.oracle_view(frame(rows))
    assert set(view["part"]) == {"w2", "w3"} and set(view["stage"]) == {"final"}
    assert view["value"].max() < 1
    table = S.paired(view, pairs=[("idea", "erm")])
    assert list(table["part"]) == ["w2", "w3"]
    assert table["mean_diff"].tolist() == pytest.approx([0.1, 0.1])
    assert S.oracle_view(frame([row("idea", "w2", 1, 0.1)])).empty  # no oracle runs: nothing


def _reference_mde(sd_diff: float, n: int) -> float:
    """The MDE as first written: power integrated over V ~ chi2(n-1) on [0, inf) with scipy.stats' densities
    (exact, slow, and unable to find the chi2 peak for n in the thousands)."""
    df = n - 1
    crit = stats.t.ppf(0.975, df)

    def shortfall(ncp):
        def rejects(v):
            scale = crit * np.sqrt(v / df)
            return (stats.norm.cdf(ncp - scale) + stats.norm.cdf(-ncp - scale)) * stats.chi2.pdf(v, df)
        return integrate.quad(rejects, 0, np.inf, limit=200)[0] - 0.8

    return float(optimize.brentq(shortfall, 0.0, 20 * crit + 20) * sd_diff / np.sqrt(n))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 13, 30, 100])
def test_minimum_detectable_effect_matches_the_direct_integral(n):
    from analysis.summaries import min_detectable_effect

    assert min_detectable_effect(0.01, n) == pytest.approx(_reference_mde(0.01, n), rel=1e-8)


def test_minimum_detectable_effect_of_many_pairs_tends_to_the_normal_one():
    """For large n the t-test is a z-test: MDE -> (z_0.975 + z_0.8) sd / sqrt(n)."""
    from analysis.summaries import min_detectable_effect

    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert min_detectable_effect(1.0, 10_000) * 100 == pytest.approx(z, rel=2e-4)
    assert min_detectable_effect(1.0, 1_000) * np.sqrt(1_000) == pytest.approx(z, rel=2e-3)


def test_seeds_for_mde_is_the_fewest_pairs_that_reach_the_target():
    from analysis.summaries import min_detectable_effect, seeds_for_mde

    for sd, target in [(1.0, 0.5), (0.001, 0.0009), (0.002, 0.0003), (1.0, 3.0)]:
        n = int(seeds_for_mde(sd, target))
        assert min_detectable_effect(sd, n) <= target and (n == 2 or min_detectable_effect(sd, n - 1) > target)
    assert seeds_for_mde(1.0, 0.5) == 34  # (2.80 / 0.5)^2 = 31.4 for a z-test; the t-test needs a few more
    assert seeds_for_mde(0.0, 0.01) == 2
    assert np.isnan(seeds_for_mde(1.0, 0.0)) and np.isnan(seeds_for_mde(np.nan, 0.1))


def test_paired_says_how_many_seeds_a_3_percent_mde_would_take():
    """seeds_for_3pct: the fewest pairs whose MDE, at the SD of the differences seen, is 3% of the control."""
    from analysis.summaries import MDE_TARGET_REL, min_detectable_effect, paired, seeds_for_mde

    deltas = [0.001, 0.004, -0.002, 0.003, 0.0]
    rows = [dict(study="s", arm=arm, stage="final", seed=s, part="test", subset="all", metric="ndcg", k=10,
                 value=0.03 + (d if arm == "idea" else 0.0))
            for s, d in enumerate(deltas, start=1) for arm in ("idea", "erm_ft")]
    r = paired(pd.DataFrame(rows), pairs=[("idea", "erm_ft")]).iloc[0]
    sd = float(np.std(deltas, ddof=1))
    want = seeds_for_mde(sd, MDE_TARGET_REL * 0.03)
    assert r["seeds_for_3pct"] == want and want > 5
    assert min_detectable_effect(sd, int(want)) <= 0.0009 < min_detectable_effect(sd, int(want) - 1)
