"""Robustness summaries of a study's tidy results frame.

Every function takes the *results frame* (one row per study, arm, stage,
trial, seed, part, subset, metric, k: see ``REQUIRED_COLUMNS``) and returns a
tidy pandas DataFrame. Pure pandas/numpy/scipy (and optuna for
``param_importances``): no Ray, no torch, no MLflow.

Conventions shared by all functions:

- One metric is summarised at a time, chosen by ``metric`` / ``k`` / ``subset``
  (defaults: `idea.contract.SELECTION`, NDCG@10, and ``"all"``).
- Results are kept apart per ``study`` (a ``study`` column is always
  returned), since averaging across datasets is meaningless.
- Final-stage rows are first averaged per (study, arm, part, seed), so a seed
  counts once however many rows it has; seeds are the unit of replication.
- Only final-stage rows (the selection on validation) enter the test-window
  summaries; ``oracle_view`` turns the oracle selection's rows into such a frame.
- Parts sort ``valid`` first, then test windows by the number after ``w``
  (``w2`` before ``w10``), then any other part by name.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import integrate, optimize, special, stats

from idea.contract import SELECTION, Arms, Stage, window_name, window_number

__all__ = [
    "REQUIRED_COLUMNS",
    "part_key",
    "window_index",
    "windows",
    "oracle_view",
    "per_window",
    "degradation",
    "worst_window",
    "holm",
    "paired",
    "warm_gap",
    "sensitivity",
    "param_importances",
    "shift_vs_gain",
]

REQUIRED_COLUMNS = ("study", "arm", "stage", "seed", "part", "subset", "metric", "k", "value")



# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def window_index(part: str) -> int:
    """Index of a test window (``"w3"`` -> 3); raises ValueError for other parts such as ``valid``."""
    number = window_number(str(part))
    if number is None:
        raise ValueError(f"part {part!r} is not a test window (expected 'w<integer>', e.g. 'w1')")
    return number


def _is_window(part) -> bool:
    return isinstance(part, str) and window_number(part) is not None


def part_key(part) -> tuple:
    """Sort key for parts: valid first, then windows by number, then the rest by name."""
    if part == "valid":
        return (0, 0, "")
    if _is_window(part):
        return (1, window_index(part), "")
    return (2, 0, str(part))


def windows(df: pd.DataFrame) -> list[str]:
    """The test windows (parts ``w<n>``) present in ``df``, sorted by window number."""
    parts = pd.unique(df["part"].dropna())
    return sorted((p for p in parts if _is_window(p)), key=window_index)


def _check_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "results frame") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def _select(df: pd.DataFrame, stage: str, metric: str, k: int, subset: str | None) -> pd.DataFrame:
    """Rows of one stage and one metric@k (and one subset unless ``subset`` is None), NaN values dropped."""
    _check_columns(df, REQUIRED_COLUMNS)
    mask = (df["stage"] == stage) & (df["metric"] == metric) & (df["k"] == k)
    if subset is not None:
        mask &= df["subset"] == subset
    out = df.loc[mask & df["value"].notna()]
    return out


def _sort_parts(out: pd.DataFrame, by_before: Sequence[str] = (), by_after: Sequence[str] = ()) -> pd.DataFrame:
    """Sort by ``by_before`` columns, then part order, then ``by_after`` columns; fresh index."""
    out = out.assign(_pk=out["part"].map(part_key))
    out = out.sort_values([*by_before, "_pk", *by_after], kind="stable").drop(columns="_pk")
    return out.reset_index(drop=True)


def _seed_means(df: pd.DataFrame, metric: str, k: int, subset: str | None, by_subset: bool = False) -> pd.DataFrame:
    """Final-stage metric averaged per (study, arm, part, seed[, subset]): one value per seed."""
    d = _select(df, "final", metric, k, subset)
    keys = ["study", "arm", "part", "seed"] + (["subset"] if by_subset else [])
    return d.groupby(keys, as_index=False, sort=False)["value"].mean()


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def oracle_view(df: pd.DataFrame) -> pd.DataFrame:
    """The oracle selection's runs (stage oracle: each arm's configuration picked on the first test window)
    as final-stage rows on the windows after that one only, so every summary reads them as it reads the
    validation selection's; validation and the first window are left out, since the pick saw the latter.
    Empty when the study has no oracle runs."""
    _check_columns(df, REQUIRED_COLUMNS)
    oracle = df.loc[df["stage"] == Stage.ORACLE]
    later = windows(oracle)[1:]
    return oracle.loc[oracle["part"].isin(later)].assign(stage=Stage.FINAL).reset_index(drop=True)


# ----------------------------------------------------------------------------
# 1. per window
# ----------------------------------------------------------------------------

PER_WINDOW_COLUMNS = ["study", "arm", "part", "mean", "std", "n_seeds", "ci95_low", "ci95_high"]


def per_window(df: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1],
               subset: str = "all") -> pd.DataFrame:
    """Final-stage metric per arm and part across seeds: mean, std (ddof=1), n_seeds and a t-based 95% CI.

    The CI is mean ± t_{0.975, n-1}·std/√n; std and CI are NaN with fewer than 2 seeds.
    Columns: study, arm, part, mean, std, n_seeds, ci95_low, ci95_high.
    """
    s = _seed_means(df, metric, k, subset)
    if s.empty:
        return _empty(PER_WINDOW_COLUMNS)
    g = s.groupby(["study", "arm", "part"], as_index=False, sort=False)["value"]
    out = g.agg(mean="mean", std=lambda v: v.std(ddof=1), n_seeds="count")
    n = out["n_seeds"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tq = np.where(n >= 2, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
        half = tq * out["std"].to_numpy(dtype=float) / np.sqrt(n)
    out["ci95_low"] = out["mean"] - half
    out["ci95_high"] = out["mean"] + half
    return _sort_parts(out, ["study", "arm"])[PER_WINDOW_COLUMNS]


# ----------------------------------------------------------------------------
# 2. degradation
# ----------------------------------------------------------------------------

DEGRADATION_COLUMNS = ["study", "arm", "part", "window", "mean", "valid_mean", "rel_drop", "n_seeds", "slope"]


def degradation(df: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1],
                subset: str = "all") -> pd.DataFrame:
    """How much each arm loses from validation to each later test window, and how fast.

    Returns ONE frame, a row per (study, arm, test window):
      - ``window``: window index (w3 -> 3);
      - ``mean``: the window's metric averaged over seeds; ``valid_mean``: the same for validation;
      - ``rel_drop``: per seed ``(valid - w) / valid``, then averaged over the seeds that have both
        (positive = worse than validation); ``n_seeds``: how many seeds entered ``rel_drop``;
      - ``slope``: per arm (repeated on each of its rows), the least-squares slope
        (``numpy.polyfit`` degree 1) of ``mean`` against ``window``; NaN with fewer than 2 windows.
    """
    s = _seed_means(df, metric, k, subset)
    if s.empty:
        return _empty(DEGRADATION_COLUMNS)
    valid = s.loc[s["part"] == "valid", ["study", "arm", "seed", "value"]].rename(columns={"value": "valid"})
    w = s.loc[s["part"].map(_is_window)].copy()
    if w.empty:
        return _empty(DEGRADATION_COLUMNS)
    w = w.merge(valid, on=["study", "arm", "seed"], how="left")
    v = w["valid"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        drop = np.where(v != 0, (v - w["value"].to_numpy(dtype=float)) / v, np.nan)
    w["rel_drop"] = drop

    out = w.groupby(["study", "arm", "part"], as_index=False, sort=False).agg(
        mean=("value", "mean"), rel_drop=("rel_drop", "mean"), n_seeds=("rel_drop", "count")
    )
    vmean = valid.groupby(["study", "arm"], as_index=False)["valid"].mean().rename(columns={"valid": "valid_mean"})
    out = out.merge(vmean, on=["study", "arm"], how="left")
    out["window"] = out["part"].map(window_index)

    slopes = []
    for (study, arm), g in out.groupby(["study", "arm"], sort=False):
        x = g["window"].to_numpy(dtype=float)
        y = g["mean"].to_numpy(dtype=float)
        slope = float(np.polyfit(x, y, 1)[0]) if len(np.unique(x)) >= 2 else np.nan
        slopes.append({"study": study, "arm": arm, "slope": slope})
    out = out.merge(pd.DataFrame(slopes), on=["study", "arm"], how="left")
    return _sort_parts(out, ["study", "arm"])[DEGRADATION_COLUMNS]


# ----------------------------------------------------------------------------
# 3. worst window
# ----------------------------------------------------------------------------

WORST_COLUMNS = [
    "study", "arm", "worst_value", "worst_std", "n_seeds",
    "worst_part", "worst_part_share", "min_of_mean", "min_of_mean_part",
]
WORST_SEED_COLUMNS = ["study", "arm", "seed", "worst_value", "worst_part"]


def worst_window(
    df: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1], subset: str = "all", by_seed: bool = False
) -> pd.DataFrame:
    """Worst case over test windows: per seed the minimum metric over windows and where, then per arm.

    ``by_seed=True`` returns the per-seed rows (study, arm, seed, worst_value, worst_part). Otherwise
    one row per arm: ``worst_value``/``worst_std`` = mean/std over seeds of each seed's minimum;
    ``worst_part`` = the window most often worst across seeds (ties -> earlier window) and
    ``worst_part_share`` the fraction of seeds for which it is worst; ``min_of_mean`` /
    ``min_of_mean_part`` = minimum (and where) of the seed-averaged window curve. Ties within a
    seed go to the earlier window. Validation is not a window.
    """
    s = _seed_means(df, metric, k, subset)
    s = s.loc[s["part"].map(_is_window)] if not s.empty else s
    if s.empty:
        return _empty(WORST_SEED_COLUMNS if by_seed else WORST_COLUMNS)
    s = s.assign(window=s["part"].map(window_index)).sort_values(["study", "arm", "seed", "window"], kind="stable")
    idx = s.groupby(["study", "arm", "seed"], sort=True)["value"].idxmin()
    per_seed = (
        s.loc[idx.to_numpy(), ["study", "arm", "seed", "value", "part"]]
        .rename(columns={"value": "worst_value", "part": "worst_part"})
        .reset_index(drop=True)
    )
    if by_seed:
        return per_seed[WORST_SEED_COLUMNS]

    rows = []
    for (study, arm), g in per_seed.groupby(["study", "arm"], sort=True):
        counts = g["worst_part"].value_counts()
        modal = sorted(counts.index, key=lambda p: (-counts[p], window_index(p)))[0]
        curve = s.loc[(s["study"] == study) & (s["arm"] == arm)].groupby("window")["value"].mean()
        rows.append(
            {
                "study": study,
                "arm": arm,
                "worst_value": g["worst_value"].mean(),
                "worst_std": g["worst_value"].std(ddof=1),
                "n_seeds": len(g),
                "worst_part": modal,
                "worst_part_share": counts[modal] / len(g),
                "min_of_mean": float(curve.min()),
                "min_of_mean_part": window_name(int(curve.idxmin())),
            }
        )
    return pd.DataFrame(rows, columns=WORST_COLUMNS)


# ----------------------------------------------------------------------------
# 4. arms against their controls
# ----------------------------------------------------------------------------

PAIRED_COLUMNS = [
    "study", "arm", "control", "part", "arm_mean", "control_mean", "rel_gain", "n_pairs", "mean_diff",
    "ci_low", "ci_high", "t_paired", "p_paired", "p_holm", "mde", "mde_rel", "seeds_for_3pct",
]
MDE_ALPHA, MDE_POWER = 0.05, 0.8  # two-sided test level and power of the minimum detectable effect
MDE_TARGET_REL = 0.03  # the MDE, over the control's mean, whose seeds `paired` reports (column seeds_for_3pct)


def min_detectable_effect(sd_diff: float, n: int, alpha: float = MDE_ALPHA, power: float = MDE_POWER) -> float:
    """The smallest true mean difference a two-sided paired t-test at level `alpha` detects with probability
    `power`, given the SD of the per-seed differences and n pairs: the noncentrality δ·√n/sd at which the
    noncentral t (n−1 degrees of freedom) exceeds the critical value with that probability, solved exactly.
    "No effect larger than the MDE" is the honest form of a null result; NaN below 2 pairs."""
    if n < 2 or not np.isfinite(sd_diff):
        return np.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    # T = (Z + ncp) / sqrt(V / df), V ~ chi2(df), integrated over V where all but 2e-15 of its mass lies
    # (scipy's noncentral t returns NaN at some arguments for few degrees of freedom)
    lo, hi = stats.chi2.ppf(1e-15, df), stats.chi2.isf(1e-15, df)
    log_norm = -special.gammaln(df / 2) - (df / 2) * np.log(2)  # of the chi2(df) density

    def rejects(v: float, ncp: float) -> float:
        scale = crit * np.sqrt(v / df)
        density = np.exp(log_norm + special.xlogy(df / 2 - 1, v) - v / 2)
        return (special.ndtr(ncp - scale) + special.ndtr(-ncp - scale)) * density

    def shortfall(ncp: float) -> float:
        """Power at noncentrality ncp, minus the power asked for."""
        return integrate.quad(rejects, lo, hi, args=(ncp,), limit=200)[0] - power

    ncp = optimize.brentq(shortfall, 0.0, 20 * crit + 20)
    return float(ncp * sd_diff / np.sqrt(n))


def seeds_for_mde(sd_diff: float, target: float, alpha: float = MDE_ALPHA, power: float = MDE_POWER) -> float:
    """The fewest pairs whose minimum detectable effect is at most `target`, at the SD of the per-seed
    differences seen so far: what it would take for a null result to exclude effects of that size. The MDE
    falls with n, so a doubling search then bisection finds it; NaN without a finite SD or a positive target."""
    if not (np.isfinite(sd_diff) and np.isfinite(target) and target > 0):
        return np.nan
    low, high = 1, 2  # MDE(low) > target (MDE(1) is infinite) and, once the loop ends, MDE(high) <= target
    while min_detectable_effect(sd_diff, high, alpha, power) > target:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if min_detectable_effect(sd_diff, mid, alpha, power) <= target else (mid, high)
    return float(high)


def holm(p) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values, so that "adjusted p < α" holds the chance of any
    false rejection in the family at α: the i-th smallest of m becomes max over j ≤ i of (m − j + 1)·p_(j),
    capped at 1. NaN entries (no test) are not members of the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def paired(df: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1], subset: str = "all",
           pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Arm against control per part, paired by seed: in a warm-started study seed s of every arm starts
    from the same ERM model (ERM final seed s), so per-seed differences remove the start's luck.

    Over the seeds present in both (n_pairs): arm_mean / control_mean, rel_gain = mean_diff / control_mean,
    mean_diff of arm - control with its t-based 95% interval [ci_low, ci_high], and the two-sided paired
    t-test (NaN with fewer than 2 pairs). p_holm is p_paired after Holm's correction (`holm`) over one family
    per study: every tested row of this table (each pair on each part, validation included) for the one
    metric, k and subset asked for, since a report reads them all at once. Pairs whose arms are absent are
    left out. `pairs` is the study's own (`analysis.load.StudyRead.arms().pairs()`); without it, the arms in
    `df` are paired by the rule of stores that predate arm roles (`Arms.legacy`), so a hand-built frame
    still gets today's pairs.
    """
    s = _seed_means(df, metric, k, subset)
    pairs = Arms.legacy(s["arm"]).pairs() if pairs is None and not s.empty else list(pairs or [])
    rows = []
    for (study, part), g in (s.groupby(["study", "part"], sort=False) if not s.empty else []):
        by_arm = {a: v.set_index("seed")["value"] for a, v in g.groupby("arm")}
        for arm, control in pairs:
            if arm not in by_arm or control not in by_arm:
                continue
            both = pd.concat([by_arm[arm].rename("a"), by_arm[control].rename("c")], axis=1, join="inner")
            diff = both["a"] - both["c"]
            n, mean_diff = len(both), float(diff.mean()) if len(both) else np.nan
            cm = float(both["c"].mean()) if n else np.nan
            lo = hi = t = p = mde = seeds = np.nan
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero variance across seeds is legitimate
                if n >= 2:
                    sd = float(diff.std(ddof=1))  # of the paired differences, which the MDE comes from
                    mde = min_detectable_effect(sd, n)
                    seeds = seeds_for_mde(sd, MDE_TARGET_REL * abs(cm)) if cm != 0 else np.nan
                    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n))
                    lo, hi = mean_diff - half, mean_diff + half
                    res = stats.ttest_rel(both["a"], both["c"])
                    t, p = float(res.statistic), float(res.pvalue)
            rows.append({"study": study, "arm": arm, "control": control, "part": part,
                         "arm_mean": float(both["a"].mean()) if n else np.nan, "control_mean": cm,
                         "rel_gain": mean_diff / cm if n and cm != 0 else np.nan, "n_pairs": n,
                         "mean_diff": mean_diff, "ci_low": lo, "ci_high": hi, "t_paired": t, "p_paired": p,
                         "mde": mde, "mde_rel": mde / cm if n and cm != 0 else np.nan, "seeds_for_3pct": seeds})
    if not rows:
        return _empty(PAIRED_COLUMNS)
    out = pd.DataFrame(rows)
    order = {pair: i for i, pair in enumerate(pairs)}
    out["_pair"] = [order[(a, c)] for a, c in zip(out["arm"], out["control"])]
    out = _sort_parts(out, ["study", "_pair"])
    out["p_holm"] = out.groupby("study", sort=False)["p_paired"].transform(lambda p: holm(p.to_numpy()))
    return out[PAIRED_COLUMNS]


