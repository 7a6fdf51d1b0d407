"""The package's shape: no import circles, no oversized modules, one style (ruff)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from babelflow.steps import PACKAGE, imported_modules

from .conftest import REPO

MAX_LINES = 450


def _modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """Lazy (function-level) imports count too: a circle is a circle even when it happens to load."""
    graph = {m: set(imported_modules(m)) for m in _modules()}
    assert _cycles(graph) == []


def test_no_oversized_modules():
    sizes = {m: len((PACKAGE / m).read_text().splitlines()) for m in _modules()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_library_code_raises_babelflow_error_not_system_exit():
    offenders = [m for m in _modules() if "SystemExit" in (PACKAGE / m).read_text()]
    assert offenders == []


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(REPO / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: tools/setup.sh installs it with the dev extras")
    proc = subprocess.run([ruff, "check", "src", "tests", "bench"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:]


def test_cli_starts_without_torch():
    """`babelflow --help` and the Snakefile's imports stay light: torch loads only when a command needs it."""
    code = ("import sys, babelflow.cli; babelflow.cli.build_parser(); import babelflow.config;"
            " print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
