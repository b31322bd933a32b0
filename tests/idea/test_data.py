"""Dataset readers, the registry's lookup order and errors, real-data counts, the synthetic generator."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from idea.data import DATASETS, DataFormatError, DataNotFoundError, load_dataset
from idea.data.readers import read_item_lines, read_item_time_lines, read_recbole_inter
from idea.data.registry import data_dir_of, get_spec
from idea.data.synthetic import DAY, START, SyntheticConfig, generate

BEAUTY_ITEM = "beauty/ticoserec/Beauty_item_org_rank.txt"
BEAUTY_TIME = "beauty/ticoserec/Beauty_time_org_rank.txt"
BEAUTY_REVIEWS = "beauty/reviews_Beauty_5.json.gz"


def write_pair(tmp_path: Path, items: str, times: str) -> tuple[Path, Path]:
    item_path, time_path = tmp_path / "x_item.txt", tmp_path / "x_time.txt"
    item_path.write_text(items)
    time_path.write_text(times)
    return item_path, time_path


def read_pair(tmp_path: Path, items: str, times: str):
    return read_item_time_lines("x", *write_pair(tmp_path, items, times))


# ---------------------------------------------------------------------------------------------
# Paired TiCoSeRec line reader on well-formed files
# ---------------------------------------------------------------------------------------------

def test_paired_reader_gives_triples_users_in_file_order_items_one_based(tmp_path):
    items = "7 5 3 9\n2 3 8\n\n4 1 2 6\n"  # blank line is skipped
    times = "7 10 10 10\n2 5 20\n\n4 1 3 3\n"
    item_path, time_path = write_pair(tmp_path, items, times)
    data = read_item_time_lines("x", item_path, time_path)

    assert data.name == "x"
    assert (data.n_users, data.n_items, data.n_interactions) == (3, 7, 8)
    assert data.has_time
    # raw users 7, 2, 4 -> 0, 1, 2 (file order); raw items numbered 1.. by first appearance: 5 3 9 8 1 2 6
    assert data.user.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert data.item.tolist() == [1, 2, 3, 2, 4, 5, 6, 7]
    assert data.timestamp.tolist() == [10, 10, 10, 5, 20, 1, 3, 3]
    assert data.user.dtype == np.int64 and data.item.dtype == np.int64 and data.timestamp.dtype == np.int64
    assert data.user_starts.tolist() == [0, 3, 5, 8]
    assert data.position.tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    triples = list(zip(data.user.tolist(), data.item.tolist(), data.timestamp.tolist()))
    assert triples == [(0, 1, 10), (0, 2, 10), (0, 3, 10), (1, 2, 5), (1, 4, 20), (2, 5, 1), (2, 6, 3), (2, 7, 3)]
    expected_sha = hashlib.sha256(item_path.read_bytes() + time_path.read_bytes()).hexdigest()
    assert data.sha256 == expected_sha


def test_equal_timestamps_keep_file_order(tmp_path):
    # user 1 has items 5 3 9 all at time 10; another user introduces 9 and 3 first so the
    # re-indexed ids are not monotone in the raw ids, and a sort by id would show.
    items = "2 9 3\n1 5 3 9\n3 4 4 1\n"
    times = "2 1 2\n1 10 10 10\n3 7 7 7\n"
    data = read_pair(tmp_path, items, times)
    raw_flat = [9, 3, 5, 3, 9, 4, 4, 1]  # file order
    code_of = {}
    for raw in raw_flat:
        code_of.setdefault(raw, len(code_of) + 1)
    raw_of = {c: r for r, c in code_of.items()}
    # the mapping is consistent: the same raw id always gets the same code
    assert data.item.tolist() == [code_of[r] for r in raw_flat]
    per_user = [[raw_of[c] for c in data.item[a:b].tolist()] for a, b in zip(data.user_starts[:-1], data.user_starts[1:])]
    assert per_user == [[9, 3], [5, 3, 9], [4, 4, 1]]
    assert data.timestamp.tolist() == [1, 2, 10, 10, 10, 7, 7, 7]


def test_item_lines_reader_has_no_time(tmp_path):
    path = tmp_path / "Toys.txt"
    path.write_text("10 4 5 6\n11 6 4\n")
    data = read_item_lines("toys", path)
    assert not data.has_time and data.timestamp is None
    assert data.user.tolist() == [0, 0, 0, 1, 1]
    assert data.item.tolist() == [1, 2, 3, 3, 1]
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "timestamp" not in data.frame().columns


# ---------------------------------------------------------------------------------------------
# Paired reader: malformed files, one test per problem
# ---------------------------------------------------------------------------------------------

def test_non_integer_token_names_file_line_and_token(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2 4 x7\n", "1 10 20\n2 10 20\n")
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    assert str(err.value) == f"{item_path}:2: non-integer token 'x7'"


def test_non_integer_timestamp_names_the_time_file(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2 4 7\n", "1 10 20\n2 10 2.5e3\n")
    with pytest.raises(DataFormatError, match="non-integer token '2.5e3'") as err:
        read_item_time_lines("x", item_path, time_path)
    assert str(err.value).startswith(f"{time_path}:2:")


def test_non_integer_double_minus_token_is_a_format_error(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 --5\n", "1 10 20\n")
    with pytest.raises(DataFormatError, match=r":1: non-integer token '--5'"):
        read_item_time_lines("x", item_path, time_path)


def test_item_and_time_lines_of_different_lengths(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2 4 7 8\n", "1 10 20\n2 10 20\n")
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    assert str(err.value) == f"{time_path}:2: 2 timestamps but {item_path}:2 has 3 items for user 2"


def test_different_users_on_paired_lines(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2 4 7\n", "1 10 20\n3 10 20\n")
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    assert str(err.value) == f"{time_path}:2: user 3 but {item_path}:2 has user 2"


def test_different_number_of_lines(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2 4 7\n3 1 2\n", "1 10 20\n2 10 20\n")
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    msg = str(err.value)
    assert f"{item_path} has 3 user lines" in msg
    assert f"{time_path} has 2" in msg
    assert "pair line by line" in msg


@pytest.mark.parametrize("which", ["item", "time"])
@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path, which, content):
    full_items, full_times = "1 5 6\n", "1 10 20\n"
    item_path, time_path = write_pair(tmp_path, content if which == "item" else full_items,
                                      content if which == "time" else full_times)
    empty = item_path if which == "item" else time_path
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    assert str(err.value).startswith(f"{empty}: empty file")


def test_user_line_without_values(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2\n", "1 10 20\n2\n")
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    assert str(err.value) == f"{item_path}:2: a user line needs a user id and at least one value"


def test_decreasing_timestamps_within_a_user(tmp_path):
    item_path, time_path = write_pair(tmp_path, "1 5 6\n2 4 7 8 9\n", "1 10 20\n2 10 30 30 20\n")
    with pytest.raises(DataFormatError) as err:
        read_item_time_lines("x", item_path, time_path)
    msg = str(err.value)
    assert msg.startswith(f"{time_path}:2: ")
    assert "timestamps of user 2 decrease at position 4" in msg
    assert "chronological" in msg


# ---------------------------------------------------------------------------------------------
# RecBole .inter reader
# ---------------------------------------------------------------------------------------------

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_inter(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ml.inter"
    path.write_text(text)
    return path


def test_recbole_reader_sorts_by_user_time_and_row_order(tmp_path):
    rows = [
        ("196", "242", "3", "881250949"),
        ("186", "302", "3", "891717742"),
        ("196", "302", "4", "881250000"),   # earlier than the first 196 row
        ("196", "377", "1", "881250949.0"),  # tie with the first row: keeps row order
        ("186", "242", "5", "891717742"),   # tie: keeps row order
    ]
    path = write_inter(tmp_path, INTER_HEADER + "".join("\t".join(r) + "\n" for r in rows) + "\n")
    data = read_recbole_inter("ml-100k", path)
    # users 196 -> 0, 186 -> 1; items 242 -> 1, 302 -> 2, 377 -> 3 (first appearance in the file)
    assert (data.n_users, data.n_items, data.n_interactions) == (2, 3, 5)
    assert data.user.tolist() == [0, 0, 0, 1, 1]
    assert data.item.tolist() == [2, 1, 3, 2, 1]
    assert data.timestamp.tolist() == [881250000, 881250949, 881250949, 891717742, 891717742]
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_recbole_missing_column(tmp_path):
    path = write_inter(tmp_path, "user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    with pytest.raises(DataFormatError) as err:
        read_recbole_inter("x", path)
    assert str(err.value) == f"{path}:1: header lacks column(s) ['timestamp']; found ['user_id', 'item_id', 'rating']"


def test_recbole_non_numeric_timestamp(tmp_path):
    path = write_inter(tmp_path, INTER_HEADER + "1\t2\t3\t881250949\n1\t3\t4\tyesterday\n")
    with pytest.raises(DataFormatError) as err:
        read_recbole_inter("x", path)
    assert str(err.value) == f"{path}:3: timestamp 'yesterday' is not a number"


def test_recbole_nan_timestamp_is_a_format_error(tmp_path):
    path = write_inter(tmp_path, INTER_HEADER + "1\t2\t3\tnan\n")
    with pytest.raises(DataFormatError, match=r"ml\.inter:2: timestamp 'nan'"):
        read_recbole_inter("x", path)


def test_recbole_wrong_field_count(tmp_path):
    path = write_inter(tmp_path, INTER_HEADER + "1\t2\t3\t881250949\n1\t3\t881250949\n")
    with pytest.raises(DataFormatError) as err:
        read_recbole_inter("x", path)
    assert str(err.value) == f"{path}:3: 3 fields, header has 4"


def test_recbole_empty_file(tmp_path):
    path = write_inter(tmp_path, "")
    with pytest.raises(DataFormatError) as err:
        read_recbole_inter("x", path)
    assert str(err.value) == f"{path}: empty file (expected a RecBole header line)"


def test_recbole_header_only(tmp_path):
    path = write_inter(tmp_path, INTER_HEADER + "\n")
    with pytest.raises(DataFormatError) as err:
        read_recbole_inter("x", path)
    assert str(err.value) == f"{path}: no interactions after the header"


# ---------------------------------------------------------------------------------------------
# Registry: missing files, unknown names, lookup order
# ---------------------------------------------------------------------------------------------

def test_missing_files_list_every_path_tried_and_the_download_hint(tmp_path, monkeypatch):
    given, env, cwd = tmp_path / "given", tmp_path / "env", tmp_path / "cwd"
    for d in (given, env, cwd):
        d.mkdir()
    monkeypatch.setenv("IDEA_DATA_DIR", str(env))
    monkeypatch.chdir(cwd)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("beauty", data_dir=given)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "dataset 'beauty' not found" in msg
    for rel in (BEAUTY_ITEM, BEAUTY_TIME, BEAUTY_REVIEWS):
        assert str(given / rel) in msg, f"{given / rel} missing from:\n{msg}"
    assert str(env) not in msg and str(cwd / "data") not in msg  # an explicit --data-dir is the only one tried
    assert f"{BEAUTY_ITEM} + {BEAUTY_TIME}" in msg  # expected files, relative to the data dir
    assert BEAUTY_REVIEWS in msg.split("Expected")[1]
    assert "python -m idea.data download beauty" in msg
    assert "--data-dir" in msg and "$IDEA_DATA_DIR" in msg


def test_an_explicit_data_dir_is_used_or_fails_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEA_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    assert data_dir_of(tmp_path / "given") == tmp_path / "given" and data_dir_of() == tmp_path / "env"
    monkeypatch.delenv("IDEA_DATA_DIR")
    assert data_dir_of() == tmp_path / "data"
    (tmp_path / "data" / "ml-100k").mkdir(parents=True)
    (tmp_path / "data" / "ml-100k" / "u.data").write_text("1\t1\t5\t1\n")  # a ./data that must not be used
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("ml-100k", tmp_path / "nonexistent")
    assert str(tmp_path / "nonexistent") in str(err.value) and str(tmp_path / "data" / "ml-100k") not in str(err.value)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError) as err:
        load_dataset("beuaty")
    msg = str(err.value)
    assert "unknown dataset 'beuaty'" in msg
    for name in ("beauty", "sports", "yelp", "toys", "ml-100k", "synthetic"):
        assert repr(name) in msg
    assert sorted(DATASETS) == ["beauty", "ml-100k", "sports", "synthetic", "synthetic-promo0", "synthetic-promo100",
                                "synthetic-promo50", "toys", "yelp"]
    with pytest.raises(ValueError, match="choose one of"):
        get_spec("nosuch")


def make_beauty_dir(root: Path, items: str, times: str) -> None:
    (root / "beauty" / "ticoserec").mkdir(parents=True)
    (root / BEAUTY_ITEM).write_text(items)
    (root / BEAUTY_TIME).write_text(times)


def test_data_dir_wins_over_env(tmp_path, monkeypatch):
    given, env = tmp_path / "given", tmp_path / "env"
    make_beauty_dir(given, "1 5 6\n", "1 10 20\n")
    make_beauty_dir(env, "1 5 6 7\n2 5 6\n", "1 10 20 30\n2 1 2\n")
    monkeypatch.setenv("IDEA_DATA_DIR", str(env))
    monkeypatch.chdir(tmp_path)
    data = load_dataset("beauty", data_dir=given)
    assert (data.n_users, data.n_items, data.n_interactions) == (1, 2, 2)
    assert data.name == "beauty"
    assert data.sha256 == hashlib.sha256(b"1 5 6\n" + b"1 10 20\n").hexdigest()


def test_env_dir_used_only_without_a_data_dir(tmp_path, monkeypatch):
    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    make_beauty_dir(env, "1 5 6 7\n2 5 6\n", "1 10 20 30\n2 1 2\n")
    monkeypatch.setenv("IDEA_DATA_DIR", str(env))
    monkeypatch.chdir(tmp_path)
    data = load_dataset("beauty")  # no --data-dir at all
    assert (data.n_users, data.n_items, data.n_interactions) == (2, 3, 5)
    with pytest.raises(DataNotFoundError):  # a --data-dir without the files is not replaced by $IDEA_DATA_DIR
        load_dataset("beauty", data_dir=given)


def test_cwd_data_used_last(tmp_path, monkeypatch):
    make_beauty_dir(tmp_path / "data", "1 5 6 7\n", "1 10 20 30\n")
    monkeypatch.delenv("IDEA_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_dataset("beauty").n_interactions == 3
    make_beauty_dir(tmp_path / "env", "1 5 6\n", "1 10 20\n")
    monkeypatch.setenv("IDEA_DATA_DIR", str(tmp_path / "env"))
    assert load_dataset("beauty").n_interactions == 2


def test_format_error_propagates_from_registry(tmp_path, monkeypatch):
    make_beauty_dir(tmp_path, "1 5 6\n", "1 20 10\n")
    monkeypatch.delenv("IDEA_DATA_DIR", raising=False)
    with pytest.raises(DataFormatError, match="timestamps of user 1 decrease at position 2"):
        load_dataset("beauty", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Real datasets (../shared/data)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, users, items, interactions, has_time", [
    ("beauty", 22_363, 12_101, 198_502, True),
    ("sports", 35_598, 18_357, 296_337, True),
    ("yelp", 30_431, 20_033, 316_354, True),
    ("toys", 19_412, 11_924, 167_597, False),
    ("ml-100k", 943, 1_682, 100_000, True),
])
def test_real_dataset_counts(shared_data, monkeypatch, name, users, items, interactions, has_time):
    monkeypatch.delenv("IDEA_DATA_DIR", raising=False)
    data = load_dataset(name, data_dir=shared_data)
    assert (data.n_users, data.n_items, data.n_interactions) == (users, items, interactions)
    assert data.has_time is has_time
    assert data.user.min() == 0 and data.user.max() == users - 1
    assert data.item.min() == 1 and data.item.max() == items
    assert np.bincount(data.item, minlength=items + 1)[1:].min() >= 1  # every id in 1..n used
    if has_time:
        # chronological within each user
        same_user = data.user[1:] == data.user[:-1]
        assert np.all(np.diff(data.timestamp)[same_user] >= 0)


def test_beauty_sha256_is_digest_of_the_two_files(shared_data):
    data = load_dataset("beauty", data_dir=shared_data)
    blob = (shared_data / BEAUTY_ITEM).read_bytes() + (shared_data / BEAUTY_TIME).read_bytes()
    assert data.sha256 == hashlib.sha256(blob).hexdigest()


def test_beauty_first_line_is_user_zero(shared_data):
    data = load_dataset("beauty", data_dir=shared_data)
    first_items = (shared_data / BEAUTY_ITEM).read_text().split("\n", 1)[0].split()[1:]
    first_times = (shared_data / BEAUTY_TIME).read_text().split("\n", 1)[0].split()[1:]
    n = len(first_items)
    assert data.user_starts[1] == n
    assert data.timestamp[:n].tolist() == [int(t) for t in first_times]
    # the first user's raw items got codes 1.. in first-appearance order
    codes = {}
    for raw in first_items:
        codes.setdefault(raw, len(codes) + 1)
    assert data.item[:n].tolist() == [codes[r] for r in first_items]


# ---------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------

SMALL = dict(n_users=300, n_items=200, n_topics=10)


def test_synthetic_is_deterministic_for_a_seed():
    a, b = generate(SyntheticConfig(seed=3, **SMALL)), generate(SyntheticConfig(seed=3, **SMALL))
    assert np.array_equal(a.user, b.user)
    assert np.array_equal(a.item, b.item)
    assert np.array_equal(a.timestamp, b.timestamp)
    assert (a.n_users, a.n_items, a.sha256) == (b.n_users, b.n_items, b.sha256)


def test_registry_synthetic_is_the_default_config(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("IDEA_DATA_DIR", str(tmp_path))  # needs no files anywhere
    monkeypatch.chdir(tmp_path)
    data = load_dataset("synthetic", data_dir=tmp_path / "nothing")
    assert np.array_equal(data.user, synthetic_data.user)
    assert np.array_equal(data.item, synthetic_data.item)
    assert np.array_equal(data.timestamp, synthetic_data.timestamp)
    assert data.sha256 == synthetic_data.sha256


def test_synthetic_seed_changes_the_data():
    a, b = generate(SyntheticConfig(seed=0, **SMALL)), generate(SyntheticConfig(seed=1, **SMALL))
    assert a.sha256 != b.sha256
    n = min(a.n_interactions, b.n_interactions)
    assert not np.array_equal(a.item[:n], b.item[:n])
    assert not np.array_equal(a.timestamp[:n], b.timestamp[:n])


def test_synthetic_shape_is_beauty_like(synthetic_data):
    data = synthetic_data
    assert data.name == "synthetic" and data.has_time
    lengths = np.diff(data.user_starts)
    assert 6 <= lengths.mean() <= 12
    assert lengths.min() >= 2
    assert data.n_users == 2000
    assert 900 <= data.n_items <= 1000
    assert data.item.min() == 1 and data.item.max() == data.n_items
    # whole days (like Amazon), within the configured 730-day horizon from 2020-01-01
    assert np.all((data.timestamp - START) % DAY == 0)
    assert data.timestamp.min() >= START and data.timestamp.max() < START + 730 * DAY
    same_user = data.user[1:] == data.user[:-1]
    assert np.all(np.diff(data.timestamp)[same_user] >= 0)


def test_synthetic_config_validation():
    with pytest.raises(ValueError, match="SyntheticConfig.n_users must be >= 1, got 0"):
        SyntheticConfig(n_users=0)
    with pytest.raises(ValueError, match="SyntheticConfig.p_chain must lie in"):
        SyntheticConfig(p_chain=1.5)
    with pytest.raises(ValueError, match="SyntheticConfig.shift must be >= 0"):
        SyntheticConfig(shift=-0.1)
