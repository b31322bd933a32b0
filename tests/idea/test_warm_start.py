"""Warm start (`TrainConfig.init_from`): exact starting weights, fresh optimisers, refused mismatches,
and checkpoints that load with `weights_only=True`."""
import numpy as np
import pytest
import torch

from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.splits import SplitConfig, make_split
from idea.train import main as train_main
from idea.trainer import CheckpointError, Trainer


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(n_users=400, n_items=200, seed=5))


@pytest.fixture(scope="module")
def split(data):
    return make_split(data, SplitConfig(max_len=20))


def cfg(**kw):
    base = dict(epochs=2, patience=5, batch_size=128, device="cpu", eval_batch_size=256)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def erm_ckpt(split, tmp_path_factory):
    """An ERM run of two epochs whose best state differs from its last one (lr large enough to move)."""
    trainer = Trainer(cfg(lr=1e-2), split)
    trainer.fit()
    path = tmp_path_factory.mktemp("erm") / "erm.pt"
    trainer.save(path)
    return path, trainer.best_state


@pytest.mark.parametrize("method", ["erm", "idea"])
def test_warm_start_loads_exactly_the_best_state_with_fresh_optimisers(split, erm_ckpt, method):
    path, best = erm_ckpt
    trainer = Trainer(cfg(method=method, pretrain_epochs=0, seed=7, init_from=str(path)), split)
    state = trainer.model.state_dict()
    assert state.keys() == best.keys()
    for name in best:
        assert torch.equal(state[name], best[name]), name
    assert trainer.opt.state_dict()["state"] == {} and trainer.epoch == 0 and trainer.best_epoch == 0
    cold = Trainer(cfg(method=method, pretrain_epochs=0, seed=7), split).model.state_dict()
    assert not torch.equal(cold["item_emb.weight"], best["item_emb.weight"])


def test_warm_start_refuses_another_backbone(split, erm_ckpt):
    with pytest.raises(CheckpointError, match=r"backbone 'gru4rec' \(this run: 'sasrec'\)"):
        Trainer(cfg(backbone="sasrec", init_from=str(erm_ckpt[0])), split)


def test_warm_start_refuses_other_fake_rows(split, erm_ckpt):
    """fake_items sizes the table, so a start with other fake rows is refused by name, not by a shape error."""
    with pytest.raises(CheckpointError, match=r"fake_items None \(this run: 1000\)"):
        Trainer(cfg(fake_items=1000, init_from=str(erm_ckpt[0])), split)


@pytest.mark.parametrize("change", ["max_len", "items"])
def test_warm_start_refuses_another_split(data, erm_ckpt, change):
    if change == "max_len":
        other, needle = make_split(data, SplitConfig(max_len=30)), r"max_len 20 \(this run: 30\)"
    else:
        other = make_split(generate(SyntheticConfig(n_users=400, n_items=250, seed=5)), SplitConfig(max_len=20))
        needle = "n_items"
    with pytest.raises(CheckpointError, match=needle):
        Trainer(cfg(init_from=str(erm_ckpt[0])), other)


def test_missing_and_foreign_checkpoints_are_refused_by_name(split, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Trainer(cfg(init_from=str(tmp_path / "nope.pt")), split)
    pickled = tmp_path / "pickled.pt"
    torch.save({"config": {}, "best_state": {}, "split": {}, "rng": np.random.get_state()}, pickled)
    with pytest.raises(CheckpointError, match="not a readable trainer checkpoint"):
        Trainer(cfg(init_from=str(pickled)), split)
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a trainer checkpoint"):
        Trainer(cfg(init_from=str(plain)), split)


def test_checkpoints_load_without_pickle_and_restore_numpy_rng(split, tmp_path):
    trainer = Trainer(cfg(epochs=1), split)
    trainer.fit()
    path = tmp_path / "t.pt"
    trainer.save(path)
    expected = np.random.rand(3)
    np.random.rand(5)
    again = Trainer(cfg(epochs=1), split)
    again.load(path)  # weights_only=True inside
    assert np.array_equal(np.random.rand(3), expected)


def test_cli_init_from(split, erm_ckpt, capsys):
    code = train_main(["--dataset", "synthetic", "--method", "idea", "--pretrain-epochs", "0", "--epochs", "1",
                       "--backbone", "sasrec", "--init-from", str(erm_ckpt[0]), "--device", "cpu"])
    assert code == 2 and "cannot warm-start" in capsys.readouterr().err
