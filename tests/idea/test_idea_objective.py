"""IDEA's objective, checked as gradients in float64 against hand-derived references on the same
random draws: the recommender descends mean(R) + β·var(R), the extractors ascend var(R), an IDEA
run selects an IDEA epoch, and a resume restores every piece of state."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.splits import SplitConfig, make_split
from idea.trainer import Trainer

RTOL = 1e-9  # float64: the references agree to ~1e-13; every effect tested below is >= 1e-6


@pytest.fixture(scope="module")
def split():
    return make_split(generate(SyntheticConfig(n_users=600, n_items=300, seed=3)), SplitConfig(max_len=20))


def idea64(split, **kw) -> Trainer:
    """An IDEA trainer whose recommender and extractors compute in float64."""
    cfg = {"method": "idea", "epochs": 3, "pretrain_epochs": 1, "batch_size": 128, "device": "cpu", "tau": 1.0, **kw}
    tr = Trainer(TrainConfig(**cfg), split)
    tr.model.double()
    tr.extractors.double()
    return tr


def batch(tr, n=96):
    return tr.batch(torch.arange(n))


def rec_params(tr):
    return [p for p in tr.model.parameters() if p.requires_grad]


def rel_diff(got, want) -> float:
    num = sum(float(((g - w) ** 2).sum()) for g, w in zip(got, want) if w is not None)
    den = sum(float((w ** 2).sum()) for w in want if w is not None)
    return (num / den) ** 0.5


def gradients(tr, seed, recommend=True, explore=False, **config):
    """`idea_gradients` on the first batch with the draws of `seed` (and config fields replaced)."""
    tr.config = dataclasses.replace(tr.config, **config)
    torch.manual_seed(seed)
    return tr.idea_gradients(*batch(tr), recommend=recommend, explore=explore)


def risks_of(tr, seed):
    torch.manual_seed(seed)
    return tr.idea_forward(*batch(tr))[0]


# ----- the recommender's gradient ---------------------------------------------------------------


@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_recommender_gradient_is_the_hand_derived_vrex_gradient(split, pairing):
    """d(mean + β var)/dθ = Σ_n (1/N + 2β(R_n - R̄)/N) dR_n/dθ, with dR_n/dθ from autograd per environment."""
    beta, N = 3.0, 4
    tr = idea64(split, N=N, beta=beta, pairing=pairing)
    got, _, _ = gradients(tr, seed=1)
    risks = risks_of(tr, seed=1)
    R = risks.detach()
    a = 1.0 / N + 2.0 * beta * (R - R.mean()) / N  # [N]
    per_env = [torch.autograd.grad(risks[n], rec_params(tr), retain_graph=True, allow_unused=True) for n in range(N)]
    want = [None if per_env[0][i] is None else sum(a[n] * per_env[n][i] for n in range(N))
            for i in range(len(per_env[0]))]
    assert rel_diff(got, want) < RTOL
    # β matters: the β = 0 gradient is far outside that tolerance.
    plain, _, _ = gradients(tr, seed=1, beta=0.0)
    assert rel_diff(plain, want) > 1e4 * RTOL


# ----- the extractors' gradient ------------------------------------------------------------------


@pytest.mark.parametrize("recommend", [True, False], ids=["shared-backward", "exploration-only"])
@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_extractor_gradient_ascends_the_risk_variance(split, pairing, recommend):
    """The extractors' gradient (descended by their optimiser) is exactly -d var(R)/dφ, sign included,
    both from the recommender's shared backward pass and from exploration alone."""
    tr = idea64(split, N=4, beta=3.0, pairing=pairing)
    _, got, _ = gradients(tr, seed=2, recommend=recommend, explore=True)
    risks = risks_of(tr, seed=2)
    var = ((risks - risks.mean()) ** 2).mean()
    ascent = [-g for g in torch.autograd.grad(var, list(tr.extractors.parameters()))]
    assert rel_diff(got, ascent) < RTOL
    assert rel_diff([-g for g in got], ascent) > 1.9  # the opposite sign is as far off as it gets


def test_shared_backward_stays_exact_when_an_environment_weight_nears_zero(split):
    """With β large enough that some a_n = 1/N + 2β(R_n - R̄)/N is ~0 (so dividing by it would blow up
    rounding errors), the extractors' gradient is still exactly -d var/dφ."""
    tr = idea64(split, N=4, beta=1.0)
    with torch.no_grad():  # sharp scores and extractors that keep all, half or little: environments far apart
        tr.model.item_emb.weight.mul_(20.0)
        tr.extractors.b2.copy_(torch.tensor([[6.0], [0.0], [-6.0]]).expand_as(tr.extractors.b2))
    R = risks_of(tr, seed=3).detach()
    centred = R - R.mean()
    beta = float(-1.0 / (2.0 * centred.min()) * (1 - 1e-9))  # a at the lowest-risk environment is ~1e-10
    assert beta <= 1000, beta
    a = 1.0 / 4 + 2.0 * beta * centred / 4
    assert a.abs().min() < 1e-8
    _, got, _ = gradients(tr, seed=3, recommend=True, explore=True, beta=beta)
    risks = risks_of(tr, seed=3)
    var = ((risks - risks.mean()) ** 2).mean()
    ascent = [-g for g in torch.autograd.grad(var, list(tr.extractors.parameters()))]
    assert rel_diff(got, ascent) < RTOL


