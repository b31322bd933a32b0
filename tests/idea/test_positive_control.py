"""The positive control's data (idea/data/synthetic.py, promotions): promotions are side items that are never
a target, they leave the rest of the data as it is, and the link they carry is spurious by construction: a
model given only the promotions scores far better before the first test day than after it, at strength 1,
and no better than chance at strength 0."""
import dataclasses
import functools

import numpy as np
import pytest

from idea.data.interactions import subsample_users
from idea.data.registry import DATASETS, PROMO_STRENGTHS, load_split
from idea.data.synthetic import SyntheticConfig, generate, promo_cuts
from idea.splits import SplitConfig, check_leakage, make_split, mask_side_items, to_timestamp

SMALL = SyntheticConfig(n_users=1500, promo_rate=0.3, promo_link=1.0)


@functools.lru_cache(maxsize=None)
def generated(config: SyntheticConfig):
    """The data of `config`, generated once per module run (each test reads it, none changes it)."""
    return generate(config, "promo")


def split_of(config: SyntheticConfig):
    data = generated(config)
    return data, make_split(data, SplitConfig(), promo_cuts(config))


def promo_only_hits(split, part, k=10) -> float:
    """HR@k of a model that sees only the last history item when it is a promotion: the k most frequent
    training targets after that promotion. NaN when the part has no such event."""
    side = split.side_items
    train = split.train
    last = train.history[:, -1]
    shown = np.isin(last, side)
    counts = np.zeros((split.n_items + 1, split.n_items + 1))
    np.add.at(counts, (last[shown], train.target[shown]), 1)
    top = np.argsort(-counts, axis=1, kind="stable")[:, :k]  # [n + 1, k]
    ev = split.parts()[part]
    rows = np.isin(ev.history[:, -1], side)
    return float((top[ev.history[rows, -1]] == ev.target[rows, None]).any(axis=1).mean())


def test_promotions_leave_the_other_events_unchanged():
    """Dropping the promotions gives back the data generated without them, event for event."""
    data = generated(SMALL)
    plain = generated(dataclasses.replace(SMALL, promo_rate=0.0))
    real = ~np.isin(data.item, data.side_items)
    assert len(data.side_items) == SMALL.n_topics and data.n_items == plain.n_items + SMALL.n_topics
    np.testing.assert_array_equal(data.user[real], plain.user)
    np.testing.assert_array_equal(data.item[real], plain.item)
    np.testing.assert_array_equal(data.timestamp[real], plain.timestamp)
    assert abs((~real).sum() / real.sum() - SMALL.promo_rate) < 0.02
    assert data.sha256 != plain.sha256
    # the default synthetic data keeps its digest: promo fields at their defaults are not part of it
    assert plain.sha256 == generate(SyntheticConfig(n_users=1500)).sha256


def test_a_promotion_comes_right_before_an_event_of_its_user_on_the_same_day():
    data = generated(SMALL)
    side = np.flatnonzero(np.isin(data.item, data.side_items))
    assert (side + 1 < len(data.item)).all()
    after = side + 1
    assert not np.isin(data.item[after], data.side_items).any()
    np.testing.assert_array_equal(data.user[after], data.user[side])
    np.testing.assert_array_equal(data.timestamp[after], data.timestamp[side])


def test_promotions_are_never_targets_and_the_split_is_leakage_free():
    data, split = split_of(SMALL)
    check_leakage(split, data)
    for name, ev in split.parts().items():
        assert not np.isin(ev.target, split.side_items).any(), name
        assert np.isin(ev.history, split.side_items).any(), name  # but they are in the histories
    np.testing.assert_array_equal(split.side_items, data.side_items)


def test_the_first_test_day_is_the_flip_day():
    cuts = promo_cuts(SMALL)
    assert cuts[1] == to_timestamp("2020-01-01") + round(SMALL.promo_flip * SMALL.days) * 86_400
    assert list(cuts) == sorted(cuts) and len(cuts) == 5


def test_the_promotions_alone_predict_well_before_the_cut_and_badly_after():
    _, split = split_of(SMALL)
    before = promo_only_hits(split, "valid")
    after = [promo_only_hits(split, w) for w in ("w1", "w2", "w3")]
    assert before > 0.2 and max(after) < before / 4, (before, after)
    _, unlinked = split_of(dataclasses.replace(SMALL, promo_link=0.0))
    chance = [promo_only_hits(unlinked, p) for p in ("valid", "w1", "w2", "w3")]
    assert max(chance) < before / 4 and max(chance) - min(chance) < 0.1, chance


def test_masking_keeps_events_and_hides_which_promotion():
    _, split = split_of(SMALL)
    masked = mask_side_items(split)
    one = split.side_items.min()
    for name, ev in split.parts().items():
        got = masked.parts()[name]
        np.testing.assert_array_equal(got.target, ev.target)
        np.testing.assert_array_equal(got.lengths, ev.lengths)
        shown = np.isin(ev.history, split.side_items)
        np.testing.assert_array_equal(got.history[~shown], ev.history[~shown])
        assert (got.history[shown] == one).all()
    assert promo_only_hits(masked, "valid") < promo_only_hits(split, "valid") / 4  # one id names no topic
    with pytest.raises(ValueError, match="no side items to mask"):
        mask_side_items(make_split(generate(SyntheticConfig(n_users=300)), SplitConfig()))


def test_leave_one_out_refuses_side_items():
    with pytest.raises(ValueError, match="side items.*protocol 'temporal'"):
        make_split(generated(SMALL), SplitConfig(protocol="loo"))


def test_a_user_sample_keeps_the_side_items():
    data = generated(SMALL)
    sample = subsample_users(data, 300, seed=0)
    assert 0 < len(sample.side_items) <= len(data.side_items)
    users = np.sort(np.random.default_rng(0).choice(data.n_users, 300, replace=False))  # subsample_users' draw
    rows = np.isin(data.user, users)  # the sample keeps these rows, in this order
    np.testing.assert_array_equal(np.isin(sample.item, sample.side_items), np.isin(data.item[rows], data.side_items))


def test_the_registered_strengths():
    for strength in PROMO_STRENGTHS:
        spec = DATASETS[f"synthetic-promo{round(100 * strength)}"]
        assert spec.generator.promo_link == strength and spec.cuts == promo_cuts(spec.generator)
    _, split = load_split("synthetic-promo100")
    assert len(split.side_items) == 20 and len(split.tests) == 3
