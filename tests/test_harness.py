"""The test harness itself, against a real firewalld, under both backends."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message
from harness import Backend, Family, Peer, Sandbox, SandboxFactory, YesNo, endpoint

BACKENDS: list[Backend] = ["nftables", "iptables"]
FAMILIES: list[Family] = ["ipv4", "ipv6"]
PROXY_PORT = 15001
APP_PORT, OTHER_PORT = 8080, 8081
PROXY_UID = 5678
# firewalld's RFC3964_IPv4 filter (default yes) rejects IPv6 destinations in ::/96, ::1
# included. Its `oifname lo accept` does not save traffic REDIRECTed to ::1 in nat OUTPUT:
# the filter OUTPUT hook still sees the pre-NAT interface. So IPv6 REDIRECT needs it off.
IPV6_REDIRECT_CONF = {"RFC3964_IPv4": "no"}

DIRECT_XML = """<?xml version="1.0" encoding="utf-8"?>
<direct>
  <rule ipv="ipv4" table="filter" chain="INPUT" priority="0">-p tcp --dport 9999 -j ACCEPT</rule>
</direct>
"""


def host_network() -> dict[str, str]:
    """The host's links, addresses and routes (read-only `ip` queries, no netfilter), without
    the lifetimes that count down on their own (SLAAC, DHCP, router advertisements)."""
    return {
        what: re.sub(
            r"(valid_lft|preferred_lft|expires) \S+",
            "",
            subprocess.run(
                ["ip", "-o", *what.split()], capture_output=True, text=True, check=True
            ).stdout,
        )
        for what in ("link", "addr", "route", "-6 route")
    }


def process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): unlike a pid alone, never names another process later."""
    try:
        return pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def link_names(sandbox: Sandbox, netns: str | None = None) -> list[str]:
    output = sandbox.run("ip", "-o", "link", netns=netns).stdout
    return [line.split(": ")[1].split("@")[0] for line in output.splitlines()]


def redirect_args(peer: Peer, family: Family, port: int = APP_PORT) -> list[str]:
    return [
        "-p", "tcp", "-d", peer.address(family), "--dport", str(port),
        "-j", "REDIRECT", "--to-ports", str(PROXY_PORT),
    ]  # fmt: skip


@contextmanager
def proxy_and_peer_listeners(sandbox: Sandbox, peer: Peer, family: Family) -> Iterator[None]:
    """Listeners: "proxy" on PROXY_PORT in the sandbox; "app" on APP_PORT, OTHER_PORT on peer."""
    with ExitStack() as stack:
        stack.enter_context(sandbox.listen(PROXY_PORT, family=family, name="proxy"))
        for port in (APP_PORT, OTHER_PORT):
            stack.enter_context(sandbox.listen(port, family=family, name="app", netns=peer.name))
        yield


