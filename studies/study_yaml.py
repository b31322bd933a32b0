"""A study file as untrusted YAML: bounded parsing, bounded echoes in refusals, YAML's number pitfalls, and
the file read whole with its `extends:` chain merged underneath (the schema is `studies/config.py`)."""
from __future__ import annotations

import difflib
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from studies.catalog import shipped_studies

EXCERPT = 80  # characters of a value a message shows
MAX_DEPTH = 40  # nesting levels of a study file (the shipped ones use 5)
MAX_ALIAS_VALUES = 10_000  # values that YAML aliases may add, counted as if each alias were written out
_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxstring, _EXCERPT.maxother, _EXCERPT.maxlist, _EXCERPT.maxdict = 3, EXCERPT, EXCERPT, 6, 4
_LONG_RUN = re.compile(r"\S{%d,}" % (2 * EXCERPT + 1))  # an excerpt, quoted or listed, stays whole


def excerpt(value: Any) -> str:
    """repr(value), at most about EXCERPT characters, built without expanding the whole value."""
    return short(_EXCERPT.repr(value))


def short(text: str) -> str:
    """`text` cut to EXCERPT characters (a key or name taken from the file)."""
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


def clip(message: str) -> str:
    """A refusal with every long run cut to an excerpt: the last guard for messages from TrainConfig and
    SplitConfig, which echo values whole."""
    return _LONG_RUN.sub(lambda m: f"{m.group()[:EXCERPT]}... ({len(m.group()):,} characters)", message)


def number(value: Any, key: str, integer: bool = False) -> float | int:
    """`value` if it is a number (an integer with `integer`), else a ValueError naming `key`; YAML reads 1e-4
    as a string, which the message says."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        numeric = isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip())
        hint = " (YAML reads 1e-4 as a string; write 1.0e-4)" if numeric else ""
        raise ValueError(f"{key} must be {kind}, got {excerpt(value)}{hint}")
    return value


def positive(value: Any, key: str) -> int:
    """`value` if it is a positive integer, else a ValueError naming `key`."""
    if number(value, key, integer=True) < 1:
        raise ValueError(f"{key} must be a positive integer, got {excerpt(value)}")
    return value


class StudyFileRefused(yaml.YAMLError):
    """The YAML itself is refused before it is built: nested too deep, or aliases expanding without bound."""


class StudyFileError(ValueError):
    """A study file cannot be read into a mapping (missing, not YAML, refused, or a broken `extends`); the
    message names the file."""


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses, while composing and before anything is built, nesting deeper than
    MAX_DEPTH and aliases adding more than MAX_ALIAS_VALUES values (an alias bomb: a few lines whose
    aliases expand to billions of values, which any echo, copy or walk of the value would expand)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []  # the mapping keys and list positions down to the node being composed
        self._sizes: dict[int, int] = {}  # id(node) -> values under it, aliases written out
        self._aliased = 0

    def _where(self) -> str:
        keys = ".".join(p for p in self._path if p and not p.startswith("["))
        return short(keys) if keys else "the top level"

    def _size(self, node: yaml.Node) -> int:
        if id(node) not in self._sizes:
            self._sizes[id(node)] = 0  # an alias of a node inside itself: counted when it closes
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
            self._sizes[id(node)] = 1 + sum(self._size(child) for child in children)
        return self._sizes[id(node)]

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            self._aliased += self._size(target) if target is not None and target.end_mark else MAX_ALIAS_VALUES + 1
            if self._aliased > MAX_ALIAS_VALUES:
                raise StudyFileRefused(
                    f"{self._where()}: YAML aliases (*{short(event.anchor)}, line {event.start_mark.line + 1}) "
                    f"expand to more than {MAX_ALIAS_VALUES:,} values, or refer to the list or mapping holding them: "
                    "an alias bomb. Write the values out, or use fewer aliases")
            return super().compose_node(parent, index)
        label = None if parent is None else f"[{index}]" if isinstance(index, int) else \
            "[key]" if index is None else str(index.value) if isinstance(index, yaml.ScalarNode) else "[complex key]"
        self._path.append(label or "")
        try:
            if len(self._path) > MAX_DEPTH:
                raise StudyFileRefused(f"{self._where()}: nested deeper than {MAX_DEPTH} levels "
                                       f"(line {self.peek_event().start_mark.line + 1}); a study file needs a few")
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


def merge(base: dict, over: dict) -> dict:
    """Deep merge of mappings: `over` wins; applies `extends` bases and the `smoke` section. An arm is
    removed only by `without_dropped_arms`."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def read_study_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A study file's mapping with its `extends:` chain merged underneath (a base sits next to it)."""
    if not path.is_file():
        where = f" (extended by {seen[-1]})" if seen else ""
        close = [] if seen else difflib.get_close_matches(path.stem, shipped_studies(), n=1)  # a misspelt name
        where += f" (did you mean {close[0]}?)" if close else ""
        raise StudyFileError(f"no study file {path}{where}; shipped studies: {shipped_studies()}")
    try:
        raw = yaml.load(path.read_text(), Loader=BoundedLoader)  # noqa: S506 (a SafeLoader)
    except StudyFileRefused as err:
        raise StudyFileError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise StudyFileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise StudyFileError(f"{path}: must hold a mapping of study settings, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise StudyFileError(f"{path}: extends must name a study file next to it (e.g. _base), got {excerpt(base)}")
    parent = (path.parent / base).with_suffix(".yaml") if not base.endswith((".yaml", ".yml")) else path.parent / base
    if parent.resolve() in seen or parent.resolve() == path.resolve():
        raise StudyFileError(f"{path}: extends {excerpt(base)} makes a cycle")
    inherited = read_study_file(parent, (*seen, path.resolve()))
    return without_dropped_arms(merge(inherited, raw), inherited, path)


def without_dropped_arms(merged: dict, inherited: dict, path: Path) -> dict:
    """`arms: {name: null}` leaves out an arm the file extends, with its settings in the `smoke` section (a
    study that cannot afford an arm of its parent drops it, and says why in its comment); naming an arm
    the parent does not have is refused, so a misspelt name cannot leave the arm running."""
    arms = merged.get("arms")
    dropped = [a for a, v in arms.items() if v is None] if isinstance(arms, dict) else []
    if not dropped:
        return merged
    parents = inherited.get("arms") if isinstance(inherited.get("arms"), dict) else {}
    unknown = [a for a in dropped if a not in parents]
    if unknown:
        raise StudyFileError(f"{path}: arms.{short(str(unknown[0]))}: null leaves out an arm the file extends, but "
                             f"it extends no such arm (its arms: {sorted(map(str, parents))})")
    out = {**merged, "arms": {a: v for a, v in arms.items() if v is not None}}
    smoke = out.get("smoke")
    if isinstance(smoke, dict) and isinstance(smoke.get("arms"), dict):
        out["smoke"] = {**smoke, "arms": {a: v for a, v in smoke["arms"].items() if a not in dropped}}
    return out