# ----------------------------------------------------------------------------
# 5. warm gap
# ----------------------------------------------------------------------------

WARM_GAP_COLUMNS = ["study", "arm", "part", "warm", "all", "gap", "rel_gap"]


def warm_gap(df: pd.DataFrame, metric: str = SELECTION[0], k: int = SELECTION[1]) -> pd.DataFrame:
    """Warm-user vs all-user metric per arm and part (seed means): warm, all, gap = warm - all, rel_gap = gap / all.

    A large gap means the window's difficulty comes from cold users/items rather than from shift in
    warm behaviour. Parts with only one subset keep NaN for the missing side.
    """
    s = _seed_means(df, metric, k, None, by_subset=True)
    s = s.loc[s["subset"].isin(["warm", "all"])] if not s.empty else s
    if s.empty:
        return _empty(WARM_GAP_COLUMNS)
    m = s.groupby(["study", "arm", "part", "subset"], sort=False)["value"].mean()
    out = m.unstack("subset").reset_index()
    for c in ("warm", "all"):
        if c not in out.columns:
            out[c] = np.nan
    out.columns.name = None
    out["gap"] = out["warm"] - out["all"]
    a = out["all"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["rel_gap"] = np.where(a != 0, out["gap"].to_numpy(dtype=float) / a, np.nan)
    return _sort_parts(out, ["study", "arm"])[WARM_GAP_COLUMNS]


# ----------------------------------------------------------------------------
# 6. sensitivity
# ----------------------------------------------------------------------------

SENSITIVITY_COLUMNS = ["study", "arm", "param", "value_or_bin", "binned", "log", "mean", "count"]


def _trial_table(df: pd.DataFrame, metric: str, k: int, subset: str, params: Iterable[str]) -> pd.DataFrame:
    """Search-stage validation value per (study, arm, trial) with that trial's params (one row per trial)."""
    d = _select(df, "search", metric, k, subset)
    d = d.loc[d["part"] == "valid"]
    present = [p for p in dict.fromkeys(params) if p in d.columns]
    if "trial" not in d.columns or d.empty:
        return d[["study", "arm", "value", *present]].reset_index(drop=True)
    agg = {p: "first" for p in present}
    agg["value"] = "mean"
    return d.groupby(["study", "arm", "trial"], as_index=False, sort=False, dropna=False).agg(agg)


def sensitivity(
    df: pd.DataFrame,
    spaces: Mapping[str, Mapping[str, Mapping]],
    metric: str = SELECTION[0],
    k: int = SELECTION[1],
    subset: str = "all",
    max_levels: int = 5,
) -> pd.DataFrame:
    """Marginal effect of each searched hyperparameter on the validation metric (search stage).

    ``spaces`` maps an arm to its search space (``analysis.load.StudyRead.spaces``: param -> the study
    file's entry, with ``log`` for log-scale ranges); an arm without one gets no rows. Per study, arm
    and searched param that varies among that arm's trials: the mean and count of the trials'
    validation metric per observed value. A param with more than ``max_levels`` distinct values is
    binned into at most ``max_levels`` quantile bins (``pd.qcut``, ``duplicates="drop"``);
    ``value_or_bin`` then holds a ``pd.Interval`` and ``binned`` is True. ``log`` says whether the
    param was searched on a log scale. Columns: study, arm, param, value_or_bin, binned, log, mean, count.
    """
    t = _trial_table(df, metric, k, subset, [p for space in spaces.values() for p in space])
    rows = []
    for (study, arm), g in t.groupby(["study", "arm"], sort=True):
        for p, spec in spaces.get(arm, {}).items():
            if p not in g.columns:
                continue
            sub = g.loc[g[p].notna(), [p, "value"]]
            nuniq = sub[p].nunique()
            if nuniq < 2:
                continue
            binned = nuniq > max_levels
            key = pd.qcut(sub[p], q=max_levels, duplicates="drop") if binned else sub[p]
            agg = sub["value"].groupby(key, observed=True, sort=True).agg(["mean", "count"])
            rows += [{"study": study, "arm": arm, "param": p, "value_or_bin": val, "binned": binned,
                      "log": bool(spec.get("log", False)), "mean": float(r["mean"]), "count": int(r["count"])}
                     for val, r in agg.iterrows()]
    if not rows:
        return _empty(SENSITIVITY_COLUMNS)
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


# ----------------------------------------------------------------------------
# 7. param importances
# ----------------------------------------------------------------------------

IMPORTANCE_COLUMNS = ["study", "param", "importance"]


def _distribution(spec: Mapping):
    """The Optuna distribution of a search-space entry as the study file writes it (``StudyRead.spaces``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec["type"] == "choice":
        return CategoricalDistribution(list(spec["values"]))
    kind = IntDistribution if spec["type"] == "int" else FloatDistribution
    return kind(spec["low"], spec["high"], log=bool(spec.get("log", False)))


def param_importances(
    df: pd.DataFrame,
    arm: str,
    space: Mapping[str, Mapping],
    metric: str = SELECTION[0],
    k: int = SELECTION[1],
    subset: str = "all",
) -> pd.DataFrame:
    """Which hyperparameters drive the validation metric: Optuna mean-decrease-impurity importances.

    Per study, the arm's search trials (validation value, and the params of ``space``, the arm's
    search space, that vary) are replayed into an ``optuna`` study via ``create_trial`` with the
    space's own distributions and scored with ``MeanDecreaseImpurityImportanceEvaluator(seed=0)``
    (random forest, no fANOVA). Importances sum to 1 per study. Fewer than 2 trials or no varying
    param gives no rows. Columns: study, param, importance.
    """
    import optuna

    t = _trial_table(df, metric, k, subset, space)
    t = t.loc[t["arm"] == arm]
    frames = []
    for study_name, g in t.groupby("study", sort=True):
        varying = [p for p in space if p in g.columns and g[p].notna().all() and g[p].nunique() >= 2]
        if len(g) < 2 or not varying:
            continue
        dists = {p: _distribution(space[p]) for p in varying}
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per call
        try:
            study = optuna.create_study(direction="maximize")
        finally:
            optuna.logging.set_verbosity(verbosity)
        for _, row in g.iterrows():
            params = {p: row[p].item() if hasattr(row[p], "item") else row[p] for p in varying}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row["value"])))
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
        )
        if imp:
            frames.append(
                pd.DataFrame({"study": study_name, "param": list(imp), "importance": [float(x) for x in imp.values()]})
            )
    if not frames:
        return _empty(IMPORTANCE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["study", "importance"], ascending=[True, False], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------
# 8. shift vs gain
# ----------------------------------------------------------------------------

SHIFT_COLUMNS = ("part", "cold_share", "popularity_js_vs_train")


def shift_vs_gain(gains: pd.DataFrame, shift: pd.DataFrame) -> pd.DataFrame:
    """Attach each window's shift size (cold_share, popularity_js_vs_train) to its gain/drop row.

    ``gains`` is typically ``paired`` output (any frame with a ``part`` column works, e.g.
    ``degradation``). Inner merge on ``part`` (and ``study`` when both frames have it), test
    windows only, sorted by window; adds a ``window`` index column for plotting.
    """
    _check_columns(gains, ["part"], "gains frame")
    _check_columns(shift, SHIFT_COLUMNS, "shift frame")
    on = ["study", "part"] if "study" in gains.columns and "study" in shift.columns else ["part"]
    keep = list(dict.fromkeys([*on, "cold_share", "popularity_js_vs_train"]))
    g = gains.drop(columns=[c for c in ("cold_share", "popularity_js_vs_train") if c in gains.columns])
    out = g.merge(shift[keep], on=on, how="inner")
    out = out.loc[out["part"].map(_is_window)]
    if "window" not in out.columns:
        out = out.assign(window=out["part"].map(window_index).astype(int))
    sort_before = ["study"] if "study" in out.columns else []
    return _sort_parts(out, sort_before)