def test_exploration_steps_raise_the_risk_variance_on_a_fixed_batch(split):
    tr = idea64(split, N=4, tau=0.5, extractor_lr=3e-2)
    with torch.no_grad():
        tr.model.item_emb.weight.mul_(20.0)  # sharp scores: risks that depend on the subsequence
    variances = []
    for _ in range(5):
        variances.append(float(risks_of(tr, seed=4).detach().var(unbiased=False)))
        torch.manual_seed(4)
        tr.idea_step(*batch(tr), recommend=False, explore=True)
    variances.append(float(risks_of(tr, seed=4).detach().var(unbiased=False)))
    assert all(b > a for a, b in zip(variances, variances[1:])), variances
    assert variances[-1] > 2 * variances[0], variances


def test_recommend_only_leaves_extractors_and_explore_only_leaves_the_recommender(split):
    tr = idea64(split)
    rec, ext, _ = gradients(tr, seed=5, recommend=True, explore=False)
    assert ext is None and any(g is not None and g.abs().sum() > 0 for g in rec)
    rec, ext, _ = gradients(tr, seed=5, recommend=False, explore=True)
    assert rec is None and all(g.abs().sum() > 0 for g in ext)


# ----- best state ---------------------------------------------------------------------------------


def test_idea_selects_an_idea_epoch_even_when_pretraining_scored_higher(split):
    """The model is scrambled after the last pretraining epoch and the IDEA epoch cannot learn (lr 0),
    so that ERM epoch scores best on validation; the selected state must still be the IDEA epoch's."""
    tr = Trainer(TrainConfig(method="idea", epochs=3, pretrain_epochs=2, batch_size=128, device="cpu"), split)

    def scramble(record):
        if record.epoch == 2:
            with torch.no_grad():
                tr.model.item_emb.weight.normal_(std=1e-3)
            for group in tr.opt.param_groups:
                group["lr"] = 0.0

    tr.fit(on_epoch=scramble)
    scores = [r.valid["ndcg_at_10"] for r in tr.records]
    assert scores[1] > scores[2], scores  # the pretraining epoch really was better
    assert tr.best_epoch == 3 and tr.best_phase == "idea"
    assert [(r.best_epoch, r.best_phase) for r in tr.records] == [(0, None), (0, None), (3, "idea")]
    assert torch.equal(tr.best_state["item_emb.weight"], tr.model.state_dict()["item_emb.weight"])


def test_erm_best_phase_is_erm(split):
    tr = Trainer(TrainConfig(epochs=1, batch_size=128, device="cpu"), split)
    tr.fit()
    assert (tr.best_epoch, tr.best_phase) == (1, "erm")


# ----- resume -------------------------------------------------------------------------------------


def assert_same(a, b, where="state"):
    """Recursive exact equality of nested dicts, lists, tuples, tensors and arrays."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{where} differs"
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"


def without_timings(state: dict) -> dict:
    state = {k: v for k, v in state.items() if k != "fit_seconds"}
    state["records"] = [{k: v for k, v in r.items() if "seconds" not in k} for r in state["records"]]
    return state


def test_resume_restores_every_piece_of_state(split, tmp_path):
    """After an interruption at epoch 2 and a resume, the checkpointed state (model, extractors, both
    optimisers, step counter, records, RNG states) is back exactly, and the finished run ends in the
    same state as an uninterrupted one."""
    cfg = TrainConfig(method="idea", epochs=3, pretrain_epochs=1, T=2, batch_size=128, noise_ratio=0.1, device="cpu")
    full = Trainer(cfg, split)
    full.fit()
    end_of_full = without_timings(full.state_dict())

    first, ckpt, at_interrupt = Trainer(cfg, split), tmp_path / "state.pt", {}

    def interrupt(record):
        if record.epoch == 2:
            at_interrupt.update(copy.deepcopy(first.state_dict()))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_epoch=interrupt, checkpoint=ckpt)
    torch.manual_seed(12345)  # whatever ran in between must not matter
    resumed = Trainer(cfg, split)
    resumed.load(ckpt)
    assert resumed.step > 0 and resumed.ext_opt.state_dict()["state"]
    assert_same(without_timings(resumed.state_dict()), without_timings(at_interrupt))
    resumed.fit()
    assert_same(without_timings(resumed.state_dict()), end_of_full)
