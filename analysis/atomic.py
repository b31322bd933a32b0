"""Files written whole or not at all: into a temporary file beside the target, flushed to the disk, then
renamed over it (os.replace, atomic within one folder). A full disk or a crash mid-write leaves the old file
or none, never a truncated one that a later reader (a `--resume` asking whether the report was written, a
person opening it) would take for complete. Standard library only."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer to create (so the file gets the usual permissions), with
    `path`'s suffix (matplotlib's savefig reads the format from it); renamed over `path` when the block ends,
    removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
