"""An arm with `num_samples: 0` has no search: its final seeds train its `first` point, a fine-tuning arm's
seed s from the base arm's seed s (the long studies' mode, docs/results: IDEA at its authors' budget). A
tiny erm + idea study run through the CLI: no search run or experiment, no search start, the first point
in every final run, the paired starts, and the report."""
from __future__ import annotations

import pytest
import yaml

from studies.plan import NO_SEARCH
from tests.studies.study_cli import TINY_ARMS, Store, run_study, tiny_study

STUDY = "nosearch"


def test_arms_without_a_search_train_their_first_point_from_paired_starts(tmp_path):
    path = tiny_study(tmp_path / f"{STUDY}.yaml", ("erm", "idea"))
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = 2
    for arm in spec["arms"].values():
        arm["num_samples"] = 0
    path.write_text(yaml.safe_dump(spec))
    done = run_study(str(path), "--out", str(tmp_path), "--concurrency", "1", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    study_dir, store = tmp_path / STUDY, Store(tmp_path / STUDY, STUDY)
    assert store.nested("search") == []
    assert sorted(p.name for p in (study_dir / "ray").iterdir()) == ["erm-final", "idea-final"]
    assert sorted(p.name for p in (study_dir / "starts").iterdir()) == ["erm-seed1.pt", "erm-seed2.pt"]
    for arm in ("erm", "idea"):
        runs = store.nested("final", arm, "FINISHED")
        assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"], arm
        for run in runs:
            assert run.data.tags["selected_trial"] == NO_SEARCH
            first = TINY_ARMS[arm]["first"]
            assert {k: float(run.data.params[k]) for k in first} == pytest.approx(first), arm
    erm = {r.data.tags["seed"]: r for r in store.nested("final", "erm")}
    for run in store.nested("final", "idea"):
        seed = run.data.tags["seed"]
        assert run.data.params["init_from"] == f"starts/erm-seed{seed}.pt"
        assert run.data.tags["init_run_id"] == erm[seed].info.run_id
    assert "[idea] no search (num_samples 0): the final seeds train its first point" in done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["arm", "trials"])  # the summary table
    assert [line.split()[:3] for line in lines[header + 1:header + 3]] == [["erm", "no", "search"], ["idea", "no", "search"]]
    assert "optuna-dashboard" not in done.stdout and not (study_dir / "optuna.db").exists()
    summary = (study_dir / "report" / "summary.md").read_text()
    assert "idea against erm" in summary
