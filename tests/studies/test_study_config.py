"""Study files: the shipped ones are valid and cover the issue's space; bad ones fail with a clear
message naming the file and key, before Ray starts."""
from __future__ import annotations

import dataclasses
import re
import textwrap

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from idea.data.synthetic import SyntheticConfig, generate
from idea.splits import SplitConfig, make_split
from studies.catalog import CONFIG_DIR, shipped_studies
from studies.cli import parse_args
from studies.config import StudyConfigError, load_study
from idea.data.interactions import subsample_users
from studies.data import without_tests
from studies.experiments import Resources
from studies.ranges import FloatRange, IntRange
from studies.space import optuna_space
from studies.trainable import search_trial
from tests.studies.study_cli import run_cli, run_study

CROSS_GPU = {"sports-gpu": {"dataset": "sports"}, "yelp-gpu": {"dataset": "yelp"},  # beauty-gpu with one change
             "beauty-gpu-sasrec": {"backbone": "sasrec"}, "beauty-gpu-mamba4rec": {"backbone": "mamba4rec"},
             "beauty-gpu-noisy": {"train": {"batch_size": 2048, "noise_ratio": 0.2}}}
SHIPPED = ("beauty", "beauty-gpu", "sports", "yelp", "ml-100k", "ml-100k-sasrec", "ml-100k-oracle", "synthetic",
           *CROSS_GPU)
ML100K_CPU = ("ml-100k-mamba4rec-cpu",)  # ml-100k cut to a 2-core CPU: no search, a user sample
OFFICIAL = ("beauty-loo-official", "sports-loo-official")  # the IDEA authors' protocol and configuration
OFFICIAL_CPU = ("beauty-loo-cpu", "sports-loo-cpu")  # the same at a 2-core CPU budget (_loo-cpu.yaml)
LONG = ("beauty-loo-long", "beauty-long")  # the authors' budget: early stopping with patience 10, 5 seeds
PROMO = ("promo-0", "promo-50", "promo-100")  # the positive control (_promo.yaml)

VALID = """
dataset: synthetic
idea_init: scratch
epochs: 4
patience: 3
seeds: 2
train: {batch_size: 64, pretrain_epochs: 1}
asha: {grace_period: 2, reduction_factor: 2}
arms:
  idea:
    num_samples: 4
    first: {K: 3, tau: 0.1}
    space:
      K: {type: int, low: 2, high: 5}
      tau: {type: float, low: 0.05, high: 2.0, log: true}
      T: {type: choice, values: [1, 5]}
  erm:
    num_samples: 2
    space:
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def write(tmp_path, text: str):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_file_loads(tmp_path):
    study = load_study(write(tmp_path, VALID))
    assert study.arms["idea"].space["K"] == IntRange(2, 5)
    assert study.arms["idea"].space["tau"] == FloatRange(0.05, 2.0, log=True)
    assert study.final_seeds() == [1, 2]
    assert study.train_config("idea", {"K": 5}).K == 5


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_studies_cover_the_issue_space(name):
    study = load_study(name)
    assert study.idea_init == "erm" and study.arm_order() == ["erm", "idea", "erm_ft", "dros"] and study.seeds == 3
    idea, erm, ft, dros = study.arms["idea"], study.arms["erm"], study.arms["erm_ft"], study.arms["dros"]
    assert [a.method for a in (idea, erm, ft, dros)] == ["idea", "erm", "erm", "dros"]
    assert idea.num_samples >= 12 and ft.num_samples >= 8 and dros.num_samples >= 8
    space = idea.space
    assert space["K"] == IntRange(2, 5) and space["N"].low == 2 and space["N"].high >= 4
    assert space["lambda_low"] == FloatRange(0.5, 0.95) and study.fixed("idea")["lambda_high"] == 1.0
    assert space["tau"] == FloatRange(0.05, 2.0, log=True) and space["beta"] == FloatRange(1.0, 1000.0, log=True)
    assert space["T"].values == (1, 2, 5, 10, 20)
    assert set(erm.space) == {"lr", "dropout"} and set(ft.space) == {"lr", "dropout"} and {"lr", "dropout"} <= set(space)
    assert ft.space["lr"] == space["lr"] == dros.space["lr"]  # the peers fine-tune under the same search as IDEA
    assert set(dros.space) == {"dros_alpha", "dros_beta", "lr", "dropout"} and dros.space["dros_beta"].contains(1.0)
    assert "lambda_high" not in study.fixed("erm_ft") and "dros_alpha" not in study.fixed("idea")
    assert study.fixed("idea")["pretrain_epochs"] == 0 and study.fixed("erm_ft")["method"] == "erm"
    assert {k: idea.first[k] for k in ("K", "N", "tau", "T")} == {"K": 3, "N": 4, "tau": 0.1, "T": 5}
    smoke = load_study(name, smoke=True)
    assert all(a.num_samples <= 3 for a in smoke.arms.values()) and smoke.epochs <= 3
    assert smoke.max_users is not None and max(smoke.epochs_of(a) for a in smoke.arms) <= 3


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_studies_start_idea_at_the_authors_configuration(name):
    """Leave-one-out, max length 50, GRU4Rec, the four arms; IDEA's first trial is the released code's
    configuration (docs/fidelity.md), and every arm shares its item table (1,000 fake rows, softmax over all
    rows), so the fine-tuning arms load the ERM arm's models."""
    study = load_study(name)
    assert (study.protocol, study.max_len, study.backbone, study.idea_init) == ("loo", 50, "gru4rec", "erm")
    assert study.arm_order() == ["erm", "idea", "erm_ft", "dros"] and study.seeds == 3
    idea = study.train_config("idea", study.arms["idea"].first)
    assert (idea.K, idea.N, idea.tau, idea.beta, idea.alpha, idea.extractor_hidden, idea.batch_size, idea.dropout) \
        == (3, 4, 0.1, 1.0, 0.1, 128, 1024, 0.3)
    assert idea.extractor_input_grad and idea.pair_draw == "with_replacement" and not idea.lambda_fold
    assert idea.unbiased_var and idea.extractor_keep_logit is None and idea.pairing == "same_user" and idea.mixup
    for arm in study.arms:
        config = study.train_config(arm, study.arms[arm].first)
        assert (config.fake_items, config.softmax_over, config.batch_size) == (1000, "all", 1024), arm
    smoke = load_study(name, smoke=True)
    assert all(a.num_samples <= 3 for a in smoke.arms.values()) and smoke.max_users is not None
    assert max(smoke.epochs_of(a) for a in smoke.arms) <= 3 and smoke.protocol == "loo"


