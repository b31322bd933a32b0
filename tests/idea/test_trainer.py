"""Trainer behaviour: parameter groups, determinism, resume, early stopping, failures, CLI."""
import json
import math
import subprocess
import sys

import pytest
import torch

import idea.methods as methods_module
from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.environments import make_environments
from idea.metrics import summary
from idea.splits import SplitConfig, make_split
from idea.trainer import NonFiniteLossError, Trainer, inject_noise
from tests.idea.helpers import most_popular


@pytest.fixture(scope="module")
def split():
    return make_split(generate(SyntheticConfig(n_users=600, n_items=300, seed=3)), SplitConfig(max_len=20))


def small(**kw):
    base = dict(epochs=2, pretrain_epochs=1, batch_size=128, device="cpu", eval_batch_size=256)
    base.update(kw)
    return TrainConfig(**base)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def first_batch(trainer):
    return trainer.batch(torch.arange(64))


@pytest.mark.parametrize("backbone", ["gru4rec", "sasrec", "mamba4rec"])
def test_recommender_step_moves_only_the_recommender(split, backbone):
    tr = Trainer(small(method="idea", backbone=backbone), split)
    rec, ext = snapshot(tr.model), snapshot(tr.objective.extractors)
    tr.objective.idea_step(tr.step_context(), *first_batch(tr), recommend=True, explore=False)
    assert any(changed(rec, tr.model))
    assert not any(changed(ext, tr.objective.extractors))


@pytest.mark.parametrize("backbone", ["gru4rec", "sasrec", "mamba4rec"])
def test_exploration_step_moves_only_the_extractors(split, backbone):
    tr = Trainer(small(method="idea", backbone=backbone), split)
    rec, ext = snapshot(tr.model), snapshot(tr.objective.extractors)
    tr.objective.idea_step(tr.step_context(), *first_batch(tr), recommend=False, explore=True)
    assert not any(changed(rec, tr.model))
    assert all(changed(ext, tr.objective.extractors))


def test_idea_risks_are_one_per_environment(split):
    tr = Trainer(small(method="idea", N=5), split)
    assert tr.objective.idea_forward(tr.step_context(), *first_batch(tr))[0].shape == (5,)
    tr = Trainer(small(method="idea", K=4, mixup=False), split)
    assert tr.objective.idea_forward(tr.step_context(), *first_batch(tr))[0].shape == (4,)


def test_explore_false_never_updates_extractors(split):
    tr = Trainer(small(method="idea", explore=False, pretrain_epochs=0, epochs=1, T=1), split)
    ext = snapshot(tr.objective.extractors)
    tr.fit()
    assert not any(changed(ext, tr.objective.extractors))


def test_epoch_batches_are_the_epoch_order_with_each_batch_width(split):
    """The widths known up front (so a GPU step never waits to learn one) are each batch's longest history, and
    a batch built with its width is the batch built without."""
    tr = Trainer(small(batch_size=100), split)
    batches = tr.epoch_batches(3)
    assert torch.equal(torch.cat([idx for idx, _ in batches]), tr.permutation(3)) and len(batches[-1][0]) < 100
    for idx, width in batches:
        assert width == int(tr.train_lengths[idx].max())
        assert all(torch.equal(a, b) for a, b in zip(tr.batch(idx, width), tr.batch(idx)))


def test_same_seed_same_metrics(split):
    a = Trainer(small(method="idea", pretrain_epochs=1, seed=7), split)
    a.fit()
    b = Trainer(small(method="idea", pretrain_epochs=1, seed=7), split)
    b.fit()
    fa, fb = a.evaluate(), b.evaluate()
    assert fa.value.tolist() == fb.value.tolist()
    c = Trainer(small(method="idea", pretrain_epochs=1, seed=8), split)
    c.fit()
    assert c.evaluate().value.tolist() != fa.value.tolist()


@pytest.mark.parametrize("method", ["erm", "idea"])
def test_resume_from_checkpoint_gives_identical_results(split, tmp_path, method):
    cfg = small(method=method, epochs=3, pretrain_epochs=1, noise_ratio=0.1)
    full = Trainer(cfg, split)
    full.fit()
    ckpt = tmp_path / "state.pt"
    first = Trainer(cfg, split)

    def interrupt(record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_epoch=interrupt, checkpoint=ckpt)
    resumed = Trainer(cfg, split)
    resumed.load(ckpt)
    assert resumed.epoch == 2
    resumed.fit()
    assert [r.valid for r in resumed.records] == [r.valid for r in full.records]
    assert resumed.evaluate().value.tolist() == full.evaluate().value.tolist()


