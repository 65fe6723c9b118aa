"""Our nftables table does exactly what kumactl's iptables rules do, proven by traffic.

Two throw-away network worlds (tests/harness/probe_agent.py, each under its own
``unshare --net --mount``, built alike): kumactl's iptables-restore input (the direct store's
renderer, ``render_restore``) is loaded in one, our table (``nft_ruleset``) in the other, the
same probes are sent in both, and every probe must end the same way: the namespace and port it
landed on, the local address, the original destination the proxy reads (SO_ORIGINAL_DST), or
the same failure. No firewalld: this compares the two rule sets alone.

Probes (:func:`probes_for`): TCP and UDP, outbound (to remote addresses, to each excluded
network, to each nameserver, over lo to the host's own and loopback addresses, from the
sidecar's passthrough address) as each UID that matters (an application, root, the kuma-dp
user, every excluded UID), to every port that matters (excluded, included, excluded for UIDs,
DNS, a plain one); inbound from a peer to every such port, from excluded sources too; from a
--vnet interface's container; IPv4 and IPv6. Every release's defaults and a many-flags set run
always; random valid settings (tests/valid_settings.py) run TPFW_NFT_DIFF_EXAMPLES times
(default 8; the closing run of issue 18 uses 200).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from valid_settings import draws, load_draw

from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import KUMA_RELEASES
from tproxy_firewalld.kuma import KumaSettings as Settings
from tproxy_firewalld.nft_ruleset import build_nft_table, install_text, table_name
from tproxy_firewalld.ruleset import render_restore

AGENT = Path(__file__).parent / "harness" / "probe_agent.py"
EXAMPLES = int(os.environ.get("TPFW_NFT_DIFF_EXAMPLES", "8"))
APP_UID = 1000
REMOTE = {"ipv4": "198.18.0.10", "ipv6": "2001:db8:ff::10"}
OTHER_DNS = {"ipv4": "198.18.0.53", "ipv6": "2001:db8:ff::53"}
HOST = {"ipv4": "10.77.0.1", "ipv6": "fd77::1"}
LOOPBACK = {"ipv4": ("127.0.0.1", "127.0.0.2"), "ipv6": ("::1",)}
PASSTHROUGH = {"ipv4": "127.0.0.6", "ipv6": "::6"}
APP_PORT, OTHER_PORT = 8080, 9999
STATS = {"settings": 0, "probes": 0, "seconds": 0.0}

MANY_FLAGS: dict[str, Any] = {
    "--kuma-dp-user": "4321",
    "--redirect-inbound-port": "16006",
    "--exclude-inbound-ports": ["22", "8081"],
    "--exclude-outbound-ports": ["25"],
    "--exclude-inbound-ips": ["198.51.100.0/24", "2001:db8:100::7"],
    "--exclude-outbound-ips": ["203.0.113.9/32", "2001:db8:200::/48"],
    "--exclude-outbound-ports-for-uids": ["tcp:8083,9000-9010:1003-1004", "udp:53:1002", "1005"],
    "--redirect-dns": True,
    "--vnet": ["docker0:172.17.0.0/16", "br+:fd00:18::/64"],
    "--iptables-logs": True,
    "--drop-invalid-packets": True,
    "--redirect-outbound-insert-instead-of-append": True,
}


class Agent:
    """One probe world (a process in its own network and mount namespaces)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--fork", sys.executable, str(AGENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.iface = "ctr0"
        assert self.call({}) == "ready", f"{name}: the probe world did not start"

    def call(self, cmd: dict[str, Any]) -> Any:
        assert self.proc.stdin and self.proc.stdout
        if cmd:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"{self.name}: the probe agent died", pytrace=False)
        answer = json.loads(line)
        if "error" in answer:
            pytest.fail(f"{self.name}: {cmd.get('op')}: {answer['error']}", pytrace=False)
        return answer["ok"]

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def worlds() -> Iterator[tuple[Agent, Agent]]:
    if os.geteuid() != 0:
        pytest.fail("the differential traffic test needs root (network namespaces)", pytrace=False)
    iptables, nft = Agent("iptables"), Agent("nftables")
    yield iptables, nft
    print(
        f"\nnft differential: {STATS['settings']} settings, {STATS['probes']} probes per world, "
        f"{STATS['seconds']:.1f} s of probing"
    )
    iptables.close()
    nft.close()


# -- probes -----------------------------------------------------------------------------------


def _first_host(network: str) -> str:
    net = ipaddress.ip_network(network, strict=False)
    return str(net.network_address if net.num_addresses == 1 else net.network_address + 1)


def _ports_of(spec: str) -> set[int]:
    """The bounds of a multiport token list (``53,3000:5000``; ``*`` means all)."""
    out: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        out |= {int(low), int(high or low)}
    return out


def _uids_of(spec: str) -> set[int]:
    low, _, high = spec.partition(":")
    return {int(low), int(high or low)}