@pytest.mark.parametrize("name", OFFICIAL_CPU)
def test_cpu_official_studies_run_the_authors_configuration_once(name):
    """One trial per fine-tuning arm, the official configuration itself (as the full profile's first trial);
    Beauty's ablation arms each change one official behaviour and are compared with the official IDEA."""
    study, full = load_study(name), load_study(name.replace("-cpu", "-official"))
    assert (study.protocol, study.dataset, study.seeds) == (full.protocol, full.dataset, 3)
    for arm in ("idea", "erm_ft", "dros"):
        assert study.arms[arm].num_samples == 1 and study.epochs_of(arm) == 1
        official = full.train_config(arm, full.arms[arm].first).to_dict()
        assert study.train_config(arm, study.arms[arm].first).to_dict() == {**official, "epochs": 1, "patience": 1}
    ablations = {"idea_detached": {"extractor_input_grad": False},
                 "idea_uniform": {"alpha": None, "lambda_fold": True}}  # λ ~ U(lambda_low 0.9, 1)
    idea = study.train_config("idea", study.arms["idea"].first).to_dict()
    for arm, change in ablations.items():
        if name.startswith("beauty"):
            config = study.train_config(arm, study.arms[arm].first).to_dict()
            assert {k: v for k, v in config.items() if idea[k] != v} == change, arm
            assert study.roles().controls[arm] == "idea" and study.arms[arm].num_samples == 1
        else:
            assert arm not in study.arms


@pytest.mark.parametrize("name", CROSS_GPU)
def test_the_cross_study_set_changes_one_thing_of_beauty_gpu(name):
    """Each study of the GPU cross-study set is beauty-gpu (oracle selection on) with one stated change."""
    base, study = load_study("beauty-gpu").to_dict(), load_study(name).to_dict()
    assert base["oracle"] is True
    assert {k: v for k, v in study.items() if base[k] != v} == CROSS_GPU[name]


@pytest.mark.parametrize("name, changed", [("ml-100k-sasrec", {"backbone": "sasrec", "oracle": True}),
                                           ("ml-100k-oracle", {"oracle": True})])
def test_ml100k_variants_change_only_their_backbone_and_selection(name, changed):
    base, study = load_study("ml-100k").to_dict(), load_study(name).to_dict()
    assert {k: v for k, v in study.items() if base[k] != v} == changed


def test_ml100k_mamba4rec_cpu_runs_each_arm_once_at_its_first_configuration():
    """No search (one trial per arm, its `first` configuration as in ml-100k), erm 3 epochs and the
    fine-tuning arms 1; a sample of 300 users with histories of 20; otherwise ml-100k with Mamba4Rec."""
    base, study = load_study("ml-100k"), load_study("ml-100k-mamba4rec-cpu")
    assert (study.backbone, study.max_users, study.max_len, study.seeds) == ("mamba4rec", 300, 20, 3)
    assert [study.epochs_of(a) for a in ("erm", "idea", "erm_ft", "dros")] == [3, 1, 1, 1]
    for arm in base.arms:
        assert study.arms[arm].num_samples == 1 and study.arms[arm].first == base.arms[arm].first
        tuned = study.train_config(arm, study.arms[arm].first).to_dict()
        full = base.train_config(arm, base.arms[arm].first).to_dict()
        changed = {k for k, v in tuned.items() if full[k] != v}
        assert changed <= {"backbone", "max_len", "epochs", "patience"}, changed
    base_fields, study_fields = base.to_dict(), study.to_dict()
    changed = {k for k, v in study_fields.items() if base_fields[k] != v}
    assert changed <= {"backbone", "max_users", "max_len", "epochs", "patience", "asha", "arms"}, changed


