"""Search-space entries of a study file (`space:` of an arm): number ranges and choices, checked on
construction, and their study-file form. `studies/space.py` turns them into Optuna distributions."""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

from studies.study_yaml import excerpt, number


@dataclass(frozen=True)
class Range:
    """Numbers in [low, high]: integers (`type` int) or reals (float); log: sampled on a log scale (for
    scale parameters like tau, beta, lr). The field order is the study file's entry (`spec_dict`)."""

    type: str  # int | float
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.type not in ("int", "float"):
            raise ValueError(f"a range's type must be int or float, got {self.type!r}")
        number(self.low, "low", integer=self.integer)
        number(self.high, "high", integer=self.integer)
        _check_range(self.low, self.high, self.log)

    @property
    def integer(self) -> bool:
        return self.type == "int"

    def contains(self, value: Any) -> bool:
        kinds = int if self.integer else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and self.low <= value <= self.high

    def ends(self) -> tuple:
        return (self.low, self.high) if self.integer else (float(self.low), float(self.high))


IntRange = functools.partial(Range, "int")
FloatRange = functools.partial(Range, "float")


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of values (e.g. T in 1, 2, 5, 10, 20)."""

    values: tuple

    def __post_init__(self) -> None:
        if not isinstance(self.values, tuple) or len(self.values) == 0:
            raise ValueError(f"values must be a non-empty list, got {excerpt(self.values)}")
        for i, value in enumerate(self.values):
            if not isinstance(value, (bool, int, float, str)):
                raise ValueError(f"values[{i}] must be a number, string or boolean, got {excerpt(value)}")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"values must be distinct, got {list(self.values)}")

    def contains(self, value: Any) -> bool:
        return value in self.values

    def ends(self) -> tuple:
        return self.values


ParamSpec = Range | Choice
SPEC_TYPES = {"int": IntRange, "float": FloatRange, "choice": Choice}


def spec_dict(spec: ParamSpec) -> dict[str, Any]:
    """A search-space entry as the study file writes it (also the `searched` tag of search runs)."""
    return {"type": "choice", "values": list(spec.values)} if isinstance(spec, Choice) else asdict(spec)


def _check_range(low, high, log: bool) -> None:
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, got {excerpt(log)}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"low and high must be finite, got {low}, {high}")
    if low > high:
        raise ValueError(f"low > high ({low} > {high})")
    if low == high:
        raise ValueError(f"the range {low}..{high} is empty (one value): fix the value under `train` instead")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
