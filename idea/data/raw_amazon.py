"""Readers for the original public Amazon review files a user downloads themselves.

Two formats are supported:

- McAuley's 5-core review dumps ``reviews_<Category>_5.json.gz``: one JSON
  object per line with (among others) ``reviewerID``, ``asin`` and
  ``unixReviewTime`` (integer Unix seconds, day granularity). Gzip is detected
  from the file's magic bytes, so an uncompressed ``.json`` works too. Some
  older dumps write Python dict literals (single quotes) instead of strict
  JSON; such a line is parsed with ``ast.literal_eval``.
- Raw ratings CSVs ``ratings_<Category>.csv``: no header, columns
  ``user,item,rating,timestamp``.

Both readers apply an iterative k-core filter (default k=5) and return the
canonical `Interactions` table. Within a user, equal timestamps keep file order.

The ``sha256`` tag of the result is ``f"{hex sha256 of the file bytes}:k{k}"``:
the digest of the exact source bytes (streamed) plus the k it was filtered
with, so the same file read with a different k gets a different tag.

Malformed content raises `DataFormatError` with ``"<path>: line <n>: <problem>"``
(1-based line numbers, counted in the decompressed text); a missing file raises
`DataNotFoundError` naming the path.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from idea.data.interactions import DataFormatError, DataNotFoundError, Interactions, from_arrays
from idea.data.readers import file_sha256

__all__ = ["read_reviews_json", "read_ratings_csv", "kcore"]

_JSON_KEYS = ("reviewerID", "asin", "unixReviewTime")
_CSV_COLUMNS = ("user", "item", "rating", "timestamp")
_INT_RE = re.compile(r"[+-]?\d+")
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def kcore(frame: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Iterative k-core on columns ``user`` and ``item``.

    Repeatedly drops every row whose user or item has fewer than ``k`` rows,
    until no row is dropped (removing a user can push an item below k, and so
    on). Each row counts as one interaction, duplicates included. Row order
    and index are preserved. ``k <= 1`` returns the frame unchanged.
    """
    missing = [c for c in ("user", "item") if c not in frame.columns]
    if missing:
        raise KeyError(f"kcore needs columns 'user' and 'item'; missing {missing}")
    if k <= 1:
        return frame
    current = frame
    while len(current):
        user_n = current.groupby("user", sort=False)["user"].transform("size")
        item_n = current.groupby("item", sort=False)["item"].transform("size")
        keep = (user_n >= k).to_numpy() & (item_n >= k).to_numpy()
        if keep.all():
            break
        current = current[keep]
    return current


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}")


def _to_interactions(path: Path, name: str, k: int, user, item, ts, n_read: int) -> Interactions:
    """k-core filter rows (kept in file order) and build the canonical table."""
    frame = pd.DataFrame(
        {"user": np.asarray(user, dtype=object), "item": np.asarray(item, dtype=object),
         "timestamp": np.asarray(ts, dtype=np.int64)}
    )
    frame = kcore(frame, k)
    if len(frame) == 0:
        raise DataFormatError(f"{path}: no interactions left after {k}-core filtering ({n_read} rows read)")
    # Rows are still in file order, so from_arrays' stable sort keeps file order within ties.
    return from_arrays(
        name,
        frame["user"].to_numpy(),
        frame["item"].to_numpy(),
        frame["timestamp"].to_numpy(),
        sha256=f"{file_sha256(path)}:k{k}",
    )


