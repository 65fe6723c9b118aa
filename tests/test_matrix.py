"""The integration suite against every firewalld our users run: 0.9 / 1.3 / 2.3 / 2.5.

Debian carries that spread: bullseye 0.9.3 (like RHEL 8), bookworm 1.3.3 (this host, like
RHEL 9), trixie 2.3.1 and forky 2.5.2 (like Fedora and newer RHEL). The host's firewalld runs
as is; the others run from Debian roots built by scripts/build-roots, chrooted inside the
sandbox's namespaces (tests/harness). The CLI under test always runs on the host side, inside
the sandbox's mount namespace, where /run (the system bus socket) and /etc/firewalld are the
ones that firewalld uses; offline cases give it `--root` on the chroot.

Which versions: TPFW_FIREWALLD_ROOTS, a comma-separated list of suites (roots in
TPFW_ROOTS_DIR, default /var/cache/tproxy-firewalld/roots) or root paths; "none" for the host
only. Unset: the host plus every complete root found there. A root that is asked for but
missing or broken fails its tests, never skips them.

Every test appends its outcome to TPFW_MATRIX_RESULTS (default build/matrix-results.jsonl);
scripts/compat-table renders the README's compatibility table from it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import Backend, Family, Peer, Sandbox, SandboxFactory, YesNo, endpoint
from helpers import (
    MIDWAY_REJECTED,
    add_foreign,
    direct_lines,
    file_config,
    foreign,
    load,
    ours,
    run_in_sandbox,
    tpfw,
)
from versions import FLUSH, Version, params

from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.entries import Chain, DirectConfig, Rule
from tproxy_firewalld.fwconf import parse_conf
from tproxy_firewalld.kuma import OWNER
from tproxy_firewalld.ruleset import build_ruleset

REPO = Path(__file__).resolve().parent.parent
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

KUMA_COMMENT = "kuma/mesh/transparent/proxy"
KUMA_DP_UID = 5678
INBOUND_PORT, OUTBOUND_PORT, APP_PORT = 15006, 15001, 8080
# The runtime-only rule add_foreign() adds (test_live.py).
RUNTIME_ONLY = "ipv4 filter INPUT 5 -p tcp --dport 9999 -j ACCEPT"
# firewalld >= 2.5 says this when a file it watches changes behind its back.
OUT_OF_BAND = "out-of-band"
WATCHER_DELAY = 5.0  # firewalld's watcher acts 5 s after the last change of a file


# -- results, for the README's table ---------------------------------------------------------


def results_path() -> Path:
    return Path(os.environ.get("TPFW_MATRIX_RESULTS") or REPO / "build" / "matrix-results.jsonl")


@pytest.fixture(scope="module", autouse=True)
def _fresh_results() -> None:
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The test's line in the results file; the test sets "passed" as its last step."""
    version, backend, flush = (
        request.node.callspec.params[k] for k in ("version", "backend", "flush")
    )
    entry: dict[str, Any] = {
        "test": request.node.originalname,
        "suite": version.suite,
        "firewalld": version.package,
        "backend": backend,
        "flush_all_on_reload": flush,
        "passed": False,
        "facts": {},  # what firewalld was seen doing, for the README (scripts/compat-table)
    }
    started = time.monotonic()
    yield entry
    entry["seconds"] = round(time.monotonic() - started, 1)
    with results_path().open("a") as out:
        out.write(json.dumps(entry) + "\n")


# -- helpers ---------------------------------------------------------------------------------


def start(
    make_sandbox: SandboxFactory,
    version: Version,
    backend: Backend,
    flush: YesNo = "yes",
    conf: dict[str, str] | None = None,
    *,
    stock: bool = False,
) -> Sandbox:
    if version.problem:
        pytest.fail(version.problem, pytrace=False)
    sb = make_sandbox(backend, flush, version.root, conf, stock=stock)
    assert sb.firewalld_version() == version.upstream, "the sandbox runs the firewalld asked for"
    return sb


def expected_ours() -> DirectConfig:
    """The default install (uid 5678 exempt), as the CLI builds it."""
    return build_ruleset(load({"--kuma-dp-user": str(KUMA_DP_UID)}))