def test_default_beauty_study_fits_the_cpu_budget():
    study = load_study("beauty")
    assert study.arms["idea"].num_samples == 12 and study.arms["erm_ft"].num_samples == 8
    assert study.epochs_of("idea") == study.epochs_of("erm_ft") == 2 and study.epochs_of("erm") == 20
    gpu = load_study("beauty-gpu")
    assert gpu.arms["idea"].num_samples > 12 and gpu.epochs_of("idea") > 2 and gpu.dataset == "beauty"


WARM = """
dataset: synthetic
epochs: 6
patience: 3
train: {batch_size: 64}
asha: {grace_period: 2}
arms:
  erm:
    num_samples: 2
    space: {lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
  idea:
    num_samples: 3
    train: {epochs: 3, patience: 2}
    asha: {grace_period: 1}
    space: {beta: {type: float, low: 1.0, high: 100.0, log: true}}
  erm_ft:
    method: erm
    num_samples: 2
    train: {epochs: 3}
    space: {lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
"""


def test_warm_started_arms_fine_tune_after_erm(tmp_path):
    study = load_study(write(tmp_path, WARM))
    assert study.idea_init == "erm" and study.arm_order() == ["erm", "idea", "erm_ft"]
    assert [study.finetunes(a) for a in ("erm", "idea", "erm_ft")] == [False, True, True]
    assert study.fixed("idea") == {"backbone": "gru4rec", "method": "idea", "epochs": 3, "patience": 2, "seed": 0,
                                   "batch_size": 64, "pretrain_epochs": 0}
    assert study.fixed("erm_ft")["method"] == "erm" and study.epochs_of("erm_ft") == 3
    assert study.fixed("erm")["epochs"] == 6 and study.asha_of("idea").grace_period == 1
    assert study.asha_of("erm_ft").grace_period == 2
    capped = study.with_overrides(epochs=2)
    assert capped.epochs_of("idea") == 2 and capped.epochs_of("erm") == 2 and capped.asha_of("erm").grace_period == 2
    from studies.config import from_dict
    assert from_dict(study.to_dict()) == study


WARM_BAD = {
    "pretraining a warm arm": ("train: {batch_size: 64}", "train: {batch_size: 64, pretrain_epochs: 1}",
                               "arms.idea: pretrain_epochs does not apply with idea_init: erm"),
    "no erm arm to start from": ("  erm:\n    num_samples: 2\n    space: {lr: {type: float, low: 1.0e-4, high: 1.0e-2, "
                                 "log: true}}\n", "", "the models of the arm named erm (method erm), but there is none"),
    "unknown method": ("    method: erm\n", "    method: erm4rec\n", "arms.erm_ft.method: unknown method 'erm4rec'"),
    "arm without a method": ("    method: erm\n", "", "arms.erm_ft: needs a method, one of ['erm', 'idea', 'dros']"),
    "unsafe arm name": ("  erm_ft:", "  erm-ft:", "arm name 'erm-ft' must match [a-z][a-z0-9_]*"),
    "DROS field in an IDEA arm": ("    train: {epochs: 3, patience: 2}", "    train: {epochs: 3, patience: 2, dros_beta: 2.0}",
                                  "arms.idea.train.dros_beta: only method dros reads dros_beta; this arm's method is idea"),
    "method field no arm reads": ("train: {batch_size: 64}", "train: {batch_size: 64, dros_alpha: 0.1}",
                                  "train.dros_alpha: only method dros reads it, and no arm has that method"),
    "unknown init": ("epochs: 6", "epochs: 6\nidea_init: erm4rec", "idea_init must be one of ['erm', 'scratch']"),
    "IDEA field fixed in an ERM arm": ("    train: {epochs: 3}\n", "    train: {epochs: 3, K: 4}\n",
                                       "arms.erm_ft.train.K: only method idea reads K; this arm's method is erm"),
    "grace beyond an arm's epochs": ("    asha: {grace_period: 1}", "    asha: {grace_period: 4}",
                                     "arms.idea: asha.grace_period = 4 exceeds epochs = 3"),
    "warm start path in a file": ("train: {batch_size: 64}", "train: {batch_size: 64, init_from: x.pt}",
                                  "train.init_from: set by the study itself"),
    "no search without a first point": ("  erm:\n    num_samples: 2", "  erm:\n    num_samples: 0",
                                        "arms.erm.num_samples = 0 (no search) trains the first point, which must set "
                                        "every parameter of the space; arms.erm.first lacks ['lr']"),
    "a search starting from a base without one": (
        "  erm:\n    num_samples: 2", "  erm:\n    num_samples: 0\n    first: {lr: 0.001}",
        "arms.idea: searches (num_samples = 3), and its search trials start from the erm arm's selected search trial, "
        "but erm has no search (num_samples = 0): set num_samples: 0 for idea too, or give erm a search"),
    "an oracle without a search": (
        "arms:\n  erm:\n    num_samples: 2", "oracle: true\narms:\n  erm:\n    num_samples: 0\n    first: {lr: 0.001}",
        "arms.erm: oracle: true selects among an arm's search trials, and erm has no search"),
}


