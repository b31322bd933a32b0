"""Tests for IDEA's extractors, λ sampling, environment mixup and V-REx."""

import math

import pytest
import torch

from idea.environments import SubsequenceExtractors, environment_pairs, make_environments, sample_lambda, vrex
from idea.models import build_backbone
from idea.models.base import real_positions

K, B, L, D = 3, 4, 6, 5


def batch(lengths=(6, 3, 1, 4), width=L, d=D):
    """Random right-aligned embeddings [B, width, d] with zero padding rows."""
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), width, d)
    real = torch.arange(width) >= (width - lengths).unsqueeze(1)
    return x * real.unsqueeze(-1), lengths, real


# --------------------------------------------------------------------- extractors


def test_extractor_parameters_are_stacked():
    ext = SubsequenceExtractors(K, L, hidden=7)
    shapes = {name: tuple(p.shape) for name, p in ext.named_parameters()}
    assert shapes == {"w1": (K, L, 7), "b1": (K, 7), "w2": (K, 7, L), "b2": (K, L)}


def test_mask_shape_range_and_padding():
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L)
    x, lengths, real = batch()
    masks = ext(x, lengths, tau=1.0)
    assert masks.shape == (K, B, L)
    on_real = masks[:, real]
    assert ((on_real > 0) & (on_real < 1)).all()
    assert (masks[:, ~real] == 0).all()


def test_masks_start_mostly_keep():
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L)
    x, lengths, real = batch()
    masks = ext(x.repeat(50, 1, 1), lengths.repeat(50), tau=1.0)
    assert masks[:, real.repeat(50, 1)].mean() > 0.7


def test_low_tau_gives_near_binary_masks():
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L)
    x, lengths, real = batch()
    hard = ext(x, lengths, tau=0.01)[:, real]
    soft = ext(x, lengths, tau=5.0)[:, real]
    near_binary = lambda m: (torch.minimum(m, 1 - m) < 1e-3).float().mean()  # noqa: E731
    assert near_binary(hard) > 0.95
    assert near_binary(soft) < 0.05


def test_masks_are_noisy_but_reproducible():
    ext = SubsequenceExtractors(K, L)
    x, lengths, _ = batch()
    torch.manual_seed(1)
    m1 = ext(x, lengths, tau=0.5)
    m2 = ext(x, lengths, tau=0.5)
    assert not torch.equal(m1, m2)
    torch.manual_seed(1)
    torch.testing.assert_close(ext(x, lengths, tau=0.5), m1, rtol=0, atol=0)


def test_default_linear_bias_starts_at_about_half_kept():
    """init_keep_logit=None (the official code's nn.Linear init): output biases in ±1/sqrt(hidden), so the
    relaxed-Bernoulli masks keep about half of the positions at the start instead of most of them."""
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L, hidden=16, init_keep_logit=None)
    assert ext.b2.abs().max() <= 0.25 and ext.b2.std() > 0.05
    x, lengths, real = batch()
    masks = ext(x.repeat(50, 1, 1), lengths.repeat(50), tau=1.0)
    assert 0.4 < masks[:, real.repeat(50, 1)].mean() < 0.6


def test_extractors_differ_from_each_other():
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L)
    x, _, _ = batch()
    omega = ext.logits(x)  # [K, B, L]
    assert omega.shape == (K, B, L)
    assert not torch.allclose(omega[0], omega[1])


def test_trimmed_batch_matches_full_batch_logits():
    """A batch narrower than max_len is treated as if left-padded with zeros."""
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L)
    x, lengths, _ = batch(lengths=(3, 2, 1, 3))
    full = ext.logits(x)  # [K, B, L]
    trimmed = ext.logits(x[:, -3:])  # [K, B, 3]
    torch.testing.assert_close(trimmed, full[..., -3:])
    masks = ext(x[:, -3:], lengths, tau=1.0)
    assert masks.shape == (K, B, 3)
    assert (masks[:, 2, :2] == 0).all() and (masks[:, 2, 2] > 0).all()  # length-1 row


