"""The positive control's table from a hand-built results frame: the available gain, each arm's share of it,
and the words, which claim a share only where the intervals allow one."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis import positive_control as P

SEEDS = (1, 2, 3, 4, 5)


def results(values: dict[str, list[float]], windows=("w1", "w2")) -> pd.DataFrame:
    """Final runs' NDCG@10 (all targets): arm -> one value per seed, the same on every window; validation 0.5."""
    rows = []
    for arm, per_seed in values.items():
        for seed, v in zip(SEEDS, per_seed):
            for part, value in [("valid", 0.5), *((w, v) for w in windows)]:
                rows.append({"study": "promo-100", "arm": arm, "stage": "final", "trial": "t", "seed": seed,
                             "part": part, "subset": "all", "metric": "ndcg", "k": 10, "value": value})
    return pd.DataFrame(rows)


FT = [0.10, 0.11, 0.09, 0.10, 0.10]
CLEAN = [0.20, 0.22, 0.19, 0.21, 0.18]  # available: +0.10 on average


def test_shares_are_ratios_of_mean_differences_over_seeds():
    idea = [f + 0.5 * (c - f) for f, c in zip(FT, CLEAN)]  # half the gain, seed by seed
    got = P.recovery(results({"erm_ft": FT, "clean": CLEAN, "idea": idea, "dros": FT}), 1.0).set_index(["part", "arm"])
    clean = got.loc[("test", "clean")]
    assert clean["diff"] == pytest.approx(0.1) and clean["share"] == pytest.approx(1.0)
    half = got.loc[("test", "idea")]
    assert half["share"] == pytest.approx(0.5) and half["share_low"] == pytest.approx(0.5)  # exact per seed: no spread
    assert got.loc[("test", "dros"), "share"] == pytest.approx(0.0)
    assert got.loc[("w1", "idea"), "diff"] == pytest.approx(0.05) and got.loc[("valid", "idea"), "diff"] == 0
    assert np.isnan(got.loc[("valid", "idea"), "share"])  # no gain available on validation
    assert set(got.index.get_level_values("part")) == {"valid", "w1", "w2", "test"}


def test_the_test_part_is_the_mean_over_the_windows_per_seed():
    frame = results({"erm_ft": FT, "clean": CLEAN})
    frame.loc[frame["part"] == "w2", "value"] += 0.02  # clean and erm_ft both higher on w2
    got = P.recovery(frame, 0.5).set_index(["part", "arm"])
    assert got.loc[("test", "clean"), "control_mean"] == pytest.approx(np.mean(FT) + 0.01)


def test_words_claim_a_share_only_where_the_intervals_allow():
    noisy = [f + d for f, d in zip(FT, [0.05, -0.04, 0.03, -0.05, 0.04])]  # mean +0.006, interval across 0
    rows = P.recovery(results({"erm_ft": FT, "clean": CLEAN, "idea": noisy}), 1.0)
    (sentence,) = P.words(rows)
    assert sentence.startswith("Strength 1: masking the promotions gains +0.1000")
    assert "idea finds no measurable part of it" in sentence and not re.search(r"finds -?\d+%", sentence)
    started = P.words(P.recovery(results({"erm_ft": FT, "clean": CLEAN, "erm": [f - 0.02 for f in FT]}), 1.0))[0]
    assert started.endswith("erm_ft itself gains against its ERM start (+0.0200, 95% CI [+0.0200, +0.0200]).")
    none = P.recovery(results({"erm_ft": FT, "clean": FT, "idea": noisy}), 0.0)
    assert P.words(none) == [P.words(none)[0]] and "no gain available" in P.words(none)[0]


def test_strength_comes_from_the_dataset_name(tmp_path):
    assert P.strength_of("synthetic-promo50") == 0.5
    with pytest.raises(ValueError, match="not a positive-control dataset"):
        P.strength_of("beauty")
    folder = tmp_path / "promo-100"
    folder.mkdir()
    results({"erm_ft": FT, "clean": CLEAN, "erm": FT}).to_csv(folder / "results.csv", index=False)
    (folder / "study.json").write_text(json.dumps({"study": "promo-100", "dataset": "synthetic-promo100",
                                                   "arms": {"order": ["clean", "erm_ft", "erm"], "base": "erm"}}))
    assert P.main(["--report-dir", str(folder), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "positive_control.md").read_text()
    assert "Strength 1: masking the promotions gains +0.1000" in md and (tmp_path / "out" / "positive_control.png").is_file()