@pytest.mark.parametrize("case", sorted(WARM_BAD))
def test_bad_warm_start_files(tmp_path, case):
    old, new, message = WARM_BAD[case]
    assert old in WARM, f"test setup: {old!r} not in the warm file"
    with pytest.raises(StudyConfigError) as err:
        load_study(write(tmp_path, WARM.replace(old, new, 1)))
    assert message in str(err.value)


def test_arms_are_data(tmp_path):
    """Any arms, each a method with fixed fields and a space: ablations of IDEA and DROS beside ERM."""
    extra = """
  idea_nomix:
    method: idea
    num_samples: 2
    train: {epochs: 3, mixup: false, penalty: irmv1}
    space: {beta: {type: float, low: 1.0, high: 100.0, log: true}}
  dros:
    num_samples: 2
    train: {epochs: 3}
    space: {dros_alpha: {type: float, low: 0.01, high: 1.0, log: true}}
"""
    study = load_study(write(tmp_path, WARM + extra))
    assert study.arm_order() == ["erm", "idea", "erm_ft", "idea_nomix", "dros"]
    assert study.arms["idea_nomix"].method == "idea" and study.arms["dros"].method == "dros"
    cfg = study.train_config("idea_nomix", {"beta": 3.0})
    assert cfg.method == "idea" and cfg.mixup is False and cfg.penalty == "irmv1" and cfg.pretrain_epochs == 0
    assert study.train_config("dros", {"dros_alpha": 0.2}).dros_alpha == 0.2
    from studies.config import from_dict
    assert from_dict(study.to_dict()) == study
    assert set(cfg.used()) >= {"K", "N", "penalty", "mixup", "lr"} and "dros_alpha" not in cfg.used()
    erm = study.train_config("erm", {"lr": 1e-3}).used()
    assert not {"K", "N", "T", "beta", "tau", "penalty", "dros_alpha", "pretrain_epochs"} & set(erm) and "lr" in erm


def test_base_arm_and_controls_are_data(tmp_path):
    """By default every arm is compared with the base arm (erm), idea too: no arm name is special; a file may
    name another base arm (it starts the others and runs first) and any arm's control, as _base.yaml names
    idea's (erm_ft)."""
    default = load_study(write(tmp_path, WARM))
    assert (default.base(), default.control_of("idea"), default.control_of("erm_ft"), default.control_of("erm")) == \
        ("erm", "erm", "erm", None)
    controlled = WARM.replace("    num_samples: 3\n", "    num_samples: 3\n    control: erm_ft\n")
    study = load_study(write(tmp_path, controlled))
    assert (study.control_of("idea"), study.control_of("erm_ft")) == ("erm_ft", "erm")
    assert study.roles().order == ("idea", "erm_ft", "erm") and study.roles().pairs()[0] == ("idea", "erm_ft")
    renamed = controlled.replace("  erm:\n", "  plain:\n    method: erm\n").replace("epochs: 6", "epochs: 6\nbase_arm: plain")
    custom = load_study(write(tmp_path, renamed.replace("    train: {epochs: 3}\n", "    train: {epochs: 3}\n    control: idea\n")))
    assert custom.arm_order() == ["plain", "idea", "erm_ft"] and not custom.finetunes("plain")
    assert custom.fixed("idea")["pretrain_epochs"] == 0 and custom.control_of("erm_ft") == "idea"
    assert custom.roles().pairs() == [("idea", "erm_ft"), ("erm_ft", "idea"), ("idea", "plain"), ("erm_ft", "plain")]
    from studies.config import from_dict
    assert from_dict(custom.to_dict()) == custom
    for text, message in ((renamed.replace("base_arm: plain", "base_arm: nobody"), "base_arm: 'nobody' is not an arm"),
                          (WARM.replace("    train: {epochs: 3}\n", "    train: {epochs: 3}\n    control: erm_ft\n"),
                           "arms.erm_ft.control: 'erm_ft' must name another arm"),
                          (controlled[:controlled.index("  erm_ft:")],  # idea's control, but no erm_ft arm
                           "arms.idea.control: 'erm_ft' must name another arm")):
        with pytest.raises(StudyConfigError, match=re.escape(message)):
            load_study(write(tmp_path, text))


