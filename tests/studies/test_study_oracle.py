"""Oracle selection (`oracle: true`): each arm's configuration picked on the first test window, retrained with
the final seeds and reported only on the later windows. A real tiny study (local Ray, SQLite MLflow), read
back through the store and analysis; and the selection window's rules on their own."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.compare import compare
from analysis.load import read_study
from idea.config import TrainConfig
from idea.contract import Stage, Tag, oracle_key
from idea.metrics import summary
from idea.trainer import Trainer, read_checkpoint
from studies.config import load_study
from studies.data import study_split, without_tests
import studies.oracle as oracle_stage
from studies.oracle import OracleScore, reuse_final, run_oracle, selection_window
from studies.experiments import Resources
from studies.folder import StudyFolder
from studies.plan import Selection, StageContext
from studies.tracking import StudyRun
from tests.studies.study_cli import PROJECT_ROOT, TINY_ARMS, Store, study_env, tiny_study

STUDY = "oracle-tiny"
SEEDS = (1, 2)
KEY = oracle_key("w1", "ndcg_at_10")


# The study's CLI with erm's oracle made to retrain even if its pick is the validation pick (the oracle is told
# another trial was picked on validation), so both of the oracle's paths run whatever the tiny data picks.
RETRAIN_ERM = """
import dataclasses, sys
import studies.driver as driver
real = driver.run_oracle
def run_oracle(ctx, plan, search, validation, *rest):
    if plan.arm == "erm":
        validation = dataclasses.replace(validation, trial_id="another")
    return real(ctx, plan, search, validation, *rest)
driver.run_oracle = run_oracle
from studies.cli import main
sys.exit(main(sys.argv[1:]))
"""
SAMPLES = {"erm": 3, "idea": 1}  # idea's one trial is both picks: its oracle reuses its final runs


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(completed process, study folder, store) of a tiny erm + idea study with `oracle: true`, 2 seeds: erm's
    oracle retrains its pick, idea's (one trial) copies its final runs."""
    root = tmp_path_factory.mktemp("oracle")
    path = tiny_study(root / f"{STUDY}.yaml", ("erm", "idea"))
    spec = yaml.safe_load(path.read_text())
    spec.update(oracle=True, seeds=len(SEEDS))
    for arm, n in SAMPLES.items():
        spec["arms"][arm]["num_samples"] = n
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-c", RETRAIN_ERM, str(path), "--out", str(root / "out"), "--concurrency",
                           "2"], cwd=PROJECT_ROOT, env=study_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, root / "out" / STUDY, Store(root / "out" / STUDY, STUDY)


def _checkpoint(study_dir: Path, arm: str, trial_id: str) -> Path:
    found = sorted((study_dir / "ray" / f"{arm}-search").glob(f"*{trial_id}*/checkpoint_*/trainer.pt"))
    assert found, f"no checkpoint of {arm} trial {trial_id}"
    return found[-1]


def test_each_arm_retrains_the_trial_best_on_the_first_window(oracle):
    proc, _, store = oracle
    for arm in TINY_ARMS:
        search = store.nested(Stage.SEARCH, arm, "FINISHED")
        scores = {r.data.tags[Tag.TRIAL_ID]: r.data.metrics[KEY] for r in search}
        assert len(scores) == SAMPLES[arm]
        runs = store.nested(Stage.ORACLE, arm, "FINISHED")
        assert sorted(r.info.run_name for r in runs) == [f"{arm}-oracle-seed{s}" for s in SEEDS]
        picked = {r.data.tags[Tag.SELECTED_TRIAL] for r in runs}
        top = {t for t, v in scores.items() if v == max(scores.values())}  # ties: the first the grid lists
        assert len(picked) == 1 and picked <= top, (arm, scores, picked)
        assert f"[{arm}-oracle] w1 ndcg_at_10" in proc.stderr
        # the validation pick is still the final stage's, whatever the oracle chose
        valid = {r.data.tags[Tag.TRIAL_ID]: r.data.metrics["best_valid_ndcg_at_10"] for r in search}
        final = {r.data.tags[Tag.SELECTED_TRIAL] for r in store.nested(Stage.FINAL, arm, "FINISHED")}
        assert len(final) == 1 and valid[final.pop()] == max(valid.values())
    erm = [r.data.metrics[KEY] for r in store.nested(Stage.SEARCH, "erm", "FINISHED")]
    assert len(set(erm)) > 1  # the pick was a choice


