"""Readers for the original Amazon review JSON and ratings CSV files."""
from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from idea.data.interactions import DataFormatError, DataNotFoundError
from idea.data.raw_amazon import kcore, read_ratings_csv, read_reviews_json


def write_reviews(path, rows, *, compress=True, extra_lines=()):
    """Write (user, item, time) rows as McAuley-style JSON lines (gzip when compress)."""
    lines = [
        json.dumps({"reviewerID": u, "asin": i, "reviewerName": "x", "overall": 5.0, "unixReviewTime": t})
        for u, i, t in rows
    ]
    data = ("\n".join(list(lines) + list(extra_lines)) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_csv(path, text):
    path.write_text(text)
    return path


def sequences(data):
    """Per user: list of item ids in stored order."""
    starts = data.user_starts
    return [data.item[starts[u]:starts[u + 1]].tolist() for u in range(data.n_users)]


# ----------------------------------------------------------------- kcore


def test_kcore_iterates_until_stable():
    """Dropping u1 pushes iA below k, which drops u2, which pushes iC down: a single pass is not enough."""
    rows = [
        ("u1", "iA"),
        ("u2", "iA"), ("u2", "iC"),
        ("u3", "iC"), ("u3", "iD"),
        ("u4", "iC"), ("u4", "iD"),
    ]
    frame = pd.DataFrame(rows, columns=["user", "item"])
    out = kcore(frame, 2)
    assert sorted(map(tuple, out[["user", "item"]].to_numpy().tolist())) == [
        ("u3", "iC"), ("u3", "iD"), ("u4", "iC"), ("u4", "iD"),
    ]
    # Row order and index survive filtering (file order is the tie-break later).
    assert out.index.tolist() == [3, 4, 5, 6]


def test_kcore_result_satisfies_k_and_keeps_full_core():
    """On a random graph, every surviving user/item has >= k rows, and the dense block is never cut."""
    rng = np.random.default_rng(0)
    core = [(f"c{u}", f"d{i}") for u in range(6) for i in range(6)]  # 6x6 block: a 5-core by itself
    noise = [(f"n{rng.integers(40)}", f"m{rng.integers(40)}") for _ in range(150)]
    frame = pd.DataFrame(core + noise, columns=["user", "item"])
    out = kcore(frame, 5)
    assert out.groupby("user").size().min() >= 5
    assert out.groupby("item").size().min() >= 5
    kept = set(map(tuple, out[["user", "item"]].to_numpy().tolist()))
    assert set(core) <= kept


@pytest.mark.parametrize("k", [0, 1])
def test_kcore_k_le_1_is_no_filter(k):
    """k <= 1 means no filtering, even for users with a single interaction."""
    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"]})
    assert kcore(frame, k).equals(frame)


# ----------------------------------------------------------------- JSON reviews


def test_read_reviews_json_gz_basic(tmp_path):
    """Ids are re-indexed by first appearance, sequences are chronological, sha256 covers bytes and k."""
    rows = [("B", "x", 300), ("A", "y", 200), ("B", "y", 100), ("A", "x", 100)]
    path = write_reviews(tmp_path / "reviews_Test_5.json.gz", rows)
    data = read_reviews_json(path, "test", k=1)
    assert (data.name, data.n_users, data.n_items, data.n_interactions) == ("test", 2, 2, 4)
    # User B -> 0, A -> 1; item x -> 1, y -> 2.
    assert data.user.tolist() == [0, 0, 1, 1]
    assert data.item.tolist() == [2, 1, 1, 2]
    assert data.timestamp.tolist() == [100, 300, 100, 200]
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() + ":k1"


def test_read_reviews_json_plain_and_gz_agree(tmp_path):
    """An uncompressed .json gives the same table as the gzip file (only the byte digest differs)."""
    rows = [(f"u{u}", f"i{(u + j) % 7}", 1000 + 10 * j) for u in range(7) for j in range(5)]
    gz = read_reviews_json(write_reviews(tmp_path / "r.json.gz", rows), "t")
    plain = read_reviews_json(write_reviews(tmp_path / "r.json", rows, compress=False), "t")
    assert gz.n_interactions == plain.n_interactions == 35
    for attr in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(gz, attr), getattr(plain, attr))
    assert gz.sha256 != plain.sha256 and gz.sha256.endswith(":k5")


