"""The study schema: a study file (`studies/configs/<dataset>.yaml`) validated into frozen dataclasses.

A study file holds the fixed settings of every trial (dataset, protocol,
backbone, epochs, patience, metric, other TrainConfig fields) and, per arm,
the search space and the arm's own fixed fields. Arms are data: any number, each
with a name, a method (erm | idea | dros), fixed fields and a space, e.g. `erm_ft`
(method erm), `dros`, or ablations such as an `idea` arm with `mixup: false`. The base
arm (`base_arm`, default `erm`) is the one every other arm is compared with; with
`idea_init: erm` (the default) it runs first and every other arm fine-tunes its trained
models. Each arm's `control` is the arm it is compared with first (default: the base arm;
`_base.yaml` sets `idea`'s to `erm_ft`). Everything is checked before Ray starts: unknown keys,
a field the arm's method does not read,
empty or inverted ranges, non-positive counts, and every range end and the
first point against TrainConfig's own limits; a message names the file and key.
Reading the file safely and its `extends` chain is `studies/study_yaml.py`; the search-space
entries are `studies/ranges.py`.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from idea.config import BACKBONE_NAMES, METHOD_FIELDS, METHODS, TrainConfig
from idea.contract import SELECT_METRIC
from idea.contract import Arms
from idea.data import DATASETS
from idea.splits import PROTOCOLS, SplitConfig

from studies.catalog import resolve_path
from studies.ranges import SPEC_TYPES, Choice, ParamSpec, Range, spec_dict
from studies.study_yaml import StudyFileError, clip, excerpt, merge, number, positive, read_study_file, short

INIT_MODES = ("erm", "scratch")  # idea_init: fine-tune the base arm's (ERM) models, or train from scratch
# TrainConfig fields the study sets itself (top-level keys, the arm's method, the seed, the warm start, the device).
MANAGED = ("backbone", "method", "epochs", "patience", "seed", "device", "init_from")
ARM_TRAIN_EXTRA = ("epochs", "patience")  # an arm may set its own (fine-tuning needs fewer epochs)
ARM_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # part of Tune folder and MLflow run names
TRAIN_FIELDS = {f.name: f.type for f in fields(TrainConfig)}


class StudyConfigError(ValueError):
    """A study file or override is invalid; the message names the file and the key."""


# ----- arms and the study -----------------------------------------------------------------------------

def _method_of_field(name: str) -> str | None:
    """The one method that reads TrainConfig field `name`, or None when every method does."""
    return next((m for m, names in METHOD_FIELDS.items() if name in names), None)


def _check_arm_name(name: Any) -> None:
    if not isinstance(name, str) or ARM_NAME.fullmatch(name) is None:
        raise ValueError(f"arms: arm name {excerpt(name)} must match [a-z][a-z0-9_]*, at most 40 characters "
                         "(it names folders and runs)")


@dataclass(frozen=True)
class ArmSpace:
    """One arm: its method, search space, trial count and the first point evaluated (the paper-like defaults)."""

    name: str  # [a-z][a-z0-9_]*, e.g. erm, erm_ft, idea, dros, idea_nomix
    method: str  # a TrainConfig method: erm | idea | dros
    num_samples: int  # search trials; 0: no search, the final seeds train the `first` point
    space: Mapping[str, ParamSpec]
    first: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)  # this arm's fixed fields, over the study's `train`
    asha: "AshaConfig | None" = None  # None: the study's
    control: str | None = None  # the arm this one is compared with first; None: the base arm

    def __post_init__(self) -> None:
        _check_arm_name(self.name)
        where = f"arms.{self.name}"
        if not isinstance(self.method, str):
            raise ValueError(f"{where}.method must be a string, one of {list(METHODS)}, got {excerpt(self.method)}")
        if self.method not in METHODS:
            raise ValueError(f"{where}.method: unknown method {excerpt(self.method)}; methods are {list(METHODS)}")
        if number(self.num_samples, f"{where}.num_samples", integer=True) < 0:
            raise ValueError(f"{where}.num_samples must be an integer >= 0 (0: no search), got {excerpt(self.num_samples)}")
        if not self.space:
            raise ValueError(f"{where}.space is empty: an arm needs at least one searched parameter")
        for name, spec in self.space.items():
            if name not in TRAIN_FIELDS or name in MANAGED:
                raise ValueError(f"{where}.space.{name}: not a searchable TrainConfig field; "
                                 f"searchable: {sorted(set(TRAIN_FIELDS) - set(MANAGED))}")
            self._check_used(f"{where}.space.{name}", name)
            kind = TRAIN_FIELDS[name]
            if isinstance(spec, Range) and spec.integer and not kind.startswith("int"):
                raise ValueError(f"{where}.space.{name}: TrainConfig.{name} is {kind}, not an integer; use type: float")
            if isinstance(spec, Range) and not spec.integer and "float" not in kind:
                raise ValueError(f"{where}.space.{name}: TrainConfig.{name} is {kind}, not a number range")
        if "alpha" in self.space and "lambda_low" in self.space:
            raise ValueError(f"{where}.space: search either lambda_low (Uniform) or alpha (Beta), not both: "
                             "alpha, when set, replaces the lambda range")
        for key in self.train:
            if key in MANAGED and key not in ARM_TRAIN_EXTRA:
                raise ValueError(f"{where}.train.{key}: set by the study itself (top-level key, arm method, seed, "
                                 "warm start or --gpus-per-trial)")
            if key not in TRAIN_FIELDS:
                raise ValueError(f"{where}.train.{key}: unknown TrainConfig field")
            if key in self.space:
                raise ValueError(f"{where}.train.{key}: also searched under space; keep one")
            self._check_used(f"{where}.train.{key}", key)
        for name, value in self.first.items():
            if name not in self.space:
                raise ValueError(f"{where}.first.{name}: not a searched parameter of this arm")
            if not isinstance(self.space[name], Choice):
                number(value, f"{where}.first.{name}", integer=self.space[name].integer)
            if not self.space[name].contains(value):
                raise ValueError(f"{where}.first.{name} = {excerpt(value)} lies outside its space {self.space[name]}")
        if not self.searches and (unset := [name for name in self.space if name not in self.first]):
            raise ValueError(f"{where}.num_samples = 0 (no search) trains the first point, which must set every "
                             f"parameter of the space; {where}.first lacks {unset}")

    @property
    def searches(self) -> bool:
        """False for an arm without a search: its final seeds train its `first` point."""
        return self.num_samples > 0

    def _check_used(self, where: str, name: str) -> None:
        owner = _method_of_field(name)
        if owner is not None and owner != self.method:
            raise ValueError(f"{where}: only method {owner} reads {name}; this arm's method is {self.method}, "
                             "so it would have no effect")


@dataclass(frozen=True)
class AshaConfig:
    """ASHA on validation NDCG@10: a trial reaching `grace_period` epochs may be cut at each rung."""

    grace_period: int = 10
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        positive(self.grace_period, "asha.grace_period")
        if number(self.reduction_factor, "asha.reduction_factor", integer=True) < 2:
            raise ValueError(f"asha.reduction_factor must be an integer >= 2, got {excerpt(self.reduction_factor)}")


@dataclass(frozen=True)
class StudyConfig:
    """Fixed settings shared by every trial of a dataset's study, plus the arms' search spaces."""

    dataset: str
    arms: Mapping[str, ArmSpace]
    protocol: str = "temporal"
    max_len: int = 50
    cuts: tuple | None = None  # temporal cuts; None = the dataset's defaults
    backbone: str = "gru4rec"
    metric: str = SELECT_METRIC
    epochs: int = 100
    patience: int = 10
    seed: int = 0  # search trials' seed and the TPE sampler's seed; final seeds are seed+1..seed+seeds
    seeds: int = 3  # final retraining seeds per arm
    max_users: int | None = None  # keep this many users (smoke runs on real data); None = all
    train: Mapping[str, Any] = field(default_factory=dict)  # other fixed TrainConfig fields, for every arm whose method reads them
    asha: AshaConfig = AshaConfig()
    idea_init: str = "erm"  # erm: the other arms fine-tune the base arm's models | scratch: every arm from scratch
    base_arm: str | None = None  # the arm the others start from and are compared with; None: erm, if there is one
    oracle: bool = False  # also select each arm on the first test window and report the later ones (studies/oracle.py)

    def __post_init__(self) -> None:
        for key in ("dataset", "protocol", "backbone", "metric", "idea_init"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string, got {excerpt(getattr(self, key))}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: unknown dataset {excerpt(self.dataset)}; choose one of {sorted(DATASETS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {excerpt(self.protocol)}")
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone must be one of {list(BACKBONE_NAMES)}, got {excerpt(self.backbone)}")
        if self.metric != SELECT_METRIC:
            raise ValueError(f"metric must be {SELECT_METRIC!r}, got {excerpt(self.metric)}: the trainer early-stops and keeps "
                             "its best state on it, so selecting on another metric would mix two criteria")
        for key in ("max_len", "epochs", "patience", "seeds"):
            positive(getattr(self, key), key)
        if self.max_users is not None:
            positive(self.max_users, "max_users")
        if number(self.seed, "seed", integer=True) < 0:
            raise ValueError(f"seed must be an integer >= 0, got {excerpt(self.seed)}")
        try:
            SplitConfig(self.protocol, self.max_len, self.cuts)
        except ValueError as err:
            raise ValueError(f"cuts: {err}") from None
        if not isinstance(self.oracle, bool):
            raise ValueError(f"oracle must be true or false, got {excerpt(self.oracle)}")
        if self.oracle and (self.protocol != "temporal" or (self.cuts is not None and len(self.cuts) < 4)):
            raise ValueError("oracle: true needs at least two test windows (it selects on the first and reports the "
                             "others): protocol temporal, with cuts (if given) ending at least two windows")
        for key in self.train:
            if key in MANAGED:
                raise ValueError(f"train.{key}: set by the study itself (top-level key, arm, seed or --gpus-per-trial)")
            if key not in TRAIN_FIELDS:
                raise ValueError(f"train.{key}: unknown TrainConfig field; known: {sorted(set(TRAIN_FIELDS) - set(MANAGED))}")
        if not self.arms:
            raise ValueError("arms: at least one arm is needed (e.g. erm with method erm)")
        if self.idea_init not in INIT_MODES:
            raise ValueError(f"idea_init must be one of {list(INIT_MODES)}, got {excerpt(self.idea_init)}")
        if self.base_arm is not None and self.base_arm not in self.arms:
            raise ValueError(f"base_arm: {excerpt(self.base_arm)} is not an arm; arms: {list(self.arms)}")
        base = self.base()
        if self.idea_init == "erm" and (base is None or self.arms[base].method != "erm"):
            raise ValueError(f"idea_init: erm warm-starts the other arms from the models of the arm named "
                             f"{self.base_arm or 'erm'} (method erm), but there is none: add one, or set idea_init: scratch")
        methods = {arm.method for arm in self.arms.values()}
        for key in self.train:
            owner = _method_of_field(key)
            if owner is not None and owner not in methods:
                raise ValueError(f"train.{key}: only method {owner} reads it, and no arm has that method")
        for name, arm in self.arms.items():
            if name != arm.name:
                raise ValueError(f"arms.{name}: holds the space of arm {excerpt(arm.name)}")
            if arm.control is not None and (arm.control not in self.arms or arm.control == name):
                raise ValueError(f"arms.{name}.control: {excerpt(arm.control)} must name another arm; arms: {list(self.arms)}")
            for key in (*arm.space, *arm.train):
                if key in self.train:
                    raise ValueError(f"arms.{name}: {key} is also fixed under the study's train; keep one")
            if self.finetunes(name) and "pretrain_epochs" in {**self.train, **arm.train, **arm.space}:
                raise ValueError(f"arms.{name}: pretrain_epochs does not apply with idea_init: erm (the arm starts "
                                 "from the trained ERM model); remove it, or set idea_init: scratch")
            if self.finetunes(name) and arm.searches and not self.arms[base].searches:
                raise ValueError(f"arms.{name}: searches (num_samples = {arm.num_samples}), and its search trials start "
                                 f"from the {base} arm's selected search trial, but {base} has no search (num_samples = "
                                 f"0): set num_samples: 0 for {name} too, or give {base} a search")
            if self.oracle and not arm.searches:
                raise ValueError(f"arms.{name}: oracle: true selects among an arm's search trials, and {name} has no "
                                 "search (num_samples = 0): give it a search, or set oracle: false")
            self._check_trainable(arm)
            asha, epochs = self.asha_of(name), self.epochs_of(name)
            if asha.grace_period > epochs:
                raise ValueError(f"arms.{name}: asha.grace_period = {asha.grace_period} exceeds epochs = {epochs}")
            pretrain = self.fixed(name).get("pretrain_epochs", TrainConfig.pretrain_epochs)
            if arm.method == "idea" and asha.grace_period <= pretrain:
                raise ValueError(f"arms.{name}: asha.grace_period = {asha.grace_period} must exceed pretrain_epochs = "
                                 f"{pretrain}, so ASHA judges IDEA trials after at least one IDEA epoch")

    def _check_trainable(self, arm: ArmSpace) -> None:
        """Every range end (one at a time, others at the first point) must make a valid TrainConfig."""
        def attempt(where: str, params: dict) -> None:
            try:
                self.train_config(arm.name, params)
            except (ValueError, TypeError) as err:  # TypeError: a string where TrainConfig compares numbers
                field = next((f for f in TRAIN_FIELDS if f"TrainConfig.{f} " in str(err)), None)
                if field is not None and field not in params:  # a fixed field is at fault, not the searched point
                    where = f"arms.{arm.name}.train.{field}" if field in arm.train else f"train.{field}"
                raise ValueError(f"{where}: {err}") from None

        attempt(f"arms.{arm.name}.first", dict(arm.first))
        for name, spec in arm.space.items():
            for value in spec.ends():
                attempt(f"arms.{arm.name}.space.{name} = {excerpt(value)}", {**arm.first, name: value})

    def base(self) -> str | None:
        """The base arm: `base_arm`, else the arm named erm (today's studies), else none."""
        return self.base_arm if self.base_arm is not None else ("erm" if "erm" in self.arms else None)

    def finetunes(self, arm: str) -> bool:
        """Does `arm` fine-tune the base arm's trained models (rather than train from scratch)?"""
        return self.idea_init == "erm" and arm != self.base()

    def control_of(self, arm: str) -> str | None:
        """The arm `arm` is compared with first: its `control`, else the base arm; None for the base arm itself."""
        if self.arms[arm].control is not None:
            return self.arms[arm].control
        return self.base() if arm != self.base() else None

    def roles(self) -> Arms:
        """The arms as analysis shows and compares them: the study file's order with the base arm last."""
        base = self.base()
        order = tuple(a for a in self.arms if a != base) + ((base,) if base is not None else ())
        controls = {a: c for a in self.arms if (c := self.control_of(a)) is not None}
        return Arms(order, base, controls)

    def arm_order(self) -> list[str]:
        """The order the arms run in: the base arm first when the others start from its models."""
        return sorted(self.arms, key=lambda a: self.finetunes(a))

    def epochs_of(self, arm: str) -> int:
        return self.arms[arm].train.get("epochs", self.epochs)

    def asha_of(self, arm: str) -> AshaConfig:
        return self.arms[arm].asha or self.asha

    def fixed(self, arm: str) -> dict[str, Any]:
        """TrainConfig fields common to all trials of `arm` (searched ones come from the sampler; the
        warm start's init_from comes from the base arm's results)."""
        method = self.arms[arm].method
        shared = {k: v for k, v in self.train.items() if _method_of_field(k) in (None, method)}
        out = {"backbone": self.backbone, "method": method, "epochs": self.epochs, "patience": self.patience,
               "seed": self.seed, **shared, **self.arms[arm].train}
        if self.finetunes(arm) and out["method"] == "idea":
            out["pretrain_epochs"] = 0
        return out

    def train_config(self, arm: str, params: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.fixed(arm), **params, **overrides})

    def final_seeds(self) -> list[int]:
        """Fresh seeds for the final retraining, so the search seed's luck does not carry into the test numbers."""
        return list(range(self.seed + 1, self.seed + 1 + self.seeds))

    def with_overrides(self, num_samples: int | None = None, epochs: int | None = None,
                       seeds: int | None = None) -> "StudyConfig":
        """The CLI's --num-samples (each arm), --max-epochs (a cap on every arm's epochs) and --seeds,
        validated like the file."""
        for flag, v in (("--num-samples", num_samples), ("--max-epochs", epochs), ("--seeds", seeds)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{flag} must be a positive integer, got {excerpt(v)}")

        def capped(asha: AshaConfig | None, limit: int) -> AshaConfig | None:
            return replace(asha, grace_period=limit) if asha is not None and asha.grace_period > limit else asha

        arms = dict(self.arms)
        if num_samples is not None:
            arms = {name: replace(arm, num_samples=num_samples) for name, arm in arms.items()}
        study_epochs, asha = self.epochs, self.asha
        if epochs is not None:
            study_epochs, asha = min(self.epochs, epochs), capped(self.asha, epochs)
            for name, arm in arms.items():
                train = {**arm.train, "epochs": min(arm.train["epochs"], epochs)} if "epochs" in arm.train else arm.train
                arms[name] = replace(arm, train=train, asha=capped(arm.asha, epochs))
        return replace(self, arms=arms, asha=asha, epochs=study_epochs, seeds=self.seeds if seeds is None else seeds)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready form, the fields as they are (`_plain`), arms last; `from_dict(to_dict())`
        round-trips (the saved, resolved study.yaml)."""
        out = _plain(self)
        out["arms"] = out.pop("arms")
        return out


def _plain(value: Any) -> Any:
    """A config value in the study file's terms: a dataclass as the mapping of its fields (an arm without
    its name, which is its key), a search-space entry by `spec_dict`, tuples as lists."""
    if isinstance(value, Choice):
        return spec_dict(value)
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)
                if not (isinstance(value, ArmSpace) and f.name == "name")}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ----- parsing ---------------------------------------------------------------------------------------

STUDY_KEYS = {f.name for f in fields(StudyConfig)}
ARM_KEYS = {"method", "num_samples", "first", "space", "train", "asha", "control"}


def _mapping(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping, got {excerpt(value)}")
    return value


def _no_unknown(values: dict, known: set, key: str) -> None:
    unknown = sorted(set(values) - known, key=str)  # YAML keys may be numbers too
    if unknown:
        where = f"{key}: " if key else ""
        raise ValueError(f"{where}unknown key(s) {[short(str(k)) for k in unknown[:5]]}; allowed: {sorted(known)}")


def _param_spec(raw: Any, key: str) -> ParamSpec:
    raw = dict(_mapping(raw, key))
    kind = raw.pop("type", None)
    if kind not in SPEC_TYPES:
        raise ValueError(f"{key}.type must be one of {list(SPEC_TYPES)}, got {excerpt(kind)}")
    cls = SPEC_TYPES[kind]
    spec_fields = {f.name for f in fields(Choice if cls is Choice else Range)} - {"type"}
    _no_unknown(raw, spec_fields, key)
    missing = sorted(spec_fields - {"log"} - set(raw))
    if missing:
        raise ValueError(f"{key}: missing key(s) {missing}")
    if cls is Choice:
        values = raw.get("values")
        raw["values"] = tuple(values) if isinstance(values, list) else values
    try:
        return cls(**raw)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def _arm(name: str, raw: Any) -> ArmSpace:
    key = f"arms.{name}"
    raw = _mapping(raw, key)
    _no_unknown(raw, ARM_KEYS, key)
    if "num_samples" not in raw or "space" not in raw:
        raise ValueError(f"{key}: needs num_samples and space")
    method = raw.get("method", name if name in METHODS else None)
    if method is None:
        raise ValueError(f"{key}: needs a method, one of {list(METHODS)} (only an arm named after a method may omit it)")
    space = {p: _param_spec(s, f"{key}.space.{p}") for p, s in _mapping(raw["space"], f"{key}.space").items()}
    asha = _asha(raw["asha"], f"{key}.asha") if raw.get("asha") is not None else None
    return ArmSpace(name, method, raw["num_samples"], space, dict(_mapping(raw.get("first") or {}, f"{key}.first")),
                    dict(_mapping(raw.get("train") or {}, f"{key}.train")), asha, raw.get("control"))


def _asha(raw: Any, key: str) -> AshaConfig:
    raw = _mapping(raw, key)
    _no_unknown(raw, {f.name for f in fields(AshaConfig)}, key)
    try:
        return AshaConfig(**raw)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def from_dict(raw: Any) -> StudyConfig:
    """Validate a parsed study mapping (no `smoke` key) into a StudyConfig; ValueError names the key."""
    raw = dict(_mapping(raw, "the study file"))
    _no_unknown(raw, STUDY_KEYS, "")
    if "dataset" not in raw or "arms" not in raw:
        raise ValueError("a study needs `dataset` and `arms`")
    arms = _mapping(raw.pop("arms"), "arms")
    for name in arms:
        _check_arm_name(name)  # before it is part of any key a message names
    arms = {name: _arm(name, arm) for name, arm in arms.items()}
    if "asha" in raw:
        raw["asha"] = _asha(raw["asha"], "asha")
    if raw.get("cuts") is not None:
        raw["cuts"] = _cuts(raw["cuts"])
    raw["train"] = _mapping(raw.get("train") or {}, "train")
    return StudyConfig(arms=arms, **raw)


def with_implied_controls(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A study.yaml saved before the idea arm's control was written in the study files, as then meant: its
    `control: null` for an arm named idea stood for erm_ft when the study had that arm. A resume compares the
    study file with the saved settings, so a study started before the change resumes after it."""
    arms = saved.get("arms")
    idea = arms.get("idea") if isinstance(arms, Mapping) else None
    if not isinstance(idea, Mapping) or idea.get("control") is not None or "erm_ft" not in arms:
        return dict(saved)
    return {**saved, "arms": {**arms, "idea": {**idea, "control": "erm_ft"}}}


