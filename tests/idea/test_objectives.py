"""DROS's loss against a hand computation (exact arithmetic, extreme logits included) and IDEA's
IRMv1 penalty against finite differences and a dummy-scale autograd reference, in float64."""

import mpmath
import numpy as np
import pytest
import torch

from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.environments import make_environments
from idea.objectives import bce_scale_gradient, ce_scale_gradient, dros_loss, dros_propensity
from idea.splits import SplitConfig, make_split
from idea.trainer import Trainer

mpmath.mp.dps = 50


def dros_by_hand(s, t, p, beta):
    """The paper's formula term by term in 50-digit arithmetic (t 0-based here)."""
    terms = [mpmath.exp(mpmath.mpf(p[j]) * mpmath.mpf(s[j]) ** 2 / beta) for j in range(len(s))]
    inner = mpmath.fsum(terms) - terms[t] + mpmath.exp(mpmath.mpf(p[t]) * (mpmath.mpf(s[t]) - 1) ** 2 / beta)
    return float(mpmath.log(inner))


def test_dros_propensity_by_hand():
    p = dros_propensity(np.array([1, 1, 3, 1]), n_items=3)  # counts 3, 0, 1 -> smoothed 4, 1, 2 of 7
    torch.testing.assert_close(p, torch.tensor([(4 / 7) ** 0.05, (1 / 7) ** 0.05, (2 / 7) ** 0.05]))


