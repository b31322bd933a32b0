"""Tests for idea.metrics: hand-computed ranks and metrics, batching equivalence."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from idea.contract import KS, METRICS
from idea.metrics import metrics_frame, pessimistic_ranks, rank_events, summary

NAN = float("nan")
INF = float("inf")


def _ranks(rows, targets, seen=None):
    """pessimistic_ranks on python lists, returned as a python list."""
    scores = torch.tensor(rows, dtype=torch.float32)
    seen_t = None if seen is None else torch.tensor(seen, dtype=torch.long)
    return pessimistic_ranks(scores, torch.tensor(targets), seen_t).tolist()


# ---------------------------------------------------------------- pessimistic_ranks


def test_constants():
    assert KS == (5, 10, 20)
    assert METRICS == ("hr", "ndcg", "mrr")


def test_ranks_distinct_scores_and_padding_ignored():
    # column 0 is padding with a huge score; it must never count.
    # items:        pad    1    2    3    4
    row = [1e9, 0.1, 0.5, 0.9, 0.3]
    # target 3 (0.9): nothing above -> 0; target 2 (0.5): item 3 -> 1;
    # target 4 (0.3): items 2, 3 -> 2; target 1 (0.1): items 2, 3, 4 -> 3.
    out = _ranks([row] * 4, [3, 2, 4, 1])
    assert out == [0, 1, 2, 3]
    r = pessimistic_ranks(torch.tensor([row]), torch.tensor([3]))
    assert r.dtype == torch.long and r.shape == (1,)


def test_ranks_ties_are_pessimistic():
    # items:   pad   1    2    3    4    5
    row = [0.5, 0.5, 0.5, 0.5, 0.9, 0.1]
    # target 2 (0.5): 1 greater (item 4) + 2 tied others (items 1, 3) = 3.
    # The tied padding column (0.5) must not count.
    assert _ranks([row], [2]) == [1 + 2]
    # target 5 (0.1): 4 greater, no ties -> 4.
    assert _ranks([row], [5]) == [4]
    # all scores equal: the target ranks below all n_items - 1 others.
    assert _ranks([[7.0] * 6], [3]) == [5 - 1]


def test_ranks_rows_are_independent():
    rows = [
        [0.0, 3.0, 2.0, 1.0],  # target 3 -> 2 above
        [0.0, 1.0, 2.0, 3.0],  # target 3 -> 0 above
        [0.0, 1.0, 1.0, 1.0],  # target 1 -> 2 tied
    ]
    assert _ranks(rows, [3, 3, 1]) == [2, 0, 2]


def test_seen_masking_on_and_off():
    # items:   pad  1    2    3    4
    row = [0.0, 0.9, 0.8, 0.7, 0.1]
    # off: target 3 has items 1, 2 above -> 2.
    assert _ranks([row], [3]) == [2]
    # on, seen = {1, pad}: item 1 excluded -> only item 2 above -> 1.
    assert _ranks([row], [3], seen=[[1, 0, 0]]) == [1]
    # on, seen = {1, 2}: nothing left above -> 0.
    assert _ranks([row], [3], seen=[[0, 2, 1]]) == [0]


def test_seen_never_masks_the_target():
    row = [0.0, 0.9, 0.8, 0.7, 0.1]
    # target 3 appears in its own seen list (a repeat purchase): still ranked, rank 2 as unmasked.
    assert _ranks([row], [3], seen=[[3, 3, 0]]) == [2]
    # target seen together with item 1: item 1 masked, target kept -> 1.
    assert _ranks([row], [3], seen=[[3, 1, 0]]) == [1]


def test_seen_masked_items_do_not_count_against_minus_inf_target():
    # items:   pad  1     2    3
    row = [0.0, -INF, 0.5, -INF]
    # target 1 = -inf: item 2 above, item 3 tied -> 2 without masking.
    assert _ranks([row], [1]) == [2]
    # seen item 2 is excluded and must not reappear as a -inf tie -> 1 (only item 3 tied).
    assert _ranks([row], [1], seen=[[2]]) == [1]


def test_non_finite_target_scores():
    # NaN target ranks last among the 3 items: rank 2.
    assert _ranks([[0.0, 0.1, NAN, 0.3]], [2]) == [2]
    # +inf target with no other +inf ranks first; a tied +inf counts against it.
    assert _ranks([[0.0, INF, 1.0, 2.0]], [1]) == [0]
    assert _ranks([[0.0, INF, INF, 2.0]], [1]) == [1]
    # -inf target ranks last.
    assert _ranks([[0.0, -INF, 1.0, 2.0]], [1]) == [2]


def test_ranks_reject_bad_targets():
    scores = torch.zeros(2, 4)  # n_items = 3
    with pytest.raises(ValueError):
        pessimistic_ranks(scores, torch.tensor([0, 1]))  # padding is not an item
    with pytest.raises(ValueError):
        pessimistic_ranks(scores, torch.tensor([1, 4]))  # beyond n_items
    with pytest.raises(ValueError):
        pessimistic_ranks(scores, torch.tensor([1]))  # wrong batch size


# ---------------------------------------------------------------- rank_events


def _make_events(seed: int, E: int, L: int, n_items: int):
    """Right-aligned, left-padded histories with varied lengths (0..L)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (E,), generator=g)  # [E]
    lengths[:3] = torch.tensor([L, 0, 1])  # make sure the extremes occur
    items = torch.randint(1, n_items + 1, (E, L), generator=g)  # [E, L]
    keep = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # [E, L]
    history = torch.where(keep, items, torch.zeros_like(items))  # [E, L]
    # targets sometimes repeat a history item so seen-masking of the target is exercised.
    targets = torch.randint(1, n_items + 1, (E,), generator=g)  # [E]
    repeat = (torch.rand(E, generator=g) < 0.3) & (lengths > 0)
    targets = torch.where(repeat, history[:, -1], targets)
    return history, lengths, targets