def test_left_alignment_reads_each_row_from_its_first_item():
    """align "left" (the official code's): row b's logits are the MLPs applied to its summaries moved to the front
    (zeros after), the outputs moved back under the row's items; the same on a trimmed batch; "right" differs."""
    torch.manual_seed(0)
    right = SubsequenceExtractors(K, L, hidden=7)
    left = SubsequenceExtractors(K, L, hidden=7, align="left")
    left.load_state_dict(right.state_dict())
    x, lengths, _ = batch(lengths=(6, 3, 1, 4))
    got = left.logits(x, lengths)  # [K, B, L]
    s = x.mean(-1)  # [B, L] right-aligned
    for b, n in enumerate(lengths.tolist()):
        front = torch.zeros(L)
        front[:n] = s[b, L - n:]
        h = torch.relu(torch.einsum("l,klh->kh", front, left.w1) + left.b1)  # [K, H]
        want = torch.einsum("kh,khl->kl", h, left.w2) + left.b2  # [K, L]: output i for the row's i-th item
        torch.testing.assert_close(got[:, b, L - n:], want[:, :n])
    assert not torch.allclose(got[:, 1, -3:], right.logits(x)[:, 1, -3:])
    short = lengths <= 4
    torch.testing.assert_close(left.logits(x[short][:, -4:], lengths[short]), got[:, short, -4:])
    masks = left(x, lengths, tau=0.5)
    assert (masks[:, ~real_positions(lengths, L)] == 0).all() and (masks[:, real_positions(lengths, L)] > 0).all()
    with pytest.raises(ValueError, match="align must be one of"):
        SubsequenceExtractors(K, L, align="middle")


def test_extractor_rejects_bad_inputs():
    ext = SubsequenceExtractors(K, L)
    x, lengths, _ = batch()
    with pytest.raises(ValueError, match="tau"):
        ext(x, lengths, tau=0.0)
    with pytest.raises(ValueError, match="max_len"):
        ext(torch.randn(B, L + 1, D), lengths, tau=1.0)


def test_gradients_flow_to_extractors():
    torch.manual_seed(0)
    ext = SubsequenceExtractors(K, L)
    x, lengths, _ = batch()
    masks = ext(x, lengths, tau=0.5)
    (masks.unsqueeze(-1) * x).pow(2).sum().backward()
    for name, p in ext.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_end_to_end_through_backbone(pairing):
    """Extractor masks -> views -> environments -> backbone; risk variance reaches the extractors."""
    torch.manual_seed(0)
    model = build_backbone("sasrec", n_items=20, max_len=L)
    ext = SubsequenceExtractors(K, L)
    hist = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 0, 0, 7, 8, 9], [0, 0, 0, 0, 0, 3], [0, 0, 4, 4, 5, 1]])
    lengths, targets = torch.tensor([6, 3, 1, 4]), torch.tensor([7, 1, 2, 3])
    x = model.embed(hist)  # [B, L, d]
    views = ext(x, lengths, tau=0.5).unsqueeze(-1) * x  # [K, B, L, d]
    env_x, env_len, env_t, _ = make_environments(
        views, lengths, targets, N=2, pairing=pairing, mixup=True, alpha=None, lambda_low=0.6, lambda_high=0.9
    )
    logits = (model.encode(env_x, env_len) @ model.item_emb.weight.T)[:, 1:]  # [N*B, n]
    losses = torch.nn.functional.cross_entropy(logits, env_t - 1, reduction="none").view(2, B)
    _, var = vrex(losses.mean(1))
    var.backward()
    assert torch.isfinite(var)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ext.parameters())


# ------------------------------------------------------------------- sample_lambda


def test_sample_lambda_uniform_range():
    torch.manual_seed(0)
    lam = sample_lambda(10_000, alpha=None, low=0.7, high=0.9, device="cpu")
    assert lam.shape == (10_000,)
    assert lam.min() >= 0.7 and lam.max() <= 0.9
    assert lam.min() < 0.71 and lam.max() > 0.89  # fills the range
    const = sample_lambda(5, alpha=None, low=0.8, high=0.8, device="cpu")
    torch.testing.assert_close(const, torch.full((5,), 0.8))


