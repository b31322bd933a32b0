"""The method objects (idea/methods.py): every configurable method has one, each reads exactly the
config fields METHOD_FIELDS gives it (the MLflow runs log only those), each steps on a StepContext without
the trainer, and checkpoints keep their keys."""
import copy
import dataclasses
import math

import pytest
import torch

from idea.config import METHOD_FIELDS, METHODS, TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.methods import METHOD_OBJECTS
from idea.splits import SplitConfig, make_split
from idea.step_context import StepContext
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
def test_a_method_steps_on_its_context_alone(split, method):
    """A step needs no trainer: a StepContext built by hand trains the model it holds."""
    tr = Trainer(TrainConfig(method=method, T=1, dros_alpha=0.1, device="cpu"), split)
    model = copy.deepcopy(tr.model)
    ctx = StepContext(model, torch.optim.Adam(model.parameters()), "fp32", torch.device("cpu"), split.n_items)
    before = [p.detach().clone() for p in model.parameters()]
    phase = tr.phase(tr.config.pretrain_epochs + 1)
    out = tr.objective.step(ctx, phase, *tr.batch(torch.arange(64)))
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("change,match", [(dict(precision="auto"), "precision = 'auto'"),
                                          (dict(n_items=0), "n_items = 0"), (dict(device="cpu"), "torch.device")])
def test_a_step_context_is_checked_on_construction(split, change, match):
    tr = Trainer(TrainConfig(device="cpu"), split)
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(tr.step_context(), **change)


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
