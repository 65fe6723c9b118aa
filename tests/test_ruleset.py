"""The rule set: Kuma's golden files, and one pinned scenario per option (tests/cases/)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli_runner, kuma_goldens, load

from tproxy_firewalld.cli import app
from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.kuma import CHAIN_PREFIX, COMMENT_PREFIX
from tproxy_firewalld.ruleset import build_ruleset, parse_restore, render_restore

HERE = Path(__file__).parent
CASES = sorted(p.stem for p in (HERE / "cases").glob("*.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def strip_comments(text: str) -> str:
    """Kuma's dry-run goldens are compared with comments removed and lo as ifPlaceholder."""
    text = re.sub(r' -m comment --comment "[^"]*"', "", text)
    return re.sub(r"-o lo\b", "-o ifPlaceholder", text)


def kuma_golden(name: str) -> str:
    lines = (kuma_goldens() / name).read_text().splitlines()
    return "\n".join(line for line in lines if line and not line.startswith("###")) + "\n"


@pytest.mark.parametrize(
    ("golden", "flags"),
    [
        ("install-transparent-proxy.defaults.golden.txt", {}),
        (
            "install-transparent-proxy.overrides.golden.txt",
            {
                "--redirect-outbound-port": "12345",
                "--redirect-inbound-port": "12346",
                "--exclude-outbound-ports": ["2000,2001"],
                "--exclude-inbound-ports": ["1000,1001"],
            },
        ),
        (
            "install-transparent-proxy.excludedports.txt",
            {
                "--exclude-outbound-ports-for-uids": [
                    "tcp:1900,1902,1000-2000:106-108",
                    "tcp:2900,2902,3000-5000:203",
                    "udp:3900,3902,4000-6000:303",
                ]
            },
        ),
        (
            "install-transparent-proxy.dns.no-conntrack.golden.txt",
            {
                "--redirect-all-dns-traffic": True,
                "--redirect-dns-port": "12345",
                "--skip-dns-conntrack-zone-split": True,
            },
        ),
    ],
)
def test_matches_kumactl_dry_run_goldens(golden: str, flags: dict[str, Any]) -> None:
    settings = load({"--kuma-dp-user": "0", "--ip-family-mode": "ipv4", **flags})
    expected = kuma_golden(golden).replace("dnsJumpTargetPlaceholder", "RETURN")
    assert strip_comments(render_restore(settings, "ipv4")) == expected


def test_default_rules_match_the_rhel9_install_goldens() -> None:
    """Same rules, matches and comments as a real RHEL 9 install (iptables-save form).

    iptables-save reorders matches; so compare each rule's set of (option, value) pairs, per
    chain and in order.
    """
    settings = load({"--kuma-dp-user": "5678"})
    for ipv, golden in (
        ("ipv4", "rhel-9-default.iptables.golden"),
        ("ipv6", "rhel-9-default.ip6tables.golden"),
    ):
        ours = build_ruleset(settings)
        mine: dict[str, list[frozenset[str]]] = {}
        for rule in sorted(
            (r for r in ours.rules if r.ipv == ipv), key=lambda r: (r.chain, r.priority)
        ):
            mine.setdefault(rule.chain, []).append(_pairs(list(rule.args)))
        theirs: dict[str, list[frozenset[str]]] = {}
        for line in (kuma_goldens() / golden).read_text().splitlines():
            if line.startswith("-A "):
                import shlex

                tokens = shlex.split(line.replace("ifPlaceholder", "lo"))
                theirs.setdefault(tokens[1], []).append(_pairs(tokens[2:]))
        assert mine == theirs, ipv


def _pairs(tokens: list[str]) -> frozenset[str]:
    out = []
    negate = ""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "!":
            negate = "!"
            i += 1
            continue
        value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") else ""
        out.append(f"{negate}{token}={value}")
        negate = ""
        i += 2 if value else 1
    return frozenset(out)


