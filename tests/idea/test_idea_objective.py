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
from idea.environments import make_environments, vrex
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
    tr.objective.extractors.double()
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
    tr.objective.config = dataclasses.replace(tr.objective.config, **config)
    torch.manual_seed(seed)
    return tr.objective.idea_gradients(tr.step_context(), *batch(tr), recommend=recommend, explore=explore)


def risks_of(tr, seed):
    torch.manual_seed(seed)
    return tr.objective.idea_forward(tr.step_context(), *batch(tr))[0]


# ----- the recommender's gradient ---------------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True], ids=["population-var", "unbiased-var"])
@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_recommender_gradient_is_the_hand_derived_vrex_gradient(split, pairing, unbiased):
    """d(mean + β var)/dθ = Σ_n (1/N + 2β(R_n - R̄)/D) dR_n/dθ, with dR_n/dθ from autograd per environment
    and D = N (population variance) or N - 1 (unbiased_var, torch.var's as in the official code)."""
    beta, N = 3.0, 4
    tr = idea64(split, N=N, beta=beta, pairing=pairing, unbiased_var=unbiased)
    got, _, _ = gradients(tr, seed=1)
    risks = risks_of(tr, seed=1)
    R = risks.detach()
    a = 1.0 / N + 2.0 * beta * (R - R.mean()) / (N - 1 if unbiased else N)  # [N]
    per_env = [torch.autograd.grad(risks[n], rec_params(tr), retain_graph=True, allow_unused=True) for n in range(N)]
    want = [None if per_env[0][i] is None else sum(a[n] * per_env[n][i] for n in range(N))
            for i in range(len(per_env[0]))]
    assert rel_diff(got, want) < RTOL
    # β matters: the β = 0 gradient is far outside that tolerance, and so is the other variance's.
    plain, _, _ = gradients(tr, seed=1, beta=0.0)
    assert rel_diff(plain, want) > 1e4 * RTOL
    other, _, _ = gradients(tr, seed=1, beta=beta, unbiased_var=not unbiased)
    assert rel_diff(other, want) > 1e3 * RTOL


def test_extractor_input_grad_adds_the_path_through_the_masks_to_the_item_table(split):
    """With extractor_input_grad the recommender's gradient is the detached one plus the masks' input
    gradient scattered back onto the table rows it was looked up from (the chain rule by hand: here the
    masks read their own leaf copy of x); detached, that term is absent and the gradient is far off."""
    beta, N = 3.0, 4
    tr = idea64(split, N=N, beta=beta, extractor_input_grad=True)
    got, _, _ = gradients(tr, seed=6)
    torch.manual_seed(6)  # the same draws, in the same order, as idea_forward's
    history, lengths, target = batch(tr)
    x = tr.model.embed(history)  # [B, L, d]
    x_in = x.detach().requires_grad_()  # [B, L, d] what the extractors read
    views = tr.objective.extractors(x_in, lengths, tr.config.tau).unsqueeze(-1) * x.unsqueeze(0)  # [K, B, L, d]
    env_x, env_len, env_tgt, _ = make_environments(views, lengths, target, N=N, pairing="same_user", mixup=True,
                                                alpha=None, lambda_low=0.9, lambda_high=1.0)
    risks = tr.objective.per_example_loss(tr.step_context(), tr.model.encode(env_x, env_len), env_tgt).view(N, -1).mean(1)  # [N]
    mean, var = vrex(risks)
    *want, through_masks = torch.autograd.grad(mean + beta * var, rec_params(tr) + [x_in], allow_unused=True)
    table = tr.model.item_emb.weight
    extra = torch.zeros_like(table).index_add_(0, history.flatten(), through_masks.flatten(0, 1))  # [n+1, d]
    extra[0] = 0.0  # the padding row never gets a gradient
    at = next(i for i, p in enumerate(rec_params(tr)) if p is table)
    want[at] = want[at] + extra
    assert rel_diff(got, want) < RTOL
    detached, _, _ = gradients(tr, seed=6, extractor_input_grad=False)
    assert rel_diff(detached, want) > 1e3 * RTOL  # 1.2e-5 here
    assert rel_diff([detached[at]], [want[at] - extra]) < RTOL  # ... and differs only by that term


# ----- the extractors' gradient ------------------------------------------------------------------