def vnet_iface(pattern: str) -> str:
    """An interface name the --vnet pattern matches (``br+`` -> ``br0``)."""
    return (pattern[:-1] + "0")[:15] if pattern.endswith("+") else pattern


def probes_for(s: Settings) -> tuple[list[dict[str, Any]], dict[str, set[int]], dict[str, Any]]:
    """The probes for the settings, the ports to listen on (per protocol), and the --vnet
    interface to set up."""
    out_ports = {APP_PORT, OTHER_PORT, 53, *s.exclude_outbound_ports, *s.include_outbound_ports}
    uids = {APP_UID, 0, s.uid}
    for x in s.uid_exclusions:
        uids |= _uids_of(x.uids)
        out_ports |= {p for p in _ports_of(",".join(x.ports)) if p > 0}
    in_ports = {APP_PORT, OTHER_PORT, *s.exclude_inbound_ports, *s.include_inbound_ports}
    redirect_ports = {
        s.redirect_outbound_port,
        s.redirect_dns_port,
        *(s.inbound_port(ipv) for ipv in ("ipv4", "ipv6")),
    }
    probes: list[dict[str, Any]] = []

    def add(
        proto: str, ns: str, dst: str, port: int, uid: int | None = None, src: str = ""
    ) -> None:
        probes.append({"proto": proto, "ns": ns, "uid": uid, "src": src, "dst": dst, "port": port})

    for ipv in ("ipv4", "ipv6"):
        fam = 4 if ipv == "ipv4" else 6
        remote = [REMOTE[ipv]]
        remote += [_first_host(a) for a in s.exclude_outbound_ips if (":" in a) == (fam == 6)]
        servers = [n for n in s.dns_nameservers or () if ipaddress.ip_address(n).version == fam]
        local = [HOST[ipv], *LOOPBACK[ipv]]
        # outbound TCP: every destination, port and UID that matters
        for dst in remote + local:
            for port in sorted(out_ports):
                for uid in sorted(uids):
                    add("tcp", "host", dst, port, uid)
        # the sidecar's passthrough source over lo
        for dst in local:
            for uid in (APP_UID, s.uid):
                add("tcp", "host", dst, APP_PORT, uid, PASSTHROUGH[ipv])
        # DNS: to each nameserver and to another server, UDP and TCP, app and kuma-dp
        for dst in [*servers, OTHER_DNS[ipv]]:
            for uid in sorted(uids):
                add("udp", "host", dst, 53, uid)
                add("tcp", "host", dst, 53, uid)
        # inbound from the peer, from its own address and from each excluded source
        sources = [""] + [_first_host(a) for a in s.exclude_inbound_ips if (":" in a) == (fam == 6)]
        for port in sorted(in_ports | redirect_ports):
            for src in sources:
                add("tcp", "peer", HOST[ipv], port, None, src)
        # a --vnet container behind the host: to a remote address, DNS, into its own network
        for port in (APP_PORT, 53):
            add("tcp", "cont", REMOTE[ipv], port)
        add("udp", "cont", OTHER_DNS[ipv], 53)
        add("udp", "cont", HOST[ipv], 53)

    vnet: dict[str, Any] = {"iface": "ctr0", "addrs": []}
    if s.vnet:
        first = sorted(s.vnet, key=lambda v: v.iface.encode())[0]
        vnet["iface"] = vnet_iface(first.iface)
        for v in s.vnet:
            if v.iface == first.iface:
                inside = _first_host(v.cidr)
                vnet["addrs"].append(inside + ("/128" if ":" in inside else "/32"))
                add("tcp", "cont", inside, APP_PORT)
    listen = {
        "tcp": (out_ports | in_ports | redirect_ports | {53}) - {s.redirect_dns_port},
        "udp": {53},
    }
    return probes, listen, vnet


# -- the comparison ---------------------------------------------------------------------------


def iptables_input(s: Settings) -> dict[str, str]:
    return {ipv: render_restore(s, ipv) for ipv in s.ipvs}