def _parse_id(value, key: str, path: Path, lineno: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataFormatError(f"{path}: line {lineno}: {key} must be a non-empty string, got {value!r}")
    return str(value)


def _parse_time(value, key: str, path: Path, lineno: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value)
    raise DataFormatError(f"{path}: line {lineno}: non-integer timestamp {key}={value!r}")


def _parse_review_line(raw: bytes, path: Path, lineno: int) -> dict:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as json_err:
        # Older McAuley dumps are Python dict literals ({'a': 1}), not JSON.
        try:
            record = ast.literal_eval(raw.decode("utf-8"))
        except Exception:  # noqa: BLE001 - any failure here means the line is unparseable
            raise DataFormatError(
                f"{path}: line {lineno}: invalid JSON ({json_err.__class__.__name__}: {json_err})"
            ) from None
    if not isinstance(record, dict):
        raise DataFormatError(f"{path}: line {lineno}: invalid JSON record: expected an object, got {type(record).__name__}")
    for key in _JSON_KEYS:
        if key not in record:
            raise DataFormatError(f"{path}: line {lineno}: missing key {key!r}")
    return record


def read_reviews_json(path: str | Path, name: str, k: int = 5) -> Interactions:
    """Read McAuley's ``reviews_<Category>_5.json.gz`` (or plain ``.json``) into Interactions.

    Uses ``reviewerID`` as user, ``asin`` as item and ``unixReviewTime`` as the
    timestamp; other keys are ignored. Blank lines are skipped. Applies
    `kcore` with ``k`` (the 5-core files are already 5-core, so k=5 keeps them whole).
    """
    path = Path(path)
    _check_exists(path)
    opener = gzip.open if _is_gzip(path) else open
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                record = _parse_review_line(raw, path, lineno)
                users.append(_parse_id(record["reviewerID"], "reviewerID", path, lineno))
                items.append(_parse_id(record["asin"], "asin", path, lineno))
                times.append(_parse_time(record["unixReviewTime"], "unixReviewTime", path, lineno))
    except _GZIP_ERRORS as err:
        raise DataFormatError(
            f"{path}: line {lineno + 1}: corrupt or truncated gzip data ({err.__class__.__name__}: {err})"
        ) from None
    if not users:
        raise DataFormatError(f"{path}: line 1: empty file (no review records)")
    return _to_interactions(path, name, k, users, items, times, len(users))


def read_ratings_csv(path: str | Path, name: str, k: int = 5) -> Interactions:
    """Read a raw ``ratings_<Category>.csv`` (no header: user,item,rating,timestamp).

    The rating must be numeric but is otherwise unused; the timestamp must be an
    integer (Unix seconds). Blank lines are skipped. Applies `kcore` with ``k``.
    A gzip-compressed CSV is accepted too.
    """
    path = Path(path)
    _check_exists(path)
    users: list[str] = []
    items: list[str] = []
    ratings: list[str] = []
    times: list[str] = []
    lines: list[int] = []
    binary = gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    lineno = 0
    try:
        with io.TextIOWrapper(binary, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            for row in reader:
                lineno = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(_CSV_COLUMNS):
                    raise DataFormatError(
                        f"{path}: line {lineno}: wrong column count: expected {len(_CSV_COLUMNS)} "
                        f"({','.join(_CSV_COLUMNS)}), got {len(row)}"
                    )
                user, item, rating, ts = (c.strip() for c in row)
                if not user or not item:
                    raise DataFormatError(f"{path}: line {lineno}: empty {'user' if not user else 'item'} id")
                users.append(user)
                items.append(item)
                ratings.append(rating)
                times.append(ts)
                lines.append(lineno)
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: line {lineno + 1}: not valid UTF-8 ({err})") from None
    except csv.Error as err:
        raise DataFormatError(f"{path}: line {lineno + 1}: malformed CSV ({err})") from None
    except _GZIP_ERRORS as err:
        raise DataFormatError(
            f"{path}: line {lineno + 1}: corrupt or truncated gzip data ({err.__class__.__name__}: {err})"
        ) from None
    if not users:
        raise DataFormatError(f"{path}: line 1: empty file (no rating rows)")

    # Vectorised validation; report the first offending line.
    ts_series = pd.Series(times, dtype=object)
    bad_ts = ~ts_series.str.fullmatch(_INT_RE.pattern).fillna(False).to_numpy(dtype=bool)
    if bad_ts.any():
        i = int(np.argmax(bad_ts))
        raise DataFormatError(f"{path}: line {lines[i]}: non-integer timestamp {times[i]!r}")
    bad_rating = pd.to_numeric(pd.Series(ratings, dtype=object), errors="coerce").isna().to_numpy()
    if bad_rating.any():
        i = int(np.argmax(bad_rating))
        raise DataFormatError(f"{path}: line {lines[i]}: non-numeric rating {ratings[i]!r}")
    ts = ts_series.astype(np.int64).to_numpy()
    return _to_interactions(path, name, k, users, items, ts, len(users))
