"""Temporal-window and leave-one-out splits: hand-enumerated events, leakage proofs, real-data counts."""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from idea.data.interactions import from_arrays
from idea.data.registry import AMAZON_CUTS, get_spec, load_dataset
from idea.splits import (
    LeakageError,
    SplitConfig,
    check_leakage,
    loo_split,
    make_split,
    proportional_cuts,
    temporal_split,
    to_date,
    to_timestamp,
)
from tests.idea.helpers import take

DAY = 86_400
BASE = 1_577_836_800  # 2020-01-01 00:00 UTC


def D(day: int) -> int:
    return BASE + day * DAY


def date_of(day: int) -> str:
    return (dt.date(2020, 1, 1) + dt.timedelta(days=day)).isoformat()


CUTS = (D(100), D(200), D(300), D(400))  # t_val, t0, end of w1, end of w2

# (user, raw item, day) in the order given to from_arrays. Raw item ids first appear in the
# order 1..9 and users in the order a, b, c, d, so codes are users 0..3 and items == raw ids.
ROWS = [
    ("a", 1, 10), ("b", 2, 120), ("a", 2, 50), ("a", 3, 50),  # 2 and 3 tie at day 50: 2 first
    ("a", 4, 150), ("a", 5, 250), ("a", 6, 350), ("a", 7, 450),  # day 450: after the last window
    ("b", 8, 220), ("c", 9, 210), ("c", 1, 310),
    ("d", 1, 20), ("d", 3, 5), ("d", 2, 30),  # given out of time order: sorted to 3, 1, 2
]
# Rows of the sorted table:
#   0..6  user 0 (a): items 1 2 3 4 5 6 7 at days 10 50 50 150 250 350 450
#   7..8  user 1 (b): items 2 8 at days 120 220
#   9..10 user 2 (c): items 9 1 at days 210 310
#  11..13 user 3 (d): items 3 1 2 at days 5 20 30


@pytest.fixture(scope="module")
def table():
    users, items, days = zip(*ROWS)
    return from_arrays("hand", list(users), list(items), [D(d) for d in days], sha256="hand-sha")


def ev_dict(ev) -> dict:
    return {
        "row": ev.row.tolist(), "user": ev.user.tolist(), "target": ev.target.tolist(),
        "history": ev.history.tolist(), "lengths": ev.lengths.tolist(),
        "time": None if ev.time is None else ev.time.tolist(), "warm": ev.warm.tolist(),
    }


def test_hand_table_is_sorted_as_documented(table):
    assert table.user.tolist() == [0] * 7 + [1] * 2 + [2] * 2 + [3] * 3
    assert table.item.tolist() == [1, 2, 3, 4, 5, 6, 7, 2, 8, 9, 1, 3, 1, 2]
    assert table.timestamp.tolist() == [D(d) for d in (10, 50, 50, 150, 250, 350, 450, 120, 220, 210, 310, 5, 20, 30)]
    assert (table.n_users, table.n_items) == (4, 9)


# ---------------------------------------------------------------------------------------------
# Temporal windows
# ---------------------------------------------------------------------------------------------

TEMPORAL_L3 = {
    "train": {
        "row": [1, 2, 12, 13], "user": [0, 0, 3, 3], "target": [2, 3, 1, 2],
        # row 2 (item 3, day 50) sees item 2 of the same day, which comes first in file order;
        # row 1 (item 2, day 50) does not see item 3.
        "history": [[0, 0, 1], [0, 1, 2], [0, 0, 3], [0, 3, 1]], "lengths": [1, 2, 1, 2],
        "time": [D(50), D(50), D(20), D(30)], "warm": [True, True, True, True],
    },
    "valid": {
        "row": [3], "user": [0], "target": [4], "history": [[1, 2, 3]], "lengths": [3],
        "time": [D(150)], "warm": [False],
    },
    "w1": {
        # row 4 has 4 earlier items (1 2 3 4): max_len 3 keeps the most recent three
        "row": [4, 8], "user": [0, 1], "target": [5, 8], "history": [[2, 3, 4], [0, 0, 2]], "lengths": [3, 1],
        "time": [D(250), D(220)], "warm": [False, False],
    },
    "w2": {
        "row": [5, 10], "user": [0, 2], "target": [6, 1], "history": [[3, 4, 5], [0, 0, 9]], "lengths": [3, 1],
        "time": [D(350), D(310)], "warm": [False, True],
    },
}