def test_a_trial_score_is_its_best_state_on_w1_and_no_other_window(oracle):
    """Recomputed here from the trial's checkpoint: the logged score is w1's. Scoring on a later window (which
    the oracle reports) gives another number, so a mix-up of windows fails this."""
    _, study_dir, store = oracle
    study = load_study(study_dir / "study.yaml")
    _, split = study_split(study)
    for arm in TINY_ARMS:
        run = store.nested(Stage.ORACLE, arm, "FINISHED")[0]
        trial_id = run.data.tags[Tag.SELECTED_TRIAL]
        search = next(r for r in store.nested(Stage.SEARCH, arm) if r.data.tags[Tag.TRIAL_ID] == trial_id)
        state = _checkpoint(study_dir, arm, trial_id)
        config = TrainConfig.from_dict(read_checkpoint(state)["config"])
        trainer = Trainer(config, without_tests(split))
        trainer.load(state)
        model = trainer.best_model()
        by_window = {w: summary(trainer.evaluate_events(split.tests[w], w, model), w)["ndcg_at_10"]
                     for w in split.tests}
        assert math.isclose(search.data.metrics[KEY], by_window["w1"], rel_tol=1e-9, abs_tol=1e-12)
        assert by_window["w1"] != by_window["w3"]


def test_analysis_reports_the_oracle_only_after_the_first_window(oracle):
    _, study_dir, _ = oracle
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    results = read_study(uri, STUDY).results()
    assert set(results.loc[results["stage"] == Stage.ORACLE, "part"]) == {"valid", "w1", "w2", "w3"}  # all stored
    table = compare([(uri, STUDY)])
    oracle_rows = table[table["selection"] == "oracle"]
    assert set(oracle_rows["part"]) == {"w2", "w3"} and set(oracle_rows["arm"]) == {"idea"}
    assert set(table.loc[table["selection"] == "validation", "part"]) == {"valid", "w1", "w2", "w3"}
    md = (study_dir / "report" / "summary.md").read_text()
    assert "Selection on the first test window (oracle): metric per window" in md
    opening = md.split("\n**", 1)[1].split("\n\n", 2)[:2]  # the verdict and its detail
    assert opening[0].startswith("idea ") and "oracle" not in " ".join(opening).lower()


def _history(store: Store, run, key: str) -> list[tuple[int, float, int]]:
    return [(m.step, m.value, m.timestamp) for m in store.client.get_metric_history(run.info.run_id, key)]


def test_an_oracle_pick_that_is_the_validation_pick_copies_the_final_runs(oracle):
    """idea's one trial is both picks: its oracle runs are copies of its final runs (tagged same_as, with their
    seeds, params and every metric's history), and it is not retrained (no Tune experiment idea-oracle); its
    oracle results are its final results. erm's oracle, told another trial was the validation pick, retrained."""
    proc, study_dir, store = oracle
    final = {r.info.run_id: r for r in store.nested(Stage.FINAL, "idea", "FINISHED")}
    copies = store.nested(Stage.ORACLE, "idea", "FINISHED")
    assert sorted(r.info.run_name for r in copies) == [f"idea-oracle-seed{s}" for s in SEEDS]
    assert sorted(r.data.tags[Tag.SAME_AS] for r in copies) == sorted(final)
    for copy in copies:
        source = final[copy.data.tags[Tag.SAME_AS]]
        assert copy.data.tags[Tag.SEED] == source.data.tags[Tag.SEED]
        assert copy.data.params == source.data.params and copy.data.metrics == source.data.metrics
        assert all(_history(store, copy, key) == _history(store, source, key) for key in source.data.metrics)
        assert len(store.steps(source)) >= 1 and any(k.startswith("test_w3_") for k in source.data.metrics)
    assert not (study_dir / "ray" / "idea-oracle").exists() and (study_dir / "ray" / "erm-oracle").is_dir()
    assert "[idea-oracle] w1 ndcg_at_10" in proc.stderr and "its final runs are the oracle's, not retrained" in proc.stderr
    erm = store.nested(Stage.ORACLE, "erm", "FINISHED")
    assert len(erm) == len(SEEDS) and not any(Tag.SAME_AS in r.data.tags for r in erm)
    results = pd.read_csv(study_dir / "final_results.csv")
    idea = results[results["arm"] == "idea"]
    assert set(idea.loc[idea["stage"] == Stage.ORACLE, "run_id"]) == {r.info.run_id for r in copies}
    keys = ["seed", "part", "subset", "metric", "k"]
    tables = [idea[idea["stage"] == stage].drop(columns=["stage", "run_id"]).sort_values(keys).reset_index(drop=True)
              for stage in (Stage.ORACLE, Stage.FINAL)]
    pd.testing.assert_frame_equal(*tables)


