"""The stack matrix's own machinery: scripts/stacks.toml, scripts/test-stacks' reading of pytest's
reports, and the stack table scripts/compat-table renders. (The stacks themselves run in
scripts/test-stacks, not here.) Runs in the main suite only: like the scripts, it needs
Python 3.11 (tomllib); scripts/test-stacks leaves it out of the stacks' unit suites."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str) -> ModuleType:
    # not named test_stacks: pytest has that name for this file
    loader = importlib.machinery.SourceFileLoader(
        "script_" + name.replace("-", "_"), str(REPO / "scripts" / name)
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


runner = load_script("test-stacks")
compat_table = load_script("compat-table")


def test_floors_are_what_the_oldest_stack_pins() -> None:
    """pyproject.toml's floors say exactly what is tested: each is the lowest pin of any stack,
    and requires-python's is the lowest Python of any stack."""
    stacks, _ = runner.load_stacks(runner.STACKS_FILE)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        floors = [s.version for s in req.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{text}: one >= floor"
        pinned = [
            Version(version)
            for stack in stacks
            for name, version in stack.pins.items()
            if runner.canonical(name) == runner.canonical(req.name)
        ]
        assert pinned, f"{req.name}: no stack pins it"
        assert min(pinned) == Version(floors[0]), f"{req.name}: floor {floors[0]}, lowest pin"
        assert all(req.specifier.contains(v) for v in pinned), f"{req.name}: a pin outside {text}"
    floor = re.fullmatch(r">=\s*(3\.\d+)", project["requires-python"])
    assert floor, project["requires-python"]
    minors = [".".join(s.python.split(".")[:2]) for s in stacks if s.python != "root"]
    assert min(minors, key=Version) == floor.group(1)


def test_stack_definitions_are_checked(tmp_path: Path) -> None:
    stacks, tools = runner.load_stacks(runner.STACKS_FILE)
    assert {"rhel9", "newest"} <= {s.name for s in stacks}
    assert all(s.live for s in stacks if s.name in ("rhel9", "newest"))
    assert "ansible-core" not in " ".join(runner.test_tools(tools))
    bad = tmp_path / "stacks.toml"
    for body in (
        '[stacks.x]\ntitle = "x"\npython = "3.9.18"\npins = { lxml = ">=4" }\n',  # not exact
        '[stacks.x]\ntitle = "x"\npython = "3.9.18"\n',  # neither pins nor resolve
        '[stacks.x]\ntitle = "x"\npython = "root"\nresolve = "newest"\n',  # root without root
        '[stacks.x]\ntitle = "x"\npython = "3.9.18"\nresolve = "newest"\nlve = true\n',  # typo
    ):
        bad.write_text(body)
        with pytest.raises(SystemExit):
            runner.load_stacks(bad)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_xfail" time="0.1">
  <skipped type="pytest.xfail" message="known"/></testcase>
<testcase classname="tests.test_a" name="test_bad[a.b]" time="0.1">
  <failure message="ValueError: stderr not separately captured">def test_bad():
&gt;       out = result.stderr

tests/test_a.py:12:
_ _ _
    def stderr(self):
&gt;       raise ValueError("stderr not separately captured")
E       ValueError: stderr not separately captured

/x/venv/lib/python3.12/site-packages/click/testing.py:149: ValueError</failure></testcase>
<testcase classname="tests.test_a" name="test_assert" time="0.1">
  <failure message="assert 1 == 0">&gt;       assert f() == 0
E       assert 1 == 0
E        +  where 1 = f()

tests/test_a.py:20: AssertionError</failure></testcase>
<testcase classname="" name="tests.test_b" time="0">
  <error message="collection failure">tests/test_b.py:3: in &lt;module&gt;
    from tproxy_firewalld.entries import Rule
tproxy_firewalld/entries.py:69: in &lt;module&gt;
    Entry = Chain | Rule | Passthrough
E   TypeError: unsupported operand type(s) for |: 'type' and 'type'</error></testcase>
<testcase classname="tests.test_a" name="test_skip" time="0">
  <skipped type="pytest.skip" message="no root"/></testcase>
</testsuite></testsuites>
"""


def test_junit_counts_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "report.xml"
    path.write_text(JUNIT)
    result = runner.parse_junit(path)
    counts = {k: result[k] for k in ("passed", "failed", "errors", "skipped", "xfailed")}
    assert counts == {"passed": 1, "failed": 2, "errors": 1, "skipped": 1, "xfailed": 1}
    by_name = {f["name"]: f for f in result["failures"]}
    assert by_name["test_bad[a.b]"]["reason"] == (
        "ValueError: stderr not separately captured (click/testing.py:149, from tests/test_a.py:12)"
    )
    assert by_name["test_assert"]["reason"] == "assert 1 == 0 (tests/test_a.py:20)"
    assert by_name["tests.test_b"]["kind"] == "collection error"
    assert by_name["tests.test_b"]["reason"] == (
        "TypeError: unsupported operand type(s) for |: 'type' and 'type' "
        "(tproxy_firewalld/entries.py:69, from tests/test_b.py:3)"
    )
    assert result["skips"] == ["tests.test_a.test_skip: no root"]


def entry(name: str, ok: bool, **more: Any) -> dict[str, Any]:
    unit = {"ok": ok, "passed": 10 if ok else 8, "failed": 0 if ok else 2, "errors": 0,
            "skipped": 0, "xfailed": 1, "seconds": 1.0, "exit_code": 0 if ok else 1,
            "failures": [] if ok else [
                {"test": "tests.t.test_x", "name": "test_x", "kind": "failed",
                 "reason": "ValueError: stderr not separately captured (click/testing.py:149, from tests/t.py:5)"},
                {"test": "tests.t.test_y", "name": "test_y", "kind": "failed",
                 "reason": "ValueError: stderr not separately captured (click/testing.py:149, from tests/t.py:9)"},
            ]}  # fmt: skip
    return {
        "stack": name, "title": name.upper(), "python": "3.12.1", "interpreter": "3.12.1",
        "pins": {"lxml": "5.2.1"}, "runtime": {"lxml": "5.2.1", "typer": "0.28.0"},
        "test_tools": {"pytest": "9.0", "hypothesis": "6.1"}, "setup": {"ok": True},
        "unit": unit, "live": None, "live_firewalld": None, "passed": ok, "seconds": 1.0,
        "commit": "abc", "run": "now", **more,
    }  # fmt: skip


def test_stack_table() -> None:
    table, ok = compat_table.render_stacks([entry("a", True), entry("b", True)], ["a", "b"])
    assert ok
    row = next(line for line in table.splitlines() if line.startswith("| **a**"))
    assert "| 5.2.1 |" in row and "| in typer |" in row  # no click beside typer 0.28
    assert "10/10 passed (+1 known difference)" in row

    failing = entry("b", False, substituted={"lxml": "the nearest that installs"})
    table, ok = compat_table.render_stacks([entry("a", True), failing], ["a", "b"])
    assert not ok
    assert "**FAILED**: 2 failed; 8/10 passed" in table
    assert "5.2.1 [1]" in table and "[1] b, lxml: the nearest that installs" in table
    # the same failure from two tests is one line, with what it means
    assert "2 x failed: ValueError: stderr not separately captured (click/testing.py:149)" in table
    assert "click < 8.2" in table

    _, ok = compat_table.render_stacks([entry("a", True)], ["a", "b"])
    assert not ok, "a stack without results fails the table"
    _, ok = compat_table.render_stacks([entry("a", True, pytest_args=["-k", "x"])], ["a"])
    assert not ok, "a partial run does not count"
    live_wanted = entry("a", True, live_firewalld="1.3.3-1~deb12u2 (host, Debian 12)")
    table, ok = compat_table.render_stacks([live_wanted], ["a"])
    assert not ok and "not run" in table, "a live suite that should have run and did not"
