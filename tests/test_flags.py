"""Every command refuses abbreviated long options (argparse would read `--seed 1` as `--seeds 1` without
a word) and names the option the user probably meant."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.studies.study_cli import run_cli

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _train(argv):
    from idea.train import main

    return main(argv)


def _data(argv):
    from idea.data.__main__ import main

    return main(argv)


def _report(argv):
    from analysis.report import main

    return main(argv)


@pytest.mark.parametrize("command, argv, meant", [
    (_train, ["--dataset", "nosuch", "--epoch", "1"], "--epochs"),
    (_train, ["--dataset", "nosuch", "--pretrain=0"], "--pretrain-epochs"),
    (_data, ["describe", "nosuch", "--proto", "loo"], "--protocol"),
    (_report, ["--tracking-uri", "sqlite:///{tmp}/x.db", "--study", "s", "--out", "{tmp}", "--ui", "http://h"], "--ui-url"),
    (_report, ["--tracking", "sqlite:///{tmp}/x.db", "--study", "s", "--out", "{tmp}"], "--tracking-uri"),
], ids=["train-epoch", "train-pretrain=", "data-proto", "report-ui", "report-tracking"])
def test_abbreviations_are_refused_naming_the_full_option(command, argv, meant, capsys, tmp_path):
    """Were an abbreviation accepted, the command would stop at once on the missing data or study."""
    with pytest.raises(SystemExit) as stop:
        command([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert f"did you mean {meant}?" in err  # after "unrecognized arguments", or "required" for --tracking


def test_study_cli_refuses_seed_for_seeds():
    proc = run_cli("no-such-study", "--seed", "1")  # accepted, it would stop on the unknown study
    assert proc.returncode == 2
    assert "unrecognized arguments: --seed 1" in proc.stderr and "did you mean --seeds?" in proc.stderr


def test_a_misspelling_gets_the_closest_option():
    proc = run_cli("no-such-study", "--sedes", "1")
    assert proc.returncode == 2 and "did you mean --seeds?" in proc.stderr


def test_every_parser_in_the_project_is_strict():
    """A plain argparse.ArgumentParser would accept abbreviations again."""
    plain = [f"{path.relative_to(PROJECT_ROOT)}:{n}"
             for folder in ("idea", "studies", "analysis", "benchmarks") for path in (PROJECT_ROOT / folder).rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"(?<!Strict)ArgumentParser\(", line) and "class StrictArgumentParser" not in line]
    assert not plain, plain
