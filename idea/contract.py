"""The naming contract between `studies/` (which writes Tune results and MLflow runs) and `analysis/`
(which reads the runs back), spelled once: tag names, stage values, the metric-key grammar with its
parser, the result keys a trial reports, and the arms' roles (base arm, controls, display order).
docs/conventions.md describes the layout; a rename here is a rename on both sides.

Standard library only and free of torch, like `idea.argparsing`: it sits in the bottom layer so that
`studies` and `analysis` (which reads MLflow only) may both import it. It names things; it never talks
to MLflow or Ray.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping


class Tag:
    """Tag names of a study's MLflow runs: the parent run carries STUDY, STAGE and SMOKE (with dataset,
    backbone, git_sha, data_sha256, ray_cluster), every nested run the rest that apply."""

    STUDY = "study"
    STAGE = "stage"
    SMOKE = "smoke"  # "true" on a --smoke study's parent run
    ARM = "arm"
    METHOD = "method"
    SEED = "seed"
    TRIAL_ID = "trial_id"
    SEARCHED = "searched"  # search runs: the arm's search space as JSON, entries as the study file writes them
    INIT_RUN_ID = "init_run_id"  # a fine-tuning run: the base arm's run whose best state it starts from
    INIT_DIGEST = "init_digest"  # sha256 of the weights it loaded
    BEST_PHASE = "best_phase"
    ASHA_STOPPED = "asha_stopped"
    BUDGET_STOPPED = "budget_stopped"
    ORPHAN = "orphan"  # a run without a Tune trial: counts as no trial
    DUPLICATE_OF = "duplicate_of"  # a second run MLflow's client made for one trial (a retried POST): KILLED, in the trash
    FAILURES = "failures"
    ERROR = "error"
    RETRIED = "retried"
    BASE_ARM = "base_arm"  # the study's base arm (see `Arms`)
    CONTROL = "control"  # the run's arm's control
    ARM_RANK = "arm_rank"  # the run's arm's place in the display order
    INTERRUPTED = "interrupted"  # SIGINT, SIGTERM, SIGHUP or a machine fault (disk full, ...): what stopped the study and its open runs
    RESUME_COMMAND = "resume_command"  # the parent run: the command line that continues the study
    ARMS_WITHOUT_RESULT = "arms_without_result"  # the parent run: arms with no completed trial, comma-separated
    SELECTED_TRIAL = "selected_trial"  # a final or oracle run: the search trial whose configuration it retrains
    SAME_AS = "same_as"  # an oracle run whose pick was the validation pick: the final run it copies (not retrained)
    # the parent run's (and, but RAY_CLUSTER, every nested run's): what the study ran on
    DATASET = "dataset"
    BACKBONE = "backbone"
    GIT_SHA = "git_sha"
    DATA_SHA256 = "data_sha256"
    RAY_CLUSTER = "ray_cluster"  # the parent run: the address of the Ray instance the trials ran on
    # --retrain-damaged: why a trial was trained again from its start, on its new run and on the run it
    # replaces (deleted: in the store's trash, restorable); REPLACES names that deleted run on the new one
    RETRAINED_DAMAGED = "retrained_damaged"
    REPLACES = "replaces_run"


TRUE = "true"  # the value of a flag tag (smoke, asha_stopped, budget_stopped, orphan)


class Stage:
    """Values of the `stage` tag: the parent run's, then the nested runs' in the order a study runs them."""

    STUDY = "study"
    SEARCH = "search"
    FINAL = "final"  # the configuration selected on validation, retrained with the final seeds, tested
    ORACLE = "oracle"  # the configuration selected on the first test window, likewise (`oracle: true`); no upper bound:
    # a pick on the first window need not be the best on the later ones
    NESTED = (SEARCH, FINAL, ORACLE)
    RETRAINED = (FINAL, ORACLE)  # stages whose runs are final seeds evaluated on the test windows


class Result:
    """Keys of a trial's Tune results that the driver reads besides the metrics (`metric_name`, `best_key`)."""

    EPOCH = "epoch"
    BEST_EPOCH = "best_epoch"  # also an MLflow metric
    BEST_PHASE = "best_phase"  # also a tag
    INIT_DIGEST = "init_digest"  # also a tag
    EVALUATED = "evaluated"  # only in a final trial's last result, which carries the test windows
    # The last result of a trial that stopped on an error a retry would repeat: the trial is not retried.
    PERMANENT_ERROR = "permanent_error"
    TRIAL_ID = "trial_id"  # Tune's own


# ----- run names -------------------------------------------------------------------------------------