def test_temporal_events_hand_enumerated(table):
    split = temporal_split(table, CUTS, max_len=3)
    assert split.protocol == "temporal" and split.dataset == "hand" and split.data_sha256 == "hand-sha"
    assert split.n_items == 9 and split.max_len == 3
    assert list(split.parts()) == ["train", "valid", "w1", "w2"]
    assert list(split.tests) == ["w1", "w2"]
    for name, expected in TEMPORAL_L3.items():
        assert ev_dict(split.parts()[name]) == expected, name
    # first interactions of a user cannot be predicted: row 0 and row 11 (train), row 7 (valid), row 9 (w1)
    assert split.skipped == {"train": 2, "valid": 1, "w1": 1, "w2": 0}
    assert split.bounds == {"train": (None, D(100)), "valid": (D(100), D(200)),
                            "w1": (D(200), D(300)), "w2": (D(300), D(400))}
    # warm = seen in any interaction before t_val (days 10, 50, 50, 5, 20, 30): items 1 2 3
    assert split.warm_items.tolist() == [False, True, True, True, False, False, False, False, False, False]
    check_leakage(split, table)


def test_temporal_history_is_left_padded_and_truncated(table):
    long = temporal_split(table, CUTS, max_len=5)
    assert long.tests["w1"].history.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 2]]
    assert long.tests["w1"].lengths.tolist() == [4, 1]
    assert long.tests["w2"].history.tolist() == [[1, 2, 3, 4, 5], [0, 0, 0, 0, 9]]
    one = temporal_split(table, CUTS, max_len=1)
    assert one.tests["w1"].history.tolist() == [[4], [2]]  # the single most recent item
    assert one.train.history.tolist() == [[1], [2], [3], [1]]
    assert one.tests["w1"].lengths.tolist() == [1, 1]
    check_leakage(long, table)
    check_leakage(one, table)


def test_interactions_after_the_last_window_are_not_events(table):
    split = temporal_split(table, CUTS, max_len=3)
    all_rows = np.concatenate([ev.row for ev in split.parts().values()])
    assert 6 not in all_rows  # item 7 at day 450 >= end of w2
    assert sorted(all_rows.tolist()) == [1, 2, 3, 4, 5, 8, 10, 12, 13]


def test_temporal_accepts_date_cuts():
    data = from_arrays("d", [0, 0, 0, 0], [1, 2, 3, 4],
                       [to_timestamp(x) for x in ("2013-07-01", "2013-08-01", "2013-11-01", "2014-02-01")], "s")
    split = temporal_split(data, AMAZON_CUTS, max_len=2)
    assert [len(ev) for ev in split.parts().values()] == [0, 1, 1, 1, 0]
    assert split.parts()["w2"].target.tolist() == [4]
    assert split.parts()["w1"].history.tolist() == [[1, 2]]
    assert split.skipped == {"train": 1, "valid": 0, "w1": 0, "w2": 0, "w3": 0}


# ---------------------------------------------------------------------------------------------
# Leave-one-out
# ---------------------------------------------------------------------------------------------

