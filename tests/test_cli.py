"""The CLI surface: help that explains, one-line errors, exit codes (no system touched)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_runner, ready_root

from tproxy_firewalld.cli import app
from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.kuma import OWNER, KumaSettings

COMMANDS = ["render", "install", "uninstall", "diff", "status"]
runner = cli_runner()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_explained_in_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    options = result.stdout.split("Options:", 1)[1]
    entries = re.findall(r"^  (-[^\n]*?)(?:\s{2,}(\S[^\n]*))?$", options, re.M)
    assert entries, result.stdout
    for names, text in entries:
        assert text.strip(), f"{command}: {names.strip()} has no help text"
    assert result.stdout.split("Options:")[0].count("\n") > 3, "a description, not just usage"


def test_settings_flags_on_install_render_diff() -> None:
    for command in ("render", "install", "diff"):
        out = runner.invoke(app, [command, "--help"], terminal_width=200).stdout
        for flag in (
            "--kuma-dp-user",
            "--exclude-outbound-ports-for-uids",
            "--redirect-all-dns-traffic",
            "--vnet",
            "--config",
        ):
            assert flag in out, (command, flag)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["render", "--redirect-inbound-port", "0"],
            2,
            "Error: --redirect-inbound-port: value '0' is not a valid port (uint16 in the range [1, 65535])",
        ),
        (
            ["install", "--redirect-dns", "--redirect-all-dns-traffic"],
            2,
            "Error: only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified",
        ),
        (
            ["render", "--exclude-outbound-ips", "1.2.3.4 -j ACCEPT"],
            2,
            "Error: --exclude-outbound-ips: invalid IP address: '1.2.3.4 -j ACCEPT'",
        ),
        (
            ["diff", "--vnet", "eth0"],
            2,
            "Error: --vnet: invalid virtual network definition: 'eth0'",
        ),
        (
            ["render", "--config", "/nonexistent.yaml"],
            2,
            "Error: unable to access configuration file '/nonexistent.yaml'",
        ),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(args: list[str], code: int, message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_kumactl_boolean_spelling(tmp_path: Path) -> None:
    off = runner.invoke(
        app,
        [
            "render",
            "--direct-xml",
            str(tmp_path / "none.xml"),
            "--redirect-inbound=false",
            "--kuma-dp-user",
            "0",
        ],
    )
    assert off.exit_code == 0, off.stderr
    assert "inbound traffic redirection is disabled" in off.stdout
    bad = runner.invoke(app, ["render", "--redirect-inbound=maybe"])
    assert bad.exit_code == 2 and "not a valid boolean" in bad.stderr


def test_render_keeps_foreign_entries_and_refuses_broken_files(tmp_path: Path) -> None:
    path = tmp_path / "direct.xml"
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<direct>\n  <rule ipv="ipv4" table="filter" chain="INPUT" priority="0">-p tcp --dport 22 -j ACCEPT</rule>\n</direct>\n'
    )
    result = runner.invoke(app, ["render", "--direct-xml", str(path), "--kuma-dp-user", "0"])
    assert result.exit_code == 0, result.stderr
    config = parse_direct_xml(result.stdout.encode())
    assert [r.describe() for r in config.foreign(OWNER).rules] == [
        "rule ipv4 filter INPUT 0 -p tcp --dport 22 -j ACCEPT"
    ]
    assert len(config.ours(OWNER).rules) == 22
    path.write_text("<direct><rule")
    broken = runner.invoke(app, ["render", "--direct-xml", str(path)])
    assert broken.exit_code == 3 and broken.stdout == "" and broken.stderr.count("\n") == 1


def test_offline_install_json_and_diff_exit_codes(tmp_path: Path) -> None:
    root = ready_root(tmp_path / "img")
    first = runner.invoke(
        app, ["install", "--root", str(root), "--output", "json", "--kuma-dp-user", "0"]
    )
    assert first.exit_code == 0, first.stderr
    assert '"changed": true' in first.stdout and '"mode": "offline"' in first.stdout
    assert runner.invoke(app, ["diff", "--root", str(root)]).exit_code == 0
    assert (
        runner.invoke(app, ["diff", "--root", str(root), "--redirect-outbound-port", "1"]).exit_code
        == 1
    )
    broken = root / "etc/firewalld/direct.xml"
    broken.write_text("<direct><rule")
    assert runner.invoke(app, ["diff", "--root", str(root)]).exit_code == 3
    assert runner.invoke(app, ["--version"]).stdout.startswith("tproxy-firewalld ")


@pytest.mark.parametrize(
    "field", [f for f in KumaSettings.flag_fields() if f.kind == "bool"], ids=lambda f: f.flag
)
def test_every_boolean_flag_takes_kumactls_false_spelling(field: Any, tmp_path: Path) -> None:
    args = ["render", "--direct-xml", str(tmp_path / "none.xml"), "--kuma-dp-user", "0"]
    off = runner.invoke(app, [*args, f"{field.flag}=false"])
    assert off.exit_code == 0, off.stderr
    on = runner.invoke(app, [*args, field.flag, "--redirect-dns-port", "15053"])
    assert on.exit_code in (0, 2), on.stderr  # --redirect-dns needs a resolv.conf nameserver
    bad = runner.invoke(app, [*args, f"{field.flag}=maybe"])
    assert bad.exit_code == 2 and "not a valid boolean" in bad.stderr, bad.stderr


def test_a_false_flag_overrides_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("log: {enabled: true}\nkumaDPUser: '0'\n")
    base = ["render", "--direct-xml", str(tmp_path / "none.xml"), "--config", str(config)]
    assert "-j LOG" in runner.invoke(app, base).stdout
    result = runner.invoke(app, [*base, "--iptables-logs=false"])
    assert result.exit_code == 0 and "-j LOG" not in result.stdout


def test_a_relative_rules_template_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("my.j2").write_text(
        "* nat\n-N KUMA_MESH_OUTBOUND\n"
        '-A KUMA_MESH_OUTBOUND -m comment --comment "{{ comment("mine") }}" -j RETURN\nCOMMIT\n'
    )
    result = runner.invoke(
        app,
        [
            "render",
            "--direct-xml",
            "none.xml",
            "--rules-template",
            "./my.j2",
            "--ip-family-mode",
            "ipv4",
        ],
    )
    assert result.exit_code == 0, result.stderr
    rules = parse_direct_xml(result.stdout.encode()).rules
    assert [r.args[-3:] for r in rules] == [("kuma/mesh/transparent/proxy/mine", "-j", "RETURN")]


def test_an_ignored_environment_variable_is_not_a_setting_given(tmp_path: Path) -> None:
    """diff compares against the record unless settings are given; kumactl's KUMA_..._WAIT
    (accepted and ignored) gives none."""
    root = ready_root(tmp_path / "img")
    assert (
        runner.invoke(
            app,
            [
                "install",
                "--root",
                str(root),
                "--kuma-dp-user",
                "0",
                "--redirect-outbound-port",
                "15002",
            ],
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["diff", "--root", str(root)], env={"KUMA_TRANSPARENT_PROXY_WAIT": "5"}
    )
    assert result.exit_code == 0 and result.stdout.startswith(
        f"desired: {root}/var/lib/tproxy-firewalld/installed.json"
    )
    given = runner.invoke(
        app,
        ["diff", "--root", str(root)],
        env={
            "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_PORT": "15002",
            "KUMA_TRANSPARENT_PROXY_KUMA_DP_USER": "0",
        },
    )
    assert given.stdout.startswith("desired: settings") and given.exit_code == 0