def run_name(arm: str, stage: str, seed: object = None, trial_id: str | None = None) -> str:
    """A nested run's name: `<arm>-trial-<trial id>` (search), `<arm>-seed<s>` (final), `<arm>-oracle-seed<s>`."""
    if stage == Stage.SEARCH:
        return f"{arm}-trial-{trial_id}"
    return f"{arm}{'' if stage == Stage.FINAL else f'-{stage}'}-seed{seed}"


# ----- parts ------------------------------------------------------------------------------------------

VALID = "valid"  # the part name of validation


def window_name(i: int) -> str:
    """The i-th test window (1-based) of the temporal protocol: w1, w2, ..."""
    return f"w{i}"


def window_number(part: str) -> int | None:
    """The index of a window name (`window_name`), else None (valid, leave-one-out's test)."""
    return int(part[1:]) if part[:1] == "w" and part[1:].isdigit() else None


# ----- metric keys ------------------------------------------------------------------------------------
#   valid_<m>_at_<k>                     per epoch (step = epoch)
#   best_valid_[warm_]<m>_at_<k>         the best state on validation
#   test_<window>_[warm_]<m>_at_<k>      the best state on a test window (w1.., or test under leave-one-out)
#   shift_[warm_]<m>_at_<k>              the same as a series: step 0 = validation, step i = window wi
# Tune results name the epoch's metric <m>_at_<k> and the best so far best_<m>_at_<k> (`best_key`), which
# MLflow records as best_valid_<m>_at_<k>.

SUBSETS = ("all", "warm")  # all targets | targets whose item occurs in training
# IDEA's mechanism telemetry, per epoch (idea/methods.py): the penalty's share of the recommender's gradient
# (median over measured steps), extractor updates so far, the views' disagreement and the dominant mixing weight,
# and keep_rate_<k> per extractor k (`keep_rate_key`); the risk variance and IRMv1 penalty are in EPOCH_METRICS.
MECHANISM_METRICS = ("penalty_share", "extractor_steps", "mask_disagreement", "lambda_dominant")
KEEP_RATE = "keep_rate_"
EPOCH_SECONDS = "epoch_seconds"  # an epoch's wall time, training and validation
EPOCH_METRICS = ("train_loss", EPOCH_SECONDS, "risk_mean", "risk_var", "irm_penalty",
                 *MECHANISM_METRICS)  # logged per epoch besides valid_* (and the keep rates)
_KEY = re.compile(r"(?P<kind>valid|best_valid|test_(?P<window>[A-Za-z0-9]+)|shift)_(?:(?P<warm>warm)_)?"
                  r"(?P<metric>[a-z0-9]+)_at_(?P<k>\d+)")


def keep_rate_key(k: int) -> str:
    """The per-epoch key of extractor `k`'s keep rate (0-based)."""
    return f"{KEEP_RATE}{k}"


def _is_keep_rate(key: str) -> bool:
    return key.startswith(KEEP_RATE) and key[len(KEEP_RATE):].isdigit()


def is_epoch_metric(key: str) -> bool:
    """Whether a Tune result key is logged per epoch besides the validation metrics."""
    return key in EPOCH_METRICS or _is_keep_rate(key)


def is_mechanism_metric(key: str) -> bool:
    """Whether a metric key is IDEA's mechanism telemetry (with the risk variance and IRMv1 penalty)."""
    return key in (*MECHANISM_METRICS, "risk_var", "irm_penalty") or _is_keep_rate(key)


def metric_name(metric: str, k: int) -> str:
    """``ndcg``, 10 -> ``ndcg_at_10`` (a Tune result key, and the tail of every MLflow metric key)."""
    return f"{metric}_at_{k}"


METRICS = ("hr", "ndcg", "mrr")  # every ranking metric evaluation computes (idea/metrics.py), at each cutoff in KS
KS = (5, 10, 20)
METRIC_NAMES = tuple(metric_name(m, k) for m in METRICS for k in KS)
SELECTION = ("ndcg", 10)  # what early stopping, the best state and a study's selection maximise, on validation
SELECT_METRIC = metric_name(*SELECTION)


def oracle_key(window: str, name: str) -> str:
    """The metric of a search run scored by the oracle selection (studies/oracle.py): `name` of its best state
    on the selection window."""
    return f"oracle_{window}_{name}"


def best_key(name: str) -> str:
    """The Tune result key of the best-so-far validation value of `name` (MLflow: `best_state_key(VALID, name)`)."""
    return f"best_{name}"


def _infix(subset: str) -> str:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    return "warm_" if subset == "warm" else ""


def valid_key(name: str) -> str:
    """The per-epoch validation key of `name`."""
    return f"valid_{name}"


