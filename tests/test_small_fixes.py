"""Small fixes of issue 17 item 12, each proven through the CLI or the library."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from helpers import cli_runner, ready_root

from tproxy_firewalld.cli import app

runner = cli_runner()


def tpfw(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
    return str(result.stdout)


def installed_at(root: Path) -> str:
    found = re.search(r"^recorded: .*installed (\S+)$", tpfw("status", "--root", str(root)), re.M)
    assert found, "status shows the record"
    return found.group(1)


def test_status_shows_the_time_of_the_install_that_last_changed_something(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ready_root(tmp_path / "img")
    record = root / "var/lib/tproxy-firewalld/installed.json"
    clock = [1767323045.0]  # 2026-01-02T03:04:05Z
    gmtime = time.gmtime
    monkeypatch.setattr(
        time, "gmtime", lambda secs=None: gmtime(clock[0] if secs is None else secs)
    )
    tpfw("install", "--root", str(root), "--kuma-dp-user", "0")
    assert installed_at(root) == "2026-01-02T03:04:05Z"
    before = record.read_bytes()
    clock[0] += 3600
    again = tpfw("install", "--root", str(root), "--kuma-dp-user", "0")
    assert "nothing to do" in again
    assert record.read_bytes() == before, "no record rewritten just for a timestamp"
    assert installed_at(root) == "2026-01-02T03:04:05Z"
    tpfw("install", "--root", str(root), "--kuma-dp-user", "0", "--redirect-inbound-port", "15007")
    assert installed_at(root) == "2026-01-02T04:04:05Z"