LOO_L3 = {
    "train": {
        "row": [1, 2, 3, 4], "user": [0, 0, 0, 0], "target": [2, 3, 4, 5],
        "history": [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]], "lengths": [1, 2, 3, 3],
        "time": [D(50), D(50), D(150), D(250)], "warm": [True, True, True, True],
    },
    "valid": {
        # users b and c have 2 interactions: their second-to-last is their first, so it is skipped
        "row": [5, 12], "user": [0, 3], "target": [6, 1], "history": [[3, 4, 5], [0, 0, 3]], "lengths": [3, 1],
        "time": [D(350), D(20)], "warm": [False, True],
    },
    "test": {
        "row": [6, 8, 10, 13], "user": [0, 1, 2, 3], "target": [7, 8, 1, 2],
        "history": [[4, 5, 6], [0, 0, 2], [0, 0, 9], [0, 3, 1]], "lengths": [3, 1, 1, 2],
        "time": [D(450), D(220), D(310), D(30)], "warm": [False, False, True, True],
    },
}


def test_loo_events_hand_enumerated(table):
    split = loo_split(table, max_len=3)
    assert split.protocol == "loo" and list(split.tests) == ["test"]
    for name, expected in LOO_L3.items():
        assert ev_dict(split.parts()[name]) == expected, name
    assert split.skipped == {"train": 2, "valid": 2, "test": 0}
    # warm = items of training interactions (all but each user's last two): 1..5 (user a) and 3 (user d)
    assert split.warm_items.tolist() == [False, True, True, True, True, True, False, False, False, False]
    assert split.bounds == {"train": (None, None), "valid": (None, None), "test": (None, None)}
    check_leakage(split, table)


def test_loo_without_timestamps():
    data = from_arrays("nt", [0, 0, 0, 1, 1], [1, 2, 3, 2, 4], None, "s")
    split = make_split(data, SplitConfig("loo", max_len=2))
    assert split.train.target.tolist() == [] and split.train.history.shape == (0, 2)
    assert split.valid.target.tolist() == [2] and split.valid.history.tolist() == [[0, 1]]
    assert split.tests["test"].target.tolist() == [3, 4]
    assert split.tests["test"].history.tolist() == [[1, 2], [0, 2]]
    assert split.tests["test"].time is None
    assert split.skipped == {"train": 1, "valid": 1, "test": 0}
    check_leakage(split, data)


# ---------------------------------------------------------------------------------------------
# Leakage: passes on real splits, fails on each kind of corruption
# ---------------------------------------------------------------------------------------------

def test_check_leakage_passes_on_synthetic(synthetic_data):
    for config in (SplitConfig("temporal"), SplitConfig("loo"), SplitConfig("temporal", max_len=5)):
        split = make_split(synthetic_data, config)
        assert len(split.train) > 1000 and all(len(ev) > 0 for ev in split.tests.values())
        check_leakage(split, synthetic_data)


def test_check_leakage_passes_on_beauty(beauty_data):
    cuts = get_spec("beauty").cuts
    for config in (SplitConfig("temporal"), SplitConfig("loo")):
        check_leakage(make_split(beauty_data, config, cuts), beauty_data)


def with_history(ev, i: int, history: list[int]):
    h = ev.history.copy()
    h[i] = history
    return dataclasses.replace(ev, history=h)


def test_leak_history_reaching_into_another_user(table):
    split = temporal_split(table, CUTS, max_len=3)
    # w1 event 1 is row 8 (user b, history [0, 0, 2]); slot 1 would be row 6, which is user a's item 7
    bad = dataclasses.replace(split, tests={**split.tests, "w1": with_history(split.tests["w1"], 1, [0, 7, 2])})
    with pytest.raises(LeakageError, match="^w1: a history reaches into another user's interactions$"):
        check_leakage(bad, table)


