"""The layout's promises, checked on the source: packages, sizes, dependency rules, no cycles.

Imports inside functions count as edges too: a cycle hidden behind a lazy import is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "tasks", "webhooks")
MAX_LINES = 600
MAX_LOOSE = 4


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports anywhere in its body (function-level included)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            targets += [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if name.startswith(target + "."):
                continue  # a module's own packages are always initialised before it
            if target in MODULES and target != name:
                found.add(target)
            # Importing a module runs its packages' __init__ first.
            parts = target.split(".")
            for cut in range(1, len(parts)):
                parent = ".".join(parts[:cut])
                if parent in MODULES and parent != name and not name.startswith(parent + "."):
                    found.add(parent)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_documented(name: str) -> None:
    path = MODULES[name]
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no docstring"


def test_bot_has_few_loose_modules() -> None:
    loose = [p.name for p in (ROOT / "bot").glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= MAX_LOOSE, loose


FORBIDDEN = ("flask", "celery", "kombu", "werkzeug", "webhooks", "tasks")


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("bot")))
def test_bot_imports_no_web_or_queue(name: str) -> None:
    if name.startswith("bot.cli"):
        return  # the command line is the one place that starts adapters
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            mods = [node.module or ""]
        for mod in mods:
            assert mod.split(".")[0] not in FORBIDDEN, f"{name} imports {mod}"


TORCH_LIBS = ("torch", "transformers", "tokenizers")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_model_libraries_only_in_engine(name: str) -> None:
    if name.startswith("bot.engine"):
        return
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            mods = [node.module or ""]
        for mod in mods:
            assert mod.split(".")[0] not in TORCH_LIBS, f"{name} imports {mod}"
