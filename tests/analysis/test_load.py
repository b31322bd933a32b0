"""analysis.load against the fake store: exact tidy rows, typed params, shift diagnostics, clear errors."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import load as L
from analysis import summaries as S
from tests.analysis import fake_store as F


@pytest.fixture(scope="module")
def results(store) -> pd.DataFrame:
    return L.read_study(store, F.STUDY).results()


def one(df: pd.DataFrame, **where) -> pd.Series:
    """The single row matching every column == value condition."""
    mask = np.ones(len(df), dtype=bool)
    for col, val in where.items():
        mask &= (df[col] == val).to_numpy()
    rows = df.loc[mask]
    assert len(rows) == 1, f"{len(rows)} rows match {where}"
    return rows.iloc[0]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "key, expected",
    [
        ("best_valid_ndcg_at_10", ("valid", "all", "ndcg", 10)),
        ("best_valid_warm_mrr_at_5", ("valid", "warm", "mrr", 5)),
        ("test_w2_hr_at_20", ("w2", "all", "hr", 20)),
        ("test_w12_warm_ndcg_at_10", ("w12", "warm", "ndcg", 10)),
        ("test_test_ndcg_at_10", ("test", "all", "ndcg", 10)),  # leave-one-out's single window
        ("valid_ndcg_at_10", None),  # per epoch: the latest epoch, not the selected one
        ("valid_warm_ndcg_at_10", None),
        ("train_loss", None),
        ("best_epoch", None),
    ],
)
def test_parse_metric_key(key, expected):
    """Selection metrics map to (part, subset, metric, k); per-epoch and bookkeeping metrics are ignored."""
    assert L.parse_metric_key(key) == expected


def test_type_params_per_column():
    """MLflow strings come back as bool / int / float / str, with "None" as NaN (int+None -> float)."""
    raw = pd.DataFrame({
        "K": ["2", "4"], "alpha": ["None", "0.4"], "lr": ["0.001", "1e-3"], "mixup": ["True", "False"],
        "backbone": ["gru4rec", "sasrec"], "T": ["5", "None"], "dropout": ["None", "None"], "tau": ["1", "0.5"],
    })
    t = L.type_params(raw)
    assert t["K"].dtype == np.int64 and t["K"].tolist() == [2, 4]
    assert t["alpha"].dtype == np.float64 and math.isnan(t["alpha"][0]) and t["alpha"][1] == 0.4
    assert t["lr"].tolist() == [0.001, 0.001]
    assert t["mixup"].dtype == bool and t["mixup"].tolist() == [True, False]
    assert t["backbone"].tolist() == ["gru4rec", "sasrec"]
    assert t["T"].dtype == np.float64 and t["T"][0] == 5.0 and math.isnan(t["T"][1])
    assert t["dropout"].isna().all()
    assert t["tau"].dtype == np.float64 and t["tau"].tolist() == [1.0, 0.5]


# ---------------------------------------------------------------- results


def test_results_columns_and_row_counts(results):
    """One row per (run, part, subset, metric, k); FAILED trials, other studies and per-epoch metrics left out."""
    cols = list(results.columns)
    assert cols[:8] == L.META_COLUMNS
    searched = list(dict.fromkeys([*F.SPACES["idea"], *F.SPACES["erm"]]))
    assert cols[8:8 + len(searched)] == searched  # the searched hyperparameters first (the spaces' order)
    assert cols[8 + len(searched):-5] == sorted(cols[8 + len(searched):-5])  # then the rest alphabetically
    assert cols[-5:] == L.TIDY_COLUMNS
    assert "seed" not in cols[8:-5]  # the seed param is the seed column, not a second one
    # search: (4 finished idea + 3 erm trials) x 3 metrics x 3 k; final: 4 runs x 4 parts x 2 subsets x 9
    assert len(results) == 7 * 9 + 4 * 4 * 2 * 9
    assert set(results["study"]) == {F.STUDY}
    assert results.groupby(["stage", "arm"])["run_id"].nunique().to_dict() == {
        ("final", "erm"): 2, ("final", "idea"): 2, ("search", "erm"): 3, ("search", "idea"): 4}
    assert "a0001_00004" not in set(results["trial"])  # FAILED
    assert "a0001_00003" in set(results["trial"])  # ASHA-stopped but FINISHED
    assert (results["value"] < 0.9).all()  # other-study's 0.999 and the failed trial's 0.5·k never leak in
    assert not results.duplicated(["run_id", "part", "subset", "metric", "k"]).any()


def test_results_exact_values(results):
    """Values are the logged selection metrics (hand-computed from fake_store's formulas)."""
    # idea-seed1 w2 NDCG@10: 0.1 * (1 - 0.05*2) + 0.002 = 0.092; warm: 0.1 * 0.9 * 1.2 + 0.002 = 0.110
    r = one(results, run_name="idea-seed1", part="w2", subset="all", metric="ndcg", k=10)
    assert (r["arm"], r["stage"], r["seed"], r["value"]) == ("idea", "final", 1, pytest.approx(0.092))
    assert isinstance(r["trial"], float) and math.isnan(r["trial"])
    assert one(results, run_name="idea-seed1", part="w2", subset="warm", metric="ndcg", k=10)["value"] == pytest.approx(0.110)
    # erm-seed2 best_valid HR@5: 0.2 * 0.5 - 0.001 = 0.099
    assert one(results, run_name="erm-seed2", part="valid", subset="all", metric="hr", k=5)["value"] == pytest.approx(0.099)
    # search trial a0001_00002: best NDCG@10 0.110 (its last epoch logged valid_ndcg_at_10 = 0.099), HR@20 = 0.11*2*1.5
    s = one(results, trial="a0001_00002", metric="ndcg", k=10)
    assert (s["stage"], s["part"], s["subset"], s["value"]) == ("search", "valid", "all", pytest.approx(0.110))
    assert s["run_name"] == "idea-trial-a0001_00002"
    assert one(results, trial="a0001_00002", metric="hr", k=20)["value"] == pytest.approx(0.33)


def test_results_typed_params(results):
    """Params are typed back per column: ints, floats with NaN for "None", bools, strings."""
    assert results["K"].dtype == np.int64 and results["T"].dtype == np.int64
    assert results["seed"].dtype == np.int64
    assert results["alpha"].dtype == np.float64 and results["dropout"].dtype == np.float64
    assert results["mixup"].dtype == bool
    trial = results.loc[results["trial"] == "a0001_00002"].iloc[0]
    assert (trial["K"], trial["N"], trial["T"], trial["alpha"], trial["lr"]) == (4, 8, 2, 0.4, 0.003)
    assert math.isnan(results.loc[results["trial"] == "a0001_00000", "alpha"].iloc[0])
    erm = results.loc[results["run_name"] == "erm-seed1"].iloc[0]
    assert erm["dropout"] == 0.2 and erm["method"] == "erm" and erm["backbone"] == "gru4rec"
    assert math.isnan(results.loc[results["trial"] == "b0002_00000", "dropout"].iloc[0])


def test_results_feeds_the_summaries(results):
    """The loaded frame is what summaries expect: per-window means and IDEA's gain as hand-computed."""
    pw = S.per_window(results)
    w3 = pw.loc[pw["part"] == "w3"].set_index("arm")["mean"]
    assert w3["idea"] == pytest.approx(0.085) and w3["erm"] == pytest.approx(0.070)  # 0.1*(1-0.15), 0.1*(1-0.3)
    gain = S.paired(results, pairs=[("idea", "erm")]).set_index("part")["rel_gain"]
    assert gain["w3"] == pytest.approx(0.015 / 0.07)
    sens = S.sensitivity(results, {"idea": {"K": F.SPACES["idea"]["K"]}})
    k2 = sens.loc[(sens["arm"] == "idea") & (sens["value_or_bin"] == 2)].iloc[0]
    assert (k2["mean"], k2["count"]) == (pytest.approx((0.090 + 0.080) / 2), 2)  # trials 00000 and 00003


def test_spaces_reads_each_arms_search_space_from_its_runs(store):
    """The tag `searched` of the search runs, per arm (IDEA first); a study without search runs has none."""
    spaces = L.read_study(store, F.STUDY).spaces()
    assert list(spaces) == ["idea", "erm"] and spaces == F.SPACES
    assert spaces["idea"]["tau"]["log"] is True and spaces["idea"]["T"]["values"] == [1, 2, 5, 10, 20]
    assert L.read_study(store, F.OTHER).spaces() == {}


def test_read_study_reads_every_page_once(store, monkeypatch):
    """The runs come page by page (here 3 a page): each run once, the same runs one page gives, and the frames
    from them equal."""
    from mlflow.tracking import MlflowClient

    whole = L.read_study(store, F.STUDY)
    real, pages = MlflowClient.search_runs, []

    def small_pages(self, *args, **kwargs):
        pages.append(real(self, *args, **{**kwargs, "max_results": 3}))
        return pages[-1]

    monkeypatch.setattr(MlflowClient, "search_runs", small_pages)
    paged = L.read_study(store, F.STUDY)
    assert len(pages) == -(-len(whole.runs) // 3) > 1
    assert [r.info.run_id for r in paged.runs] == [r.info.run_id for r in whole.runs]
    pd.testing.assert_frame_equal(paged.results(), whole.results())


def test_read_study_unknown_study_lists_experiments(store):
    """A wrong study name says which studies the store holds."""
    with pytest.raises(L.StudyNotFoundError, match="no-such-study") as err:
        L.read_study(store, "no-such-study")
    for name in (F.STUDY, F.OTHER, F.LOGGED):
        assert name in str(err.value)


def test_read_study_missing_sqlite_file_is_an_error_not_a_new_store(tmp_path):
    """A mistyped sqlite path must fail instead of silently creating an empty store."""
    db = tmp_path / "nope" / "mlflow.db"
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        L.read_study(f"sqlite:///{db}", F.STUDY)
    assert not db.exists()


def test_results_statuses_filter(store):
    """statuses=None keeps the FAILED trial that the default (FINISHED only) drops."""
    allruns = L.read_study(store, F.STUDY).results(statuses=None)
    failed = allruns.loc[allruns["trial"] == "a0001_00004"]
    assert len(failed) == 9 and set(failed["status"]) == {"FAILED"}
    assert one(failed, metric="ndcg", k=10)["value"] == pytest.approx(0.5)
    assert len(allruns) == 8 * 9 + 4 * 4 * 2 * 9


def test_history_learning_curves(store):
    """Per-epoch history is the full series (the epoch-2 peak and the lower last epoch), per final run."""
    h = L.read_study(store, F.STUDY).history()
    assert list(h.columns) == L.HISTORY_COLUMNS
    assert set(h["run_name"]) == {"idea-seed1", "idea-seed2", "erm-seed1", "erm-seed2"}
    v = h.loc[(h["run_name"] == "idea-seed1") & (h["key"] == "valid_ndcg_at_10")]
    best = F.final_value("idea", 1, "valid", "all", "ndcg", 10)  # 0.102
    assert v["step"].tolist() == [1, 2, 3]
    assert v["value"].tolist() == pytest.approx([best * 0.8, best, best * 0.9])
    loss = h.loc[(h["run_name"] == "erm-seed2") & (h["key"] == "train_loss"), "value"]
    assert loss.tolist() == [9.0, 8.0, 7.0]


def test_final_run_ids_idea_first(store):
    """Final runs of the study only, IDEA before ERM, seeds in order."""
    read = L.read_study(store, F.STUDY)
    exp_id, runs = read.experiment_id, read.final_run_ids()
    assert [n for n, _ in runs] == ["idea-seed1", "idea-seed2", "erm-seed1", "erm-seed2"]
    assert len({i for _, i in runs}) == 4 and exp_id


# ---------------------------------------------------------------- shift


def test_shift_reads_the_logged_describe_json(store):
    """The study's shift diagnostics are its parent run's describe.json, part by part."""
    shift = L.read_study(store, F.STUDY).shift()
    assert shift.attrs["reason"] is None and "describe.json" in shift.attrs["source"]
    assert list(shift.columns) == L.SHIFT_FRAME_COLUMNS
    assert shift["part"].tolist() == ["train", "valid", "w1", "w2", "w3"]
    expected = {p["name"]: (p["cold_share"], p["popularity_js_vs_train"]) for p in F.synthetic_describe()["parts"]}
    for r in shift.itertuples():
        assert (r.cold_share, r.popularity_js_vs_train) == pytest.approx(expected[r.part])
    assert shift.loc[shift["part"] == "train", "popularity_js_vs_train"].item() == 0.0


def test_shift_prefers_logged_describe_json(store):
    """A parent run's describe.json is used as logged (no recomputation, whatever its data_sha256)."""
    shift = L.read_study(store, F.LOGGED).shift()
    assert "describe.json" in shift.attrs["source"]
    got = shift.set_index("part")[["cold_share", "popularity_js_vs_train"]]
    for part, (cold, js) in F.LOGGED_SHIFT.items():
        assert tuple(got.loc[part]) == pytest.approx((cold, js))


def test_shift_without_describe_json_gives_reason(store):
    """A parent without describe.json gives an empty frame and the reason, not an exception."""
    shift = L.read_study(store, F.OTHER).shift()
    assert shift.empty and list(shift.columns) == L.SHIFT_FRAME_COLUMNS
    assert "no describe.json" in shift.attrs["reason"]


def test_analysis_imports_neither_ray_nor_idea_nor_torch(store, tmp_path):
    """analysis reads MLflow only: importing it and writing a whole report (shift diagnostics included)
    loads neither Ray nor the idea library (bar its standard-library argument parser and naming contract)
    nor torch."""
    code = ("import sys; import analysis.load, analysis.plots, analysis.report, analysis.mlflow_ui; "
            f"read = analysis.load.read_study({store!r}, {F.STUDY!r}); "
            f"analysis.report.write_report(read, {str(tmp_path / 'report')!r}); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'idea') and m not in ('idea', 'idea.argparsing', 'idea.contract')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "## " in (tmp_path / "report" / "summary.md").read_text()


def test_arms_reads_the_roles_the_runs_carry(store):
    """A study's arms come from its runs' tags (the fake store tags idea's control erm, erm the base arm); a
    store whose runs predate those tags is read by the legacy rule rather than refused."""
    from idea.contract import Arms

    assert L.read_study(store, F.STUDY).arms() == F.ROLES
    assert L.read_study(store, F.OTHER).arms() == Arms.legacy(["idea"])
    ids = [name for name, _ in L.read_study(store, F.STUDY).final_run_ids()]
    assert ids == ["idea-seed1", "idea-seed2", "erm-seed1", "erm-seed2"]  # display order from the tags