def _resumed(study_dir: Path, tmp_path: Path) -> tuple[Store, StudyRun, pd.DataFrame]:
    """A copy of the study's store as a resume finds it, its parent run, and idea's final results."""
    db = tmp_path / "mlflow.db"
    shutil.copy(study_dir / "mlflow.db", db)
    copied = Store(study_dir, STUDY, db=db)
    parent = copied.nested(Stage.STUDY)[0]
    study_run = StudyRun(f"sqlite:///{db}", copied.experiment_id, parent.info.run_id, {Tag.STUDY: STUDY})
    results = pd.read_csv(study_dir / "final_results.csv")
    return copied, study_run, results[(results["arm"] == "idea") & (results["stage"] == Stage.FINAL)]


def test_a_resumed_oracle_keeps_its_finished_copies_and_replaces_one_cut_short(oracle, tmp_path):
    """Copying again (a --resume repeats the oracle stage) adds nothing while the copies are FINISHED; a copy
    that an interruption left KILLED is made again, once."""
    _, study_dir, _ = oracle
    copied, study_run, final = _resumed(study_dir, tmp_path)
    first = {r.data.tags[Tag.SAME_AS]: r.info.run_id for r in copied.nested(Stage.ORACLE, "idea")}
    again = reuse_final(study_run, "idea", final)
    assert {r.info.run_id for r in copied.nested(Stage.ORACLE, "idea")} == set(first.values())
    assert set(again["run_id"]) == set(first.values()) and set(again["stage"]) == {Stage.ORACLE}
    source, cut = next(iter(first.items()))
    copied.client.set_terminated(cut, "KILLED")
    again = reuse_final(study_run, "idea", final)
    remade = [r for r in copied.nested(Stage.ORACLE, "idea", "FINISHED") if r.data.tags[Tag.SAME_AS] == source]
    assert len(remade) == 1 and remade[0].info.run_id != cut
    assert len(copied.nested(Stage.ORACLE, "idea")) == len(SEEDS) + 1
    assert set(again["run_id"]) == (set(first.values()) - {cut}) | {remade[0].info.run_id}


def test_a_resume_whose_rescoring_picks_another_trial_keeps_the_copies(oracle, tmp_path, monkeypatch, capsys):
    """A resume scores the search trials again; should another trial now come first (a tie broken otherwise,
    as a GPU's reductions may), the oracle keeps the copies its first run made instead of retraining beside
    them: no Tune experiment, no new runs, a warning that says so."""
    _, study_dir, _ = oracle
    copied, study_run, final = _resumed(study_dir, tmp_path)
    study = load_study(study_dir / "study.yaml")
    _, split = study_split(study)
    before = {r.info.run_id for r in copied.nested(Stage.ORACLE, "idea")}
    picked = copied.nested(Stage.FINAL, "idea", "FINISHED")[0].data.tags[Tag.SELECTED_TRIAL]
    validation = Selection("idea", picked, {}, 0.0, "")
    monkeypatch.setattr(oracle_stage, "score_search",
                        lambda *_: [OracleScore("another", {}, 0.5, ""), OracleScore(picked, {}, 0.4, "")])

    def retrain(*_, **__):
        raise AssertionError("the oracle retrained beside its copies")

    monkeypatch.setattr(oracle_stage, "run_final", retrain)
    ctx = StageContext(study, STUDY, split, Resources(), StudyFolder(study_dir), study_run, True)
    out = run_oracle(ctx, ctx.plan("idea"), None, validation, final)
    assert {r.info.run_id for r in copied.nested(Stage.ORACLE, "idea")} == before
    assert set(out["run_id"]) == before and set(out["stage"]) == {Stage.ORACLE}
    assert not (study_dir / "ray" / "idea-oracle").exists()
    assert f"picked the validation pick {picked} and copied its final runs" in capsys.readouterr().err


def test_the_selection_window_is_the_first_and_later_ones_must_exist(synthetic_data):
    from idea.splits import SplitConfig, make_split

    temporal = make_split(synthetic_data, SplitConfig("temporal", 20))
    assert list(temporal.tests)[0] == "w1" and len(temporal.tests) >= 2
    assert selection_window(temporal) == "w1"
    loo = make_split(synthetic_data, SplitConfig("loo", 20))
    with pytest.raises(ValueError, match="at least two test windows"):
        selection_window(loo)


def test_a_study_file_asking_an_oracle_of_one_test_part_is_refused(tmp_path):
    from studies.config import from_dict

    spec = yaml.safe_load(tiny_study(tmp_path / "s.yaml").read_text())
    for bad in ({"protocol": "loo"}, {"cuts": ["2020-01-01", "2020-02-01", "2020-03-01"]}):
        with pytest.raises(ValueError, match="oracle: true needs at least two test windows"):
            from_dict({**spec, "oracle": True, **bad})
    with pytest.raises(ValueError, match="oracle must be true or false"):
        from_dict({**spec, "oracle": "yes"})
    assert from_dict({**spec, "protocol": "loo"}).oracle is False
