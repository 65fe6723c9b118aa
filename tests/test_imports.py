"""The package's imports run one way, at module top (issue 18, "No hidden cycles"): no module
imports another of ours inside a function to dodge a cycle. What stays inside functions is
there to keep start-up cheap, and is listed here with its reason."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tproxy_firewalld

PACKAGE = Path(tproxy_firewalld.__file__).parent

#: in-function imports of our own modules that are deliberate: (module, imported) -> reason
LAZY: dict[tuple[str, str], str] = {}
#: not checked here: cli's imports are lazy so that --help and typer's parsing stay fast;
#: api, planning, transaction and report are being restructured (issue 18, "Steps own ...")
UNCHECKED = {"cli", "api", "planning", "transaction", "report"}


def _ours(node: ast.AST, here: Path) -> list[str]:
    """The modules of ours an import statement names."""
    if isinstance(node, ast.ImportFrom) and node.module:
        if node.module == "tproxy_firewalld":
            return [a.name for a in node.names if (here / f"{a.name}.py").exists()]
        if node.module.startswith("tproxy_firewalld."):
            return [node.module.split(".")[1]]
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("tproxy_firewalld.")]
    return []


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """A module's imports of ours at module top, and those inside functions (line, module)."""
    tree = ast.parse(path.read_text())
    top = {m for node in tree.body for m in _ours(node, path.parent)}
    inner: list[tuple[int, str]] = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                inner += [(node.lineno, m) for m in _ours(node, path.parent)]
    return top, inner


def test_no_imports_of_ours_inside_functions_but_the_deliberate_ones() -> None:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in UNCHECKED:
            continue
        for line, module in _imports(path)[1]:
            if (path.stem, module) not in LAZY:
                found.append(f"{path.name}:{line} imports {module}")
    assert found == [], "import at module top (move what is shared to a lower module)"


def test_module_top_imports_have_no_cycle() -> None:
    graph = {p.stem: _imports(p)[0] for p in PACKAGE.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path[path.index(module) :], module))
        if module in done:
            return
        for other in sorted(graph.get(module, ())):
            visit(other, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_the_core_imports_no_heavy_library() -> None:
    """Settings, rendering, recognition, the record and firewalld.conf import none of jinja2,
    lxml, dbus-next, yaml, rich or tempfile (the coming nftables store builds on them)."""
    code = (
        "import sys\n"
        "import tproxy_firewalld.kuma_leftovers, tproxy_firewalld.ruleset, tproxy_firewalld.record\n"
        "import tproxy_firewalld.fwconf, tproxy_firewalld.target, tproxy_firewalld.firewalld\n"
        "heavy = ('jinja2', 'lxml', 'dbus_next', 'yaml', 'rich', 'tempfile')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
