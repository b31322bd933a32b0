"""Study search spaces -> Optuna distributions, the seeded TPE searcher and the ASHA scheduler."""
from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from studies.config import ArmSpace, StudyConfig
from studies.optuna_search import ArmSearch
from studies.ranges import Choice, ParamSpec, Range

MODE = "max"  # the selection metric (validation NDCG@10) is maximised


def distribution(spec: ParamSpec) -> BaseDistribution:
    """Optuna distribution of one parameter; ranges are inclusive on both ends, as in the study file."""
    if isinstance(spec, Range) and spec.integer:
        return IntDistribution(spec.low, spec.high, log=spec.log)
    if isinstance(spec, Range):
        return FloatDistribution(float(spec.low), float(spec.high), log=spec.log)
    if isinstance(spec, Choice):
        return CategoricalDistribution(list(spec.values))
    raise TypeError(f"unknown parameter spec {spec!r}")


def optuna_space(arm: ArmSpace) -> dict[str, BaseDistribution]:
    return {name: distribution(spec) for name, spec in arm.space.items()}


def make_searcher(study: StudyConfig, arm: ArmSpace, concurrency: int, storage: str | None = None) -> ConcurrencyLimiter:
    """Seeded TPE whose first trial is the arm's `first` point (the paper-like defaults), at most
    `concurrency` trials in flight so TPE keeps learning from finished ones. With `storage` (an Optuna
    RDB URL) the search is also recorded there as the Optuna study named after the arm, for
    optuna-dashboard (`studies.optuna_search`); a stage built afresh starts that study afresh, as an
    in-memory one would."""
    rdb = None
    if storage is not None:
        rdb = optuna.storages.RDBStorage(storage)
        if arm.name in {s.study_name for s in optuna.get_all_study_summaries(rdb)}:
            optuna.delete_study(study_name=arm.name, storage=rdb)
    searcher = ArmSearch(
        space=optuna_space(arm), metric=study.metric, max_epochs=study.epochs_of(arm.name), mode=MODE,
        points_to_evaluate=[dict(arm.first)] if arm.first else None,
        sampler=optuna.samplers.TPESampler(seed=study.seed), study_name=arm.name, storage=rdb,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def make_scheduler(study: StudyConfig, arm: str) -> ASHAScheduler:
    """ASHA on the per-epoch validation metric, with `epoch` as time so resumed trials count correctly."""
    asha = study.asha_of(arm)
    return ASHAScheduler(time_attr="epoch", max_t=study.epochs_of(arm), grace_period=asha.grace_period,
                         reduction_factor=asha.reduction_factor)
