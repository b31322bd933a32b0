"""Study files are untrusted input (issue 21, item 5): a malformed or hostile file is refused with exit 2
and one short message naming the file, the field and what is expected; never a traceback, never the whole
of a huge value, and YAML aliases cannot expand without bound."""
from __future__ import annotations

import pytest

from studies.config import load_study
from tests.studies.study_cli import run_cli

BASE = """\
dataset: synthetic
epochs: 2
patience: 1
asha: {grace_period: 1, reduction_factor: 2}
arms:
  erm:
    num_samples: 2
    first: {lr: 0.003}
    space:
      lr: {type: float, low: 0.001, high: 0.01, log: true}
      dropout: {type: choice, values: [0.1, 0.3]}
"""
HUGE = "x" * 1_000_000
DEEP = "[" * 5000 + "]" * 5000

# case -> (text replaced in BASE, its replacement, field named in the message, what the message says is expected)
MALFORMED = {
    "cuts as a list of lists": ("epochs: 2", "epochs: 2\ncuts: [[1, 2], {a: 1}, 3]", "cuts[0]",
                                "a 'YYYY-MM-DD' date or Unix seconds"),
    "cuts as a number": ("epochs: 2", "epochs: 2\ncuts: 5", "cuts", "a list"),
    "dataset as a list": ("dataset: synthetic", "dataset: [synthetic]", "dataset", "a string"),
    "backbone as a mapping": ("epochs: 2", "epochs: 2\nbackbone: {a: 1}", "backbone", "a string"),
    "method as a list": ("    num_samples: 2", "    method: [erm]\n    num_samples: 2", "arms.erm.method", "a string"),
    "choice values that are lists": ("values: [0.1, 0.3]", "values: [[0.1], [0.3]]", "arms.erm.space.dropout: values[0]",
                                     "a number, string or boolean"),
    "deep nesting": ("epochs: 2", f"epochs: 2\ncuts: {DEEP}", "cuts", "nested deeper than"),
    "1 MB dataset": ("dataset: synthetic", f"dataset: {HUGE}", "dataset", "choose one of"),
    "1 MB number": ("num_samples: 2", f"num_samples: {HUGE}", "arms.erm.num_samples", "must be an integer"),
    # a key over 1024 characters must be written as an explicit key (`? key` then `: value`)
    "1 MB arm name": ("arms:", f"arms:\n  ? {HUGE}\n  : {{num_samples: 1}}", "arms", "[a-z][a-z0-9_]*"),
    "1 MB unknown key": ("epochs: 2", f"epochs: 2\n? {HUGE}\n: 1", "unknown key", "allowed"),
    "1 MB choice value": ("values: [0.1, 0.3]", f"values: [0.1, {HUGE}]", "arms.erm.space.dropout", "dropout"),
    "1 MB cut": ("epochs: 2", f"epochs: 2\ncuts: [{HUGE}, 1, 2]", "cuts", "Unix seconds"),
    "1 MB smoke section": ("epochs: 2", f"epochs: 2\nsmoke: {HUGE}", "smoke", "a mapping"),
}
EXCERPT = 80  # the most of a value a message may echo


def refuse(tmp_path, text: str):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    # in this process, so a traceback fails the test; --resume of no study: a file that passed could not start Ray
    proc = run_cli(str(path), "--out", str(tmp_path / "out"), "--resume")
    return path, proc


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_fields_are_refused_naming_file_field_and_what_is_expected(tmp_path, case):
    old, new, field, expected = MALFORMED[case]
    assert old in BASE, f"test setup: {old!r} not in BASE"
    path, proc = refuse(tmp_path, BASE.replace(old, new, 1))
    assert proc.returncode == 2, proc.stderr[:2000]
    assert str(path) in proc.stderr and field in proc.stderr and expected in proc.stderr, proc.stderr[:2000]
    assert "x" * (EXCERPT + 1) not in proc.stderr and len(proc.stderr) < 2000, proc.stderr[:2000]
    assert not (tmp_path / "out").exists()


def alias_bomb(levels: int, width: int = 10) -> str:
    """The classic billion laughs, as one flow list: each level lists `width` aliases of the level before."""
    items = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


@pytest.mark.parametrize("levels", [7, 12])  # 10 million values (echoed whole before the fix), then 10^12
def test_an_alias_bomb_is_refused_by_name_before_it_expands(tmp_path, levels):
    path, proc = refuse(tmp_path, BASE.replace("num_samples: 2", f"num_samples: {alias_bomb(levels)}", 1))
    assert proc.returncode == 2, proc.stderr[:2000]
    assert str(path) in proc.stderr and "alias bomb" in proc.stderr, proc.stderr[:2000]
    assert len(proc.stderr) < 2000


def test_a_few_aliases_still_work(tmp_path):
    """Ordinary use of anchors (a shared space entry) stays allowed."""
    text = BASE.replace("lr: {type: float", "lr: &lr {type: float", 1) + \
        "  erm_ft: {method: erm, num_samples: 1, space: {lr: *lr}}\n"
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    study = load_study(path)
    assert study.arms["erm_ft"].space["lr"] == study.arms["erm"].space["lr"]
