"""The package's layering: every module imports on its own, and no two modules import each
other (outside ``TYPE_CHECKING``), so a feature module can be loaded, tested and read alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, subprocess_env

PACKAGE = REPO / "presenced"


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


# Each module in turn, after forgetting every presenced and wokkel module and the wokkel
# shims, as a fresh interpreter would see it (one process instead of one per module).
WALK = r'''
import importlib, sys, traceback
import twisted.python.compat as compat
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("presenced", "wokkel")
                   or m == "twisted.python.constants"]:
        del sys.modules[loaded]
    try:
        delattr(compat, "_PY3")
    except AttributeError:
        pass
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\n".join(failed))
sys.exit(1 if failed else 0)
'''


def test_every_module_imports_on_its_own():
    result = subprocess.run([sys.executable, "-c", WALK, *module_names()], cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path, name: str) -> set[str]:
    """Modules of the package that ``path`` imports at run time (any nesting level)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("presenced")}


def test_no_two_modules_import_each_other():
    names = set(module_names())
    graph = {}
    for name in names:
        path = REPO / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        graph[name] = {m for m in _imports(path, name) if m in names and m != name}
    mutual = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a in graph[b] and a < b)
    assert not mutual, mutual