@pytest.mark.parametrize("scale", [1.0, 50.0])  # 50: p s^2 / beta ~ 1e3, far past exp's float range
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_dros_loss_equals_the_formula(scale, beta):
    logits = torch.tensor([[0.3, -1.0, 0.8], [1.0, -1.0, 0.2], [-0.5, 0.1, 1.0]], dtype=torch.float64) * scale
    target = torch.tensor([1, 2, 3])
    p = torch.tensor([0.9, 0.7, 0.8], dtype=torch.float64)
    got = dros_loss(logits.requires_grad_(), target, p, beta)
    want = [dros_by_hand(logits[i].tolist(), int(target[i]) - 1, p.tolist(), beta) for i in range(3)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    got.sum().backward()
    assert torch.isfinite(logits.grad).all()
    if scale == 50.0:  # also in float32, the trainer's precision: finite and right to float32 rounding
        got32 = dros_loss(logits.detach().float(), target, p.float(), beta)
        torch.testing.assert_close(got32, torch.tensor(want, dtype=torch.float32))


@pytest.fixture(scope="module")
def split():
    return make_split(generate(SyntheticConfig(n_users=600, n_items=300, seed=3)), SplitConfig(max_len=20))


def trainer64(split, **kw) -> Trainer:
    cfg = {"epochs": 3, "pretrain_epochs": 1, "batch_size": 128, "device": "cpu", "tau": 1.0, **kw}
    tr = Trainer(TrainConfig(**cfg), split)
    tr.model.double()
    if hasattr(tr.objective, "extractors"):
        tr.objective.extractors.double()
    return tr


def test_dros_method_adds_alpha_times_l_dro(split):
    tr = trainer64(split, method="dros", dros_alpha=0.3, dros_beta=2.0)
    history, lengths, target = tr.batch(torch.arange(64))
    user = tr.model(history, lengths)
    logits = user @ tr.item_table()[1:].T
    ce = torch.nn.functional.cross_entropy(logits, target - 1, reduction="none")
    counts = np.bincount(split.train.target, minlength=split.n_items + 1)[1:] + 1.0
    p = torch.tensor((counts / counts.sum()) ** 0.05)
    want = ce + 0.3 * dros_loss(logits, target, p, 2.0)
    torch.testing.assert_close(tr.objective.per_example_loss(tr.step_context(), user, target), want)
    assert (want - ce).abs().min() > 1e-3
    off = trainer64(split, method="dros", dros_alpha=0.0)
    plain = off.objective.per_example_loss(off.step_context(), user, target)
    torch.testing.assert_close(plain, ce)  # the reference's default: plain ERM
    assert tr.phase(1) == "dros" and not hasattr(tr.objective, "extractors")
    tr.fit()
    assert tr.best_phase == "dros"


# ----- IRMv1 ------------------------------------------------------------------------------------

H = 1e-5  # central differences: error ~ H^2 * third derivative, far below the tolerance


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_scale_gradient_equals_finite_difference(split, loss):
    tr = trainer64(split, loss=loss)
    history, lengths, target = tr.batch(torch.arange(64))
    user = tr.model(history, lengths).detach()

    def at(w):
        torch.manual_seed(7)  # the same sampled negatives at every w
        return tr.objective.per_example_loss(tr.step_context(), user * w, target)

    torch.manual_seed(7)
    _, grad = tr.objective.per_example_loss(tr.step_context(), user, target, scale_grad=True)
    fd = (at(1 + H) - at(1 - H)) / (2 * H)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
    assert grad.abs().max() > 1e-2


def test_scale_gradient_formulas_by_autograd():
    logits = torch.randn(5, 7, dtype=torch.float64)
    target = torch.tensor([1, 7, 3, 3, 2])
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    ce = torch.nn.functional.cross_entropy(w * logits, target - 1, reduction="sum")
    torch.testing.assert_close(ce_scale_gradient(logits, target).sum(), torch.autograd.grad(ce, w)[0])
    pos, neg = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    bce = (torch.nn.functional.softplus(-w * pos) + torch.nn.functional.softplus(w * neg)).sum()
    torch.testing.assert_close(bce_scale_gradient(pos, neg).sum(), torch.autograd.grad(bce, w)[0])


def irm_reference(tr, seed):
    """IRMv1 the way its paper writes it: risks of w * logits for a dummy scalar w = 1, the penalty
    mean_e (dR_e/dw)^2 through a double backward pass; the environments drawn as the trainer does."""
    c = tr.config
    history, lengths, target = tr.batch(torch.arange(96))
    torch.manual_seed(seed)
    x = tr.model.embed(history)
    masks = tr.objective.extractors(x.detach(), lengths, c.tau)
    env_x, env_len, env_tgt, _ = make_environments(masks.unsqueeze(-1) * x.unsqueeze(0), lengths, target, N=c.N,
                                                pairing=c.pairing, mixup=c.mixup, alpha=c.alpha,
                                                lambda_low=c.lambda_low, lambda_high=c.lambda_high)
    user = tr.model.encode(env_x, env_len)
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    risks = tr.objective.per_example_loss(tr.step_context(), user * w, env_tgt).view(c.N, -1).mean(1)
    grads = torch.stack([torch.autograd.grad(risks[e], w, create_graph=True)[0] for e in range(c.N)])
    return risks, grads.square().mean()


def test_irmv1_gradients_equal_the_double_backward_reference(split):
    tr = trainer64(split, method="idea", N=4, beta=3.0, penalty="irmv1")
    with torch.no_grad():
        tr.model.item_emb.weight.mul_(10.0)  # scores far from zero: environments with distinct gradients
    history, lengths, target = tr.batch(torch.arange(96))
    torch.manual_seed(5)
    rec, ext, stats = tr.objective.idea_gradients(tr.step_context(), history, lengths, target, recommend=True, explore=True)
    risks, penalty = irm_reference(tr, seed=5)
    torch.testing.assert_close(stats["irm_penalty"], penalty.detach(), rtol=1e-10, atol=0)
    params = [p for p in tr.model.parameters() if p.requires_grad]
    want = torch.autograd.grad(risks.mean() + 3.0 * penalty, params, retain_graph=True, allow_unused=True)
    ascent = torch.autograd.grad(-penalty, list(tr.objective.extractors.parameters()), retain_graph=True)
    plain = torch.autograd.grad(risks.mean(), params, retain_graph=True, allow_unused=True)

    def rel(got, ref):
        pairs = [(g, r) for g, r in zip(got, ref) if r is not None]
        return (sum(float(((g - r) ** 2).sum()) for g, r in pairs) / sum(float((r ** 2).sum()) for _, r in pairs)) ** 0.5

    assert rel(rec, want) < 1e-9
    assert rel(plain, want) > 1e-4  # the penalty moves the recommender: dropping it cannot pass
    assert rel(ext, ascent) < 1e-9
    var = ((risks - risks.mean()) ** 2).mean()
    vrex_ascent = torch.autograd.grad(-var, list(tr.objective.extractors.parameters()))
    assert rel(vrex_ascent, ascent) > 0.1  # exploration maximises IRMv1's penalty, not the variance


def test_irmv1_trains(split):
    tr = Trainer(TrainConfig(method="idea", penalty="irmv1", epochs=2, pretrain_epochs=1, T=1, batch_size=128,
                             device="cpu"), split)
    records = tr.fit()
    assert records[-1].extra["irm_penalty"] > 0 and np.isfinite(records[-1].train_loss)


# ----- which rows the softmax runs over ---------------------------------------------------------


def test_softmax_over_all_rows_scores_padding_and_fake_rows(split):
    """softmax_over "all" (the official code's CE): logsumexp over every row of the table (padding row 0,
    the real items, the fake rows) minus the target's score; its gradient at row j is mean((p_j - [j = t]) u),
    so the fake rows are trained as negatives, and the padding row is scored but never trained. With the
    default "items" the fake rows get no gradient at all."""
    tr = trainer64(split, softmax_over="all", fake_items=40)
    table = tr.model.item_emb.weight
    assert len(table) == split.n_items + 1 + 40
    history, lengths, target = tr.batch(torch.arange(64))
    user = tr.model(history, lengths).detach()  # [M, d]
    logits = user @ table.detach().T  # [M, n + 41]
    score_t = logits.gather(1, target[:, None]).squeeze(1)  # [M]
    loss, scale = tr.objective.per_example_loss(tr.step_context(), user, target, scale_grad=True)
    torch.testing.assert_close(loss, torch.logsumexp(logits, 1) - score_t, rtol=1e-12, atol=0)
    p = logits.softmax(1)  # [M, n + 41]
    torch.testing.assert_close(scale, (p * logits).sum(1) - score_t, rtol=1e-12, atol=1e-12)  # IRMv1's dR/dw
    grad = torch.autograd.grad(loss.mean(), table)[0]
    want = (p - torch.nn.functional.one_hot(target, len(table))).T @ user / len(target)  # [n + 41, d]
    want[0] = 0.0
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-15)
    fake = slice(split.n_items + 1, None)
    assert (grad[fake].norm(dim=1) > 1e-6).all()
    items = trainer64(split, fake_items=40)
    items.model.load_state_dict(tr.model.state_dict())
    plain = items.objective.per_example_loss(items.step_context(), user, target)
    assert (loss - plain).min() > 1e-3  # the extra rows raise every row's loss
    assert not torch.autograd.grad(plain.mean(), items.model.item_emb.weight)[0][fake].any()


def test_softmax_over_all_keeps_dros_on_the_real_items(split):
    """DROS's L_DRO reads the real items' logits whichever rows the CE softmax runs over."""
    tr = trainer64(split, method="dros", dros_alpha=0.3, softmax_over="all", fake_items=40)
    history, lengths, target = tr.batch(torch.arange(64))
    user = tr.model(history, lengths)
    logits = user @ tr.model.item_emb.weight.T  # [M, n + 41]
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    l_dro = dros_loss(logits[:, 1: split.n_items + 1], target, tr.objective.propensity.double(), 1.0)
    torch.testing.assert_close(tr.objective.per_example_loss(tr.step_context(), user, target), ce + 0.3 * l_dro)
