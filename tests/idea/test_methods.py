"""The method objects (idea/methods.py): every configurable method has one, each reads exactly the
config fields METHOD_FIELDS gives it (the MLflow runs log only those), and checkpoints keep their keys."""
import math

import pytest
import torch

from idea.config import METHOD_FIELDS, METHODS, TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.methods import METHOD_OBJECTS
from idea.splits import SplitConfig, make_split
from idea.trainer import NonFiniteLossError, Trainer

CHECKPOINT_KEYS = {"config", "epoch", "step", "model", "opt", "best_value", "best_epoch", "best_state", "bad_epochs",
                   "fit_seconds", "records", "split", "rng"}


@pytest.fixture(scope="module")
def split():
    return make_split(generate(SyntheticConfig(n_users=300, n_items=150, seed=3)), SplitConfig(max_len=20))


class ReadLog:
    """Stands in for a TrainConfig and records the names of the fields read from it."""

    def __init__(self, config: TrainConfig):
        self.config, self.read = config, set()

    def __getattr__(self, name):  # called only for names this object does not have itself
        self.read.add(name)
        return getattr(self.config, name)


def test_every_method_has_an_object():
    assert set(METHOD_OBJECTS) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_a_run_reads_its_methods_fields_and_no_others(split, method):
    """A trainer built and fitted (pretraining, IDEA steps with exploration) on a logging config reads
    every field METHOD_FIELDS lists for its method and none listed for another."""
    log = ReadLog(TrainConfig(method=method, epochs=2, pretrain_epochs=1, T=1, dros_alpha=0.1, batch_size=128,
                              device="cpu"))
    Trainer(log, split).fit()
    method_fields = {f for names in METHOD_FIELDS.values() for f in names}
    assert log.read & method_fields == set(METHOD_FIELDS[method])


@pytest.mark.parametrize("method,extra", [("erm", set()), ("dros", set()), ("idea", {"extractors", "ext_opt"})])
def test_checkpoints_keep_their_keys(split, method, extra):
    """The method's state sits at the checkpoint's top level, where older checkpoints have it."""
    tr = Trainer(TrainConfig(method=method, epochs=2, pretrain_epochs=0, T=1, batch_size=128, device="cpu"), split)
    tr.fit()
    state = tr.state_dict()
    assert set(state) == CHECKPOINT_KEYS | extra
    assert state["step"] == (len(tr.permutation(1).split(128)) * 2 if method == "idea" else 0)


@pytest.mark.parametrize("pretrain_epochs,knobs", [(1, r"lower lr \(now 0.001\)$"),
                                                   (0, r"lower lr \(now 0.001\) or beta \(now 1.0\)$")])
def test_a_diverging_idea_phase_also_names_beta(split, pretrain_epochs, knobs):
    tr = Trainer(TrainConfig(method="idea", epochs=2, pretrain_epochs=pretrain_epochs, batch_size=128, device="cpu"),
                 split)
    with torch.no_grad():
        tr.model.item_emb.weight.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match=knobs):
        tr.fit()