def test_leak_history_including_a_later_item(table):
    split = temporal_split(table, CUTS, max_len=3)
    # train event row 2 (item 3) sees [0, 1, 2]; put user a's future item 4 (day 150) in it
    bad = dataclasses.replace(split, train=with_history(split.train, 1, [0, 1, 4]))
    with pytest.raises(LeakageError, match="^train: a history is not the user's items right before the target$"):
        check_leakage(bad, table)
    # the same for leave-one-out: a training history that contains the test item 7
    loo = loo_split(table, max_len=3)
    bad = dataclasses.replace(loo, train=with_history(loo.train, 3, [3, 4, 7]))
    with pytest.raises(LeakageError, match="^train: a history is not the user's items right before the target$"):
        check_leakage(bad, table)


def test_leak_target_not_matching_the_table(table):
    split = temporal_split(table, CUTS, max_len=3)
    bad = dataclasses.replace(split, valid=dataclasses.replace(split.valid, target=np.array([5])))
    with pytest.raises(LeakageError, match="^valid: an event's target does not match the interaction table$"):
        check_leakage(bad, table)
    bad = dataclasses.replace(split, valid=dataclasses.replace(split.valid, user=np.array([1])))
    with pytest.raises(LeakageError, match="^valid: "):
        check_leakage(bad, table)


def test_leak_validation_event_past_t0(table):
    split = temporal_split(table, CUTS, max_len=3)
    # a self-consistent event (row 8, user b, day 220, history [0, 0, 2]) filed under valid,
    # whose window ends at t0 = day 200
    moved = take(split.tests["w1"], np.array([1]))
    assert moved.row.tolist() == [8]
    bad = dataclasses.replace(split, valid=moved)
    with pytest.raises(LeakageError, match=f"^valid: an event touches time >= {date_of(200)} \\(its part's end\\)$"):
        check_leakage(bad, table)


def test_leak_validation_event_past_t0_with_full_history(table):
    split = temporal_split(table, CUTS, max_len=3)
    moved = take(split.tests["w1"], np.array([0]))  # row 4, day 250, history [2, 3, 4]: no padding
    assert moved.row.tolist() == [4] and moved.lengths.tolist() == [3]
    bad = dataclasses.replace(split, valid=moved)
    with pytest.raises(LeakageError, match=f"^valid: an event touches time >= {date_of(200)} \\(its part's end\\)$"):
        check_leakage(bad, table)


def test_leak_training_event_past_t_val(table):
    split = temporal_split(table, CUTS, max_len=5)
    assert split.valid.history.tolist() == [[0, 0, 1, 2, 3]]
    bad = dataclasses.replace(split, train=split.valid)  # row 3, day 150 >= t_val (day 100)
    with pytest.raises(LeakageError, match=f"^train: an event touches time >= {date_of(100)} \\(its part's end\\)$"):
        check_leakage(bad, table)


def test_leak_training_event_past_t_val_with_full_history(table):
    split = temporal_split(table, CUTS, max_len=3)
    assert split.valid.history.tolist() == [[1, 2, 3]]
    bad = dataclasses.replace(split, train=split.valid)
    with pytest.raises(LeakageError, match=f"^train: an event touches time >= {date_of(100)}"):
        check_leakage(bad, table)


def test_leak_target_before_its_window(table):
    split = temporal_split(table, CUTS, max_len=3)
    bad = dataclasses.replace(split, tests={**split.tests, "w2": take(split.train, np.array([0]))})
    with pytest.raises(LeakageError, match=f"^w2: a target precedes its window start {date_of(300)}$"):
        check_leakage(bad, table)


def test_leak_loo_training_touches_held_out_positions(table):
    split = loo_split(table, max_len=3)
    padded = take(split.valid, np.array([1]))  # user d's second-to-last (row 12), history [0, 0, 3]
    bad = dataclasses.replace(split, train=padded)
    with pytest.raises(LeakageError, match="^train: an event touches a held-out leave-one-out position$"):
        check_leakage(bad, table)


def test_leak_loo_validation_sees_the_test_item(table):
    split = loo_split(table, max_len=3)
    padded = take(split.tests["test"], np.array([1, 2, 3]))  # users b, c, d: histories with padding
    bad = dataclasses.replace(split, valid=padded)
    with pytest.raises(LeakageError, match="^valid: an event touches a held-out leave-one-out position$"):
        check_leakage(bad, table)


