"""The library's imports run one way: no cycle among idea's modules, and the methods never see the trainer.
Read from the source with `ast` (TYPE_CHECKING imports count too), so nothing is imported."""
import ast
from pathlib import Path

import idea

ROOT = Path(idea.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imported(name: str) -> set[str]:
    """idea's modules that module `name` imports by any import statement (a submodule, not its package,
    for `from idea.data import readers`)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            out |= subs if len(subs) == len(node.names) else subs | {base}
    return (out & set(MODULES)) - {name}


def test_the_methods_never_import_the_trainer():
    assert "idea.trainer" not in imported("idea.methods")
    assert "idea.methods" in imported("idea.trainer")  # the one way it runs


def test_no_import_cycle_among_idea_modules():
    graph = {name: imported(name) for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name):] + (name,))}"
        if name not in done:
            for other in sorted(graph[name]):
                visit(other, path + (name,))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
