"""One declaration per setting drives the CLI, the library, Ansible and the README: each of
them is checked against it here, so they cannot drift apart."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO, cli_runner

from tproxy_firewalld.cli import app
from tproxy_firewalld.errors import ExitCode
from tproxy_firewalld.kuma import KumaSettings


def test_the_generated_docs_are_up_to_date() -> None:
    """README's settings table and the Ansible module's option docs (scripts/gen-docs)."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-docs"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    readme = (REPO / "README.md").read_text()
    for f in KumaSettings.fields():
        if not f.derived:
            assert f"| `{f.name}` |" in readme, f.name


def test_the_cli_options_are_the_table_flags() -> None:
    for command in ("render", "install", "diff"):
        help_text = cli_runner().invoke(app, [command, "--help"], terminal_width=200).stdout
        shown = set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text, re.M))
        flags = {f.flag for f in KumaSettings.flag_fields()}
        assert flags <= shown, (command, flags - shown)
        for f in KumaSettings.flag_fields():
            if f.kind != "list" or f.default:
                assert f"(default: {f.default_text})" in " ".join(help_text.split()), (
                    command,
                    f.flag,
                )


def test_every_exit_code_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert documented == {int(code) for code in ExitCode}