def _cuts(raw: Any) -> tuple:
    """Temporal cuts as SplitConfig takes them: 'YYYY-MM-DD' strings (YAML reads an unquoted date as a date)
    or Unix seconds."""
    if not isinstance(raw, list):
        raise ValueError(f"cuts must be a list of 'YYYY-MM-DD' dates or Unix seconds, or null, got {excerpt(raw)}")
    cuts = []
    for i, cut in enumerate(raw):
        if isinstance(cut, datetime.date):
            cut = cut.isoformat()
        if isinstance(cut, bool) or not isinstance(cut, (int, float, str)) or \
                (isinstance(cut, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", cut) is None):
            raise ValueError(f"cuts[{i}] must be a 'YYYY-MM-DD' date or Unix seconds, got {excerpt(cut)}")
        cuts.append(cut)
    return tuple(cuts)


def load_study(name_or_path: str | Path, smoke: bool = False) -> StudyConfig:
    """Load and validate a study file (over the files it `extends`); with `smoke`, its `smoke` section is
    merged over it first. Both variants are validated either way, so a broken smoke section fails every
    run, not only smoke ones."""
    path = resolve_path(name_or_path)
    try:
        raw = read_study_file(path)
    except StudyFileError as err:
        raise StudyConfigError(str(err)) from None
    overrides = raw.pop("smoke", None) or {}
    try:
        full = from_dict(raw)
    except ValueError as err:
        raise StudyConfigError(f"{path}: {clip(str(err))}") from None
    try:
        if not isinstance(overrides, dict):
            raise ValueError(f"must be a mapping, got {excerpt(overrides)}")
        if "dataset" in overrides:
            raise ValueError("dataset cannot change in smoke mode")
        small = from_dict(merge(raw, overrides))
    except ValueError as err:
        raise StudyConfigError(f"{path}: smoke: {clip(str(err))}") from None
    return small if smoke else full