def test_sample_lambda_beta_is_folded():
    torch.manual_seed(0)
    raw = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample((10_000,))
    torch.manual_seed(0)
    lam = sample_lambda(10_000, alpha=0.4, low=0.0, high=0.0, device="cpu")  # low/high unused
    torch.testing.assert_close(lam, torch.maximum(raw, 1 - raw))
    assert lam.min() >= 0.5 and lam.max() <= 1.0
    assert (raw < 0.5).any()  # so the folding was actually exercised


def test_sample_lambda_beta_unfolded_is_the_raw_draw():
    """fold=False (the official code): λ is Beta's draw itself, below 0.5 for about half the rows."""
    torch.manual_seed(0)
    raw = torch.distributions.Beta(torch.tensor(0.1), torch.tensor(0.1)).sample((10_000,))
    torch.manual_seed(0)
    lam = sample_lambda(10_000, alpha=0.1, low=0.9, high=1.0, device="cpu", fold=False)
    assert torch.equal(lam, raw)
    assert 0.45 < (lam < 0.5).float().mean() < 0.55


def test_sample_lambda_beta_shape_follows_alpha():
    torch.manual_seed(0)
    flat = sample_lambda(20_000, alpha=1.0, low=0.5, high=1.0, device="cpu")
    assert abs(flat.mean().item() - 0.75) < 0.01  # folded U(0,1) is U(0.5,1)
    peaked = sample_lambda(20_000, alpha=50.0, low=0.5, high=1.0, device="cpu")
    assert peaked.mean() < 0.56


# --------------------------------------------------------------- make_environments


def coded_views(K, B, L, extra=3):
    """Views whose first K*B channels one-hot encode (extractor, row), plus random channels.

    Mixing two such views leaves weight λ on the dominant view's code and 1-λ on
    the other's, so λ, both extractors and both rows can be read back exactly.
    """
    code = torch.eye(K * B).view(K, B, 1, K * B).expand(K, B, L, K * B)
    return torch.cat([code, torch.randn(K, B, L, extra)], dim=-1)  # [K, B, L, K*B + extra]


def decode(env_x, K, B):
    """Per environment row: (ext_a, row_a, ext_b, row_b, lam) from the one-hot channels."""
    w = env_x[:, -1, : K * B]  # [R, K*B], codes are the same at every position
    top = w.topk(2, dim=1)
    lam = top.values[:, 0]
    single = top.values[:, 1] == 0  # both sides were the same view
    id_a = top.indices[:, 0]
    id_b = torch.where(single, id_a, top.indices[:, 1])
    # weight sums to one
    torch.testing.assert_close(w.sum(1), torch.ones(len(w)))
    return id_a // B, id_a % B, id_b // B, id_b % B, lam


def run(pairing, views, lengths, targets, N=40, **kw):
    kw = {"alpha": None, "lambda_low": 0.6, "lambda_high": 0.9, **kw}
    return make_environments(views, lengths, targets, N=N, pairing=pairing, mixup=True, **kw)


@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_mixup_shapes(pairing):
    torch.manual_seed(0)
    views, lengths, targets = torch.randn(K, B, L, D), torch.tensor([6, 3, 1, 4]), torch.arange(B) + 10
    env_x, env_len, env_t, _ = run(pairing, views, lengths, targets, N=5)
    assert env_x.shape == (5 * B, L, D)
    assert env_len.shape == env_t.shape == (5 * B,)
    assert env_len.dtype == lengths.dtype and env_t.dtype == targets.dtype


def test_no_mixup_returns_the_views():
    views, lengths, targets = torch.randn(K, B, L, D), torch.tensor([6, 3, 1, 4]), torch.arange(B) + 10
    env_x, env_len, env_t, _ = make_environments(
        views, lengths, targets, N=7, pairing="same_user", mixup=False, alpha=None, lambda_low=0.6, lambda_high=0.9
    )
    assert env_x.shape == (K * B, L, D)
    torch.testing.assert_close(env_x.view(K, B, L, D), views, rtol=0, atol=0)
    assert env_len.tolist() == lengths.tolist() * K
    assert env_t.tolist() == targets.tolist() * K


