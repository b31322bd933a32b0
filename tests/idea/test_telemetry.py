"""IDEA's mechanism telemetry: the penalty's share of the recommender's gradient checked in float64 against
gradients taken separately by autograd, the views' statistics against hand-computed values, and the epoch's
telemetry as the trainer records it."""
import dataclasses
import math

import pytest
import torch

from idea.config import TrainConfig
from idea.contract import keep_rate_key
from idea.data.synthetic import SyntheticConfig, generate
from idea.environments import vrex
from idea.methods import IDEA, view_telemetry
from idea.objectives import irmv1
from idea.splits import SplitConfig, make_split
from idea.trainer import Trainer
from tests.idea.test_idea_objective import batch, idea64, rec_params

RTOL = 1e-9  # float64


@pytest.fixture(scope="module")
def split():
    return make_split(generate(SyntheticConfig(n_users=600, n_items=300, seed=3)), SplitConfig(max_len=20))


def measured_share(tr, seed, **config) -> float:
    tr.objective.config = dataclasses.replace(tr.objective.config, **config)
    torch.manual_seed(seed)
    _, _, stats = tr.objective.idea_gradients(tr.step_context(), *batch(tr), recommend=True, explore=True, measure_share=True)
    return float(stats["penalty_share"])


def reference_share(tr, seed) -> tuple[float, float, float]:
    """(||β ∇penalty||, ||∇mean||, ||β ∇penalty on the extractors||) from separate autograd passes on the
    same draws."""
    c = tr.objective.config
    torch.manual_seed(seed)
    risks, scale_grads, _, _ = tr.objective.idea_forward(tr.step_context(), *batch(tr))
    mean, var = vrex(risks, c.unbiased_var)
    penalty = var if scale_grads is None else irmv1(scale_grads)
    params = rec_params(tr)

    def norm(loss, wrt):
        grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))

    return (norm(c.beta * penalty, params), norm(mean, params),
            norm(c.beta * penalty, list(tr.objective.extractors.parameters())))


@pytest.mark.parametrize("penalty", ["vrex", "irmv1"])
@pytest.mark.parametrize("input_grad", [False, True], ids=["detached", "input-grad"])
def test_penalty_share_is_the_beta_penalty_gradient_over_the_mean_gradient(split, penalty, input_grad):
    beta = 7.0
    tr = idea64(split, beta=beta, penalty=penalty, extractor_input_grad=input_grad)
    got = measured_share(tr, seed=2)
    pen, mean, pen_on_extractors = reference_share(tr, seed=2)
    assert got == pytest.approx(pen / mean, rel=RTOL)
    # far from the wrong readings: without β, against the extractors' gradient, or against the whole gradient
    assert abs(got - pen / beta / mean) > 0.5 * got
    assert abs(got - pen_on_extractors / mean) > 1e-3 * got
    assert got > 1e-6


def test_penalty_share_grows_linearly_with_beta(split):
    """The share is β·||∇penalty|| / ||∇mean||: at the same draws and weights, 10x β is 10x the share."""
    tr = idea64(split)
    small, large = measured_share(tr, seed=4, beta=0.5), measured_share(tr, seed=4, beta=5.0)
    assert large == pytest.approx(10 * small, rel=RTOL)


def test_measuring_the_share_leaves_the_step_unchanged(split):
    """The extra backward pass takes no draws and changes no gradient: a measured step is the plain step."""
    tr = idea64(split)
    torch.manual_seed(5)
    plain = tr.objective.idea_gradients(tr.step_context(), *batch(tr), recommend=True, explore=True)
    torch.manual_seed(5)
    measured = tr.objective.idea_gradients(tr.step_context(), *batch(tr), recommend=True, explore=True, measure_share=True)
    for got, want in ((measured[0], plain[0]), (measured[1], plain[1])):
        for g, w in zip(got, want):
            assert (g is None and w is None) or torch.equal(g, w)
    assert set(measured[2]) - set(plain[2]) == {"penalty_share"}


def test_view_telemetry_by_hand():
    lengths = torch.tensor([3, 1])
    masks = torch.tensor([  # [K=3, B=2, L=3], right-aligned rows, 0 at padding
        [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
        [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        [[0.5, 0.5, 0.5], [0.0, 0.0, 0.5]],
    ])
    lam = torch.tensor([0.9, 0.2, 0.5, 0.6])
    got = view_telemetry(masks, lengths, lam)
    # 4 real positions: row 0's three and row 1's last
    assert [float(got[keep_rate_key(k)]) for k in range(3)] == pytest.approx([3 / 4, 2 / 4, 2 / 4])
    # |m0 - m1| = 0+1+1+1 = 3, |m0 - m2| = .5+.5+.5+.5 = 2, |m1 - m2| = .5+.5+.5+.5 = 2: 7 over 3 pairs of 4
    assert float(got["mask_disagreement"]) == pytest.approx(7 / (3 * 4))
    assert float(got["lambda_dominant"]) == pytest.approx((0.9 + 0.8 + 0.5 + 0.6) / 4)
    assert "lambda_dominant" not in view_telemetry(masks, lengths, None)


def test_an_epoch_records_the_telemetry(split):
    """Every IDEA epoch records the keep rate of each extractor, the disagreement, λ, the risk variance, the
    median share over every SHARE_EVERY-th step (its first included) and the extractor updates so far;
    pretraining epochs record none of it."""
    config = TrainConfig(method="idea", K=3, T=2, epochs=3, pretrain_epochs=1, batch_size=128, device="cpu")
    tr = Trainer(config, split)
    shares = []
    measure = tr.objective.idea_step

    def spy(*args, **kwargs):
        stats = measure(*args, **kwargs)
        if kwargs.get("measure_share"):
            shares.append(float(stats["penalty_share"]))
        return stats

    tr.objective.idea_step = spy
    records = tr.fit()
    n_batches = len(tr.epoch_batches(1))
    assert "penalty_share" not in records[0].extra and keep_rate_key(0) not in records[0].extra
    per_epoch = math.ceil(n_batches / IDEA.SHARE_EVERY)
    assert len(shares) == 2 * per_epoch
    for i, record in enumerate(records[1:]):
        extra = record.extra
        assert extra["penalty_share"] == pytest.approx(float(torch.tensor(shares[i * per_epoch:(i + 1) * per_epoch]).median()))
        assert extra["extractor_steps"] == (i + 1) * n_batches // config.T
        assert {keep_rate_key(k) for k in range(config.K)} <= set(extra) and keep_rate_key(config.K) not in extra
        assert all(0 < extra[keep_rate_key(k)] < 1 for k in range(config.K))
        assert 0 < extra["mask_disagreement"] < 1 and 0.9 <= extra["lambda_dominant"] <= 1.0
        assert extra["risk_var"] > 0


def test_no_exploration_means_no_extractor_steps(split):
    tr = Trainer(TrainConfig(method="idea", explore=False, epochs=2, pretrain_epochs=1, batch_size=512,
                             device="cpu"), split)
    assert tr.fit()[-1].extra["extractor_steps"] == 0
