"""Small fixes of issue 17 item 12, each proven through the CLI or the library."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers import cli_runner, ready_root

from tproxy_firewalld.cli import app
from tproxy_firewalld.directxml import parse_direct_xml

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


def test_temp_files_of_a_killed_run_are_removed_by_the_next_run_under_the_lock(
    tmp_path: Path,
) -> None:
    from tproxy_firewalld import files

    root = ready_root(tmp_path / "img")
    tpfw("install", "--root", str(root), "--kuma-dp-user", "0")
    state, etc = root / "var/lib/tproxy-firewalld", root / "etc/firewalld"
    # what a run killed between writing and renaming leaves: the real temp files
    stale = [
        files.prepare_write(state / "installed.json", b"{}"),
        files.prepare_write(etc / "direct.xml", b"<direct/>"),
        files.prepare_write(etc / "direct.xml.old", b"<direct/>"),
        files.prepare_write(etc / "firewalld.conf", b"RFC3964_IPv4=no\n"),
    ]
    others = [
        etc / ".zones.abcdefgh.tmp",
        etc / "direct.xml.Ab3dE9",
        state / ".installed.json.x.tmp",
    ]
    for path in others:
        path.write_text("somebody else's")
    (etc / ".direct.xml.symlink1.tmp").symlink_to(etc / "firewalld.conf")
    tpfw("install", "--root", str(root), "--kuma-dp-user", "0", "--dry-run")
    assert all(p.exists() for p in stale), "a dry run holds no lock and removes nothing"
    assert "nothing to do" in tpfw("install", "--root", str(root), "--kuma-dp-user", "0")
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in others) and (etc / ".direct.xml.symlink1.tmp").is_symlink()


STRAY_WORDINGS = (
    "Got unexpected extra argument(s) (stray)",
    "Got unexpected extra argument (stray)",
)
STRAY = STRAY_WORDINGS[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "-o", "json", "--bogus"], "No such option: --bogus"),
        # click < 8.1 (RHEL 9's EPEL 8.0.3) says "argument", later ones "argument(s)"
        (["uninstall", "--output=json", "stray"], STRAY),
        (["install", "stray", "-ojson"], STRAY),
        (
            ["install", "--output", "json", "--redirect-dns", "false"],
            "--redirect-dns false: kumactl reads this as --redirect-dns (true) and ignores "
            "'false'; write --redirect-dns=false",
        ),
        (
            ["diff", "-o", "json", "--ip-family-mode"],
            "Option '--ip-family-mode' requires an argument.",
        ),
    ],
)
def test_usage_errors_give_the_error_document_with_output_json(
    args: list[str], message: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    said = doc["error"]["message"]
    assert said == message or (message == STRAY and said in STRAY_WORDINGS), said
    assert doc == {
        "schema": "tproxy-firewalld/error/1",
        "error": {"exit_code": 2, "kind": "UsageError", "message": said, "setting": None},
    }
    assert f"Error: {said}" in result.stderr


def test_usage_errors_without_output_json_print_no_document() -> None:
    for args in (["status", "--bogus"], ["status", "-o", "json", "-o", "text", "--bogus"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and result.stdout == ""


def vnet_rules(tmp_path: Path, *args: str) -> list[tuple[str, ...]]:
    result = runner.invoke(
        app, ["render", "--direct-xml", str(tmp_path / "none.xml"), "--kuma-dp-user", "0", *args]
    )
    assert result.exit_code == 0, result.stderr
    config = parse_direct_xml(result.stdout.encode())
    return [(r.ipv, *r.args) for r in config.rules if r.chain == "PREROUTING" and "-i" in r.args]


@pytest.mark.parametrize(
    ("args", "rendered"),
    [
        # an IPv6 network under --ip-family-mode ipv4: no IPv6 rules at all
        (["--ip-family-mode", "ipv4", "--vnet", "br0:fd00::/0"], set()),
        # kumactl's map by interface: the later entry replaces the /0
        (["--vnet", "docker0:0.0.0.0/0", "--vnet", "docker0:172.17.0.0/16"], {"172.17.0.0/16"}),
        (["--vnet", "br0:::/0", "--vnet", "br0:fd00::/8"], {"fd00::/8"}),
        (["--kuma-version", "2.7", "--redirect-inbound-port-v6", "0", "--vnet", "br0:::/0"], set()),
        (
            [
                "--kuma-version",
                "2.7",
                "--vnet",
                "docker0:0.0.0.0/0",
                "--vnet",
                "docker0:10.0.0.0/8",
            ],
            {"10.0.0.0/8"},
        ),
        # the other family's entry does not replace it (Kuma keeps one map per family)
        (["--vnet", "docker0:10.0.0.0/8,docker0:fd00::/8"], {"10.0.0.0/8", "fd00::/8"}),
    ],
)
def test_vnet_slash_zero_is_accepted_where_kumactl_renders_nothing_for_it(
    tmp_path: Path, args: list[str], rendered: set[str]
) -> None:
    rules = vnet_rules(tmp_path, *args)
    assert {r[r.index("-d") + 1] for r in rules if "-d" in r} == rendered


@pytest.mark.parametrize(
    "args",
    [
        ["--vnet", "docker0:172.17.0.0/16", "--vnet", "docker0:0.0.0.0/0"],
        ["--vnet", "br0:fd00::/0"],
        ["--ip-family-mode", "ipv4", "--vnet", "br0:fd00::/8,docker0:10.0.0.0/0"],
    ],
)
def test_vnet_slash_zero_that_would_be_rendered_is_refused(tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["render", "--direct-xml", str(tmp_path / "none.xml"), *args])
    assert result.exit_code == 2
    assert "a /0 network matches every address" in result.stderr
    assert result.stderr.count("\n") == 1
