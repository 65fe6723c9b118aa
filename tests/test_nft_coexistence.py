"""What a native nftables store builds on (issue 18): firewalld leaves a table of somebody
else's alone. Checked against every firewalld our users run, before anything is built on it.

firewalld's nftables backend deletes and recreates only its own tables (``inet firewalld``,
``firewalld_policy_drop``); its iptables flushes (every reload before 2.0, and from 2.0 while
direct configuration exists) reach only the iptables-nft tables (``ip nat``, ``ip filter``,
...). A table of our own, in the ``inet`` family, with nat, raw and mangle chains at the hooks
Kuma's rules use, must come out of each of these exactly as it went in: a reload, a complete
reload, the first runtime direct rule (which flushes iptables on >= 2.0) and a reload with it,
a stop (CleanupOnExit=yes) and a start. Meanwhile, an iptables-nft chain of another tool is
flushed where FIREWALLD.md says it is: the contrast shows the events really happened.
"""

from __future__ import annotations

import pytest
from harness import Backend, Sandbox, SandboxFactory
from versions import VERSIONS, Version

TABLE = "tproxy_firewalld_probe"
#: a table shaped like the store's: every hook and expression kind Kuma's rules need
DEFINITION = f"""\
table inet {TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp tcp dport 8080 redirect to :15006 comment "inbound"
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta skuid 5678 return comment "the proxy's own uid"
    meta l4proto tcp ip daddr 203.0.113.7 redirect to :15001 comment "outbound"
  }}
  chain raw_output {{
    type filter hook output priority raw; policy accept;
    meta skuid 5678 udp dport 53 ct zone set 1 comment "DNS conntrack zone"
  }}
  chain mangle_prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    ct state invalid drop comment "invalid"
  }}
}}
"""
DIRECT_RULE = ("ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "2022", "-j", "ACCEPT")


def cases() -> list[object]:
    out = []
    for v in VERSIONS:
        backends: tuple[Backend, ...] = ("nftables",)
        if v.number >= (1, 0) and v.suite in ("bookworm", "forky"):
            backends = ("nftables", "iptables")
        out += [pytest.param(v, b, id=f"{v.id}-{b}") for b in backends]
    return out


def ours(sb: Sandbox) -> str:
    return sb.run("nft", "list", "table", "inet", TABLE).stdout


def foreign_chain_present(sb: Sandbox) -> bool:
    return "OTHER_TOOL" in sb.iptables_save("ipv4", "nat")


@pytest.mark.parametrize(("version", "backend"), cases())
def test_firewalld_leaves_a_table_of_ours_as_it_was(
    make_sandbox: SandboxFactory, version: Version, backend: Backend
) -> None:
    if version.problem:
        pytest.fail(version.problem, pytrace=False)
    sb = make_sandbox(backend, "yes", version.root)
    sb.run("nft", "-f", "-", input=DEFINITION)
    loaded = ours(sb)
    assert "redirect to :15006" in loaded and "ct zone set 1" in loaded
    sb.run("iptables", "-t", "nat", "-N", "OTHER_TOOL")

    events = []
    sb.reload()
    events.append(("reload", ours(sb), foreign_chain_present(sb)))
    if version.number >= (1, 0):
        # 0.9.3's complete reload reads /proc/modules, which its chroot here does not have
        sb.firewall_cmd("--complete-reload")
        assert sb.state() == "running"
        events.append(("complete-reload", ours(sb), foreign_chain_present(sb)))
    sb.run("iptables", "-t", "nat", "-N", "OTHER_TOOL", check=False)
    sb.firewall_cmd("--direct", "--add-rule", *DIRECT_RULE)
    events.append(("first direct rule", ours(sb), foreign_chain_present(sb)))
    sb.run("iptables", "-t", "nat", "-N", "OTHER_TOOL", check=False)
    sb.reload()
    events.append(("reload with direct config", ours(sb), foreign_chain_present(sb)))
    sb.stop_firewalld()
    events.append(("stop", ours(sb), None))
    assert sb.start_firewalld() == "running"
    events.append(("start", ours(sb), None))

    changed = [name for name, table, _ in events if table != loaded]
    assert changed == [], f"our table changed at: {changed}"
    # the contrast: the events did reach iptables where firewalld flushes it
    flushed = {name for name, _, present in events if present is False}
    if version.number < (2, 0) or backend == "iptables":
        assert "reload" in flushed
    else:
        assert "reload" not in flushed
        assert "first direct rule" in flushed