def _embedding_score_fn(n_items: int, d: int, seed: int, calls: list):
    """Scores from a position-weighted embedding sum of the history.

    Padding id 0 embeds to zero, and weights depend on the distance from the
    right end, so keeping the wrong columns when trimming changes the scores.
    Integer-valued embeddings make exact ties common (pessimistic ties matter).
    """
    g = torch.Generator().manual_seed(seed)
    emb = torch.randint(-2, 3, (n_items + 1, d), generator=g).float()  # [n_items+1, d]
    emb[0] = 0.0
    out = torch.randint(-2, 3, (n_items + 1, d), generator=g).float()  # [n_items+1, d]

    def score_fn(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        assert torch.is_inference_mode_enabled()
        assert h.dtype == torch.long and lengths.dtype == torch.long
        calls.append((h.shape[0], h.shape[1], int(lengths.max())))
        width = h.shape[1]
        w = (torch.arange(width, 0, -1).float()).unsqueeze(1)  # [l, 1], distance from the right end
        user = (emb[h] * w).sum(dim=1)  # [b, d]
        return user @ out.T  # [b, n_items+1]

    return score_fn


@pytest.mark.parametrize("mask_seen", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_rank_events_matches_full_matrix(batch_size, mask_seen):
    E, L, n_items = 53, 9, 11
    history, lengths, targets = _make_events(0, E, L, n_items)
    calls: list = []
    score_fn = _embedding_score_fn(n_items, 3, 1, calls)

    got = rank_events(
        score_fn, history, lengths, targets, batch_size=batch_size, mask_seen=mask_seen
    )
    with torch.inference_mode():
        full = score_fn(history, lengths)  # [E, n_items+1], untrimmed, original order
    calls.pop()
    want = pessimistic_ranks(full, targets, history if mask_seen else None).numpy()

    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == (E,)
    np.testing.assert_array_equal(got, want)
    # the reference is non-trivial: ranks vary and some ties occurred
    assert len(np.unique(want)) > 3

    # batching: sizes bounded, every event scored once
    assert sum(b for b, _, _ in calls) == E
    assert all(b <= batch_size for b, _, _ in calls)
    # trimming: each batch is exactly as wide as its longest sequence (at least 1 column)
    assert all(width == max(max_len, 1) for _, width, max_len in calls)
    # sorting: widths are monotone over batches (longest-first or shortest-first)
    widths = [width for _, width, _ in calls]
    assert widths == sorted(widths) or widths == sorted(widths, reverse=True)
    if batch_size < E:
        assert min(widths) < L  # some batch really was trimmed


def test_rank_events_mask_seen_changes_ranks():
    # guards against mask_seen being ignored: with masking, ranks can only improve, and here some do.
    E, L, n_items = 40, 6, 8
    history, lengths, targets = _make_events(3, E, L, n_items)
    fn = _embedding_score_fn(n_items, 3, 4, [])
    off = rank_events(fn, history, lengths, targets, batch_size=6)
    on = rank_events(fn, history, lengths, targets, batch_size=6, mask_seen=True)
    assert (on <= off).all() and (on < off).any()


def test_rank_events_empty_and_numpy_inputs():
    fn = _embedding_score_fn(5, 2, 0, [])
    empty = rank_events(fn, torch.zeros(0, 4, dtype=torch.long), torch.zeros(0), torch.zeros(0))
    assert empty.shape == (0,) and empty.dtype == np.int64
    history, lengths, targets = _make_events(5, 10, 4, 5)
    a = rank_events(fn, history.numpy(), lengths.numpy(), targets.numpy(), batch_size=3)
    b = rank_events(fn, history, lengths, targets, batch_size=3)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- metrics_frame

RANKS = np.array([0, 2, 7, 15, 30])
WARM = np.array([True, False, True, False, False])  # warm ranks: [0, 7]

# HR@k = share of ranks < k
# NDCG@k = mean(1/log2(rank+2)): rank 0 -> 1/log2(2) = 1, rank 2 -> 1/log2(4) = 1/2,
#   rank 7 -> 1/log2(9) = 0.31546487678572877, rank 15 -> 1/log2(17) = 0.24465054211822604
# MRR@k = mean(1/(rank+1)): 1, 1/3, 1/8, 1/16
EXPECTED_ALL = {
    ("hr", 5): 0.4,  # 2/5
    ("hr", 10): 0.6,  # 3/5
    ("hr", 20): 0.8,  # 4/5
    ("ndcg", 5): 0.3,  # (1 + 1/2) / 5
    ("ndcg", 10): 0.3630929753571458,  # (1 + 1/2 + 1/log2(9)) / 5
    ("ndcg", 20): 0.41202308378079094,  # (1 + 1/2 + 1/log2(9) + 1/log2(17)) / 5
    ("mrr", 5): 0.26666666666666666,  # (1 + 1/3) / 5
    ("mrr", 10): 0.29166666666666663,  # (1 + 1/3 + 1/8) / 5
    ("mrr", 20): 0.30416666666666664,  # (1 + 1/3 + 1/8 + 1/16) / 5
}
EXPECTED_WARM = {
    ("hr", 5): 0.5,  # 1/2
    ("hr", 10): 1.0,  # 2/2
    ("hr", 20): 1.0,
    ("ndcg", 5): 0.5,  # (1 + 0) / 2
    ("ndcg", 10): 0.6577324383928644,  # (1 + 1/log2(9)) / 2
    ("ndcg", 20): 0.6577324383928644,
    ("mrr", 5): 0.5,  # (1 + 0) / 2
    ("mrr", 10): 0.5625,  # (1 + 1/8) / 2
    ("mrr", 20): 0.5625,
}


def _lookup(frame: pd.DataFrame, subset: str) -> dict:
    sub = frame[frame["subset"] == subset]
    return {(m, int(k)): v for m, k, v in zip(sub["metric"], sub["k"], sub["value"])}


def test_metrics_frame_shape_and_columns():
    frame = metrics_frame(RANKS, WARM, "valid")
    assert list(frame.columns) == ["part", "subset", "metric", "k", "value", "n_events"]
    assert len(frame) == 2 * len(METRICS) * len(KS)
    assert set(frame["part"]) == {"valid"}
    assert set(frame["subset"]) == {"all", "warm"}
    assert set(frame["metric"]) == set(METRICS)
    assert sorted(set(frame["k"])) == list(KS)
    # one row per (subset, metric, k)
    assert not frame.duplicated(["subset", "metric", "k"]).any()


def test_metrics_frame_all_values_by_hand():
    frame = metrics_frame(RANKS, WARM, "valid")
    got = _lookup(frame, "all")
    assert got.keys() == EXPECTED_ALL.keys()
    for key, want in EXPECTED_ALL.items():
        assert got[key] == pytest.approx(want, abs=1e-12), key
    assert (frame.loc[frame["subset"] == "all", "n_events"] == 5).all()


def test_metrics_frame_warm_values_by_hand():
    frame = metrics_frame(RANKS, WARM, "w1")
    got = _lookup(frame, "warm")
    for key, want in EXPECTED_WARM.items():
        assert got[key] == pytest.approx(want, abs=1e-12), key
    assert (frame.loc[frame["subset"] == "warm", "n_events"] == 2).all()


def test_metrics_frame_custom_ks_and_rank_equal_k_boundary():
    # rank 1 is inside k=2 but rank 2 is not (rank < k, 0-based).
    frame = metrics_frame(np.array([1, 2]), np.array([True, True]), "p", ks=(1, 2))
    got = _lookup(frame, "all")
    assert got[("hr", 1)] == 0.0
    assert got[("hr", 2)] == 0.5  # only rank 1
    assert got[("ndcg", 2)] == pytest.approx(0.31546487678572877)  # (1/log2(3)) / 2 = 0.6309297535714575 / 2
    assert got[("mrr", 2)] == 0.25  # (1/2) / 2


def test_metrics_frame_empty_warm_subset():
    frame = metrics_frame(RANKS, np.zeros(5, dtype=bool), "w2")
    warm = frame[frame["subset"] == "warm"]
    assert len(warm) == len(METRICS) * len(KS)
    assert warm["value"].isna().all()
    assert (warm["n_events"] == 0).all()
    # the "all" subset is unaffected
    assert _lookup(frame, "all")[("hr", 5)] == pytest.approx(0.4)


def test_metrics_frame_no_events_at_all():
    frame = metrics_frame(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), "w3")
    assert len(frame) == 2 * len(METRICS) * len(KS)
    assert frame["value"].isna().all() and (frame["n_events"] == 0).all()


def test_metrics_frame_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        metrics_frame(RANKS, WARM[:3], "valid")


# ---------------------------------------------------------------- summary


def test_summary_single_part():
    frame = metrics_frame(RANKS, WARM, "valid")
    s = summary(frame)
    assert set(s) == {f"{m}_at_{k}" for m in METRICS for k in KS}
    assert s["ndcg_at_10"] == pytest.approx(EXPECTED_ALL[("ndcg", 10)])
    assert s["hr_at_5"] == pytest.approx(0.4)
    assert all(type(v) is float for v in s.values())
    warm = summary(frame, subset="warm")
    assert warm["mrr_at_10"] == pytest.approx(0.5625)


def test_summary_picks_part_from_concatenated_frame():
    a = metrics_frame(RANKS, WARM, "valid")
    b = metrics_frame(np.array([0, 0]), np.array([True, True]), "w1")
    both = pd.concat([a, b], ignore_index=True)
    with pytest.raises(ValueError):
        summary(both)  # ambiguous without part=
    assert summary(both, part="w1")["hr_at_5"] == 1.0
    assert summary(both, part="valid")["hr_at_5"] == pytest.approx(0.4)
    with pytest.raises(KeyError):
        summary(both, part="w9")


def test_end_to_end_perfect_and_worst_model():
    # the target is a function of the last history item, so a score_fn can be perfect:
    # HR = NDCG = MRR = 1. A constant score_fn ranks every target last (n_items - 1): all 0.
    n_items, E = 30, 12
    history, lengths, _ = _make_events(7, E, 5, n_items)
    targets = history[:, -1] % n_items + 1  # [E]; empty history (last = 0) -> item 1

    def oracle(h, l):
        return torch.nn.functional.one_hot(h[:, -1] % n_items + 1, n_items + 1).float()  # [b, n_items+1]

    perfect = rank_events(oracle, history, lengths, targets, batch_size=5)
    assert (perfect == 0).all()
    s = summary(metrics_frame(perfect, np.ones(E, dtype=bool), "valid"))
    assert all(v == 1.0 for v in s.values())

    const = rank_events(lambda h, l: torch.zeros(h.shape[0], n_items + 1), history, lengths, targets, batch_size=5)
    assert (const == n_items - 1).all()
    s = summary(metrics_frame(const, np.ones(E, dtype=bool), "valid"))
    assert all(v == 0.0 for v in s.values())