async def default_zone_over_dbus(bus_address: str) -> str:
    bus = await MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.fedoraproject.FirewallD1",
                path="/org/fedoraproject/FirewallD1",
                interface="org.fedoraproject.FirewallD1",
                member="getDefaultZone",
            )
        )
    finally:
        bus.disconnect()  # type: ignore[no-untyped-call]
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    return str(reply.body[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_firewalld_runs_in_namespaces_of_its_own(
    make_sandbox: SandboxFactory, backend: Backend
) -> None:
    host_before = host_network()
    sandbox = make_sandbox(backend)

    assert sandbox.state() == "running"
    assert sandbox.firewall_cmd("--get-default-zone").stdout.strip() == "public"
    assert f"FirewallBackend={backend}\n" in (sandbox.etc_dir / "firewalld.conf").read_text()
    for namespace in ("net", "mnt", "pid"):
        assert os.readlink(f"/proc/{sandbox.pid}/ns/{namespace}") != os.readlink(
            f"/proc/self/ns/{namespace}"
        )
    assert link_names(sandbox) == ["lo"]
    # The backend really is the one asked for: only nftables has firewalld's own nft table.
    tables = sandbox.run("nft", "list", "tables").stdout
    assert ("table inet firewalld" in tables) == (backend == "nftables")

    peer = sandbox.add_peer()
    assert link_names(sandbox) == ["lo", peer.link]
    assert link_names(sandbox, netns=peer.name) == ["lo", "eth0"]
    sandbox.close()
    assert host_network() == host_before


def test_bus_address_reaches_the_sandbox_firewalld(firewalld_sandbox: Sandbox) -> None:
    firewalld_sandbox.firewall_cmd("--set-default-zone=work")
    zone = asyncio.run(asyncio.wait_for(default_zone_over_dbus(firewalld_sandbox.bus_address), 10))
    assert zone == "work"


def test_run_reports_failures_and_timeouts(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox()
    with pytest.raises(AssertionError) as failure:
        sandbox.run("sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
    for expected in ("sh -c", "exited 3", "to-stdout", "to-stderr"):
        assert expected in str(failure.value)
    assert sandbox.run("sleep", "30", check=False, timeout=1).returncode == 124
    assert sandbox.run("cat", input="piped").stdout == "piped"
    assert sandbox.run("sh", "-c", "echo $PROBE", env={"PROBE": "set"}).stdout == "set\n"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_direct_redirect_reaches_the_sandbox_listener(
    make_sandbox: SandboxFactory, backend: Backend, family: Family
) -> None:
    sandbox = make_sandbox(backend, conf=IPV6_REDIRECT_CONF)
    peer = sandbox.add_peer()
    peer_addr = peer.address(family)
    with proxy_and_peer_listeners(sandbox, peer, family):
        reply = sandbox.connect(peer_addr, APP_PORT)
        assert reply is not None and (reply["server"], reply["orig_dst"]) == ("app", None)

        sandbox.firewall_cmd("--direct", "--add-rule", family, "nat", "OUTPUT", "0",
                             *redirect_args(peer, family))  # fmt: skip
        prefix = "32" if family == "ipv4" else "128"
        match = f"-d {peer_addr}/{prefix} -p tcp -m tcp --dport {APP_PORT}"
        assert f"{match} -j REDIRECT --to-ports {PROXY_PORT}" in sandbox.iptables_save(
            family, "nat"
        )

        reply = sandbox.connect(peer_addr, APP_PORT)
        assert reply is not None
        assert (reply["server"], reply["orig_dst"]) == ("proxy", endpoint(peer_addr, APP_PORT))
        reply = sandbox.connect(peer_addr, OTHER_PORT)
        assert reply is not None and (reply["server"], reply["orig_dst"]) == ("app", None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rfc3964_ipv4_rejects_ipv6_redirect_to_loopback(
    make_sandbox: SandboxFactory, backend: Backend
) -> None:
    """Why the IPv6 redirect test turns RFC3964_IPv4 off (firewalld 1.3.3 default config)."""
    sandbox = make_sandbox(backend, stock=True)
    peer = sandbox.add_peer()
    with proxy_and_peer_listeners(sandbox, peer, "ipv6"):
        sandbox.firewall_cmd("--direct", "--add-rule", "ipv6", "nat", "OUTPUT", "0",
                             *redirect_args(peer, "ipv6"))  # fmt: skip
        assert sandbox.connect(peer.ipv6, APP_PORT, timeout=2) is None


def test_stop_start_and_direct_xml_loaded_at_start(firewalld_sandbox: Sandbox) -> None:
    sandbox = firewalld_sandbox
    first_pid = sandbox.firewalld_pid
    assert sandbox.stop_firewalld() == 0
    assert sandbox.firewalld_pid is None
    assert sandbox.state() == "not running (exit 252)"
    assert sandbox.stop_firewalld() is None  # nothing left to stop

    sandbox.direct_xml.write_text(DIRECT_XML)
    assert sandbox.start_firewalld() == "running"
    assert sandbox.firewalld_pid not in (None, first_pid)
    rule = "ipv4 filter INPUT 0 -p tcp --dport 9999 -j ACCEPT"
    assert sandbox.firewall_cmd("--direct", "--get-all-rules").stdout.splitlines() == [rule]
    assert "--dport 9999 -j ACCEPT" in sandbox.iptables_save("ipv4", "filter")

    assert sandbox.restart_firewalld() == "running"
    assert sandbox.firewall_cmd("--direct", "--get-all-rules").stdout.splitlines() == [rule]


@pytest.mark.parametrize("flush", ["yes", "no"])
def test_flush_all_on_reload_is_applied(make_sandbox: SandboxFactory, flush: YesNo) -> None:
    sandbox = make_sandbox("nftables", flush)
    rule = ["ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"]
    sandbox.firewall_cmd("--direct", "--add-rule", *rule)
    sandbox.reload()
    kept = sandbox.firewall_cmd("--direct", "--get-all-rules").stdout.split()
    assert (kept == rule) == (flush == "no")


def test_listener_and_client_as_another_uid(firewalld_sandbox: Sandbox) -> None:
    sandbox = firewalld_sandbox
    peer = sandbox.add_peer()
    with (
        proxy_and_peer_listeners(sandbox, peer, "ipv4"),
        sandbox.listen(15002, name="unprivileged", uid=PROXY_UID) as listener,
    ):
        status = sandbox.run("cat", f"/proc/{listener.pid}/status").stdout
        assert f"Uid:\t{PROXY_UID}\t{PROXY_UID}" in status
        reply = sandbox.connect("127.0.0.1", 15002, uid=PROXY_UID)
        assert reply is not None and reply["server"] == "unprivileged"

        # An owner match tells the two clients apart: proof connect() really runs as the uid.
        sandbox.firewall_cmd("--direct", "--add-rule", "ipv4", "nat", "OUTPUT", "0",
                             "-m", "owner", "--uid-owner", str(PROXY_UID),
                             *redirect_args(peer, "ipv4"))  # fmt: skip
        as_uid = sandbox.connect(peer.ipv4, APP_PORT, uid=PROXY_UID)
        as_root = sandbox.connect(peer.ipv4, APP_PORT)
        assert as_uid is not None and as_uid["server"] == "proxy"
        assert as_root is not None and as_root["server"] == "app"


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_leaves_no_process_behind(make_sandbox: SandboxFactory, backend: Backend) -> None:
    sandbox = make_sandbox(backend)
    peer = sandbox.add_peer()
    with proxy_and_peer_listeners(sandbox, peer, "ipv4"):
        processes = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in sandbox.host_pids()}
        assert any(b"firewalld\0--nofork" in cmdline for cmdline in processes.values())
        assert any(b"dbus-daemon" in cmdline for cmdline in processes.values())
        assert sum(b"traffic_agent.py" in cmdline for cmdline in processes.values()) == 3
        identities = [identity for pid in processes if (identity := process_identity(pid))]
        sandbox.close()  # with the listeners still open: they must die with the sandbox

    for identity in identities:
        pid = identity[0]
        assert process_identity(pid) != identity, f"{processes[pid]!r} survived the sandbox"
    leftovers = subprocess.run(
        ["pgrep", "-af", str(sandbox.workdir)], capture_output=True, text=True
    )
    assert leftovers.returncode == 1, leftovers.stdout
    assert not sandbox.workdir.exists()