def test_read_reviews_json_python_literal_lines(tmp_path):
    """Older dumps use Python dict literals (single quotes, True); those lines are still read."""
    lines = [
        "{'reviewerID': 'A', 'asin': 'x', 'unixReviewTime': 5, 'helpful': [0, 0], 'verified': True}",
        json.dumps({"reviewerID": "A", "asin": "y", "unixReviewTime": 7}),
    ]
    path = tmp_path / "old.json"
    path.write_text("\n".join(lines) + "\n")
    data = read_reviews_json(path, "old", k=1)
    assert data.item.tolist() == [1, 2] and data.timestamp.tolist() == [5, 7]


def test_read_reviews_json_applies_default_5core(tmp_path):
    """With the default k=5 a user with 4 reviews and an item with 4 reviews are dropped."""
    rows = [(f"u{u}", f"i{i}", 100 * u + i) for u in range(5) for i in range(5)]
    rows += [("light", f"i{i}", 1) for i in range(4)]  # user with 4 interactions
    rows += [(f"u{u}", "rare", 2) for u in range(4)]  # item with 4 interactions
    data = read_reviews_json(write_reviews(tmp_path / "r.json.gz", rows), "t")
    assert (data.n_users, data.n_items, data.n_interactions) == (5, 5, 25)
    assert data.sha256.endswith(":k5")


def test_read_reviews_json_ties_keep_file_order(tmp_path):
    """Same-day reviews keep file order, not item-id order; earlier times still come first."""
    rows = [
        ("B", "x", 10), ("B", "y", 10), ("B", "z", 10),  # numbers items x=1, y=2, z=3
        ("A", "z", 100), ("A", "x", 100), ("A", "y", 100),
        ("A", "w", 50),  # later in the file but earlier in time
    ]
    data = read_reviews_json(write_reviews(tmp_path / "r.json.gz", rows), "t", k=1)
    assert sequences(data) == [[1, 2, 3], [4, 3, 1, 2]]


def _error(tmp_path, extra_lines, *, good=2):
    rows = [("A", f"i{j}", j) for j in range(good)]
    path = write_reviews(tmp_path / "reviews_Bad_5.json.gz", rows, extra_lines=extra_lines)
    with pytest.raises(DataFormatError) as info:
        read_reviews_json(path, "bad", k=1)
    return str(info.value)


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"reviewerID": "A", "asin": "x", "unixReviewTime": 1', "invalid JSON"),
        ('[1, 2, 3]', "invalid JSON"),
        ('{"reviewerID": "A", "unixReviewTime": 1}', "missing key 'asin'"),
        ('{"asin": "x", "unixReviewTime": 1}', "missing key 'reviewerID'"),
        ('{"reviewerID": "A", "asin": "x"}', "missing key 'unixReviewTime'"),
        ('{"reviewerID": "A", "asin": "x", "unixReviewTime": "06 1, 2014"}', "non-integer timestamp"),
        ('{"reviewerID": "A", "asin": "x", "unixReviewTime": 1.5}', "non-integer timestamp"),
        ('{"reviewerID": null, "asin": "x", "unixReviewTime": 1}', "reviewerID must be a non-empty string"),
    ],
)
def test_read_reviews_json_malformed_line(tmp_path, bad_line, problem):
    """A bad third line is reported with file name, line 3 and the problem."""
    msg = _error(tmp_path, [bad_line])
    assert "reviews_Bad_5.json.gz" in msg and "line 3" in msg and problem in msg


def test_read_reviews_json_empty_file(tmp_path):
    """An empty (gzip) file is an error, not an empty dataset."""
    path = tmp_path / "reviews_Empty_5.json.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(DataFormatError, match=r"reviews_Empty_5\.json\.gz: line 1: empty file"):
        read_reviews_json(path, "e")