def log_text(sb: Sandbox) -> str:
    return sb.log_path.read_text(errors="replace")


# This machine's kernel has no loadable modules (no /proc/modules): firewalld 0.9.3 logs a
# traceback for that when it stops (1.x and later cope). Nothing to do with direct rules.
NO_PROC_MODULES = "No such file or directory: '/proc/modules'"


def complaints(sb: Sandbox) -> list[str]:
    """firewalld's ERROR messages and tracebacks, one string each (the kernel's lack of
    loadable modules excepted)."""
    messages = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d )", log_text(sb))
    return [
        m for m in messages
        if ("ERROR" in m or "Traceback" in m) and NO_PROC_MODULES not in m
    ]  # fmt: skip


def settle_watcher() -> None:
    """Long enough for firewalld's file watcher to have acted on a change just made."""
    time.sleep(WATCHER_DELAY + 2)


def served(reply: dict[str, str | None] | None) -> tuple[str | None, str | None] | None:
    return None if reply is None else (reply["server"], reply["orig_dst"])


@contextmanager
def proxy_and_remote(sb: Sandbox) -> Iterator[Peer]:
    """The proxy's two listeners in the sandbox, the app on the remote peer."""
    peer = sb.add_peer()
    with ExitStack() as stack:
        stack.enter_context(sb.listen(OUTBOUND_PORT, name="proxy-out"))
        stack.enter_context(sb.listen(INBOUND_PORT, name="proxy-in"))
        stack.enter_context(sb.listen(APP_PORT, name="remote", netns=peer.name))
        yield peer


def assert_redirected(sb: Sandbox, peer: Peer, when: str) -> None:
    out = sb.connect(peer.ipv4, APP_PORT)
    assert served(out) == ("proxy-out", f"{peer.ipv4}:{APP_PORT}"), f"{when}: outbound"
    assert served(sb.connect(peer.ipv4, APP_PORT, uid=KUMA_DP_UID)) == ("remote", None), (
        f"{when}: the proxy's own uid is exempt"
    )
    inbound = sb.connect(peer.local_ipv4, APP_PORT, netns=peer.name)
    assert served(inbound) == ("proxy-in", f"{peer.local_ipv4}:{APP_PORT}"), f"{when}: inbound"


def assert_not_redirected(sb: Sandbox, peer: Peer, when: str) -> None:
    assert served(sb.connect(peer.ipv4, APP_PORT)) == ("remote", None), f"{when}: outbound"
    # Nothing listens on the sandbox's 8080 (and firewalld's zone refuses it): no connection.
    assert sb.connect(peer.local_ipv4, APP_PORT, netns=peer.name, timeout=2) is None, (
        f"{when}: inbound"
    )


