"""Damaged data files are one error naming the file (and line), never a decoding or overflow traceback,
and a file cut off mid-line does not load with a made-up timestamp."""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from idea.data import DataFormatError
from idea.data.readers import read_item_time_lines, read_recbole_inter

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ROWS = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"


def ticoserec(tmp_path: Path, items: str, times: str) -> tuple[Path, Path]:
    item_path, time_path = tmp_path / "Beauty_item_org_rank.txt", tmp_path / "Beauty_time_org_rank.txt"
    item_path.write_text(items)
    time_path.write_text(times)
    return item_path, time_path


def inter(tmp_path: Path, body: str | bytes) -> Path:
    path = tmp_path / "ml-100k" / "recbole" / "ml-100k.inter"
    path.parent.mkdir(parents=True)
    path.write_bytes(body if isinstance(body, bytes) else (HEADER + body).encode())
    return path


def describe(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idea.data", "describe", "ml-100k", "--data-dir", str(data_dir)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_a_binary_data_file_is_named_through_the_cli(tmp_path):
    path = inter(tmp_path, gzip.compress((HEADER + ROWS).encode()))  # a compressed file under the text name
    proc = describe(tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:1: not UTF-8 text" in lines[0] and "Traceback" not in proc.stderr


def test_a_binary_line_file_names_file_and_line(tmp_path):
    item_path, time_path = ticoserec(tmp_path, "1 5 6\n", "1 100 200\n")
    time_path.write_bytes(b"1 100 200\n2 \xff\xfe 3\n")
    with pytest.raises(DataFormatError, match=rf"^{time_path}:2: not UTF-8 text"):
        read_item_time_lines("beauty", item_path, time_path)


@pytest.mark.parametrize("stamp", ["99999999999999999999999", "1e300", "-1e300", "253402300800"])
def test_an_out_of_range_recbole_timestamp_names_file_and_line(tmp_path, stamp):
    path = inter(tmp_path, ROWS + f"7\t8\t1\t{stamp}\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:5: timestamp '{stamp}' is out of range"):
        read_recbole_inter("ml-100k", path)


def test_an_out_of_range_timestamp_exits_2_through_the_cli(tmp_path):
    path = inter(tmp_path, ROWS + "7\t8\t1\t99999999999999999999999\n")
    proc = describe(tmp_path)
    assert proc.returncode == 2 and f"{path}:5: timestamp" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-2000:]


@pytest.mark.parametrize("stamp", ["99999999999999999999999", "253402300800"])
def test_an_out_of_range_line_file_timestamp_names_file_and_line(tmp_path, stamp):
    item_path, time_path = ticoserec(tmp_path, "1 5 6\n2 7 8\n", f"1 100 200\n2 300 {stamp}\n")
    with pytest.raises(DataFormatError, match=rf"^{time_path}:2: timestamp '{stamp}' is out of range"):
        read_item_time_lines("beauty", item_path, time_path)


def test_an_id_beyond_int64_names_file_and_line(tmp_path):
    item_path, time_path = ticoserec(tmp_path, "1 5 99999999999999999999999\n", "1 100 200\n")
    with pytest.raises(DataFormatError, match=rf"^{item_path}:1: item id '99999999999999999999999' is out of range"):
        read_item_time_lines("beauty", item_path, time_path)


def test_a_recbole_file_cut_mid_line_is_refused(tmp_path):
    text = HEADER + ROWS
    path = inter(tmp_path, text[: len(text) - 6].encode())  # the last timestamp lost its last 5 digits
    with pytest.raises(DataFormatError, match=rf"^{path}:4: the last line has no line end and its timestamp "
                                              r"'8788' is shorter"):
        read_recbole_inter("ml-100k", path)


def test_a_recbole_file_without_a_final_newline_still_loads(tmp_path):
    path = inter(tmp_path, (HEADER + ROWS).rstrip("\n").encode())
    data = read_recbole_inter("ml-100k", path)
    assert data.n_interactions == 3 and int(data.timestamp.min()) == 878887116