def test_leak_loo_held_out_target_with_full_history(table):
    split = loo_split(table, max_len=3)
    full = take(split.valid, np.array([0]))  # user a's second-to-last (row 5), history [3, 4, 5]
    assert full.lengths.tolist() == [3]
    bad = dataclasses.replace(split, train=full)
    with pytest.raises(LeakageError, match="^train: an event touches a held-out leave-one-out position$"):
        check_leakage(bad, table)


# ---------------------------------------------------------------------------------------------
# Real data: RecBole's leave-one-out counts, Beauty's default windows
# ---------------------------------------------------------------------------------------------

def test_beauty_loo_reproduces_recbole_counts(beauty_data):
    split = make_split(beauty_data, SplitConfig("loo"))
    assert len(split.train) == 131_413
    assert len(split.valid) == 22_363
    assert len(split.tests["test"]) == 22_363
    assert split.skipped == {"train": 22_363, "valid": 0, "test": 0}
    assert split.train.history.shape == (131_413, 50)
    assert split.tests["test"].lengths.max() == 50 and split.tests["test"].lengths.min() == 4


def test_beauty_temporal_default_windows(beauty_data):
    split = make_split(beauty_data, SplitConfig(), get_spec("beauty").cuts)
    assert list(split.tests) == ["w1", "w2", "w3"]
    utc = dt.timezone.utc

    def ts(y, m, d):
        return int(dt.datetime(y, m, d, tzinfo=utc).timestamp())

    assert split.bounds == {
        "train": (None, ts(2013, 7, 24)),
        "valid": (ts(2013, 7, 24), ts(2013, 10, 24)),
        "w1": (ts(2013, 10, 24), ts(2014, 1, 24)),
        "w2": (ts(2014, 1, 24), ts(2014, 4, 24)),
        "w3": (ts(2014, 4, 24), ts(2014, 7, 24)),
    }
    assert {k: (to_date(lo), to_date(hi)) for k, (lo, hi) in split.bounds.items()} == {
        "train": (None, "2013-07-24"), "valid": ("2013-07-24", "2013-10-24"), "w1": ("2013-10-24", "2014-01-24"),
        "w2": ("2014-01-24", "2014-04-24"), "w3": ("2014-04-24", "2014-07-24"),
    }
    # Beauty ends 2014-07-23: every interaction is either an event or a skipped first interaction
    n_events = sum(len(ev) for ev in split.parts().values())
    assert n_events + sum(split.skipped.values()) == 198_502
    assert sum(split.skipped.values()) == 22_363
    for name, ev in split.parts().items():
        lo, hi = split.bounds[name]
        assert len(ev) > 10_000
        assert ev.time.max() < hi and (lo is None or ev.time.min() >= lo)
        assert np.all(ev.lengths >= 1) and np.all(ev.history[:, -1] > 0)


def test_split_of_toys_without_timestamps(shared_data):
    toys = load_dataset("toys", data_dir=shared_data)
    with pytest.raises(ValueError) as err:
        make_split(toys, SplitConfig("temporal"), get_spec("toys").cuts)
    msg = str(err.value)
    assert "dataset 'toys' has no timestamps" in msg and "use protocol 'loo'" in msg
    split = make_split(toys, SplitConfig("loo"))
    assert (len(split.train), len(split.valid), len(split.tests["test"])) == (167_597 - 3 * 19_412, 19_412, 19_412)


def test_temporal_split_without_timestamps_is_a_clear_error():
    data = from_arrays("nt", [0, 0, 1, 1], [1, 2, 3, 4], None, "s")
    with pytest.raises(ValueError, match="^dataset 'nt' has no timestamps, so it cannot be split in time; use protocol 'loo'$"):
        make_split(data, SplitConfig("temporal"))
    with pytest.raises(ValueError, match="use protocol 'loo'"):
        temporal_split(data, CUTS)


