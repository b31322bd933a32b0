"""`python -m analysis.compare`: several studies of a store in one table of paired differences with their
minimum detectable effect, the last windows first, and a forest plot."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import compare as C
from analysis import summaries as S
from analysis.load import read_study
from analysis.report import write_report
from tests.analysis import fake_store as F


def test_a_store_of_several_studies_gives_one_row_per_study_pair_and_part(store):
    assert set(C.study_names(store)) >= {F.STUDY, F.OTHER, F.LOGGED}
    assert C.study_names(store, "synthetic*") == [F.STUDY]
    table = C.compare([(store, name) for name in C.study_names(store)])
    mine = table[table["study"] == F.STUDY].reset_index(drop=True)
    read = read_study(store, F.STUDY)
    expected = S.paired(read.results(), pairs=read.arms().pairs())
    assert len(mine) == len(expected) > 0
    for col in ("mean_diff", "ci_low", "ci_high", "p_paired", "p_holm", "mde", "mde_rel"):
        pd.testing.assert_series_equal(mine[col], expected[col], check_names=False)
    assert set(mine["dataset"]) == {"synthetic"} and set(mine["backbone"]) == {"gru4rec"}
    assert set(mine["protocol"]) == {"temporal"}  # from the parent run's describe.json
    last = C.last_windows(table)
    assert set(last.loc[last["study"] == F.STUDY, "part"]) == {"w3"}


def test_cli_writes_table_markdown_and_forest(store, tmp_path):
    assert C.main(["--tracking-uri", store, "--pattern", "synthetic*", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "compare.csv")
    assert set(table["study"]) == {F.STUDY} and {"mde", "mde_rel", "protocol"} <= set(table.columns)
    md = (tmp_path / "compare.md").read_text()
    assert "## Last test part of each study" in md and "idea" in md and "forest.png" in md
    assert (tmp_path / "forest.png").stat().st_size > 10_000


def test_a_report_folder_compares_as_its_store_does(store, tmp_path):
    """Committed reports keep no store: `--report-dir` reads their results.csv and study.json instead, and
    must give the store's table exactly (labels and arm roles included)."""
    write_report(read_study(store, F.STUDY), tmp_path / "report")
    about = json.loads((tmp_path / "report" / "study.json").read_text())
    assert (about["dataset"], about["protocol"], about["backbone"]) == ("synthetic", "temporal", "gru4rec")
    assert about["arms"] == {"order": list(F.ROLES.order), "base": "erm", "controls": {"idea": "erm"}}
    from_store = C.compare([(store, F.STUDY)])
    from_folder = C.compare([C.from_report(tmp_path / "report")])
    assert len(from_store) > 0
    pd.testing.assert_frame_equal(from_folder, from_store)
    assert C.main(["--report-dir", str(tmp_path / "report"), "--out", str(tmp_path / "out")]) == 0
    assert set(pd.read_csv(tmp_path / "out" / "compare.csv")["study"]) == {F.STUDY}


def test_cli_refuses_what_it_cannot_compare(tmp_path, capsys):
    assert C.main(["--report-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--report-dir takes a folder that `python -m analysis.report` wrote" in capsys.readouterr().err
    assert C.main(["--study-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert C.main(["--out", str(tmp_path / "o")]) == 2
    typo = tmp_path / "typo.db"  # MLflow would create an empty store there and find no study in it
    assert C.main(["--tracking-uri", f"sqlite:///{typo}", "--out", str(tmp_path / "o")]) == 2
    assert f"no MLflow store at {typo}" in capsys.readouterr().err
    assert not typo.exists()
    with pytest.raises(SystemExit):
        C.main(["--tracking", "x", "--out", str(tmp_path)])  # abbreviated flags are refused


def test_the_last_test_part_of_a_leave_one_out_study_is_its_test_part():
    table = pd.DataFrame({"study": ["t", "t", "t", "loo", "loo"], "part": ["valid", "w1", "w2", "valid", "test"]})
    assert C.last_windows(table).to_dict("list") == {"study": ["t", "loo"], "part": ["w2", "test"]}


def test_each_selection_of_a_study_is_its_own_family_for_holm():
    """p_holm of the validation rows and of the oracle rows are each corrected over their own rows, as each
    report's paired table is."""
    import numpy as np

    noise = iter(np.random.default_rng(2).normal(0, 0.002, 48))
    rows = [dict(study="s", arm=arm, stage=stage, trial=0, seed=seed, part=part, subset="all", metric="ndcg", k=10,
                 value=0.1 + 0.002 * (arm == "idea") + next(noise))
            for stage in ("final", "oracle") for part in ("valid", "w1", "w2", "w3") for seed in (1, 2, 3)
            for arm in ("idea", "erm")]
    table = C.compare([C.StudyData(pd.DataFrame(rows), [("idea", "erm")], "d", "temporal", "gru4rec")])
    assert table.groupby("selection").size().to_dict() == {"oracle": 2, "validation": 4}
    for _, g in table.groupby("selection"):
        assert g["p_holm"].to_numpy() == pytest.approx(S.holm(g["p_paired"].to_numpy()))
    assert (table["p_holm"] > table["p_paired"]).any()