@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_study_compares_idea_with_erm_ft_first(smoke):
    """What control_of special-cased by name until _base.yaml (and _loo-official.yaml) said it: in every shipped
    study, which all have erm_ft, idea's control is erm_ft; the base arm is erm, compared with nothing."""
    for name in shipped_studies():
        roles = load_study(name, smoke=smoke).roles()
        assert "erm_ft" in roles.order and roles.controls["idea"] == "erm_ft", name
        assert roles.base == "erm" and roles.order[-1] == "erm" and "erm" not in roles.controls, name


def test_int_and_float_ranges_are_one_class():
    from studies.ranges import Range
    assert IntRange(2, 5) == Range("int", 2, 5) and FloatRange(0.1, 1.0, log=True) == Range("float", 0.1, 1.0, True)
    assert IntRange(2, 5).contains(3) and not IntRange(2, 5).contains(3.0) and FloatRange(0.1, 1.0).contains(1)
    assert IntRange(2, 5).ends() == (2, 5) and FloatRange(1, 2).ends() == (1.0, 2.0)
    with pytest.raises(ValueError, match="low must be an integer"):
        IntRange(0.5, 2)
    with pytest.raises(ValueError, match="type must be int or float"):
        Range("double", 0.5, 2)


def test_extends_merges_a_base_and_refuses_cycles(tmp_path):
    (tmp_path / "_shared.yaml").write_text(textwrap.dedent(WARM).replace("dataset: synthetic\n", ""))
    (tmp_path / "child.yaml").write_text("extends: _shared\ndataset: synthetic\narms: {idea: {num_samples: 5}}\n")
    child = load_study(tmp_path / "child.yaml")
    assert child.arms["idea"].num_samples == 5 and child.arms["idea"].space["beta"] == FloatRange(1.0, 100.0, log=True)
    (tmp_path / "drop.yaml").write_text("extends: _shared\ndataset: synthetic\narms: {erm_ft: null}\n"
                                        "smoke: {arms: {erm_ft: {num_samples: 1}}}\n")
    for smoke in (False, True):  # the arm is gone, and so are its smoke settings (else they would bring it back)
        assert list(load_study(tmp_path / "drop.yaml", smoke=smoke).arms) == ["erm", "idea"]
    (tmp_path / "typo.yaml").write_text("extends: _shared\ndataset: synthetic\narms: {erm_tf: null}\n")
    with pytest.raises(StudyConfigError, match=r"arms.erm_tf: null leaves out an arm the file extends, but it "
                                               r"extends no such arm \(its arms: \['erm', 'erm_ft', 'idea'\]\)"):
        load_study(tmp_path / "typo.yaml")
    (tmp_path / "a.yaml").write_text("extends: b\ndataset: synthetic\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(StudyConfigError, match="makes a cycle"):
        load_study(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing\ndataset: synthetic\n")
    with pytest.raises(StudyConfigError, match="no study file .*missing.yaml .extended by"):
        load_study(tmp_path / "c.yaml")


BAD = {
    "unknown top-level key": ("epochs: 4", "epochs: 4\nepoch: 3", "unknown key(s) ['epoch']"),
    "unknown key in a range": ("K: {type: int, low: 2, high: 5}", "K: {type: int, low: 2, hi: 5}", "arms.idea.space.K: unknown key(s) ['hi']"),
    "unknown parameter": ("K: {type: int", "KK: {type: int", "arms.idea.space.KK: not a searchable TrainConfig field"),
    "empty range": ("low: 2, high: 5", "low: 3, high: 3", "arms.idea.space.K: the range 3..3 is empty"),
    "low above high": ("low: 2, high: 5", "low: 5, high: 2", "arms.idea.space.K: low > high (5 > 2)"),
    "empty choice": ("values: [1, 5]", "values: []", "arms.idea.space.T: values must be a non-empty list"),
    "negative trials": ("num_samples: 4", "num_samples: -1",
                        "arms.idea.num_samples must be an integer >= 0 (0: no search), got -1"),
    "negative seeds": ("seeds: 2", "seeds: -1", "seeds must be a positive integer, got -1"),
    "zero epochs": ("epochs: 4", "epochs: 0", "epochs must be a positive integer, got 0"),
    "range beyond TrainConfig": ("high: 5}", "high: 20}", "arms.idea.space.K = 20: TrainConfig.K = 20 is invalid"),
    "log range from zero": ("low: 0.05, high: 2.0", "low: 0.0, high: 2.0", "arms.idea.space.tau: a log range needs low > 0"),
    "IDEA parameter in ERM": ("      lr: {type: float", "      K: {type: int, low: 2, high: 4}\n      lr: {type: float",
                              "arms.erm.space.K: only method idea reads K; this arm's method is erm, so it would have no effect"),
    "first point outside": ("first: {K: 3", "first: {K: 7", "arms.idea.first.K = 7 lies outside its space"),
    "exponent read as string": ("low: 1.0e-4", "low: 1e-4", "write 1.0e-4"),
    "managed field under train": ("batch_size: 64", "batch_size: 64, seed: 3", "train.seed: set by the study itself"),
    "both lambda and alpha": ("      T: {type: choice", "      alpha: {type: float, low: 0.1, high: 2}\n      "
                              "lambda_low: {type: float, low: 0.5, high: 0.9}\n      T: {type: choice",
                              "arms.idea.space: search either lambda_low (Uniform) or alpha (Beta)"),
    "other selection metric": ("epochs: 4", "epochs: 4\nmetric: hr_at_10", "metric must be 'ndcg_at_10'"),
    "ASHA judging pretraining": ("grace_period: 2", "grace_period: 1", "arms.idea: asha.grace_period = 1 must exceed pretrain_epochs = 1"),
    "unknown dataset": ("dataset: synthetic", "dataset: netflix", "unknown dataset 'netflix'"),
    "bad smoke section": ("epochs: 4", "epochs: 4\nsmoke: {epochs: 0}", "smoke: epochs must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_files_name_file_and_key(tmp_path, case):
    old, new, message = BAD[case]
    assert old in VALID, f"test setup: {old!r} not in the valid file"
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(StudyConfigError) as err:
        load_study(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_unknown_study_name_lists_shipped_ones():
    with pytest.raises(StudyConfigError, match="shipped studies: .*beauty"):
        load_study("no-such-study")
    assert set(shipped_studies()) == set(SHIPPED + OFFICIAL + OFFICIAL_CPU + ML100K_CPU + LONG + PROMO) and (CONFIG_DIR / "_base.yaml").is_file()


def test_a_misspelt_study_name_gets_the_closest_shipped_one():
    with pytest.raises(StudyConfigError, match=r"beuaty\.yaml \(did you mean beauty\?\); shipped studies: "):
        load_study("beuaty")
    with pytest.raises(StudyConfigError) as err:
        load_study("no-such-study")
    assert "did you mean" not in str(err.value)


def test_cli_overrides_are_validated_like_the_file(tmp_path):
    study = load_study(write(tmp_path, VALID))
    assert study.with_overrides(num_samples=7).arms["erm"].num_samples == 7
    assert study.with_overrides(epochs=3).asha.grace_period == 2
    with pytest.raises(ValueError, match="--num-samples must be a positive integer"):
        study.with_overrides(num_samples=0)
    with pytest.raises(ValueError, match="pretrain_epochs"):  # IDEA needs an epoch after pretraining
        study.with_overrides(epochs=1)


@pytest.mark.parametrize("flag, value, message", [
    ("--gpus-per-trial", "-1", "must be >= 0"), ("--gpus-per-trial", "1.5", "above 1 must be a whole number"),
    ("--cpus-per-trial", "0", "must be > 0"), ("--concurrency", "0", "must be >= 1"),
    ("--max-failures", "-1", "must be >= 0"), ("--time-budget-s", "0", "must be > 0")])
def test_resource_flags_are_validated_once_by_the_parser(capsys, flag, value, message):
    """Resources takes what the parser let through; the parser alone refuses a flag out of its range."""
    with pytest.raises(SystemExit):
        parse_args(["synthetic", flag, value])
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_a_gpu_share_puts_trials_on_cuda():
    assert Resources(gpus_per_trial=0.25).device == "cuda" and Resources().device == "cpu"


def test_bad_file_fails_in_the_cli_before_ray_starts(tmp_path):
    path = write(tmp_path, VALID.replace("low: 2, high: 5", "low: 5, high: 2"))
    proc = run_study(str(path), "--out", str(tmp_path / "out"), timeout=120)  # as typed: a new interpreter
    assert proc.returncode == 2, proc.stderr
    assert "low > high" in proc.stderr and str(path) in proc.stderr
    assert "Ray" not in proc.stderr and not (tmp_path / "out").exists()


def test_optuna_space_keeps_bounds_and_scale(tmp_path):
    space = optuna_space(load_study(write(tmp_path, VALID)).arms["idea"])
    assert space["K"] == IntDistribution(2, 5)
    assert space["tau"] == FloatDistribution(0.05, 2.0, log=True)
    assert space["T"] == CategoricalDistribution([1, 5])


@pytest.fixture(scope="module")
def small_split():
    return make_split(generate(SyntheticConfig(n_users=300)), SplitConfig("temporal", 20))


def test_search_trials_never_receive_test_windows(small_split):
    search = without_tests(small_split)
    assert small_split.tests and not search.tests and set(search.bounds) == {"train", "valid"}
    assert search.train is small_split.train  # shared, not copied
    with pytest.raises(ValueError, match="must not receive test windows"):
        search_trial({}, small_split, {"method": "erm", "epochs": 1}, "scratch")


def test_subsample_keeps_whole_users_and_changes_the_digest():
    data = generate(SyntheticConfig(n_users=300))
    small = subsample_users(data, 50, seed=0)
    assert small.n_users == 50 and small.sha256 != data.sha256
    assert subsample_users(data, 50, seed=0).sha256 == small.sha256
    kept = np.random.default_rng(0).choice(data.n_users, 50, replace=False)
    assert small.n_interactions == np.diff(data.user_starts)[kept].sum()  # every kept user keeps all rows
    assert subsample_users(data, 10_000, seed=0) is data


def test_dataclasses_are_frozen(tmp_path):
    study = load_study(write(tmp_path, VALID))
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.epochs = 5


@pytest.mark.parametrize("name", ["../x", "a b", "it's", ".hidden"])
def test_unsafe_study_names_are_refused_before_anything_is_written(tmp_path, name):
    proc = run_cli("synthetic", "--smoke", "--out", str(tmp_path / "out"), "--study-name", name)
    assert proc.returncode == 2 and "is not allowed" in proc.stderr and not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, message, needs_cluster", [
    (("--cpus-per-trial", "64"), "exceeds the cluster's", True),  # only the cluster knows its size
    (("--gpus-per-trial", "0.5"), "use --gpus-per-trial 0", True),
    (("--cpus-per-trial", "0"), "argument --cpus-per-trial: must be > 0, got 0", False),  # a flag's own range
    (("--concurrency", "0"), "argument --concurrency: must be >= 1, got 0", False),
    (("--max-failures", "-1"), "argument --max-failures: must be >= 0, got -1", False),
    (("--gpus-per-trial", "half"), "argument --gpus-per-trial: expected a number, got 'half'", False),
])
def test_impossible_resources_fail_before_the_study_folder_exists(tmp_path, flags, message, needs_cluster):
    """A flag out of its own range is refused by the argument parser, before the study is even loaded (no study
    line); a request only the cluster can judge is refused once Ray is up, after the study line."""
    proc = run_study("synthetic", "--smoke", "--out", str(tmp_path), *flags, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert ("study synthetic-smoke:" in proc.stderr) == needs_cluster, proc.stderr[-2000:]
    assert not (tmp_path / "synthetic-smoke").exists()


MESSAGES = {  # (old, new, message): each names the field at fault, not a neighbour
    "bad fixed batch size": ("train: {batch_size: 64, pretrain_epochs: 1}", "train: {batch_size: 0, pretrain_epochs: 1}",
                             "train.batch_size: TrainConfig.batch_size = 0 is invalid"),
    "a word for K in first": ("first: {K: 3", "first: {K: three", "arms.idea.first.K must be an integer, got 'three'"),
    "an exponent in first": ("first: {K: 3, tau: 0.1}", "first: {K: 3, tau: 1e-1}", "write 1.0e-4"),
}


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_messages_name_the_field_at_fault(tmp_path, case):
    old, new, message = MESSAGES[case]
    assert old in VALID
    with pytest.raises(StudyConfigError) as err:
        load_study(write(tmp_path, VALID.replace(old, new, 1)))
    assert message in str(err.value)
    assert "arms.idea.first:" not in str(err.value)


def test_word_gets_no_exponent_hint(tmp_path):
    with pytest.raises(StudyConfigError) as err:
        load_study(write(tmp_path, VALID.replace("K: {type: int, low: 2", "K: {type: int, low: three", 1)))
    assert "must be an integer, got 'three'" in str(err.value) and "1.0e-4" not in str(err.value)


@pytest.mark.parametrize("flag, kwargs", [("--max-epochs", {"epochs": 0}), ("--num-samples", {"num_samples": -1}),
                                          ("--seeds", {"seeds": 0})])
def test_cli_overrides_name_their_flag(tmp_path, flag, kwargs):
    with pytest.raises(ValueError, match=f"{flag} must be a positive integer"):
        load_study(write(tmp_path, VALID)).with_overrides(**kwargs)


REFUSALS = """
import contextlib, io, json, sys
from studies.cli import main
codes, errs = {}, {}
for case, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        codes[case] = main(argv)
    errs[case] = err.getvalue()
heavy = sorted(m for m in ("ray", "torch", "mlflow", "optuna") if m in sys.modules)
print(json.dumps({"codes": codes, "errs": errs, "heavy": heavy}))
"""


def test_refusals_come_before_ray_torch_and_mlflow(tmp_path):
    """Unknown study, invalid study file, missing data, a folder holding a study and a folder in use are
    refused without importing Ray, torch, MLflow or Optuna (so in well under a second), and a folder in
    use is refused as such, not with advice to --resume."""
    import fcntl
    import json
    import subprocess
    import sys

    from tests.studies.study_cli import PROJECT_ROOT, study_env, tiny_study

    beauty = tmp_path / "beauty-tiny.yaml"
    beauty.write_text(tiny_study(tmp_path / "tiny.yaml").read_text().replace("dataset: synthetic", "dataset: beauty"))
    out = tmp_path / "out"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "study.yaml").write_text("dataset: synthetic\n")  # a folder already holding a study
    (out / "busy").mkdir()
    (out / "busy" / "study.yaml").write_text("dataset: synthetic\n")
    busy = tiny_study(tmp_path / "busy.yaml")
    cases = {
        "unknown study": ["nosuchstudy"],
        "invalid file": [str(write(tmp_path, VALID.replace("low: 2, high: 5", "low: 5, high: 2")))],
        "missing data": [str(beauty), "--data-dir", str(tmp_path / "nodata"), "--out", str(out)],
        "holds a study": [str(tmp_path / "tiny.yaml"), "--out", str(out)],
        "in use": [str(busy), "--out", str(out)],
    }
    with open(out / "busy" / ".driver.lock", "w") as lock:  # another driver holds the folder
        lock.write("pid 1 on elsewhere\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run([sys.executable, "-c", REFUSALS, json.dumps(cases)], cwd=PROJECT_ROOT, env=study_env(),
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["codes"] == {case: 2 for case in cases}, got["errs"]
    assert got["heavy"] == [], got["heavy"]
    errs = got["errs"]
    assert "no study file" in errs["unknown study"] and "low > high" in errs["invalid file"]
    assert "dataset 'beauty' not found" in errs["missing data"]
    assert "already holds a study: continue it with --resume" in errs["holds a study"]
    assert "in use by another driver (pid 1 on elsewhere)" in errs["in use"] and "--resume" not in errs["in use"]


@pytest.mark.parametrize("name, parent, extra, beta", [
    # the profile's patience is 10 already, and its extractors read rows from their first item here
    ("beauty-loo-long", "beauty-loo-official", {"*": {"patience": 10}, "idea": {"extractor_align": "left"}}, 70.0),
    # beauty's erm starts at lr 3e-3, its idea at beta 10: here the released 1e-3 and 1
    ("beauty-long", "beauty", {"erm": {"lr": 0.001}, "idea": {"beta": 1.0}}, 500.0),
])
def test_the_authors_budget_studies_change_only_budgets_and_seeds(name, parent, extra, beta):
    """Each arm's final seeds train its parent's first configuration (no search), to early stopping with
    patience 10 under a cap that does not bind (erm 300 epochs, fine-tuning 100), with 5 seeds; idea_beta is
    idea at the beta where its penalty acts (the file's comment says how it was chosen); the parent's dros
    arm is left out."""
    study, base = load_study(name), load_study(parent)
    fields, same = study.to_dict(), extra.get("*", {})
    changed = {k for k, v in fields.items() if base.to_dict()[k] != v}
    assert changed == {"epochs", "patience", "seeds", "asha", "arms"} - set(same)
    assert (study.seeds, study.epochs_of("erm")) == (5, 300)
    assert "dros" in base.arms and set(study.arms) == {"erm", "erm_ft", "idea", "idea_beta"}  # dros: null
    smoke = load_study(name, smoke=True)
    assert all(not a.searches for a in (*study.arms.values(), *smoke.arms.values()))  # no search: the first point
    for arm in ("erm", "erm_ft", "idea"):
        assert study.asha_of(arm).grace_period == study.epochs_of(arm)
        config = study.train_config(arm, study.arms[arm].first).to_dict()
        ours = base.train_config(arm, base.arms[arm].first).to_dict()
        budget = {"epochs": 300 if arm == "erm" else 100, "patience": 10}
        want = {k: v for k, v in {**budget, **extra.get(arm, {})}.items() if ours[k] != v}
        assert {k: v for k, v in config.items() if ours[k] != v} == want, arm
        assert config["patience"] == 10, arm
    idea = study.train_config("idea", study.arms["idea"].first).to_dict()
    acting = study.train_config("idea_beta", study.arms["idea_beta"].first).to_dict()
    assert {k: v for k, v in acting.items() if idea[k] != v} == {"beta": beta} and idea["beta"] == 1.0
    assert study.roles().controls["idea_beta"] == "erm_ft"


@pytest.mark.parametrize("strength", [0, 50, 100])
def test_the_positive_control_studies_differ_only_in_strength(strength):
    study = load_study(f"promo-{strength}").to_dict()
    assert {k: v for k, v in study.items() if load_study("promo-100").to_dict()[k] != v} == \
        ({} if strength == 100 else {"dataset": f"synthetic-promo{strength}"})
    promo = load_study(f"promo-{strength}")
    assert promo.seeds == 5 and all(a.num_samples == 1 for a in promo.arms.values())
    clean = promo.train_config("clean", promo.arms["clean"].first).to_dict()
    ft = promo.train_config("erm_ft", promo.arms["erm_ft"].first).to_dict()
    assert {k: v for k, v in clean.items() if ft[k] != v} == {"mask_side_items": True}
    assert promo.roles().controls["clean"] == "erm_ft"