@pytest.mark.parametrize("input_grad", [False, True], ids=["detached-input", "input-grad"])
@pytest.mark.parametrize("recommend", [True, False], ids=["shared-backward", "exploration-only"])
@pytest.mark.parametrize("pairing", ["same_user", "any"])
def test_extractor_gradient_ascends_the_risk_variance(split, pairing, recommend, input_grad):
    """The extractors' gradient (descended by their optimiser) is exactly -d var(R)/dφ, sign included,
    both from the recommender's shared backward pass and from exploration alone, whether or not the
    extractors' input carries gradient into the item table."""
    tr = idea64(split, N=4, beta=3.0, pairing=pairing, extractor_input_grad=input_grad)
    _, got, _ = gradients(tr, seed=2, recommend=recommend, explore=True)
    risks = risks_of(tr, seed=2)
    var = ((risks - risks.mean()) ** 2).mean()
    ascent = [-g for g in torch.autograd.grad(var, list(tr.objective.extractors.parameters()))]
    assert rel_diff(got, ascent) < RTOL
    assert rel_diff([-g for g in got], ascent) > 1.9  # the opposite sign is as far off as it gets


def test_shared_backward_stays_exact_when_an_environment_weight_nears_zero(split):
    """With β large enough that some a_n = 1/N + 2β(R_n - R̄)/N is ~0 (so dividing by it would blow up
    rounding errors), the extractors' gradient is still exactly -d var/dφ."""
    tr = idea64(split, N=4, beta=1.0)
    with torch.no_grad():  # sharp scores and extractors that keep all, half or little: environments far apart
        tr.model.item_emb.weight.mul_(20.0)
        tr.objective.extractors.b2.copy_(torch.tensor([[6.0], [0.0], [-6.0]]).expand_as(tr.objective.extractors.b2))
    R = risks_of(tr, seed=3).detach()
    centred = R - R.mean()
    beta = float(-1.0 / (2.0 * centred.min()) * (1 - 1e-9))  # a at the lowest-risk environment is ~1e-10
    assert beta <= 1000, beta
    a = 1.0 / 4 + 2.0 * beta * centred / 4
    assert a.abs().min() < 1e-8
    _, got, _ = gradients(tr, seed=3, recommend=True, explore=True, beta=beta)
    risks = risks_of(tr, seed=3)
    var = ((risks - risks.mean()) ** 2).mean()
    ascent = [-g for g in torch.autograd.grad(var, list(tr.objective.extractors.parameters()))]
    assert rel_diff(got, ascent) < RTOL


def test_exploration_steps_raise_the_risk_variance_on_a_fixed_batch(split):
    tr = idea64(split, N=4, tau=0.5, extractor_lr=3e-2)
    with torch.no_grad():
        tr.model.item_emb.weight.mul_(20.0)  # sharp scores: risks that depend on the subsequence
    variances = []
    for _ in range(5):
        variances.append(float(risks_of(tr, seed=4).detach().var(unbiased=False)))
        torch.manual_seed(4)
        tr.objective.idea_step(tr.step_context(), *batch(tr), recommend=False, explore=True)
    variances.append(float(risks_of(tr, seed=4).detach().var(unbiased=False)))
    assert all(b > a for a, b in zip(variances, variances[1:])), variances
    assert variances[-1] > 2 * variances[0], variances


@pytest.mark.parametrize("input_grad", [False, True], ids=["detached-input", "input-grad"])
def test_recommend_only_leaves_extractors_and_explore_only_leaves_the_recommender(split, input_grad):
    tr = idea64(split, extractor_input_grad=input_grad)
    rec, ext, _ = gradients(tr, seed=5, recommend=True, explore=False)
    assert ext is None and any(g is not None and g.abs().sum() > 0 for g in rec)
    rec, ext, _ = gradients(tr, seed=5, recommend=False, explore=True)
    assert rec is None and all(g.abs().sum() > 0 for g in ext)
    before = [p.detach().clone() for p in tr.model.parameters()]
    torch.manual_seed(5)
    tr.objective.idea_step(tr.step_context(), *batch(tr), recommend=False, explore=True)  # an extractor step moves the extractors only
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


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
    assert resumed.objective.steps > 0 and resumed.objective.ext_opt.state_dict()["state"]
    assert_same(without_timings(resumed.state_dict()), without_timings(at_interrupt))
    resumed.fit()
    assert_same(without_timings(resumed.state_dict()), end_of_full)


@pytest.mark.parametrize("backbone", ["gru4rec", "sasrec", "mamba4rec"])
def test_width_classes_leave_idea_gradients_unchanged(split, backbone):
    """Encoding the environment batch by length classes (TrainConfig.buckets="widths"; GRU4Rec packs its
    rows) changes neither the recommender's nor the extractors' gradient of an exploring IDEA step, whose
    second walk of the backward pass goes back through the classes' gathers."""
    rows = gradients(idea64(split, N=4, beta=3.0, pairing="any", backbone=backbone, dropout=0.0), seed=4, explore=True)
    tr = idea64(split, N=4, beta=3.0, pairing="any", backbone=backbone, dropout=0.0, buckets="widths")
    assert tr.model.buckets == "widths"
    widths = gradients(tr, seed=4, explore=True)
    assert rel_diff(widths[0], rows[0]) < RTOL and rel_diff(widths[1], rows[1]) < RTOL
    assert float(widths[2]["risk_var"]) > 0
