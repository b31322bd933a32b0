"""Where the shipped study files live and how a name maps to a file (standard library only, so the
CLI can answer --help without importing the heavy modules)."""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def resolve_path(name_or_path: str | Path) -> Path:
    """A study name (-> studies/configs/<name>.yaml) or a path to a study file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path.expanduser().resolve()
    return CONFIG_DIR / f"{name_or_path}.yaml"


def shipped_studies() -> list[str]:
    """Study names under studies/configs (files starting with `_` are shared bases, not studies)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("_"))
