"""A small MLflow store written exactly as docs/conventions.md says `studies/` writes one, with known values;
every name comes from `idea.contract`, the module `studies/` writes by.

`make_fake_store(path)` returns a ``sqlite:///`` tracking URI holding three experiments:

- ``STUDY`` (``synthetic-smoke``): the parent run; search runs for both arms (one of them
  ASHA-stopped, one FAILED with absurd values that the
  loader must skip by default); final runs ``idea-seed1``, ``idea-seed2``,
  ``erm-seed1``, ``erm-seed2`` with ``best_valid_*``, ``best_valid_warm_*`` and
  ``test_<w>[_warm]_*`` metrics for windows w1..w3 (and the same as ``shift_[warm_]*`` series, step 0 =
  validation, step i = wi), per-epoch ``valid_*`` whose latest value is NOT
  the best one, ``train_loss``, ``epoch_seconds`` (1, 2, 3 s: every search and final run) and ``best_epoch``
  (each run early-stopped: best at epoch 2 of 3, patience 1), and their arm's colour (``mlflow.runColor``). Every
  nested run carries its arm's roles (`ROLES`: erm the base arm, idea compared with it).
- ``OTHER`` (``other-study``): a parent without ``describe.json``, and one final run with absurd
  values that must never leak into ``STUDY``; it predates the role tags (read by `Arms.legacy`).
  Its parent carries ``describe.json`` of the synthetic dataset's default split, as a study logs it.
- ``LOGGED`` (``logged-shift``): a parent that carries hand-written shift diagnostics as ``describe.json``.

Values come from `final_value` / `search_value`, simple formulas so that tests can hand-compute
means, drops and gains. Swap this for the real smoke study (``studies/run_study.py synthetic
--smoke``) where a test only needs the naming contract, not the exact numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

from analysis.mlflow_ui import RUN_COLOR_TAG, arm_colours
from idea.contract import (EPOCH_METRICS, EPOCH_SECONDS, SUBSETS, TRUE, VALID, Arms, Stage, Tag, best_state_key,
                           metric_name, run_name, shift_key, valid_key)

STUDY = "synthetic-smoke"
OTHER = "other-study"
LOGGED = "logged-shift"
ARMS = ("idea", "erm")
ROLES = Arms(ARMS, base="erm", controls={"idea": "erm"})  # as the driver tags a scratch study's arms
SEEDS = (1, 2)
WINDOWS = ("w1", "w2", "w3")
METRICS = ("hr", "ndcg", "mrr")
KS = (5, 10, 20)

BASE = {"hr": 0.2, "ndcg": 0.1, "mrr": 0.08}  # value at validation, k = 10, all targets, no seed offset
K_FACTOR = {5: 0.5, 10: 1.0, 20: 1.5}
DROP = {"idea": 0.05, "erm": 0.10}  # share of the validation value lost per window step
WARM = 1.2  # warm targets score 20% higher
SEED_OFFSET = {("idea", 1): 0.002, ("idea", 2): -0.002, ("erm", 1): 0.001, ("erm", 2): -0.001}
EPOCHS = 3
PATIENCE = 1  # with the best epoch at 2 of 3, every run ended by early stopping

# Search trials: (trial id, TrainConfig overrides, best validation NDCG@10, status, asha_stopped)
SEARCH = {
    "idea": [
        ("a0001_00000", dict(K=2, N=4, tau=0.1, beta=1.0, T=5, lambda_low=0.9, lr=0.001), 0.090, "FINISHED", False),
        ("a0001_00001", dict(K=3, N=4, tau=0.5, beta=10.0, T=5, lambda_low=0.8, lr=0.001), 0.100, "FINISHED", False),
        ("a0001_00002", dict(K=4, N=8, tau=0.1, beta=1.0, T=2, lambda_low=0.9, alpha=0.4, lr=0.003), 0.110,
         "FINISHED", False),
        ("a0001_00003", dict(K=2, N=8, tau=0.5, beta=10.0, T=2, lambda_low=0.7, lr=0.003), 0.080, "FINISHED", True),
        ("a0001_00004", dict(K=3, N=2, tau=1.0, beta=5.0, T=1, lambda_low=0.6, lr=0.01), 0.500, "FAILED", False),
    ],
    "erm": [
        ("b0002_00000", dict(lr=0.001), 0.085, "FINISHED", False),
        ("b0002_00001", dict(lr=0.003, dropout=0.2), 0.095, "FINISHED", False),
        ("b0002_00002", dict(lr=0.01, dropout=0.5), 0.075, "FINISHED", False),
    ],
}
BEST_TRIAL = {"idea": "a0001_00002", "erm": "b0002_00001"}  # the configurations the final runs use
# Each arm's search space, as its search runs carry it in the tag `searched` (alpha is not searched: it is
# set in one trial only, a fixed field of no arm's space)
LOG = {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}
SPACES = {
    "idea": {"K": {"type": "int", "low": 2, "high": 5, "log": False}, "N": {"type": "int", "low": 2, "high": 8, "log": False},
             "lambda_low": {"type": "float", "low": 0.5, "high": 0.95, "log": False},
             "tau": {"type": "float", "low": 0.05, "high": 2.0, "log": True},
             "beta": {"type": "float", "low": 1.0, "high": 1000.0, "log": True},
             "T": {"type": "choice", "values": [1, 2, 5, 10, 20]}, "lr": LOG,
             "dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": False}},
    "erm": {"lr": LOG, "dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": False}},
}

# The shift diagnostics that LOGGED's describe.json carries (cold share, JS divergence per window).
LOGGED_SHIFT = {"valid": (0.01, 0.2), "w1": (0.02, 0.3), "w2": (0.05, 0.4)}


# The resolved study file as studies/ logs it on the parent run (abridged).
STUDY_YAML = """dataset: synthetic
protocol: temporal
max_len: 50
cuts: null
backbone: gru4rec
seed: 0
seeds: 2
max_users: {max_users}
train: {{batch_size: 256, pretrain_epochs: 1}}
arms:
  idea: {{num_samples: 5}}
  erm: {{num_samples: 3}}