def compare(worlds: tuple[Agent, Agent], s: Settings, what: str, *, redirects: bool = True) -> int:
    """Load both rule sets, probe both worlds alike; the number of probes."""
    probes, listen, vnet = probes_for(s)
    nft_text = install_text(build_nft_table(s))
    started = time.monotonic()
    outcomes, zones = [], []
    for agent, load in zip(worlds, ({"iptables": iptables_input(s)}, {"nft": nft_text})):
        agent.call({"op": "load", **load})
        agent.call({"op": "observe"})
        agent.call({"op": "vnet", "current": agent.iface, **vnet})
        agent.iface = vnet["iface"]
        for ns in ("host", "peer"):
            for proto, ports in listen.items():
                agent.call({"op": "listen", "ns": ns, "proto": proto, "ports": sorted(ports)})
        # the DNS proxy answers as the kuma-dp user, as kuma-dp does (Kuma's zone split needs it)
        for proto in ("udp", "tcp"):
            dns = {"ns": "host", "proto": proto, "ports": [s.redirect_dns_port], "uid": s.uid}
            agent.call({"op": "listen", **dns})
        outcomes.append(agent.call({"op": "probe", "probes": probes}))
        zones.append(agent.call({"op": "zones"}))
    STATS["seconds"] += time.monotonic() - started
    STATS["settings"] += 1
    STATS["probes"] += len(probes)
    # a timeout on one side only is asked again, once, on both sides: a loaded machine may
    # lose a packet; a rule set that drops or misroutes one does so again
    again = [i for i, (a, b) in enumerate(zip(*outcomes)) if a != b and "timeout" in (a, b)]
    if again:
        retried = [
            agent.call({"op": "probe", "probes": [probes[i] for i in again]}) for agent in worlds
        ]
        for n, i in enumerate(again):
            outcomes[0][i], outcomes[1][i] = retried[0][n], retried[1][n]
    differ = [(p, a, b) for p, a, b in zip(probes, *outcomes) if a != b]
    if differ:
        lines = [f"{p} iptables: {a} nftables: {b}" for p, a, b in differ[:15]]
        pytest.fail(
            f"{what}: {len(differ)} of {len(probes)} probes differ\n"
            + "\n".join(lines)
            + f"\nsettings: {s.to_json()}\n{nft_text}",
            pytrace=False,
        )
    if zones[0] != zones[1]:
        only = [sorted(set(map(tuple, a)) - set(map(tuple, b))) for a, b in (zones, zones[::-1])]
        pytest.fail(
            f"{what}: conntrack zones (zone, udp sport, dport) differ: only with iptables "
            f"{only[0][:10]}, only with nftables {only[1][:10]}\n{nft_text}",
            pytrace=False,
        )
    assert any(z[0] for z in zones[0]) or not s.dns_enabled or not redirects, (
        f"{what}: DNS is redirected but no packet was zoned: the zone probes prove nothing"
    )
    redirected = sum(1 for o in outcomes[0] if isinstance(o, dict) and o.get("orig_dst"))
    assert redirected or not redirects, (
        f"{what}: no probe was redirected at all: the probes prove nothing"
    )
    return len(probes)


def settings_of(flags: dict[str, Any], tmp_path: Path) -> Settings:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nnameserver 127.0.0.53\nnameserver 2001:db8::53\n")
    return Settings.load(flags=flags, resolv_conf_path=str(resolv))


@pytest.mark.parametrize("release", KUMA_RELEASES)
def test_every_release_defaults_and_dns_behave_alike(
    worlds: tuple[Agent, Agent], tmp_path: Path, release: str
) -> None:
    base = {"--kuma-version": release, "--kuma-dp-user": "5678"}
    compare(worlds, settings_of(base, tmp_path), f"Kuma {release} defaults")
    dns = {**base, "--redirect-dns": True, "--exclude-inbound-ports": ["22"]}
    compare(worlds, settings_of(dns, tmp_path), f"Kuma {release} --redirect-dns")


def test_many_flags_behave_alike_and_need_no_xt_module(
    worlds: tuple[Agent, Agent], tmp_path: Path
) -> None:
    settings = settings_of(MANY_FLAGS, tmp_path)
    compare(worlds, settings, "many flags")
    # the kernel's own view of our table: native expressions only, no xt match or target
    # (nft_compat), whatever modules other processes on this kernel loaded
    listing = worlds[1].call(
        {"op": "nft", "args": ["--debug=netlink", "list", "table", "inet", table_name()]}
    )
    assert "[ redir" in listing and "[ ct" in listing and "[ meta" in listing
    assert "[ match" not in listing and "[ target" not in listing


def test_install_text_replaces_the_whole_table_in_one_transaction(
    worlds: tuple[Agent, Agent], tmp_path: Path
) -> None:
    """Over a table of other settings, with other chains and priorities: nothing stale stays."""
    nft = worlds[1]
    many = build_nft_table(settings_of(MANY_FLAGS, tmp_path))
    defaults = build_nft_table(settings_of({"--kuma-dp-user": "5678"}, tmp_path))
    nft.call({"op": "load", "nft": install_text(many)})
    nft.call({"op": "load", "nft": install_text(defaults), "flush": False})
    listed = nft.call({"op": "nft", "args": ["-y", "list", "table", "inet", table_name()]})
    assert "raw_OUTPUT" not in listed and "mangle_PREROUTING" not in listed
    assert "priority -105" not in listed and listed.count("priority -95") == 2
    assert nft.call({"op": "nft", "args": ["list", "tables"]}).split() == [
        "table",
        "inet",
        table_name(),
    ]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(draw=draws)
def test_random_settings_behave_alike(
    worlds: tuple[Agent, Agent], tmp_path: Path, draw: Any
) -> None:
    try:
        s = load_draw(draw, tmp_path)
    except SettingsError:
        reject()
    compare(worlds, s, f"random settings {draw}", redirects=False)
