"""The kernel's view of Kuma's rules, shared by the kernel-level tests (test_kernel_rules,
test_releases): what firewalld put into the kernel from our direct.xml, and what kumactl's own
iptables-restore input puts into a bare network namespace, both read back with iptables-save."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness import Family, Sandbox

from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.kuma import CHAIN_PREFIX, COMMENT_PREFIX
from tproxy_firewalld.kuma import KumaSettings as Settings
from tproxy_firewalld.ruleset import build_ruleset, render_restore

FAMILIES: list[Family] = ["ipv4", "ipv6"]
KUMA_TABLES = ("raw", "nat", "mangle")
SAVE = {"ipv4": "iptables-save", "ipv6": "ip6tables-save"}
RESTORE = {"ipv4": "iptables-restore", "ipv6": "ip6tables-restore"}
BUILT_IN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
BARE_NETNS = "kuma"  # where kumactl's own restore input is loaded, inside the sandbox

RESOLV_CONF = "nameserver 192.0.2.53\nnameserver 2001:db8::53\n"


# -- the kernel's view of Kuma's rules --------------------------------------------------------


@dataclass(frozen=True)
class KumaRules:
    """Kuma's part of an iptables-save output.

    chains: the KUMA_MESH_* chains declared, as (table, chain).
    rules: (table, chain) -> the rule specs (iptables-save text after "-A CHAIN "), in order;
    firewalld's iptables backend keeps direct rules of a built-in chain X in X_direct, which
    is counted as X.
    """

    chains: frozenset[tuple[str, str]]
    rules: dict[tuple[str, str], list[str]]


def is_kuma_rule(chain: str, spec: str) -> bool:
    return (
        chain.startswith(CHAIN_PREFIX)
        or f'--comment "{COMMENT_PREFIX}' in spec
        or re.search(rf"(^| )-[jg] {CHAIN_PREFIX}", spec) is not None
    )


def built_in_name(chain: str) -> str:
    base = chain[: -len("_direct")] if chain.endswith("_direct") else chain
    return base if chain.endswith("_direct") and base in BUILT_IN_CHAINS else chain


def kuma_rules(saved: str, *, placeholder: str | None = None) -> KumaRules:
    """Parse iptables-save text (any number of tables); placeholder: the golden files'
    stand-in for the loopback interface, replaced by lo."""
    chains: set[tuple[str, str]] = set()
    rules: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in saved.splitlines():
        if placeholder:
            line = line.replace(placeholder, "lo")
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(CHAIN_PREFIX):
                chains.add((table, name))
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            spec = rest[0] if rest else ""
            if is_kuma_rule(chain, spec):
                rules.setdefault((table, built_in_name(chain)), []).append(spec)
    return KumaRules(frozenset(chains), rules)


def firewalld_kernel_rules(sb: Sandbox, ipv: Family) -> KumaRules:
    return kuma_rules("".join(sb.iptables_save(ipv, table) for table in KUMA_TABLES))


def kumactl_kernel_rules(sb: Sandbox, settings: Settings, ipv: Family) -> KumaRules:
    """What `kumactl install transparent-proxy` would leave in the kernel: its restore input
    applied with --noflush to a bare (freshly made) network namespace inside the sandbox."""
    if BARE_NETNS in sb.run("ip", "netns", "list").stdout.split():
        sb.run("ip", "netns", "delete", BARE_NETNS)
    sb.run("ip", "netns", "add", BARE_NETNS)
    in_bare = ("ip", "netns", "exec", BARE_NETNS)
    sb.run(*in_bare, RESTORE[ipv], "--noflush", input=render_restore(settings, ipv))
    saved = "".join(sb.run(*in_bare, SAVE[ipv], "-t", t).stdout for t in KUMA_TABLES)
    return kuma_rules(saved)


def load_into_firewalld(sb: Sandbox, settings: Settings) -> None:
    """Our direct.xml for the settings, applied the persistent way: written, then reloaded."""
    sb.direct_xml.write_bytes(render_direct_xml(build_ruleset(settings)))
    sb.reload()
    assert sb.state() == "running"


def assert_same_rules(actual: KumaRules, expected: KumaRules, what: str) -> None:
    assert expected.rules, f"{what}: the reference holds no rules at all"
    assert actual.chains == expected.chains, f"{what}: KUMA_MESH chains"
    assert sorted(actual.rules) == sorted(expected.rules), f"{what}: chains holding Kuma's rules"
    for key, specs in expected.rules.items():
        assert actual.rules[key] == specs, f"{what}: rules of {key[0]} {key[1]}, in order"