def best_state_key(part: str, name: str, subset: str = "all") -> str:
    """The best state's key of `name` on `part`: ``best_valid_...`` for validation, ``test_<part>_...`` for a window."""
    prefix = "best_valid" if part == VALID else f"test_{part}"
    return f"{prefix}_{_infix(subset)}{name}"


def shift_key(name: str, subset: str = "all") -> str:
    """The key of the stepped series of `name` (step 0 = validation, step i = window wi)."""
    return f"shift_{_infix(subset)}{name}"


@dataclass(frozen=True)
class MetricKey:
    """A parsed metric key: `kind` valid | best_valid | test | shift; `part` valid, the window, or None for
    a shift series (its step says the part)."""

    kind: str
    part: str | None
    subset: str
    metric: str
    k: int

    @property
    def name(self) -> str:
        return metric_name(self.metric, self.k)


def parse_metric_key(key: str) -> MetricKey | None:
    """The parts of an MLflow metric key of the grammar above; None for any other key (train_loss, best_epoch)."""
    m = _KEY.fullmatch(key)
    if m is None:
        return None
    kind = "test" if m["window"] else m["kind"]
    part = {"test": m["window"], "shift": None}.get(kind, VALID)
    return MetricKey(kind, part, "warm" if m["warm"] else "all", m["metric"], int(m["k"]))


# ----- arms -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arms:
    """A study's arms as analysis shows and compares them. `order` is the display order; `base` the arm the
    others start from (idea_init: erm) and are all compared with; `controls[a]` the arm `a` is compared with
    first (IDEA's is the same fine-tuning without the penalty). The driver writes them on every nested run
    (`tags`), so analysis reads them from the store (`from_tags`) and knows no arm by name."""

    order: tuple[str, ...]
    base: str | None = None
    controls: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"arms must be distinct, got {list(self.order)}")
        if self.base is not None and self.base not in self.order:
            raise ValueError(f"the base arm {self.base!r} is not one of the arms {list(self.order)}")
        for arm, control in self.controls.items():
            if arm not in self.order or control not in self.order or arm == control:
                raise ValueError(f"control {arm!r} -> {control!r}: both must be arms of {list(self.order)}, "
                                 "and different")

    def pairs(self) -> list[tuple[str, str]]:
        """(arm, control) pairs: each arm against its own control where that is not the base arm (the
        headline comparison first), then every arm against the base arm."""
        own = [(a, self.controls[a]) for a in self.order if self.controls.get(a, self.base) != self.base]
        return own + [(a, self.base) for a in self.order if self.base is not None and a != self.base]

    def tags(self, arm: str) -> dict[str, str]:
        """The tags that say `arm`'s role on each of its runs."""
        out = {Tag.ARM_RANK: str(self.order.index(arm))}
        if self.base is not None:
            out[Tag.BASE_ARM] = self.base
        if arm in self.controls:
            out[Tag.CONTROL] = self.controls[arm]
        return out

    @classmethod
    def from_tags(cls, tags: Mapping[str, Mapping[str, str]]) -> "Arms":
        """The arms of a store from one run's tags per arm ({arm: tags}), restricted to these arms (a base
        or control none of whose runs is here is dropped). A study whose runs predate these tags is read by
        `legacy` rather than refused."""
        if any(Tag.ARM_RANK not in t for t in tags.values()):
            return cls.legacy(tags)
        order = tuple(sorted(tags, key=lambda a: (int(tags[a][Tag.ARM_RANK]), a)))
        base = next((t[Tag.BASE_ARM] for t in tags.values() if t.get(Tag.BASE_ARM) in tags), None)
        controls = {a: t[Tag.CONTROL] for a, t in tags.items() if t.get(Tag.CONTROL) in tags}
        return cls(order, base, controls)

    @classmethod
    def legacy(cls, arms: Iterable[str]) -> "Arms":
        """The fixed rule analysis used before runs carried their arm's role (base_arm, control, arm_rank):
        the shipped arms' names decided it. It stays so that stores written then still read the same,
        at the cost of this one function rather than rerunning their studies: order idea, erm_ft, dros,
        erm, then other arms by name; every arm compared with erm, and idea first with erm_ft."""
        rank = {"idea": 0, "erm_ft": 1, "dros": 2, "erm": 3}
        order = tuple(sorted(set(arms), key=lambda a: (rank.get(a, len(rank)), a)))
        base = "erm" if "erm" in order else None
        controls = {a: base for a in order if base is not None and a != base}
        if {"idea", "erm_ft"} <= set(order):
            controls["idea"] = "erm_ft"
        return cls(order, base, controls)
