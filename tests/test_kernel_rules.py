"""What firewalld really puts in the kernel from our direct.xml, against what kumactl would.

Every test runs a real firewalld in a sandbox (tests/harness). The reference for "what kumactl
would install" is Kuma's own iptables-restore input (render_restore) fed to
`iptables-restore --noflush` in a bare network namespace inside the same sandbox: the same
iptables binary then normalises both sides, so the two iptables-save outputs must agree rule
for rule, in order, per chain.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from harness import Backend, Family, Reply, Sandbox, SandboxFactory, endpoint
from helpers import kuma_goldens, load
from kernel_rules import (
    FAMILIES,
    KUMA_TABLES,
    RESOLV_CONF,
    KumaRules,
    assert_same_rules,
    firewalld_kernel_rules,
    kuma_rules,
    kumactl_kernel_rules,
    load_into_firewalld,
)

from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.entries import Chain, Passthrough, Rule
from tproxy_firewalld.kuma import COMMENT_PREFIX, OWNER
from tproxy_firewalld.kuma import KumaSettings as Settings
from tproxy_firewalld.ruleset import build_ruleset

BACKENDS: list[Backend] = ["nftables", "iptables"]

KUMA_DP_UID = 5678
INBOUND_PORT, OUTBOUND_PORT = 15006, 15001
APP_PORT, EXCLUDED_PORT = 8080, 2222
# firewalld's RFC3964_IPv4 (default yes) rejects IPv6 destinations in ::/96, ::1 included, in
# filter OUTPUT, which still sees a connection REDIRECTed to ::1 in nat OUTPUT as going out
# of its original interface. Kuma's IPv6 outbound redirect needs it off (see test_harness.py).
IPV6_REDIRECT_CONF = {"RFC3964_IPv4": "no"}

# -- settings ---------------------------------------------------------------------------------

SETTINGS_FLAGS: dict[str, dict[str, object]] = {
    "defaults": {},
    "dns": {"--redirect-dns": True},
    "many-flags": {
        "--kuma-dp-user": "4321",
        "--redirect-inbound-port": "16006",
        "--redirect-outbound-port": "16001",
        "--exclude-inbound-ports": ["22"],
        "--exclude-outbound-ports": ["25"],
        "--exclude-inbound-ips": ["192.0.2.0/24"],
        "--exclude-outbound-ips": ["2001:db8::/48"],
        "--exclude-outbound-ports-for-uids": ["tcp:53,3000-5000:106-108"],
        "--redirect-dns": True,
        "--redirect-dns-port": "16053",
        "--vnet": ["docker0:172.17.0.0/16"],
        "--iptables-logs": True,
        "--drop-invalid-packets": True,
        "--redirect-outbound-insert-instead-of-append": True,
    },
}


def kuma_settings(tmp_path: Path, flags: Mapping[str, object] | None = None) -> Settings:
    """Settings as kumactl would take them; resolv.conf is our own file with one nameserver
    per family, and the kuma-dp user is uid 5678 unless the flags say otherwise."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    return load(
        {"--kuma-dp-user": str(KUMA_DP_UID), **(flags or {})},
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)},
    )


# -- 1. the kernel holds exactly kumactl's rules ----------------------------------------------


@pytest.mark.parametrize("name", list(SETTINGS_FLAGS))
def test_firewalld_installs_exactly_the_rules_kumactl_would(
    firewalld_sandbox: Sandbox, tmp_path: Path, name: str
) -> None:
    sb = firewalld_sandbox
    settings = kuma_settings(tmp_path, SETTINGS_FLAGS[name])
    for ipv in FAMILIES:  # nothing of Kuma's before
        assert firewalld_kernel_rules(sb, ipv) == KumaRules(frozenset(), {})

    load_into_firewalld(sb, settings)

    for ipv in FAMILIES:
        expected = kumactl_kernel_rules(sb, settings, ipv)
        assert_same_rules(firewalld_kernel_rules(sb, ipv), expected, f"{name} {ipv} {sb.backend}")