def test_read_reviews_json_truncated_gzip(tmp_path):
    """A truncated download (cut gzip stream) is a DataFormatError naming the file, not an EOFError."""
    rows = [(f"u{u}", f"i{i}", u) for u in range(50) for i in range(20)]
    path = write_reviews(tmp_path / "reviews_Cut_5.json.gz", rows)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataFormatError, match=r"reviews_Cut_5\.json\.gz: line \d+: corrupt or truncated gzip"):
        read_reviews_json(path, "cut")


def test_read_reviews_json_all_filtered(tmp_path):
    """If k-core removes everything the error says so instead of failing inside Interactions."""
    path = write_reviews(tmp_path / "r.json.gz", [("A", "x", 1)])
    with pytest.raises(DataFormatError, match="no interactions left after 5-core"):
        read_reviews_json(path, "t")


def test_read_reviews_json_missing_file(tmp_path):
    """A missing file raises DataNotFoundError naming the path."""
    path = tmp_path / "nope" / "reviews_Beauty_5.json.gz"
    with pytest.raises(DataNotFoundError, match="reviews_Beauty_5.json.gz"):
        read_reviews_json(path, "beauty")


# ----------------------------------------------------------------- ratings CSV


def test_read_ratings_csv_basic_and_ties(tmp_path):
    """CSV rows become chronological sequences; same-timestamp rows keep file order."""
    text = (
        "B,x,5.0,10\n"
        "B,y,4.0,10\n"
        "A,y,3.0,100\n"
        "A,x,1.0,100\n"
        "A,z,2.0,50\n"
        "\n"
    )
    path = write_csv(tmp_path / "ratings_Test.csv", text)
    data = read_ratings_csv(path, "t", k=1)
    assert sequences(data) == [[1, 2], [3, 2, 1]]
    assert data.timestamp.tolist() == [10, 10, 50, 100, 100]
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() + ":k1"


def test_read_ratings_csv_default_5core(tmp_path):
    """The default k=5 drops users and items below 5 ratings."""
    rows = [f"u{u},i{i},5.0,{u * 10 + i}" for u in range(5) for i in range(5)] + ["solo,i0,1.0,7"]
    data = read_ratings_csv(write_csv(tmp_path / "r.csv", "\n".join(rows) + "\n"), "t")
    assert (data.n_users, data.n_items, data.n_interactions) == (5, 5, 25)


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("A,x,5.0", "wrong column count: expected 4"),
        ("A,x,5.0,12,extra", "wrong column count: expected 4"),
        ("A,x,5.0,yesterday", "non-integer timestamp"),
        ("A,x,5.0,12.5", "non-integer timestamp"),
        ("A,x,great,12", "non-numeric rating"),
        (",x,5.0,12", "empty user id"),
    ],
)
def test_read_ratings_csv_malformed_line(tmp_path, bad_line, problem):
    """A bad third line is reported with file name, line 3 and the problem."""
    path = write_csv(tmp_path / "ratings_Bad.csv", f"A,y,5.0,1\nB,y,4.0,2\n{bad_line}\nC,y,1.0,3\n")
    with pytest.raises(DataFormatError) as info:
        read_ratings_csv(path, "bad", k=1)
    msg = str(info.value)
    assert "ratings_Bad.csv" in msg and "line 3" in msg and problem in msg


def test_read_ratings_csv_header_line_is_reported(tmp_path):
    """A header row (these files have none) is caught at line 1 rather than read as data."""
    path = write_csv(tmp_path / "ratings_H.csv", "user,item,rating,timestamp\nA,x,5.0,1\n")
    with pytest.raises(DataFormatError, match=r"ratings_H\.csv: line 1: non-integer timestamp"):
        read_ratings_csv(path, "h", k=1)


def test_read_ratings_csv_empty_and_missing(tmp_path):
    """Empty file -> DataFormatError; missing file -> DataNotFoundError, both naming the file."""
    empty = write_csv(tmp_path / "ratings_Empty.csv", "")
    with pytest.raises(DataFormatError, match=r"ratings_Empty\.csv: line 1: empty file"):
        read_ratings_csv(empty, "e")
    with pytest.raises(DataNotFoundError, match="ratings_Missing.csv"):
        read_ratings_csv(tmp_path / "ratings_Missing.csv", "m")