def test_same_user_pairs_two_different_extractors_of_the_row():
    torch.manual_seed(0)
    N = 60
    views, lengths, targets = coded_views(K, B, L), torch.tensor([6, 3, 1, 4]), torch.arange(B) + 10
    env_x, env_len, env_t, _ = run("same_user", views, lengths, targets, N=N)
    ext_a, row_a, ext_b, row_b, lam = decode(env_x, K, B)
    rows = torch.arange(B).repeat(N)  # environment-major layout
    assert torch.equal(row_a, rows) and torch.equal(row_b, rows)
    assert (ext_a != ext_b).all()
    assert (ext_a.view(N, B) == ext_a.view(N, B)[:, :1]).all()  # one pair per environment
    assert (ext_b.view(N, B) == ext_b.view(N, B)[:, :1]).all()
    assert torch.equal(env_t, targets[rows]) and torch.equal(env_len, lengths[rows])
    assert lam.min() >= 0.6 and lam.max() <= 0.9
    # every ordered pair of distinct extractors occurs (uniform choice)
    pairs = set(zip(ext_a.tolist(), ext_b.tolist()))
    assert pairs == {(a, b) for a in range(K) for b in range(K) if a != b}
    # exact mixing of the payload channels
    lam4 = lam.view(-1, 1, 1)
    expected = lam4 * views[ext_a, row_a] + (1 - lam4) * views[ext_b, row_b]
    torch.testing.assert_close(env_x, expected, rtol=0, atol=1e-6)


def test_same_user_with_two_extractors_always_uses_both():
    torch.manual_seed(0)
    views, lengths, targets = coded_views(2, B, L), torch.tensor([6, 3, 1, 4]), torch.arange(B)
    ext_a, _, ext_b, _, _ = decode(run("same_user", views, lengths, targets, N=30)[0], 2, B)
    assert torch.equal(ext_a + ext_b, torch.ones_like(ext_a))