def status_json(sb: Sandbox, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(tpfw(sb, "status", "--output", "json", *args).stdout)
    return data


def in_sync(sb: Sandbox, *settings: str) -> bool:
    result = tpfw(sb, "diff", *settings, check=False)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode == 0


# -- 1. the whole cycle ----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "backend", "flush"), params(flush=FLUSH))
def test_cycle(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """install / diff / traffic / reload / restart / dry-run / uninstall with foreign entries."""
    sb = start(make_sandbox, version, backend, flush)
    add_foreign(sb)
    runtime0, permanent0 = direct_lines(sb), direct_lines(sb, permanent=True)
    assert RUNTIME_ONLY in runtime0 and RUNTIME_ONLY not in permanent0
    wanted = expected_ours()

    with proxy_and_remote(sb) as peer:
        assert_not_redirected(sb, peer, "before install")

        dry = json.loads(tpfw(sb, "install", "--dry-run", "--output", "json").stdout)
        assert dry["dry_run"] is True and dry["changed"] is True
        assert (direct_lines(sb), direct_lines(sb, permanent=True)) == (runtime0, permanent0)

        result = json.loads(tpfw(sb, "install", "--output", "json").stdout)
        assert result["mode"] == "live" and result["changed"] is True
        runtime, permanent = direct_lines(sb), direct_lines(sb, permanent=True)
        assert foreign(runtime) == runtime0 and foreign(permanent) == permanent0, "foreign kept"
        assert len(ours(runtime)) == len(wanted.entries()) and ours(runtime) == ours(permanent)
        assert file_config(sb).ours(OWNER).entries() == wanted.entries()
        assert tpfw(sb, "install").stdout.strip().endswith("install: nothing to do")
        assert in_sync(sb)
        status = status_json(sb)
        assert status["firewalld"]["version"] == version.upstream
        assert status["firewalld"]["backend"] == backend
        assert status["firewalld"]["flush_all_on_reload"] == flush
        n = len(wanted.entries())
        assert status["installed"] == {"runtime": n, "permanent": n, "file": n}
        assert status["in_sync"] is True
        assert_redirected(sb, peer, "after install")

        sb.reload()
        assert in_sync(sb), "after reload"
        # FlushAllOnReload=no keeps runtime-only direct rules over a reload, =yes drops them.
        kept = RUNTIME_ONLY in direct_lines(sb)
        outcome["facts"][
            f"another tool's runtime-only direct rule, reload with FlushAllOnReload={flush}"
        ] = "kept" if kept else "dropped"
        assert kept == (flush == "no")
        assert_redirected(sb, peer, "after reload")

        assert sb.restart_firewalld() == "running"
        assert in_sync(sb), "after restart"
        assert RUNTIME_ONLY not in direct_lines(sb), "runtime-only rules never survive a restart"
        assert_redirected(sb, peer, "after restart")

        before = (direct_lines(sb), direct_lines(sb, permanent=True), sb.direct_xml.read_bytes())
        dry = tpfw(sb, "uninstall", "--dry-run")
        assert "would change" in dry.stdout
        assert (
            direct_lines(sb),
            direct_lines(sb, permanent=True),
            sb.direct_xml.read_bytes(),
        ) == before

        out = tpfw(sb, "uninstall").stdout
        assert "uninstall: runtime: -" in out and "permanent: updated" in out, out
        assert direct_lines(sb) == foreign(before[0])
        assert direct_lines(sb, permanent=True) == permanent0
        assert file_config(sb).ours(OWNER).is_empty()
        for ipv in ("ipv4", "ipv6"):
            saved = "".join(sb.iptables_save(ipv, t) for t in ("raw", "nat", "mangle"))
            assert "KUMA" not in saved and KUMA_COMMENT not in saved
        assert tpfw(sb, "uninstall").stdout.strip().endswith("uninstall: nothing to do")
        assert_not_redirected(sb, peer, "after uninstall")

    assert sb.state() == "running"
    assert complaints(sb) == []
    outcome["passed"] = True


# -- 2. offline --------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "backend", "flush"), params())
def test_offline_install_and_uninstall_apply_at_next_start(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """`--root` on the stopped firewalld's root: direct.xml only; firewalld takes it at start."""
    sb = start(make_sandbox, version, backend, flush)
    add_foreign(sb)
    permanent0 = direct_lines(sb, permanent=True)
    wanted = expected_ours()
    # The chroot's root for another version; for the host's firewalld its root is "/", which
    # `--root` takes for the live system: there the offline way is --offline.
    where = ["--root", str(sb.root)] if sb.root is not None else ["--offline"]
    sb.stop_firewalld()

    result = json.loads(tpfw(sb, "install", *where, "--output", "json").stdout)
    assert result["mode"] == "offline" and len(result["file"]["after"]) == len(wanted.entries())
    outcome["facts"]["offline `--root` install and uninstall"] = "applied at next start"
    assert status_json(sb, *where[:2] if sb.root else ())["installed"] == {
        "file": len(wanted.entries())
    }
    assert sb.start_firewalld() == "running"
    assert len(ours(direct_lines(sb))) == len(wanted.entries())
    assert foreign(direct_lines(sb, permanent=True)) == permanent0
    # The record went under --root; the live diff is told the settings instead.
    assert in_sync(sb, "--kuma-dp-user", str(KUMA_DP_UID))
    assert tpfw(sb, "install", *where).stdout.strip().endswith("nothing to do")

    sb.stop_firewalld()
    assert "direct.xml: -" in tpfw(sb, "uninstall", *where).stdout
    assert sb.start_firewalld() == "running"
    assert ours(direct_lines(sb)) == [] and direct_lines(sb, permanent=True) == permanent0
    assert "KUMA" not in sb.iptables_save("ipv4", "nat")
    outcome["passed"] = True


# -- 3. Kuma's leftovers ---------------------------------------------------------------------

JUMP_COMMENT = f"{KUMA_COMMENT}/redirect outbound TCP traffic to our custom chain for processing"
KUMA_STORED = DirectConfig(
    chains=(Chain("ipv4", "nat", "KUMA_MESH_OUTBOUND"), Chain("ipv4", "filter", "FOREIGN")),
    rules=(
        Rule("ipv4", "nat", "OUTPUT", 3,
             ("-m", "comment", "--comment", JUMP_COMMENT, "-p", "tcp", "-j", "KUMA_MESH_OUTBOUND")),
        Rule("ipv4", "nat", "KUMA_MESH_OUTBOUND", 3, ("-p", "tcp", "--dport", "15001", "-j", "RETURN")),
        Rule("ipv4", "filter", "FOREIGN", 0, ("-j", "RETURN")),
    ),
)  # fmt: skip
# kumactl --store-firewalld labels every rule ipv4, its IPv6 ones included: iptables rejects
# this one, so a firewalld that loads it fails.
KUMA_BROKEN = Rule(
    "ipv4", "nat", "KUMA_MESH_OUTBOUND", 3, ("-s", "::6/128", "-o", "lo", "-j", "RETURN")
)


@pytest.mark.parametrize(("version", "backend", "flush"), params(backends=("nftables",)))
def test_kuma_leftovers_are_removed_live_and_offline(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    sb = start(make_sandbox, version, backend, flush)
    only_foreign = DirectConfig(chains=(KUMA_STORED.chains[1],), rules=(KUMA_STORED.rules[2],))

    # live: what kumactl --store-firewalld left and firewalld loaded
    sb.direct_xml.write_bytes(render_direct_xml(KUMA_STORED))
    sb.reload()
    assert sb.state() == "running" and "KUMA_MESH_OUTBOUND" in sb.iptables_save("ipv4", "nat")
    out = tpfw(sb, "uninstall").stdout
    assert (
        "runtime: -1 chain -2 rules" in out and "permanent: updated (-1 chain -2 rules)" in out
    ), out
    assert file_config(sb) == only_foreign
    assert "KUMA" not in sb.iptables_save("ipv4", "nat")
    assert direct_lines(sb) == ["ipv4 filter FOREIGN", "ipv4 filter FOREIGN 0 -j RETURN"]

    # offline: the leftover with kumactl's mislabelled IPv6 rule, which firewalld cannot load
    sb.stop_firewalld()
    broken = DirectConfig(KUMA_STORED.chains, (*KUMA_STORED.rules, KUMA_BROKEN))
    sb.direct_xml.write_bytes(render_direct_xml(broken))
    out = tpfw(sb, "uninstall", "--root", str(sb.image_root)).stdout
    assert "direct.xml: -1 chain -3 rules" in out, out
    assert file_config(sb) == only_foreign
    assert sb.start_firewalld() == "running"
    outcome["passed"] = True


@pytest.mark.parametrize(("version", "backend", "flush"), params(backends=("nftables",)))
def test_firewalld_failing_on_kumas_leftover_is_recovered(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """firewalld started on kumactl's broken leftover goes to state FAILED, in every version
    (from 1.2 running a fail-safe stock configuration; 0.9 just failed). Our tools say so, make
    no live change while FAILED, and an offline uninstall fixes the file."""
    sb = start(make_sandbox, version, backend, flush)
    sb.stop_firewalld()
    broken = DirectConfig(KUMA_STORED.chains, (*KUMA_STORED.rules, KUMA_BROKEN))
    sb.direct_xml.write_bytes(render_direct_xml(broken))
    state = sb.start_firewalld()
    outcome["facts"]["start with kumactl's mislabelled IPv6 rule in direct.xml"] = (
        f"state {state.split()[0].upper()}"
    )
    assert state.startswith("failed"), state
    status = tpfw(sb, "status", check=False)
    assert "FAILED" in status.stdout + status.stderr, status
    for command in ("install", "uninstall"):
        result = tpfw(sb, command, check=False)
        assert result.returncode == 5 and "FAILED state" in result.stderr, result
        assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert file_config(sb).entries() == broken.entries(), "nothing written while FAILED"
    assert "direct.xml: -1 chain -3 rules" in tpfw(sb, "uninstall", "--offline").stdout
    assert sb.restart_firewalld() == "running"
    assert "ipv4 filter FOREIGN" in direct_lines(sb) and ours(direct_lines(sb)) == []
    assert tpfw(sb, "install").returncode == 0 and in_sync(sb)
    outcome["passed"] = True


# -- 4. safety -------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "backend", "flush"), params())
def test_rule_firewalld_rejects_is_rolled_back_and_firewalld_keeps_running(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """A rule this firewalld's iptables rejects (a jump to a missing chain, past the pre-check):
    COMMAND_FAILED, everything done so far undone, permanent untouched, firewalld RUNNING."""
    sb = start(make_sandbox, version, backend, flush)
    add_foreign(sb)
    before = direct_lines(sb), direct_lines(sb, permanent=True), sb.direct_xml.read_bytes()
    out = run_in_sandbox(sb, MIDWAY_REJECTED).stdout
    assert out.startswith("FirewalldRejected 6 ") and "COMMAND_FAILED" in out, out
    assert "change(s) already made, nothing was changed" in out, out
    assert (
        direct_lines(sb),
        direct_lines(sb, permanent=True),
        sb.direct_xml.read_bytes(),
    ) == before
    assert sb.state() == "running"
    sb.reload()
    assert sb.state() == "running"
    assert tpfw(sb, "install").returncode == 0 and in_sync(sb)
    outcome["passed"] = True


# -- 5. what differs between versions ---------------------------------------------------------


@pytest.mark.parametrize(("version", "backend", "flush"), params())
def test_status_warns_exactly_when_a_reload_flushes_other_tools_chains(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """Before 2.0 firewalld flushes all iptables tables on every reload; from 2.0 only once
    direct config exists (nftables backend; the iptables backend always flushes). `status`
    warns in exactly the cases where another tool's chain is then lost, and names that chain
    only, none of firewalld's own (RFC3964_IPv4, 2.5's *_dispatch)."""
    sb = start(make_sandbox, version, backend, flush)

    def docker_chain_survives_reload() -> bool:
        sb.run("iptables", "-t", "filter", "-N", "DOCKER-USER")
        sb.reload()
        alive = sb.run("iptables", "-t", "filter", "-S", "DOCKER-USER", check=False).returncode == 0
        if alive:
            sb.run("iptables", "-t", "filter", "-X", "DOCKER-USER")
        return alive

    def flush_warning() -> list[str]:
        sb.run("iptables", "-t", "filter", "-N", "DOCKER-USER")
        warnings = [
            w["message"] for w in status_json(sb)["warnings"] if w["code"] == "iptables-flush"
        ]
        sb.run("iptables", "-t", "filter", "-X", "DOCKER-USER")
        for warning in warnings:  # only the other tool's chain: none of firewalld's own
            assert warning.endswith(
                "these chains of other tools would be wiped: ipv4 filter DOCKER-USER"
            )
        return warnings

    flushes = version.flushes_iptables_without_direct_config(backend)
    # No direct configuration at all.
    warned = flush_warning()
    assert len(warned) == int(flushes), warned
    if version.number < (2, 0):
        assert "on every start, reload and stop (firewalld < 2.0)" in warned[0]
    elif backend == "iptables":
        assert "on every start, reload and stop (FirewallBackend=iptables)" in warned[0]
    survived = docker_chain_survives_reload()
    outcome["facts"]["another tool's iptables chain, reload without direct rules"] = (
        "kept" if survived else "flushed, status warns"
    )
    assert survived == (not flushes)

    # Ours installed: every version flushes.
    tpfw(sb, "install")
    assert len(flush_warning()) == 1
    assert not docker_chain_survives_reload()
    assert in_sync(sb), "our rules come back with the reload"

    status = status_json(sb)
    strict = status["firewalld"]["strict_forward_ports"]
    assert strict == ("no" if version.has_strict_forward_ports else None), strict
    assert not [w for w in status["warnings"] if w["code"] == "strict-forward-ports"]
    outcome["passed"] = True


@contextmanager
def dual_stack_proxy_and_remote(sb: Sandbox) -> Iterator[Peer]:
    """The proxy's listeners in the sandbox and the app on the remote peer, in both families."""
    peer = sb.add_peer()
    with ExitStack() as stack:
        for family in FAMILIES:
            stack.enter_context(sb.listen(OUTBOUND_PORT, family=family, name="proxy-out"))
            stack.enter_context(sb.listen(INBOUND_PORT, family=family, name="proxy-in"))
            stack.enter_context(sb.listen(APP_PORT, family=family, name="remote", netns=peer.name))
        yield peer


def local_address(peer: Peer, family: Family) -> str:
    return peer.local_ipv6 if family == "ipv6" else peer.local_ipv4


def assert_family_redirected(sb: Sandbox, peer: Peer, family: Family, when: str) -> None:
    remote, local = peer.address(family), local_address(peer, family)
    out = served(sb.connect(remote, APP_PORT))
    assert out == ("proxy-out", endpoint(remote, APP_PORT)), f"{when}: {family} outbound"
    exempt = served(sb.connect(remote, APP_PORT, uid=KUMA_DP_UID))
    assert exempt == ("remote", None), f"{when}: {family}, the proxy's own uid is exempt"
    inbound = served(sb.connect(local, APP_PORT, netns=peer.name))
    assert inbound == ("proxy-in", endpoint(local, APP_PORT)), f"{when}: {family} inbound"


def assert_family_direct(sb: Sandbox, peer: Peer, family: Family, when: str) -> None:
    out = served(sb.connect(peer.address(family), APP_PORT))
    assert out == ("remote", None), f"{when}: {family} outbound goes straight to the remote host"
    # Nothing listens on the sandbox's 8080 (and firewalld's zone refuses it): no connection.
    inbound = sb.connect(local_address(peer, family), APP_PORT, netns=peer.name, timeout=2)
    assert inbound is None, f"{when}: {family} inbound is not redirected"


def conf_values(sb: Sandbox) -> dict[str, str | None]:
    values = parse_conf((sb.etc_dir / "firewalld.conf").read_text())
    return {name: values.get(name) for name in ("RFC3964_IPv4", "StrictForwardPorts")}


# firewalld < 2.3 reads firewalld.conf's StrictForwardPorts line as an unknown option.
UNKNOWN_OPTION = "Invalid option: 'StrictForwardPorts=yes'"


@pytest.mark.parametrize(("version", "backend", "flush"), params())
def test_stock_firewalld_conf_is_refused_or_changed_with_consent_live_and_offline(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """firewalld's stock RFC3964_IPv4=yes rejects IPv6 outbound REDIRECTs to ::1 (before 2.3;
    from 2.3 firewalld accepts DNATed connections first: tests/test_rfc3964_by_version.py);
    StrictForwardPorts=yes (from 2.3; older ones ignore the line) rejects every REDIRECT. The
    evidence first (our rules put in by hand); then install refuses (exit 12) and changes
    nothing; with --configure-firewalld it sets the one that defeats the rules to no through
    firewalld's D-Bus API and reloads, and both families reach the proxy with the right original
    destination, inbound and outbound; uninstall puts it back and traffic flows directly.
    The same offline (`--root`, firewalld stopped): firewalld.conf edited, applied at start."""
    has_strict = version.has_strict_forward_ports
    sb = start(
        make_sandbox, version, backend, flush, conf={"StrictForwardPorts": "yes"}, stock=True
    )
    stock = conf_values(sb)
    assert stock == {"RFC3964_IPv4": "yes", "StrictForwardPorts": "yes"}
    # from 2.3 (where StrictForwardPorts came) RFC3964_IPv4 no longer defeats the rules
    defeated = ["StrictForwardPorts"] if has_strict else ["RFC3964_IPv4"]
    with dual_stack_proxy_and_remote(sb) as peer:
        # The evidence: our rules, loaded by hand, under the stock settings.
        sb.direct_xml.write_bytes(render_direct_xml(expected_ours()))
        sb.reload()
        v4 = served(sb.connect(peer.ipv4, APP_PORT, timeout=2))
        v6 = served(sb.connect(peer.ipv6, APP_PORT, timeout=2))
        assert v6 is None, "RFC3964_IPv4=yes (< 2.3), StrictForwardPorts=yes (>= 2.3) reject it"
        assert v4 == (None if has_strict else ("proxy-out", f"{peer.ipv4}:{APP_PORT}")), v4
        sb.direct_xml.write_bytes(render_direct_xml(DirectConfig()))
        sb.reload()
        outcome["facts"]["firewalld's stock RFC3964_IPv4=yes"] = (
            "does no harm (DNATed connections are accepted before its reject): left as it is, "
            "IPv6 redirects work"
            if has_strict
            else "rejects IPv6 outbound redirects: install refuses, --configure-firewalld sets it to no"
        )
        outcome["facts"]["StrictForwardPorts=yes"] = (
            "breaks inbound and outbound redirects: install refuses, --configure-firewalld sets it to no"
            if has_strict
            else "not a setting: ignored"
        )

        # Without consent: refused, nothing changed (firewalld, direct.xml, firewalld.conf, lo).
        before = (direct_lines(sb), direct_lines(sb, permanent=True), sb.direct_xml.read_bytes())
        refused = tpfw(sb, "install", check=False)
        assert refused.returncode == 12, refused.stderr
        line = refused.stderr.strip()
        assert (
            line.count("\n") == 0
            and "Nothing was changed" in line
            and "--configure-firewalld" in line
        )
        for name in ("RFC3964_IPv4", "StrictForwardPorts"):
            assert (f"firewalld has {name}=yes: " in line) == (name in defeated), line
        assert ("--ip-family-mode ipv4" in line) == (not has_strict), (
            "IPv4 only helps without StrictForwardPorts"
        )
        assert (
            direct_lines(sb),
            direct_lines(sb, permanent=True),
            sb.direct_xml.read_bytes(),
        ) == before
        assert (
            conf_values(sb) == stock
            and "::6/128" not in sb.run("ip", "-6", "addr", "show", "lo").stdout
        )
        status = status_json(sb)
        strict_warned = [w for w in status["warnings"] if w["code"] == "strict-forward-ports"]
        assert len(strict_warned) == int(has_strict), status["warnings"]
        if has_strict:
            assert (
                "--configure-firewalld` sets StrictForwardPorts=no and reloads firewalld"
                in (strict_warned[0]["message"])
            )
        for family in FAMILIES:
            assert_family_direct(sb, peer, family, "after the refusal")

        # With consent, live.
        out = tpfw(sb, "install", "--configure-firewalld").stdout
        for name in defeated:
            assert f"firewalld.conf: {name}=no (was yes)" in out, out
        assert f"firewalld reloaded (applies {', '.join(defeated)})" in out, out
        assert conf_values(sb) == {
            "RFC3964_IPv4": "yes" if has_strict else "no",
            "StrictForwardPorts": "no" if has_strict else "yes",
        }
        for family in FAMILIES:
            assert_family_redirected(sb, peer, family, "after install --configure-firewalld")
        assert in_sync(sb)
        status = status_json(sb)
        assert status["in_sync"] is True and status["warnings"] == [], status["warnings"]
        assert status["firewalld"]["rfc3964_ipv4"] == ("yes" if has_strict else "no")
        assert [c["name"] for c in status["record"]["firewalld_conf"]] == defeated
        outcome["facts"]["--configure-firewalld live: set over D-Bus, applied by"] = "a reload"

        out = tpfw(sb, "uninstall").stdout
        for name in defeated:
            assert f"firewalld.conf: {name}=yes (was no)" in out, out
        assert conf_values(sb) == stock
        assert status_json(sb)["firewalld"]["rfc3964_ipv4"] == "yes"
        for family in FAMILIES:
            assert_family_direct(sb, peer, family, "after uninstall")

        # Offline: firewalld stopped, its firewalld.conf edited under --root.
        root = str(sb.image_root)
        sb.stop_firewalld()
        refused = tpfw(sb, "install", "--root", root, check=False)
        assert refused.returncode == 12 and "Nothing was changed" in refused.stderr, refused.stderr
        assert ("StrictForwardPorts=yes" in refused.stderr) == has_strict, (
            "the image's version decides"
        )
        out = tpfw(sb, "install", "--root", root, "--configure-firewalld").stdout
        for name in defeated:
            assert (
                f"firewalld.conf: {name}=no (was yes, applied at firewalld's next start)" in out
            ), out
        assert sb.start_firewalld() == "running"
        for family in FAMILIES:
            assert_family_redirected(
                sb, peer, family, "after an offline install, firewalld started"
            )
        sb.stop_firewalld()
        out = tpfw(sb, "uninstall", "--root", root).stdout
        for name in defeated:
            assert (
                f"firewalld.conf: {name}=yes (was no, applied at firewalld's next start)" in out
            ), out
        assert conf_values(sb) == stock
        assert sb.start_firewalld() == "running"
        for family in FAMILIES:
            assert_family_direct(sb, peer, family, "after an offline uninstall, firewalld started")
        outcome["facts"]["--configure-firewalld offline (`--root`)"] = (
            "firewalld.conf edited, applied at next start"
        )

    assert OUT_OF_BAND not in log_text(sb), "our Set calls are firewalld's own writes"
    assert [c for c in complaints(sb) if UNKNOWN_OPTION not in c] == []
    outcome["passed"] = True


@pytest.mark.parametrize(("version", "backend", "flush"), params(backends=("nftables",)))
def test_our_writes_cause_no_out_of_band_warning_and_hand_edits_follow_the_version(
    make_sandbox: SandboxFactory,
    outcome: dict[str, Any],
    version: Version,
    backend: Backend,
    flush: YesNo,
) -> None:
    """Our live writes go through firewalld (config.direct.update): no firewalld, 2.5 included,
    sees an out-of-band change. A hand edit of direct.xml is re-read by firewalld up to 2.4;
    2.5 only warns, and then `diff` names the edit and `install` refuses to overwrite it."""
    sb = start(make_sandbox, version, backend, flush)
    tpfw(sb, "install")
    tpfw(sb, "install", "--redirect-outbound-port", "15999")
    settle_watcher()
    tpfw(sb, "uninstall")
    tpfw(sb, "install")
    settle_watcher()
    assert OUT_OF_BAND not in log_text(sb), log_text(sb)
    assert in_sync(sb)

    # A hand edit: a foreign rule added to the file behind firewalld's back.
    mine = Rule("ipv4", "filter", "INPUT", 0, ("-p", "tcp", "--dport", "2022", "-j", "ACCEPT"))
    config = file_config(sb)
    sb.direct_xml.write_bytes(
        render_direct_xml(DirectConfig(config.chains, (*config.rules, mine), config.passthroughs))
    )
    settle_watcher()
    permanent = direct_lines(sb, permanent=True)
    outcome["facts"]["our live writes: out-of-band warnings"] = "none"
    outcome["facts"]["direct.xml edited by hand while running"] = (
        "re-read after 5 s"
        if version.rereads_direct_xml
        else "not re-read; logs out-of-band, needs reload"
    )
    if version.rereads_direct_xml:
        assert f"ipv4 filter INPUT 0 {' '.join(mine.args)}" in permanent, (
            "firewalld re-read the file"
        )
        assert OUT_OF_BAND not in log_text(sb)
        assert in_sync(sb)
        assert tpfw(sb, "install", "--redirect-outbound-port", "15999").returncode == 0
    else:
        assert OUT_OF_BAND in log_text(sb), log_text(sb)
        assert f"ipv4 filter INPUT 0 {' '.join(mine.args)}" not in permanent, "2.5 does not re-read"
        diff = tpfw(sb, "diff", check=False)
        assert diff.returncode == 1 and f"only in direct.xml: {mine.describe()}" in diff.stdout
        result = tpfw(sb, "install", "--redirect-outbound-port", "15999", check=False)
        assert result.returncode == 3 and "edited by hand and not loaded" in result.stderr
        sb.reload()  # what the message and firewalld ask for
        assert tpfw(sb, "install", "--redirect-outbound-port", "15999").returncode == 0
    assert mine in file_config(sb).rules
    outcome["passed"] = True
