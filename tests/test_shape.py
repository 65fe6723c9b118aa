"""The core's shape (issue 18, "Shape"): the pure planner imports no I/O library."""

from __future__ import annotations

import subprocess
import sys


def test_planning_imports_neither_lxml_nor_dbus() -> None:
    # a fresh interpreter: what importing the planner alone pulls in
    code = (
        "import sys, tproxy_firewalld.planning\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lxml', 'dbus_next')\n"
        "    or m in ('tproxy_firewalld.directxml', 'tproxy_firewalld.firewalld',\n"
        "             'tproxy_firewalld.observe'))\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