def test_any_pairing_label_length_and_mixing():
    torch.manual_seed(0)
    N = 60
    views, lengths, targets = coded_views(K, B, L), torch.tensor([6, 3, 1, 4]), torch.arange(B) + 10
    env_x, env_len, env_t, _ = run("any", views, lengths, targets, N=N)
    ext_a, row_a, ext_b, row_b, lam = decode(env_x, K, B)
    rows = torch.arange(B).repeat(N)
    assert torch.equal(row_a, rows)  # the dominant view is the row's own
    assert (ext_a.view(N, B) == ext_a.view(N, B)[:, :1]).all()  # one pair per environment, partners per row
    assert (ext_b.view(N, B) == ext_b.view(N, B)[:, :1]).all()
    assert torch.equal(env_t, targets[rows])  # label of the dominant view
    assert torch.equal(env_len, torch.maximum(lengths[row_a], lengths[row_b]))
    assert (row_b != rows).any() and (env_len != lengths[rows]).any()  # other rows are mixed in
    assert set(row_b.tolist()) == set(range(B)) and set(ext_b.tolist()) == set(range(K))
    mixed = (row_b != row_a) | (ext_b != ext_a)  # λ is unreadable when a view is mixed with itself
    assert mixed.float().mean() > 0.8
    assert lam[mixed].min() >= 0.6 and lam[mixed].max() <= 0.9
    lam4 = lam.view(-1, 1, 1)
    expected = lam4 * views[ext_a, row_a] + (1 - lam4) * views[ext_b, row_b]
    torch.testing.assert_close(env_x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_every_row_of_an_environment_comes_from_that_environments_pair(pairing):
    """Views constant per extractor (view k = 10^k everywhere) and λ fixed at 0.75: every row of
    environment n reads 0.75·10^a + 0.25·10^b for the environment's own pair (a, b), and N <= #pairs
    environments have N different pairs."""
    torch.manual_seed(0)
    n_pairs = K * (K - 1) if pairing == "same_user" else K * K
    views = (10.0 ** torch.arange(K, dtype=torch.float64)).view(K, 1, 1, 1).expand(K, B, L, D)
    lengths, targets = torch.tensor([6, 3, 1, 4]), torch.arange(B)
    for N in range(1, n_pairs + 1):
        env_x = run(pairing, views, lengths, targets, N=N, lambda_low=0.75, lambda_high=0.75)[0]
        value = env_x.view(N, B, L, D)[:, :, -1, 0]  # [N, B]
        assert (value == value[:, :1]).all(), f"N={N}: rows of one environment mix different pairs"
        codes = {(a, b): 0.75 * 10.0 ** a + 0.25 * 10.0 ** b for a in range(K) for b in range(K)}
        pairs = [next(p for p, c in codes.items() if abs(c - v) < 1e-9) for v in value[:, 0].tolist()]
        assert len(set(pairs)) == N, f"N={N}: environments share a pair: {pairs}"
        if pairing == "same_user":
            assert all(a != b for a, b in pairs)


@pytest.mark.parametrize("pairing, n_pairs", [("same_user", K * (K - 1)), ("any", K * K)])
def test_environment_pairs_are_distinct_then_balanced(pairing, n_pairs):
    torch.manual_seed(0)
    a, b = environment_pairs(n_pairs, K, pairing, "cpu")
    assert len(set(zip(a.tolist(), b.tolist()))) == n_pairs  # all pairs, each once
    a, b = environment_pairs(2 * n_pairs + 1, K, pairing, "cpu")  # more environments than pairs
    counts = torch.unique(a * K + b, return_counts=True)[1]
    assert len(counts) == n_pairs and set(counts.tolist()) <= {2, 3}
    if pairing == "same_user":
        assert (a != b).all()


@pytest.mark.parametrize("pairing, n_pairs", [("same_user", K * (K - 1)), ("any", K * K)])
def test_environment_pairs_with_replacement_are_independent_uniform_draws(pairing, n_pairs):
    """draw="with_replacement" (the official code's one random.sample per environment): every candidate
    pair equally likely per environment, and N = #pairs environments repeat a pair as often as
    independent draws do (1 - #pairs!/#pairs^#pairs of the time), never under "distinct"."""
    torch.manual_seed(0)
    a, b = environment_pairs(60_000, K, pairing, "cpu", draw="with_replacement")
    counts = torch.unique(a * K + b, return_counts=True)[1]
    assert len(counts) == n_pairs and (counts - 60_000 / n_pairs).abs().max() < 0.05 * 60_000 / n_pairs
    if pairing == "same_user":
        assert (a != b).all()

    def share_repeating(draw):
        """Share of 400 draws of #pairs environments in which two environments share a pair."""
        hits = 0
        for _ in range(400):
            a, b = environment_pairs(n_pairs, K, pairing, "cpu", draw)
            hits += len(set(zip(a.tolist(), b.tolist()))) < n_pairs
        return hits / 400

    assert share_repeating("distinct") == 0
    assert abs(share_repeating("with_replacement") - (1 - math.factorial(n_pairs) / n_pairs ** n_pairs)) < 0.05
    with pytest.raises(ValueError, match="pair draw"):
        environment_pairs(4, K, pairing, "cpu", draw="sometimes")


def test_make_environments_passes_the_pair_draw_on():
    """Over many batches, N = 6 = #pairs environments share a pair only when drawn with replacement."""
    views, lengths, targets = coded_views(K, B, L), torch.tensor([6, 3, 1, 4]), torch.arange(B)
    shared = {}
    for draw in ("distinct", "with_replacement"):
        torch.manual_seed(0)
        shared[draw] = 0
        for _ in range(20):
            ext_a, _, ext_b, _, _ = decode(run("same_user", views, lengths, targets, N=6, pair_draw=draw)[0], K, B)
            shared[draw] += len(set(zip(ext_a.tolist(), ext_b.tolist()))) < 6
    assert shared["distinct"] == 0 and shared["with_replacement"] >= 15


def test_unfolded_lambda_lets_either_view_of_the_pair_dominate():
    """lambda_fold=False: within one environment (one pair), some rows are dominated by the pair's first
    view and others by its second, as in the official code; folded, the first view dominates every row."""
    views, lengths, targets = coded_views(K, B * 8, L), torch.tensor([6, 3, 1, 4] * 8), torch.arange(B * 8)
    for fold in (True, False):
        torch.manual_seed(0)
        env_x = run("same_user", views, lengths, targets, N=3, alpha=0.1, lambda_fold=fold)[0]
        dominant = decode(env_x, K, B * 8)[0].view(3, B * 8)  # [N, rows] extractor of the heavier view
        mixed_within = (dominant != dominant[:, :1]).any(1)  # [N]
        assert mixed_within.all() if not fold else not mixed_within.any()
    with pytest.raises(ValueError, match="lambda_fold=False needs pairing='same_user'"):
        run("any", views, lengths, targets, alpha=0.1, lambda_fold=False)


def test_lambda_is_drawn_per_environment_and_row():
    torch.manual_seed(0)
    views, lengths, targets = coded_views(K, B, L), torch.tensor([6, 3, 1, 4]), torch.arange(B)
    out = run("same_user", views, lengths, targets, N=5)
    *_, lam = decode(out[0], K, B)
    assert lam.view(5, B).unique().numel() == 5 * B
    torch.testing.assert_close(out[3].view(-1), lam.view(-1).to(out[3].dtype))  # the weights returned are the ones used


def test_beta_lambda_in_environments():
    torch.manual_seed(0)
    views, lengths, targets = coded_views(K, B, L), torch.tensor([6, 3, 1, 4]), torch.arange(B)
    *_, lam = decode(run("any", views, lengths, targets, N=50, alpha=0.3)[0], K, B)
    assert lam.min() >= 0.5 and lam.max() <= 1.0 and lam.std() > 0.05


def test_environments_are_reproducible_under_seed():
    views, lengths, targets = torch.randn(K, B, L, D), torch.tensor([6, 3, 1, 4]), torch.arange(B)
    torch.manual_seed(3)
    a = run("any", views, lengths, targets, N=4)
    b = run("any", views, lengths, targets, N=4)
    torch.manual_seed(3)
    c = run("any", views, lengths, targets, N=4)
    assert not torch.equal(a[0], b[0])
    for x, y in zip(a, c):
        assert torch.equal(x, y)


def test_make_environments_rejects_bad_config():
    views, lengths, targets = torch.randn(1, B, L, D), torch.tensor([6, 3, 1, 4]), torch.arange(B)
    with pytest.raises(ValueError, match="K >= 2"):
        run("same_user", views, lengths, targets)
    with pytest.raises(ValueError, match="pairing"):
        run("random", views, lengths, targets)


# ---------------------------------------------------------------------------- vrex


def test_vrex_matches_hand_computation():
    risks = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    mean, var = vrex(risks)
    assert mean.item() == pytest.approx(7 / 3)
    assert var.item() == pytest.approx(14 / 9)  # ((-4/3)^2 + (-1/3)^2 + (5/3)^2) / 3, population variance
    var.backward()
    torch.testing.assert_close(risks.grad, 2 * (risks.detach() - 7 / 3) / 3)


def test_vrex_unbiased_is_torch_var():
    risks = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    mean, var = vrex(risks, unbiased=True)
    torch.testing.assert_close(var, torch.var(risks), rtol=1e-15, atol=0)  # the official code's torch.var
    assert var.item() == pytest.approx(14 / 6)
    var.backward()
    torch.testing.assert_close(risks.grad, 2 * (risks.detach() - 7 / 3) / 2)
    with pytest.raises(ValueError, match="at least 2"):
        vrex(torch.tensor([0.7]), unbiased=True)


def test_vrex_single_environment_has_zero_variance():
    mean, var = vrex(torch.tensor([0.7]))
    assert mean.item() == pytest.approx(0.7) and var.item() == 0.0
