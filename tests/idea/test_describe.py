"""Drift statistics: JS divergence, the `describe` CLI on Beauty against an independent computation."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from idea.data.__main__ import main
from idea.data.describe import describe, format_description, item_distribution, js_divergence
from idea.data.interactions import from_arrays
from idea.splits import SplitConfig, make_split

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IDEA_DATA_DIR"}
    return subprocess.run([sys.executable, "-m", "idea.data", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env=env, timeout=300)


# ---------------------------------------------------------------------------------------------
# Jensen-Shannon divergence
# ---------------------------------------------------------------------------------------------

def test_js_identical_is_zero():
    p = np.array([0.0, 0.2, 0.3, 0.5])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_js_disjoint_is_one_bit():
    assert js_divergence(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0, abs=1e-12)
    assert js_divergence(np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.25, 0.75])) == pytest.approx(1.0, abs=1e-12)


def test_js_hand_computed():
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4)
    # KL(p||m) = 1/2 log2(2/3) + 1/2 log2(2) = 1 - log2(3)/2;  KL(q||m) = log2(4/3) = 2 - log2(3)
    # JS = (KL(p||m) + KL(q||m)) / 2 = 3/2 - 3/4 log2(3) = 0.311278...
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    expected = 1.5 - 0.75 * math.log2(3)
    assert expected == pytest.approx(0.3112781, abs=1e-7)
    assert js_divergence(p, q) == pytest.approx(expected, abs=1e-12)
    assert js_divergence(q, p) == pytest.approx(expected, abs=1e-12)  # symmetric


def test_item_distribution_keeps_padding_at_zero():
    dist = item_distribution(np.array([1, 1, 3, 2]), n_items=4)
    assert dist.tolist() == [0.0, 0.5, 0.25, 0.25, 0.0]
    assert item_distribution(np.array([], dtype=np.int64), n_items=2).tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# describe() on a tiny table
# ---------------------------------------------------------------------------------------------

def test_describe_small_table():
    day = 86_400
    # user 0: items 1 2 3 at days 0 1 3; user 1: items 2 4 at days 2 4
    data = from_arrays("tiny", [0, 0, 1, 0, 1], [1, 2, 2, 3, 4], [0, day, 2 * day, 3 * day, 4 * day], "sha")
    split = make_split(data, SplitConfig(cuts=(2 * day, 3 * day, 5 * day), max_len=2))
    desc = describe(data, split)
    assert (desc["n_users"], desc["n_items"], desc["n_interactions"]) == (2, 4, 5)
    assert desc["sequence_length"] == {"min": 2, "mean": 2.5, "max": 3}
    assert desc["time_range"] == ["1970-01-01", "1970-01-05"] and desc["data_sha256"] == "sha"
    parts = {p["name"]: p for p in desc["parts"]}
    assert list(parts) == ["train", "valid", "w1"]
    # train: target 2 (day 1); valid [day 2, day 3): user 1's first item -> skipped; w1: targets 3 (warm? no) and 4
    assert (parts["train"]["events"], parts["train"]["skipped_no_history"]) == (1, 1)
    assert (parts["valid"]["events"], parts["valid"]["skipped_no_history"]) == (0, 1)
    assert math.isnan(parts["valid"]["cold_share"]) and math.isnan(parts["valid"]["popularity_js_vs_train"])
    assert parts["w1"]["events"] == 2 and parts["w1"]["users"] == 2
    assert parts["w1"]["cold_share"] == 1.0  # items 3 and 4 are not in any interaction before day 2
    assert parts["w1"]["popularity_js_vs_train"] == pytest.approx(1.0)  # {3, 4} vs {2}: disjoint
    assert parts["w1"]["window"] == ["1970-01-04", "1970-01-06"]
    assert parts["w1"]["start"] == "1970-01-04" and parts["w1"]["end"] == "1970-01-05"
    text = format_description(desc)
    assert "tiny: 2 users, 4 items, 5 interactions" in text
    assert "w1" in text and "100.00%" in text
    for column in ("skipped", "cold", "JS"):  # every column beyond counts and the window is explained
        assert f"\n{column} = " in text or f"; {column} = " in text, column


# ---------------------------------------------------------------------------------------------
# Acceptance: `python -m idea.data describe beauty --json` against an independent computation
# ---------------------------------------------------------------------------------------------

def utc(y: int, m: int, d: int) -> int:
    return int(dt.datetime(y, m, d, tzinfo=dt.timezone.utc).timestamp())


BEAUTY_WINDOWS = {
    "train": (None, utc(2013, 7, 24)),
    "valid": (utc(2013, 7, 24), utc(2013, 10, 24)),
    "w1": (utc(2013, 10, 24), utc(2014, 1, 24)),
    "w2": (utc(2014, 1, 24), utc(2014, 4, 24)),
    "w3": (utc(2014, 4, 24), utc(2014, 7, 24)),
}


def reference_beauty_stats(root: Path) -> dict:
    """Straight from the raw TiCoSeRec files with plain Python, no idea.* code."""
    items_path = root / "beauty/ticoserec/Beauty_item_org_rank.txt"
    times_path = root / "beauty/ticoserec/Beauty_time_org_rank.txt"
    seqs = []  # per user: [(time, position, raw item)] sorted by (time, position)
    with open(items_path) as fi, open(times_path) as ft:
        for li, lt in zip(fi, ft):
            a, b = li.split(), lt.split()
            assert a[0] == b[0] and len(a) == len(b)
            seqs.append(sorted((int(t), k, int(i)) for k, (i, t) in enumerate(zip(a[1:], b[1:]))))
    t_val = BEAUTY_WINDOWS["train"][1]
    seen_before_t_val = {i for seq in seqs for (t, _, i) in seq if t < t_val}
    targets = {name: [] for name in BEAUTY_WINDOWS}  # (user index, raw item) per event
    for u, seq in enumerate(seqs):
        for k, (t, _, i) in enumerate(seq):
            if k == 0:
                continue  # no earlier interaction of that user: not an event
            for name, (lo, hi) in BEAUTY_WINDOWS.items():
                if (lo is None or t >= lo) and t < hi:
                    targets[name].append((u, i))

    def js_bits(a: Counter, b: Counter) -> float:
        na, nb = sum(a.values()), sum(b.values())
        total = 0.0
        for item in set(a) | set(b):
            p, q = a[item] / na, b[item] / nb
            m = (p + q) / 2
            if p:
                total += 0.5 * p * math.log2(p / m)
            if q:
                total += 0.5 * q * math.log2(q / m)
        return total

    train_counts = Counter(i for _, i in targets["train"])
    out = {
        "n_users": len(seqs),
        "n_items": len({i for seq in seqs for (_, _, i) in seq}),
        "n_interactions": sum(len(seq) for seq in seqs),
    }
    for name, evs in targets.items():
        out[name] = {
            "events": len(evs),
            "users": len({u for u, _ in evs}),
            "cold_share": sum(i not in seen_before_t_val for _, i in evs) / len(evs),
            "popularity_js_vs_train": js_bits(Counter(i for _, i in evs), train_counts),
        }
    return out


@pytest.fixture(scope="module")
def beauty_cli(shared_data) -> dict:
    proc = run_cli("describe", "beauty", "--data-dir", str(shared_data), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_describe_beauty_cli_matches_independent_computation(beauty_cli, shared_data):
    ref = reference_beauty_stats(shared_data)
    desc = beauty_cli
    assert (desc["n_users"], desc["n_items"], desc["n_interactions"]) == (22_363, 12_101, 198_502)
    assert (ref["n_users"], ref["n_items"], ref["n_interactions"]) == (22_363, 12_101, 198_502)
    assert desc["dataset"] == "beauty" and desc["protocol"] == "temporal" and desc["max_len"] == 50
    assert desc["time_range"] == ["2002-06-12", "2014-07-23"]
    assert desc["sequence_length"]["min"] == 5 and desc["sequence_length"]["max"] == 204
    assert desc["sequence_length"]["mean"] == pytest.approx(8.876, abs=5e-4)
    parts = {p["name"]: p for p in desc["parts"]}
    assert [p["name"] for p in desc["parts"]] == ["train", "valid", "w1", "w2", "w3"]
    for name in ("train", "valid", "w1", "w2", "w3"):
        got, want = parts[name], ref[name]
        assert got["events"] == want["events"], name
        assert got["users"] == want["users"], name
        assert got["cold_share"] == pytest.approx(want["cold_share"], abs=1e-9), name
        assert got["popularity_js_vs_train"] == pytest.approx(want["popularity_js_vs_train"], abs=1e-9), name
    assert parts["train"]["cold_share"] == 0.0 and parts["train"]["popularity_js_vs_train"] == pytest.approx(0.0, abs=1e-12)
    js = [parts[w]["popularity_js_vs_train"] for w in ("w1", "w2", "w3")]
    assert js[0] < js[1] < js[2], js
    cold = [parts[w]["cold_share"] for w in ("w1", "w2", "w3")]
    assert 0 < cold[0] < cold[1] < cold[2] < 1, cold


def test_describe_beauty_cli_windows(beauty_cli):
    parts = {p["name"]: p for p in beauty_cli["parts"]}
    assert parts["train"]["window"] == [None, "2013-07-24"]
    assert parts["valid"]["window"] == ["2013-07-24", "2013-10-24"]
    assert parts["w1"]["window"] == ["2013-10-24", "2014-01-24"]
    assert parts["w2"]["window"] == ["2014-01-24", "2014-04-24"]
    assert parts["w3"]["window"] == ["2014-04-24", "2014-07-24"]
    assert parts["w3"]["end"] == "2014-07-23"
    for name in ("valid", "w1", "w2", "w3"):
        lo, hi = parts[name]["window"]
        assert lo <= parts[name]["start"] <= parts[name]["end"] < hi
    assert sum(p["skipped_no_history"] for p in beauty_cli["parts"]) == 22_363


def test_describe_synthetic_shifts_over_time():
    proc = run_cli("describe", "synthetic", "--json")
    assert proc.returncode == 0, proc.stderr
    desc = json.loads(proc.stdout)
    assert desc["dataset"] == "synthetic" and desc["n_users"] == 2000
    windows = [p for p in desc["parts"] if p["name"].startswith("w")]
    assert [p["name"] for p in windows] == ["w1", "w2", "w3"]
    assert windows[-1]["popularity_js_vs_train"] > windows[0]["popularity_js_vs_train"] > 0


def test_describe_text_output(synthetic_data, capsys):
    assert main(["describe", "synthetic", "--protocol", "loo", "--max-len", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"synthetic: 2,000 users, {synthetic_data.n_items:,} items, {synthetic_data.n_interactions:,} interactions")
    assert "protocol loo" in out and "per-user position" in out
    for name in ("train", "valid", "test"):
        assert f"\n{name:<6} " in out


# ---------------------------------------------------------------------------------------------
# CLI errors
# ---------------------------------------------------------------------------------------------

def test_cli_unknown_dataset_exits_2_naming_the_choices():
    proc = run_cli("describe", "nosuch", "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "unknown dataset 'nosuch'" in proc.stderr
    for name in ("beauty", "ml-100k", "sports", "synthetic", "toys", "yelp"):
        assert repr(name) in proc.stderr


def test_cli_temporal_toys_exits_2_naming_loo(shared_data):
    proc = run_cli("describe", "toys", "--data-dir", str(shared_data))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "error: dataset 'toys' has no timestamps" in proc.stderr
    assert "use protocol 'loo'" in proc.stderr


def test_cli_missing_data_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IDEA_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["describe", "beauty", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'beauty' not found")
    assert str(tmp_path / "beauty/ticoserec/Beauty_item_org_rank.txt") in err


def test_cli_bad_protocol_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["describe", "synthetic", "--protocol", "random"])
    assert exc.value.code == 2
    assert "invalid choice: 'random'" in capsys.readouterr().err