def test_resume_refuses_a_different_config(split, tmp_path):
    tr = Trainer(small(epochs=1), split)
    tr.fit(checkpoint=tmp_path / "s.pt")
    with pytest.raises(ValueError, match="different config.*lr"):
        Trainer(small(epochs=1, lr=0.01), split).load(tmp_path / "s.pt")
    other_runtime = Trainer(small(epochs=1, eval_batch_size=64, buckets="widths"), split)  # where/how fast may change
    other_runtime.load(tmp_path / "s.pt")
    assert other_runtime.epoch == 1 and other_runtime.model.buckets == "widths"


def test_erm_beats_most_popular(split):
    tr = Trainer(small(epochs=8, batch_size=64), split)
    tr.fit()
    model = summary(tr.evaluate(["valid"]), "valid")["ndcg_at_10"]
    pop = summary(most_popular(split), "valid")["ndcg_at_10"]
    assert model > 1.5 * pop, (model, pop)


def test_early_stopping_after_patience(split):
    tr = Trainer(small(epochs=50, patience=1, lr=1e-6), split)
    tr.fit()
    assert tr.epoch < 50
    assert tr.epoch == tr.best_epoch + 1 and tr.bad_epochs == 1


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(split, tmp_path):
    cfg = small(epochs=3)
    tr = Trainer(cfg, split)
    ckpt = tmp_path / "state.pt"

    def poison(record):
        if record.epoch == 1:
            with torch.no_grad():
                tr.model.item_emb.weight.fill_(math.nan)

    with pytest.raises(NonFiniteLossError, match=r"epoch 2: the erm loss became nan"):
        tr.fit(on_epoch=poison, checkpoint=ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1
    assert torch.isfinite(saved["model"]["item_emb.weight"]).all()


def test_noise_replaces_the_requested_share_with_fake_items():
    torch.manual_seed(0)
    B, L, n = 4000, 20, 50
    lengths = torch.randint(1, L + 1, (B,))
    history = torch.where(torch.arange(L) >= L - lengths[:, None], torch.randint(1, n + 1, (B, L)), 0)
    noisy = inject_noise(history, lengths, 0.3, n, 10)
    real = history > 0
    assert torch.equal(noisy[~real], history[~real])  # padding untouched
    fake = noisy > n
    assert fake.sum().item() / real.sum().item() == pytest.approx(0.3, abs=0.01)
    assert noisy.max() <= n + 10
    assert torch.equal(noisy[~fake], history[~fake])


def test_fake_rows_and_item_init(split):
    """fake_items sets the fake rows whatever the noise (the official code keeps 1,000 without noise) and
    item_init "normal" draws the table from N(0, 1) (nn.Embedding's init, which the official table keeps)."""
    n = split.n_items
    assert len(Trainer(small(), split).model.item_emb.weight) == n + 1
    assert len(Trainer(small(noise_ratio=0.1), split).model.item_emb.weight) == n + 1 + 100  # max(100, n // 10)
    tr = Trainer(small(fake_items=30, item_init="normal"), split)
    table = tr.model.item_emb.weight.detach()
    assert len(table) == n + 1 + 30 and tr.n_fake == 30
    assert not table[0].any() and 0.95 < table[1:].std() < 1.05
    assert Trainer(small(), split).model.item_emb.weight[1:].std() < 0.2  # the backbone's xavier init
    noisy = Trainer(small(noise_ratio=0.5, fake_items=30), split).batch(torch.arange(256))[0]
    assert noisy.max() == n + 30 and (noisy > n).sum() > 0


def test_idea_options_reach_the_environments_and_extractors(split, monkeypatch):
    """The config's pair draw and λ folding reach make_environments, and extractor_keep_logit the extractors."""
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return make_environments(*args, **kwargs)

    monkeypatch.setattr(methods_module, "make_environments", spy)
    tr = Trainer(small(method="idea", pair_draw="with_replacement", alpha=0.1, lambda_fold=False), split)
    tr.objective.idea_forward(tr.step_context(), *first_batch(tr))
    assert seen["pair_draw"] == "with_replacement" and seen["lambda_fold"] is False
    assert (tr.objective.extractors.b2 == 2.0).all()
    official = Trainer(small(method="idea", extractor_keep_logit=None, extractor_hidden=128), split).objective.extractors
    assert official.b2.abs().max() <= 128 ** -0.5 and official.b2.std() > 0.01
    assert (Trainer(small(method="idea", extractor_keep_logit=-1.0), split).objective.extractors.b2 == -1.0).all()


def test_resume_reads_checkpoints_written_before_a_field_existed(split, tmp_path):
    """A checkpoint saved before a TrainConfig field was added resumes when this run keeps its default."""
    tr = Trainer(small(method="idea"), split)
    state = tr.state_dict()
    del state["config"]["pair_draw"], state["config"]["softmax_over"]
    Trainer(small(method="idea"), split).load_state_dict(state)
    with pytest.raises(ValueError, match="different config.*pair_draw"):
        Trainer(small(method="idea", pair_draw="with_replacement"), split).load_state_dict(state)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="TrainConfig.tau"):
        TrainConfig(tau=0)
    with pytest.raises(ValueError, match="TrainConfig.lambda_low"):
        TrainConfig(lambda_low=0.3)
    with pytest.raises(ValueError, match="TrainConfig.K"):
        TrainConfig(K=1)
    with pytest.raises(ValueError, match="TrainConfig.pretrain_epochs"):
        TrainConfig(method="idea", epochs=2, pretrain_epochs=2)
    with pytest.raises(ValueError, match="unknown TrainConfig field.*'betta'"):
        TrainConfig.from_dict({"betta": 1.0})
    with pytest.raises(ValueError, match=r"TrainConfig.buckets = 'sorted' is invalid.*'auto', 'rows', 'widths'"):
        TrainConfig(buckets="sorted")