"""


def final_value(arm: str, seed: int, part: str, subset: str, metric: str, k: int) -> float:
    """Final-run metric: BASE·K_FACTOR·(1 - DROP·window)·(WARM if warm) + seed offset (valid = window 0)."""
    step = 0 if part == "valid" else int(part[1:])
    v = BASE[metric] * K_FACTOR[k] * (1 - DROP[arm] * step) * (WARM if subset == "warm" else 1.0)
    return round(v + SEED_OFFSET[(arm, seed)], 6)


def search_value(ndcg10: float, metric: str, k: int) -> float:
    """Search-run best validation metric, scaled from the trial's NDCG@10 like BASE and K_FACTOR."""
    return round(ndcg10 * BASE[metric] / BASE["ndcg"] * K_FACTOR[k], 6)


def _names(key=lambda name: name):
    """(MLflow key, metric, k) of every metric@k, the key made by `key` from the metric's name."""
    return [(key(metric_name(m, k)), m, k) for m in METRICS for k in KS]


def make_fake_store(path: str | Path) -> str:
    """Write the fake store under `path` (created) and return its tracking URI."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from idea.config import TrainConfig
    from idea.data import load_dataset

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{path / 'mlflow.db'}"
    client = MlflowClient(uri)
    sha = load_dataset("synthetic").sha256
    common = {"backbone": "gru4rec", "dataset": "synthetic", "git_sha": "0123abc"}

    def experiment(name: str) -> str:
        return client.create_experiment(name, artifact_location=(path / "artifacts" / name).as_uri())

    def run(exp: str, name: str, tags: dict, params: dict | None = None, metrics=(), status="FINISHED") -> str:
        r = client.create_run(exp, run_name=name, tags={k: str(v) for k, v in tags.items()})
        rid = r.info.run_id
        ps = [Param(k, str(v)) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), 0, step) for k, v, step in metrics]
        for i in range(0, max(len(ms), 1), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(rid, metrics=ms[i:i + 900], params=ps if i == 0 else [])
        client.set_terminated(rid, status)
        return rid

    def epochs(best: float) -> list:
        """valid_* per epoch peaking at epoch 2 (= best) and ending lower, plus train_loss."""
        out = []
        for step, f in ((1, 0.8), (2, 1.0), (3, 0.9)):
            out += [(n, round(best * f, 6) if m == "ndcg" and k == 10 else 0.0, step) for n, m, k in _names(valid_key)]
            out.append((EPOCH_METRICS[0], 10.0 - step, step))
            out.append((EPOCH_SECONDS, float(step), step))  # 6 s over a run's 3 epochs
        return out

    # ---- the study
    exp = experiment(STUDY)
    parent = run(exp, STUDY, {**common, Tag.STUDY: STUDY, Tag.STAGE: Stage.STUDY, "data_sha256": sha})
    client.log_text(parent, STUDY_YAML.format(max_users="null"), "study.yaml")
    client.log_text(parent, json.dumps(synthetic_describe()), "describe.json")
    configs = {}
    for arm, trials in SEARCH.items():
        for trial_id, overrides, best, status, asha in trials:
            cfg = TrainConfig(method=arm, epochs=EPOCHS, patience=PATIENCE, pretrain_epochs=1, **overrides).to_dict()
            configs[(arm, trial_id)] = cfg
            tags = {**common, Tag.STUDY: STUDY, Tag.ARM: arm, Tag.METHOD: arm, Tag.SEED: 0, "data_sha256": sha,
                    Tag.STAGE: Stage.SEARCH, Tag.TRIAL_ID: trial_id, "mlflow.parentRunId": parent,
                    Tag.SEARCHED: json.dumps(SPACES[arm]), **ROLES.tags(arm)}
            if asha:
                tags[Tag.ASHA_STOPPED] = TRUE
            metrics = epochs(best) + [(n, search_value(best, m, k), 0)
                                      for n, m, k in _names(lambda name: best_state_key(VALID, name))]
            metrics.append(("best_epoch", 2, 0))
            run(exp, run_name(arm, Stage.SEARCH, trial_id=trial_id), tags, cfg, metrics, status)
    for arm in ARMS:
        for seed in SEEDS:
            cfg = {**configs[(arm, BEST_TRIAL[arm])], "seed": seed}
            tags = {**common, Tag.STUDY: STUDY, Tag.ARM: arm, Tag.METHOD: arm, Tag.SEED: seed, "data_sha256": sha,
                    Tag.STAGE: Stage.FINAL, "mlflow.parentRunId": parent, **ROLES.tags(arm),
                    RUN_COLOR_TAG: arm_colours(ROLES)[arm]}
            metrics = epochs(final_value(arm, seed, VALID, "all", "ndcg", 10)) + [("best_epoch", 2, 0)]
            for subset in SUBSETS:
                for part in (VALID, *WINDOWS):
                    metrics += [(n, final_value(arm, seed, part, subset, m, k), 0)
                                for n, m, k in _names(lambda name: best_state_key(part, name, subset))]
                # the same as stepped series: step 0 = validation, step i = window wi
                for step, part in enumerate((VALID, *WINDOWS)):
                    metrics += [(n, final_value(arm, seed, part, subset, m, k), step)
                                for n, m, k in _names(lambda name: shift_key(name, subset))]
            run(exp, run_name(arm, Stage.FINAL, seed), tags, cfg, metrics)

    # ---- a second study in the same store, with absurd values and a data_sha256 that matches nothing
    exp = experiment(OTHER)
    parent = run(exp, OTHER, {**common, Tag.STUDY: OTHER, Tag.STAGE: Stage.STUDY, "data_sha256": "deadbeef"})
    cfg = TrainConfig(method="idea").to_dict()
    run(exp, "idea-seed1", {**common, Tag.STUDY: OTHER, Tag.ARM: "idea", Tag.METHOD: "idea", Tag.SEED: 1,
                            Tag.STAGE: Stage.FINAL, "data_sha256": "deadbeef", "mlflow.parentRunId": parent}, cfg,
        [(n, 0.999, 0) for n, _, _ in _names(lambda name: best_state_key("w1", name))])

    # ---- a study whose parent carries describe.json (what `python -m idea.data describe --json` prints)
    exp = experiment(LOGGED)
    parent = run(exp, LOGGED, {**common, Tag.STUDY: LOGGED, Tag.STAGE: Stage.STUDY, "data_sha256": "feedface"})
    parts = [{"name": "train", "events": 100, "users": 10, "cold_share": 0.0, "popularity_js_vs_train": 0.0}]
    parts += [{"name": p, "events": 10, "users": 5, "cold_share": c, "popularity_js_vs_train": js}
              for p, (c, js) in LOGGED_SHIFT.items()]
    client.log_text(parent, json.dumps({"dataset": "synthetic", "protocol": "temporal", "data_sha256": "feedface",
                                        "parts": parts}), "describe.json")

    return uri


def synthetic_describe() -> dict:
    """`python -m idea.data describe synthetic --json` of the default temporal split (what a study logs)."""
    from idea.data import get_spec, load_dataset
    from idea.data.describe import describe
    from idea.splits import SplitConfig, make_split

    data = load_dataset("synthetic")
    return describe(data, make_split(data, SplitConfig("temporal", 50), get_spec("synthetic").cuts))