def test_many_flags_reference_fills_raw_nat_and_mangle(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The reference itself is not trivially small: raw, nat and mangle all hold rules.
    (No firewalld involved, so one backend is enough.)"""
    sb = make_sandbox("nftables")
    settings = kuma_settings(tmp_path, SETTINGS_FLAGS["many-flags"])
    for ipv in FAMILIES:
        tables = {table for table, _chain in kumactl_kernel_rules(sb, settings, ipv).rules}
        assert tables == set(KUMA_TABLES), ipv


@pytest.mark.parametrize(
    ("ipv", "golden"),
    [("ipv4", "rhel-9-default.iptables.golden"), ("ipv6", "rhel-9-default.ip6tables.golden")],
)
def test_default_rules_match_kumas_rhel9_install(
    make_sandbox: SandboxFactory, tmp_path: Path, ipv: Family, golden: str
) -> None:
    sb = make_sandbox("nftables")
    load_into_firewalld(sb, kuma_settings(tmp_path))
    expected = kuma_rules((kuma_goldens() / golden).read_text(), placeholder="ifPlaceholder")
    assert_same_rules(firewalld_kernel_rules(sb, ipv), expected, f"{golden} (nftables backend)")


# -- 2. traffic -------------------------------------------------------------------------------


def served(reply: Reply | None) -> tuple[str | None, str | None] | None:
    """(server, orig_dst) of a reply, None when the connection failed."""
    return None if reply is None else (reply["server"], reply["orig_dst"])


@contextmanager
def listeners(sb: Sandbox, family: Family, *specs: tuple[int, str, str | None]) -> Iterator[None]:
    """Listeners given as (port, name, netns) in the one family."""
    with ExitStack() as stack:
        for port, name, netns in specs:
            stack.enter_context(sb.listen(port, family=family, name=name, netns=netns))
        yield


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_outbound_goes_to_the_proxy_except_from_the_kuma_dp_user(
    make_sandbox: SandboxFactory, tmp_path: Path, backend: Backend, family: Family
) -> None:
    sb = make_sandbox(backend, conf=IPV6_REDIRECT_CONF)
    peer = sb.add_peer()
    remote = peer.address(family)
    with listeners(sb, family, (OUTBOUND_PORT, "proxy-out", None), (APP_PORT, "remote", peer.name)):
        assert served(sb.connect(remote, APP_PORT)) == ("remote", None)

        load_into_firewalld(sb, kuma_settings(tmp_path))

        redirected = ("proxy-out", endpoint(remote, APP_PORT))
        assert served(sb.connect(remote, APP_PORT)) == redirected
        assert served(sb.connect(remote, APP_PORT, uid=KUMA_DP_UID)) == ("remote", None)


def test_ipv6_outbound_redirect_is_blocked_by_firewalld_default_rfc3964(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A limitation to know about: with firewalld's default RFC3964_IPv4=yes the IPv6
    outbound redirect to ::1 is rejected, so the connection fails instead of reaching the
    proxy. IPv4 is unaffected."""
    sb = make_sandbox("nftables", stock=True)
    peer = sb.add_peer()
    with listeners(sb, "ipv6", (OUTBOUND_PORT, "proxy-out", None), (APP_PORT, "remote", peer.name)):
        load_into_firewalld(sb, kuma_settings(tmp_path))
        assert sb.connect(peer.ipv6, APP_PORT, timeout=2) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_inbound_goes_to_the_proxy(
    firewalld_sandbox: Sandbox, tmp_path: Path, family: Family
) -> None:
    sb = firewalld_sandbox
    peer = sb.add_peer()
    local = peer.local_ipv6 if family == "ipv6" else peer.local_ipv4
    with listeners(sb, family, (INBOUND_PORT, "proxy-in", None)):
        assert sb.connect(local, APP_PORT, netns=peer.name, timeout=2) is None

        load_into_firewalld(sb, kuma_settings(tmp_path))

        reply = sb.connect(local, APP_PORT, netns=peer.name)
        assert served(reply) == ("proxy-in", endpoint(local, APP_PORT))


def test_excluded_inbound_port_reaches_the_app(firewalld_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = firewalld_sandbox
    peer = sb.add_peer()
    # Not redirected means not DNATed either: firewalld's zone must allow the port itself.
    sb.firewall_cmd("--permanent", f"--add-port={EXCLUDED_PORT}/tcp")
    settings = kuma_settings(tmp_path, {"--exclude-inbound-ports": [str(EXCLUDED_PORT)]})
    with listeners(sb, "ipv4", (INBOUND_PORT, "proxy-in", None), (EXCLUDED_PORT, "app", None)):
        load_into_firewalld(sb, settings)

        local = peer.local_ipv4
        assert served(sb.connect(local, EXCLUDED_PORT, netns=peer.name)) == ("app", None)
        redirected = ("proxy-in", endpoint(local, APP_PORT))
        assert served(sb.connect(local, APP_PORT, netns=peer.name)) == redirected


# -- 3. the render command keeps everyone else's entries --------------------------------------

STALE_COMMENT = f"{COMMENT_PREFIX}redirect TCP traffic to envoy (port 15099)"
FOREIGN_DIRECT_XML = f"""<?xml version="1.0" encoding="utf-8"?>
<direct>
  <chain ipv="ipv4" table="filter" chain="MYAPP"/>
  <chain ipv="ipv4" table="nat" chain="KUMA_MESH_OUTBOUND_REDIRECT"/>
  <rule ipv="ipv4" table="filter" chain="MYAPP" priority="0">-p tcp --dport 9999 -j ACCEPT</rule>
  <rule ipv="ipv4" table="nat" chain="KUMA_MESH_OUTBOUND_REDIRECT" priority="0">-p tcp -m comment --comment "{STALE_COMMENT}" -j REDIRECT --to-ports 15099</rule>
  <passthrough ipv="ipv4">-t filter -A INPUT -p tcp --dport 9998 -j ACCEPT</passthrough>
</direct>
"""
FOREIGN_CHAIN = Chain("ipv4", "filter", "MYAPP")
FOREIGN_RULE = Rule("ipv4", "filter", "MYAPP", 0, ("-p", "tcp", "--dport", "9999", "-j", "ACCEPT"))
FOREIGN_PASSTHROUGH = Passthrough(
    "ipv4", ("-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9998", "-j", "ACCEPT")
)
STALE_RULE = Rule(
    "ipv4", "nat", "KUMA_MESH_OUTBOUND_REDIRECT", 0,
    ("-p", "tcp", "-m", "comment", "--comment", STALE_COMMENT, "-j", "REDIRECT",
     "--to-ports", "15099"),
)  # fmt: skip


def render_in_sandbox(sb: Sandbox, direct_xml: str, flags: Sequence[str]) -> str:
    """`python3 -m tproxy_firewalld render` run inside the sandbox, its stdout."""
    return sb.run(
        sys.executable, "-m", "tproxy_firewalld", "render", *flags, "--direct-xml", direct_xml
    ).stdout


def test_render_keeps_foreign_entries_and_replaces_stale_kuma_ones(
    firewalld_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = firewalld_sandbox
    sb.direct_xml.write_text(FOREIGN_DIRECT_XML)
    sb.reload()  # the starting point is a file firewalld takes
    assert sb.state() == "running"
    assert STALE_RULE in parse_direct_xml(sb.direct_xml.read_bytes()).rules

    output = render_in_sandbox(
        sb, "/etc/firewalld/direct.xml", ["--kuma-dp-user", str(KUMA_DP_UID)]
    )

    rendered = parse_direct_xml(output.encode())
    fresh = build_ruleset(kuma_settings(tmp_path))
    assert rendered.foreign(OWNER).entries() == {FOREIGN_CHAIN, FOREIGN_RULE, FOREIGN_PASSTHROUGH}
    assert rendered.ours(OWNER).entries() == fresh.entries()
    assert STALE_RULE not in rendered.rules

    sb.direct_xml.write_text(output)
    sb.reload()
    assert sb.state() == "running"
    assert sb.firewall_cmd("--direct", "--get-all-chains").stdout.count("MYAPP") == 1
    assert "--dport 9999 -j ACCEPT" in sb.firewall_cmd("--direct", "--get-all-rules").stdout
    assert "--dport 9998" in sb.firewall_cmd("--direct", "--get-all-passthroughs").stdout
    assert "15099" not in sb.iptables_save("ipv4", "nat")
    for ipv in FAMILIES:
        expected = kumactl_kernel_rules(sb, kuma_settings(tmp_path), ipv)
        assert_same_rules(firewalld_kernel_rules(sb, ipv), expected, f"render {ipv}")
