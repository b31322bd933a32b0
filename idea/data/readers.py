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


# Ids and timestamps become int64, and timestamps are shown as dates: Unix seconds of years 1..9999.
INT64 = (-(2 ** 63), 2 ** 63 - 1)
TIME_RANGE = (-62135596800, 253402300799)


def _text_lines(path: Path, start: int = 1):
    """(lineno, line) of a UTF-8 text file, each line with its newline if it had one; a file that is not
    UTF-8 text (a binary or compressed file under a text file's name) is one error naming the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=start):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFormatError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start:err.start + 1]!r} at "
                                      f"column {err.start + 1}); is it a binary or compressed file?") from None


def _check_range(path: Path, lineno: int, tok: str, value: float, bounds: tuple[int, int], what: str) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise DataFormatError(f"{path}:{lineno}: {what} {tok!r} is out of range ({bounds[0]}..{bounds[1]}"
                              + (", Unix seconds of the years 1 to 9999)" if bounds == TIME_RANGE else ")"))


def _int_tokens(path: Path, lineno: int, line: str, times: bool = False) -> list[int]:
    """A line's integers: a user id, then item ids (int64) or, with `times`, timestamps (TIME_RANGE)."""
    values = []
    for tok in line.split():
        try:
            values.append(int(tok))
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: non-integer token {tok!r}") from None
        if len(values) == 1:
            _check_range(path, lineno, tok, values[-1], INT64, "user id")
        else:
            _check_range(path, lineno, tok, values[-1], *((TIME_RANGE, "timestamp") if times else (INT64, "item id")))
    return values


def _read_lines(path: Path, times: bool = False) -> list[tuple[int, list[int]]]:
    """Parse `<user> <v1> ... <vn>` lines into (lineno, ints); blank lines are skipped. With `times`,
    the values are Unix timestamps and must lie in TIME_RANGE."""
    rows = []
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        toks = _int_tokens(path, lineno, line, times)
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
    items, times = _read_lines(item_path), _read_lines(time_path, times=True)
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
    lines = _text_lines(path)
    header = next(lines, (1, ""))[1].rstrip("\n").split("\t")
    if not header or header == [""]:
        raise DataFormatError(f"{path}: empty file (expected a RecBole header line)")
    cols = [h.split(":")[0] for h in header]
    missing = {"user_id", "item_id", "timestamp"} - set(cols)
    if missing:
        raise DataFormatError(f"{path}:1: header lacks column(s) {sorted(missing)}; found {cols}")
    iu, ii, it = cols.index("user_id"), cols.index("item_id"), cols.index("timestamp")
    users, items, times = [], [], []
    shortest = None  # the shortest last field of a whole (newline-ended) line
    for lineno, line in lines:
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
        _check_range(path, lineno, fields[it], ts, TIME_RANGE, "timestamp")
        if line.endswith("\n"):
            shortest = min(shortest or len(fields[-1]), len(fields[-1]))
        elif shortest is not None and len(fields[-1]) < shortest:  # a last line without its line end
            raise DataFormatError(
                f"{path}:{lineno}: the last line has no line end and its {cols[-1]} {fields[-1]!r} is shorter than "
                f"every other line's: the file looks cut off mid-line (an interrupted copy?); get the whole file again")
        users.append(fields[iu])
        items.append(fields[ii])
        times.append(int(ts))
    if not users:
        raise DataFormatError(f"{path}: no interactions after the header")
    return from_arrays(name, users, items, times, file_sha256(path))
