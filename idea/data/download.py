"""Download McAuley's Amazon 5-core review files (resumable, verified by counts).

``download("beauty", data_dir)`` fetches ``reviews_Beauty_5.json.gz`` into
``<data_dir>/beauty/``. Bytes go to ``<file>.part`` first and the file is
renamed into place only when complete, so an interrupted download never leaves
a truncated file under the final name; re-running resumes the ``.part`` with an
HTTP Range request. The finished file is read with `read_reviews_json` and its
(users, items, interactions) compared to the counts published for the
standard 5-core datasets. Only the standard library (urllib) is used for HTTP.
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from idea.data.interactions import DataFormatError
from idea.data.raw_amazon import read_reviews_json

__all__ = ["AMAZON_BASE_URL", "AMAZON_SOURCES", "AmazonSource", "DownloadError", "download"]

AMAZON_BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
_CHUNK = 1 << 16
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(OSError):
    """A download failed for a network/HTTP reason (the message names the URL and what a re-run does)."""


@dataclass(frozen=True)
class AmazonSource:
    """One downloadable category: its file name and the known 5-core counts."""

    name: str
    file_name: str
    n_users: int
    n_items: int
    n_interactions: int

    @property
    def url(self) -> str:
        return AMAZON_BASE_URL + self.file_name

    @property
    def counts(self) -> tuple[int, int, int]:
        return (self.n_users, self.n_items, self.n_interactions)


AMAZON_SOURCES: dict[str, AmazonSource] = {
    "beauty": AmazonSource("beauty", "reviews_Beauty_5.json.gz", 22363, 12101, 198502),
    "sports": AmazonSource("sports", "reviews_Sports_and_Outdoors_5.json.gz", 35598, 18357, 296337),
    "toys": AmazonSource("toys", "reviews_Toys_and_Games_5.json.gz", 19412, 11924, 167597),
}


def _discard(part: Path, why: str) -> None:
    print(f"{why}; discarding partial download {part} and restarting")
    part.unlink(missing_ok=True)


def _rerun_hint(part: Path) -> str:
    """What a re-run does: resume from the bytes kept in ``part``, or start again when none were kept
    (a refused connection creates no ``part``)."""
    size = part.stat().st_size if part.exists() else 0
    return f"re-run to resume (the {size} bytes received are kept in {part})" if size else \
        "re-run to try again (nothing was received)"


def _fetch(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size when possible."""
    for _attempt in range(2):  # a second attempt only after discarding an unusable partial
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "idea-study-downloader"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                _discard(part, f"server rejected resuming at byte {offset} (HTTP 416)")
                continue
            raise DownloadError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(f"downloading {url} failed: {reason}; {_rerun_hint(part)}") from err

        with response:
            status = response.status
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if offset and status == 200:
                print(f"server does not support resuming (HTTP 200 to a Range request); restarting {part.name}")
                offset = 0
            elif status == 206:
                match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
                if not offset or not match or int(match.group(1)) != offset:
                    _discard(part, f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
                    continue
            elif status != 200:
                raise DownloadError(f"downloading {url} failed: unexpected HTTP {status}")

            expected_total = offset + length if length is not None else None
            received = 0
            with open(part, "ab" if offset else "wb") as out, tqdm(
                total=expected_total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[: -len(".part")], disable=not progress,
            ) as bar:
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except (HTTPException, OSError) as err:
                    raise DownloadError(
                        f"downloading {url} was interrupted after {offset + received} bytes: {err}; {_rerun_hint(part)}"
                    ) from err
            if length is not None and received < length:
                raise DownloadError(
                    f"downloading {url} was interrupted: got {offset + received} of {expected_total} bytes; "
                    f"{_rerun_hint(part)}"
                )
            return
    raise DownloadError(f"downloading {url} failed: could not resume or restart {part}")


def _verify(path: Path, name: str, expected: tuple[int, int, int]) -> None:
    """Load the file and compare (users, items, interactions) to ``expected``."""
    hint = f"The file is kept at {path}; delete it and re-run to download it again."
    try:
        data = read_reviews_json(path, name, k=5)
    except DataFormatError as err:
        raise DataFormatError(f"{err}\n{hint}") from err
    got = (data.n_users, data.n_items, data.n_interactions)
    if got != tuple(expected):
        raise DataFormatError(
            f"{path}: (users, items, interactions) after 5-core: expected {tuple(expected)}, got {got}. "
            f"The file may be corrupt or a different version of the dataset. {hint}"
        )


def download(
    name: str,
    data_dir: str | Path,
    *,
    base_url: str | None = None,
    progress: bool = True,
    expected_counts: bool | tuple[int, int, int] = True,
    timeout: float = 60.0,
) -> Path:
    """Download the named Amazon 5-core review file and return its path.

    The file lands in ``<data_dir>/<name>/<file name>``; an existing file is not
    downloaded again. ``base_url`` replaces the public host (mirrors, tests).
    ``expected_counts``: True checks the known 5-core counts, False skips the
    check, a ``(users, items, interactions)`` tuple checks those instead. A
    mismatch raises `DataFormatError` and leaves the file in place.
    """
    if name not in AMAZON_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {', '.join(sorted(AMAZON_SOURCES))}")
    source = AMAZON_SOURCES[name]
    dest = Path(data_dir) / name / source.file_name
    if dest.is_file():
        print(f"{dest} is already there; not downloading again")
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = (base_url.rstrip("/") + "/" + source.file_name) if base_url else source.url
        part = dest.with_name(dest.name + ".part")
        _fetch(url, part, progress=progress, timeout=timeout)
        os.replace(part, dest)
    if expected_counts is not False:
        _verify(dest, name, source.counts if expected_counts is True else tuple(expected_counts))
    return dest
