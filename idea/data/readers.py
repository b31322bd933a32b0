"""Readers for the on-disk formats of the shipped datasets (line files, RecBole atomic files)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from idea.data.interactions import DataFormatError, Interactions, from_arrays


def file_sha256(*paths: Path) -> str:
    """Digest of the concatenated bytes of `paths`: identifies the exact data a run saw."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _int_tokens(path: Path, lineno: int, line: str) -> list[int]:
    values = []
    for tok in line.split():
        try:
            values.append(int(tok))
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: non-integer token {tok!r}") from None
    return values


def _read_lines(path: Path) -> list[tuple[int, list[int]]]:
    """Parse `<user> <v1> ... <vn>` lines into (lineno, ints); blank lines are skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            toks = _int_tokens(path, lineno, line)
            if len(toks) < 2:
                raise DataFormatError(f"{path}:{lineno}: a user line needs a user id and at least one value")
            rows.append((lineno, toks))
    if not rows:
        raise DataFormatError(f"{path}: empty file (expected one '<user> <item> ...' line per user)")
    return rows


def _check_unique_users(path: Path, rows: list[tuple[int, list[int]]]) -> None:
    """One line per user: a repeated user id would silently merge two sequences."""
    first: dict[int, int] = {}
    for lineno, toks in rows:
        if toks[0] in first:
            raise DataFormatError(f"{path}:{lineno}: user {toks[0]} already has a line ({first[toks[0]]}); one line per user")
        first[toks[0]] = lineno


def _flatten(rows: list[tuple[int, list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    users = np.concatenate([np.full(len(t) - 1, t[0], dtype=np.int64) for _, t in rows])
    values = np.concatenate([np.asarray(t[1:], dtype=np.int64) for _, t in rows])
    return users, values


def read_item_time_lines(name: str, item_path: Path, time_path: Path) -> Interactions:
    """Paired TiCoSeRec files: line i of both holds one user's items and their Unix times."""
    items, times = _read_lines(item_path), _read_lines(time_path)
    if len(items) != len(times):
        raise DataFormatError(
            f"{item_path} has {len(items)} user lines but {time_path} has {len(times)}: the files must pair line by line"
        )
    for (li, a), (lt, b) in zip(items, times):
        if a[0] != b[0]:
            raise DataFormatError(f"{time_path}:{lt}: user {b[0]} but {item_path}:{li} has user {a[0]}")
        if len(a) != len(b):
            raise DataFormatError(
                f"{time_path}:{lt}: {len(b) - 1} timestamps but {item_path}:{li} has {len(a) - 1} items for user {a[0]}"
            )
        t = np.asarray(b[1:])
        if np.any(np.diff(t) < 0):
            pos = int(np.argmax(np.diff(t) < 0)) + 2
            raise DataFormatError(
                f"{time_path}:{lt}: timestamps of user {b[0]} decrease at position {pos} (lines must be chronological)"
            )
    _check_unique_users(item_path, items)
    user, item = _flatten(items)
    _, ts = _flatten(times)
    return from_arrays(name, user, item, ts, file_sha256(item_path, time_path))


def read_item_lines(name: str, item_path: Path) -> Interactions:
    """ICLRec/S3-Rec item-sequence file (no timestamps): line order is the only time order."""
    rows = _read_lines(item_path)
    _check_unique_users(item_path, rows)
    user, item = _flatten(rows)
    return from_arrays(name, user, item, None, file_sha256(item_path))


def read_recbole_inter(name: str, path: Path) -> Interactions:
    """RecBole atomic `.inter` file: tab-separated with a `name:type` header; needs user_id, item_id, timestamp."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if not header or header == [""]:
            raise DataFormatError(f"{path}: empty file (expected a RecBole header line)")
        cols = [h.split(":")[0] for h in header]
        missing = {"user_id", "item_id", "timestamp"} - set(cols)
        if missing:
            raise DataFormatError(f"{path}:1: header lacks column(s) {sorted(missing)}; found {cols}")
        iu, ii, it = cols.index("user_id"), cols.index("item_id"), cols.index("timestamp")
        users, items, times = [], [], []
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(cols):
                raise DataFormatError(f"{path}:{lineno}: {len(fields)} fields, header has {len(cols)}")
            try:
                ts = float(fields[it])
            except ValueError:
                ts = math.nan
            if not math.isfinite(ts):
                raise DataFormatError(f"{path}:{lineno}: timestamp {fields[it]!r} is not a number")
            users.append(fields[iu])
            items.append(fields[ii])
            times.append(int(ts))
    if not users:
        raise DataFormatError(f"{path}: no interactions after the header")
    return from_arrays(name, users, items, times, file_sha256(path))
