"""Shared test setup: quiet telemetry and locate the shared real datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set at import, before any test module imports ray or mlflow.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one torch thread per worker, so 2 workers fill 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Test files that run whole studies (Ray, MLflow, several driver processes), longest first. They are
# collected first, so under `pytest -n 2 --dist loadfile` both workers start on them and the quick
# files fill the gaps, instead of a long study file starting last.
STUDY_FILES_FIRST = ("test_study_environment.py", "test_study_signals.py", "test_study_state.py",
                     "test_study_resume.py", "test_study_smoke.py", "test_tracking_server.py", "test_study_oracle.py",
                     "test_study_repeat.py", "test_study_address.py", "test_mlflow_ui.py", "test_study_config.py",
                     "test_study_budget.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return STUDY_FILES_FIRST.index(name) if name in STUDY_FILES_FIRST else len(STUDY_FILES_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept


def shared_data_dir() -> Path | None:
    """`../shared/data` beside the project root, else $IDEA_DATA_DIR; None when neither exists."""
    # PROJECT_ROOT.parent is what `Path(__file__).resolve().parents[2].parent` gives in tests/idea/*.py.
    candidates = [PROJECT_ROOT.parent / "shared" / "data"]
    env = os.environ.get("IDEA_DATA_DIR")
    if env:
        candidates.append(Path(env).expanduser())
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (read-only); tests using it skip when they are absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data not found: real-dataset tests need the shared datasets")
    return path


@pytest.fixture(scope="session")
def synthetic_data():
    """The default synthetic dataset (seed 0), generated once per session (it takes a few seconds)."""
    from idea.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig())


@pytest.fixture(scope="session")
def beauty_data(shared_data):
    """Beauty from the shared TiCoSeRec files, loaded once per session."""
    from idea.data import load_dataset

    return load_dataset("beauty", data_dir=shared_data)