@pytest.mark.parametrize("values, field", [
    ({"pair_draw": "random"}, "pair_draw"),
    ({"softmax_over": "fakes"}, "softmax_over"),
    ({"softmax_over": "all", "loss": "bce"}, "softmax_over"),
    ({"item_init": "xavier"}, "item_init"),
    ({"extractor_input_grad": 1}, "extractor_input_grad"),
    ({"unbiased_var": "yes"}, "unbiased_var"),
    ({"lambda_fold": False}, "lambda_fold"),  # no alpha: Uniform λ >= 0.5 has nothing to fold
    ({"lambda_fold": False, "alpha": 0.1, "pairing": "any"}, "lambda_fold"),
    ({"extractor_keep_logit": 50.0}, "extractor_keep_logit"),
    ({"extractor_keep_logit": True}, "extractor_keep_logit"),
    ({"fake_items": -1}, "fake_items"),
    ({"fake_items": 0, "noise_ratio": 0.1}, "fake_items"),
])
def test_official_option_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} "):
        TrainConfig(**values)
    official = TrainConfig(method="idea", extractor_input_grad=True, pair_draw="with_replacement", alpha=0.1,
                           lambda_fold=False, unbiased_var=True, extractor_keep_logit=None, fake_items=1000,
                           softmax_over="all", item_init="normal")
    assert official.used()["pair_draw"] == "with_replacement" and "pair_draw" not in TrainConfig().used()


def test_cli_prints_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "idea.train", "--dataset", "synthetic", "--method", "idea", "--epochs", "2",
         "--pretrain-epochs", "1", "--batch-size", "512", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout  # stdout is only the JSON line: `| jq` or json.loads works as is
    result = json.loads(lines[0])
    assert result["epochs_run"] == 2 and result["config"]["method"] == "idea"
    assert set(result["test"]) == {"w1", "w2", "w3"}
    assert 0 <= result["test"]["w3"]["warm"]["ndcg_at_10"] <= 1
    assert "ndcg_at_10" in result["valid"]
    assert "epoch   2 [idea]" in out.stderr and "torch threads 1 (--threads)" in out.stderr
    header = next(line for line in out.stderr.splitlines() if line.split()[:2] == ["part", "subset"])
    assert header.split()[2:] == ["hr@10", "ndcg@10", "mrr@10", "events"]  # the table names metric and cut-off


@pytest.mark.parametrize("flags, threads", [([], 1), (["--threads", "3"], 3)])
def test_cli_uses_one_torch_thread_unless_told(monkeypatch, flags, threads):
    """torch's default (a thread per core) was 5x slower on a shared 2-core machine."""
    from idea import train

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert train.main([*flags, "--dataset", "nosuch"]) == 2  # stops at the dataset, after the threads are set
    assert calls == [threads]


def test_cli_rejects_bad_values():
    out = subprocess.run([sys.executable, "-m", "idea.train", "--beta", "-1"], capture_output=True, text=True)
    assert out.returncode == 2 and "TrainConfig.beta" in out.stderr


@pytest.mark.parametrize("device", ["cudafoo", "cuda:x", "gpu"])
def test_malformed_devices_are_refused(device):
    with pytest.raises(ValueError, match="TrainConfig.device"):
        TrainConfig(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_a_gpu_is_one_clear_line():
    out = subprocess.run([sys.executable, "-m", "idea.train", "--device", "cuda", "--epochs", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "CUDA is not available" in out.stderr and "Traceback" not in out.stderr