# ---------------------------------------------------------------------------------------------
# Configuration and cut helpers
# ---------------------------------------------------------------------------------------------

def test_split_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"^SplitConfig\.protocol must be one of \('temporal', 'loo'\), got 'random'$"):
        SplitConfig(protocol="random")
    with pytest.raises(ValueError, match=r"^SplitConfig\.max_len must lie in 1\.\.1000, got 0$"):
        SplitConfig(max_len=0)
    with pytest.raises(ValueError, match=r"^SplitConfig\.max_len must lie in 1\.\.1000, got 1001$"):
        SplitConfig(max_len=1001)
    with pytest.raises(ValueError, match=r"^SplitConfig\.cuts must be strictly increasing"):
        SplitConfig(cuts=("2013-07-24", "2013-07-24", "2014-01-24"))
    with pytest.raises(ValueError, match=r"^SplitConfig\.cuts must be strictly increasing"):
        SplitConfig(cuts=(300, 200, 400))
    with pytest.raises(ValueError, match=r"^SplitConfig\.cuts only applies to protocol 'temporal'$"):
        SplitConfig(protocol="loo", cuts=AMAZON_CUTS)
    with pytest.raises(ValueError, match=r"^SplitConfig\.cuts needs .* at least 3 values$"):
        SplitConfig(cuts=(1, 2))
    with pytest.raises(ValueError, match=r"cut '2013-13-01' is neither Unix seconds nor a 'YYYY-MM-DD' date"):
        SplitConfig(cuts=("2013-07-24", "2013-13-01", "2014-01-24"))
    assert SplitConfig(cuts=AMAZON_CUTS).cuts == AMAZON_CUTS
    assert SplitConfig().protocol == "temporal" and SplitConfig().max_len == 50


def test_temporal_split_validates_its_cuts(table):
    with pytest.raises(ValueError, match=r"SplitConfig\.cuts must be strictly increasing"):
        temporal_split(table, (D(200), D(100), D(300)))
    with pytest.raises(ValueError, match=r"SplitConfig\.max_len must lie in 1\.\.1000, got 0"):
        temporal_split(table, CUTS, max_len=0)


def test_timestamp_helpers():
    assert to_timestamp("2013-07-24") == 1_374_624_000
    assert to_timestamp(np.int64(42)) == 42 and to_timestamp(7) == 7
    assert to_date(1_374_624_000) == "2013-07-24" and to_date(1_374_624_000 + 86_399) == "2013-07-24"
    assert to_date(None) is None
    with pytest.raises(ValueError, match="cut '24/07/2013' is neither Unix seconds nor a 'YYYY-MM-DD' date"):
        to_timestamp("24/07/2013")


def test_proportional_cuts():
    assert proportional_cuts(np.arange(1000)) == (699, 799, 866, 933, 1000)
    assert proportional_cuts(np.arange(1000), n_windows=1) == (699, 799, 1000)


def test_make_split_cut_precedence(table):
    default = (D(0), D(100), D(400))
    assert make_split(table, SplitConfig(cuts=CUTS), default).bounds["w2"] == (D(300), D(400))
    by_default = make_split(table, SplitConfig(), default)
    assert list(by_default.tests) == ["w1"] and by_default.bounds["w1"] == (D(100), D(400))
    prop = make_split(table, SplitConfig())
    t_val, t0, *ends = proportional_cuts(table.timestamp)
    assert prop.bounds["train"] == (None, t_val) and prop.bounds["valid"] == (t_val, t0)
    assert list(prop.tests) == ["w1", "w2", "w3"] and prop.bounds["w3"][1] == ends[-1] == D(450) + 1
    assert make_split(table, SplitConfig("loo", max_len=3), default).protocol == "loo"