def render_case(name: str, tmp_path: Path) -> tuple[int, str, str]:
    case = yaml.safe_load((HERE / "cases" / f"{name}.yaml").read_text())
    args: list[str] = [
        "render",
        "--direct-xml",
        str(tmp_path / "missing.xml"),
        *case.get("args", []),
    ]
    env = {"KUMA_TRANSPARENT_PROXY_KUMA_DP_USER": "5678"}
    if "config" in case:
        (tmp_path / "c.yaml").write_text(case["config"])
        args += ["--config", str(tmp_path / "c.yaml")]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(case.get("resolv_conf", "nameserver 192.0.2.53\n"))
    env["KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH"] = str(resolv)
    result = cli_runner().invoke(app, args, env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", CASES)
def test_scenario(name: str, tmp_path: Path) -> None:
    code, out, err = render_case(name, tmp_path)
    assert code == 0, err
    golden = HERE / "cases" / f"{name}.xml"
    if UPDATE:
        golden.write_text(out)
    assert out == golden.read_text(), f"{name}: rerun with UPDATE_GOLDEN=1 and review the diff"
    config = parse_direct_xml(out.encode())
    # Every entry is ours, IPv6 entries never carry an IPv4 address and vice versa.
    assert config.passthroughs == ()
    assert all(c.chain.startswith(CHAIN_PREFIX) and c.table == "nat" for c in config.chains)
    for rule in config.rules:
        assert rule.chain.startswith(CHAIN_PREFIX) or any(
            a.startswith(COMMENT_PREFIX) for a in rule.args
        )
        addresses = [b for a, b in zip(rule.args, rule.args[1:]) if a in ("-s", "-d")]
        for address in addresses:
            assert (":" in address) == (rule.ipv == "ipv6"), (name, rule)
    # Priorities fix the order: unique within each chain.
    for key in {r.chain_key for r in config.rules}:
        priorities = [r.priority for r in config.rules if r.chain_key == key]
        assert len(priorities) == len(set(priorities)), (name, key)


def test_insert_positions_become_priorities() -> None:
    text = (
        "* nat\n-N KUMA_MESH_X\n-I OUTPUT 1 -j A\n-A OUTPUT -j B\n-I OUTPUT 2 -j C\n"
        "-I OUTPUT 1 -j D\n-A OUTPUT -j E\n-A KUMA_MESH_X -j F\n-A KUMA_MESH_X -j G\nCOMMIT\n"
    )
    config = parse_restore(text, "ipv4", CHAIN_PREFIX)
    output = sorted((r for r in config.rules if r.chain == "OUTPUT"), key=lambda r: r.priority)
    # iptables-restore --noflush: inserts D, A, C above existing rules, appends B, E below.
    assert [(r.args[-1], r.priority) for r in output] == [
        ("D", -3),
        ("A", -2),
        ("C", -1),
        ("B", 1),
        ("E", 2),
    ]
    mesh = [(r.args[-1], r.priority) for r in config.rules if r.chain == "KUMA_MESH_X"]
    assert mesh == [("F", 0), ("G", 1)]


def test_dual_stack_writes_both_families_whatever_the_host_has() -> None:
    config = build_ruleset(load({"--kuma-dp-user": "5678"}))
    assert {c.ipv for c in config.chains} == {"ipv4", "ipv6"}
    assert len(config.chains) == 8 and len(config.rules) == 22
    v6 = [r for r in config.rules if r.ipv == "ipv6"]
    assert any("::6/128" in r.args for r in v6) and any("::1/128" in r.args for r in v6)


def test_comment_is_cut_to_254_bytes_like_kuma() -> None:
    from tproxy_firewalld.ruleset import comment

    assert len(comment("x" * 300, COMMENT_PREFIX).encode()) == 254
    assert comment("a", COMMENT_PREFIX) == COMMENT_PREFIX + "a"


def test_a_cached_rendering_is_exactly_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last rendering is kept (root only) so a repeated install skips jinja2; any change of
    settings or template is a miss, and a cache file anybody else could have written is ignored."""
    from tproxy_firewalld import ruleset

    monkeypatch.setattr(ruleset, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(ruleset, "RENDER_CACHE", tmp_path / "cache" / "rendered.json")
    a = load({"--kuma-dp-user": "5678"})
    monkeypatch.setattr(ruleset, "_BUILT", {})  # what this process built already: not the file
    fresh = build_ruleset(a)
    assert (
        ruleset.RENDER_CACHE.exists()
        and oct(ruleset.RENDER_CACHE.stat().st_mode & 0o777) == "0o600"
    )
    calls: list[str] = []
    real = ruleset.render_restore
    monkeypatch.setattr(
        ruleset, "render_restore", lambda *x, **k: calls.append("render") or real(*x, **k)
    )
    ruleset._BUILT.clear()
    assert build_ruleset(a) == fresh and calls == [], "a hit renders nothing"
    b = load({"--kuma-dp-user": "5678", "--redirect-outbound-port": "15999"})
    assert any("15999" in r.args for r in build_ruleset(b).rules) and calls, (
        "other settings: a miss"
    )
    calls.clear()
    ruleset._BUILT.clear()
    assert build_ruleset(a) == fresh and calls == [], "the earlier rendering is kept beside it"
    # a cache file that is not root's own, private one is not trusted
    ruleset.RENDER_CACHE.chmod(0o666)
    ruleset._BUILT.clear()
    assert build_ruleset(b) is not None and calls, "a group/world-writable cache is ignored"
