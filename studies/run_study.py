"""`python studies/run_study.py <study>`: the documented entry point, a thin wrapper over
studies/cli.py (installed also as the `idea-study` console script)."""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the `studies` package, never its files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from studies.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
