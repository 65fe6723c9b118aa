"""firewalld flushes every iptables table (issue 17, item 1): from 2.0 (nftables backend) when
the first direct entry is added and on every start, reload and stop while direct config exists;
before 2.0 and on the iptables backend on every start, reload and stop. Another tool's chains and
rules (Docker's) are gone then. Install finds them first and refuses (exit 13, nothing changed)
when its plan makes firewalld flush, unless allowed (--allow-iptables-flush); diff warns, status
warns about the next reload.

The detector's reading of iptables-save first (pure), then the proof against real firewalld
2.3.1 and 2.5.2 (Debian roots) and the host's 1.3.3, with real Docker-style rules in the
sandbox's kernel tables.

The names new with this change are imported inside the tests that use them, so that the file
also runs against the code before it (where every test here fails).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import Sandbox, SandboxFactory
from helpers import TP, add_foreign, direct_lines, tpfw
from versions import version_of

from tproxy_firewalld.entries import Chain, DirectConfig, Passthrough, Rule
from tproxy_firewalld.firewalld import DaemonInfo
from tproxy_firewalld.fwconf import ConfChange, live_view
from tproxy_firewalld.kuma import OWNER, KumaSettings
from tproxy_firewalld.observe import Observed
from tproxy_firewalld.planning import Plan, make_plan
from tproxy_firewalld.record import Record
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.target import Target

#: what `dockerd` puts into the iptables tables (the parts that matter here)
DOCKER = [
    ("-t", "nat", "-N", "DOCKER"),
    ("-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"),
    ("-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
     "-j", "MASQUERADE"),
    ("-t", "filter", "-N", "DOCKER-USER"),
    ("-t", "filter", "-A", "DOCKER-USER", "-j", "RETURN"),
    ("-t", "filter", "-A", "FORWARD", "-j", "DOCKER-USER"),
]  # fmt: skip
#: how the detector names them
DOCKER_FOUND = {
    "ipv4 nat DOCKER",
    "ipv4 nat PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
    "ipv4 nat POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
    "ipv4 filter DOCKER-USER",
    "ipv4 filter FORWARD -j DOCKER-USER",
}
CONSENT_ENV = {"KUMA_TRANSPARENT_PROXY_ALLOW_IPTABLES_FLUSH": "true"}


# --------------------------------------------------------------------------- the detector


SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUMA_MESH_OUTBOUND - [0:0]
:DOCKER - [0:0]
:FOREIGN_DIRECT - [0:0]
-A PREROUTING -p tcp -m comment --comment "kuma/mesh/transparent/proxy/x y" -j KUMA_MESH_INBOUND
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -s 10.0.0.1/32 -p udp -m udp --dport 5353 -j RETURN
-A OUTPUT -s 10.0.0.2/32 -p udp -m udp --dport 5353 -j RETURN
-A OUTPUT -p tcp -m tcp --dport 8888 -j ACCEPT
-A OUTPUT -p tcp -m tcp --dport 8888 -j ACCEPT
-A DOCKER -j RETURN
-A KUMA_MESH_OUTBOUND -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:INPUT_direct - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -j INPUT_direct
-A INPUT -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""


def test_the_detector_names_other_tools_chains_and_built_in_rules_only() -> None:
    """Ours (prefix, comment), firewalld's chains, and what firewalld's runtime direct
    configuration holds (it puts that back after a flush: a -s list is one kernel rule per
    address, iptables-save adds -m udp and /32) are not other tools'; every other chain, and
    every other rule in a built-in chain, is. firewalld's default rules count as its own on the
    iptables backend only (on the nftables backend firewalld puts none there)."""
    from tproxy_firewalld.flush import foreign_in_save

    split = ("-s", "10.0.0.1,10.0.0.2", "-p", "udp", "--dport", "5353", "-j", "RETURN")
    inserted = ("-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "8888", "-j", "ACCEPT")
    runtime = DirectConfig(
        chains=(Chain("ipv4", "nat", "FOREIGN_DIRECT"),),
        rules=(Rule("ipv4", "nat", "OUTPUT", 0, split),),
        passthroughs=(Passthrough("ipv4", inserted),),
    )
    assert foreign_in_save(SAVE, "ipv4", runtime, OWNER, iptables_backend=True) == [
        "ipv4 nat DOCKER",
        "ipv4 nat PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "ipv4 nat OUTPUT -p tcp -m tcp --dport 8888 -j ACCEPT",  # only one of the two is direct
    ]
    # the ipv6 view: no direct config there, and firewalld's default rules are not its own
    assert foreign_in_save(SAVE, "ipv6", runtime, OWNER, iptables_backend=False) == [
        "ipv6 nat DOCKER",
        "ipv6 nat FOREIGN_DIRECT",
        "ipv6 nat PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "ipv6 nat OUTPUT -s 10.0.0.1/32 -p udp -m udp --dport 5353 -j RETURN",
        "ipv6 nat OUTPUT -s 10.0.0.2/32 -p udp -m udp --dport 5353 -j RETURN",
        "ipv6 nat OUTPUT -p tcp -m tcp --dport 8888 -j ACCEPT",
        "ipv6 nat OUTPUT -p tcp -m tcp --dport 8888 -j ACCEPT",
        "ipv6 filter INPUT -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT",
        "ipv6 filter INPUT -i lo -j ACCEPT",
        "ipv6 filter INPUT -j REJECT --reject-with icmp-host-prohibited",
    ]


#: firewalld 2.3+'s iptables backend with StrictForwardPorts=yes (iptables-save on 2.5.2)
STRICT_SAVE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:INPUT_dnat - [0:0]
:FORWARD_dnat - [0:0]
:OUTPUT_dnat - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate DNAT -j INPUT_dnat
-A FORWARD -m conntrack --ctstate DNAT -j FORWARD_dnat
-A OUTPUT -m conntrack --ctstate DNAT -j OUTPUT_dnat
COMMIT
"""


def test_firewalld_s_strict_forward_ports_chains_are_its_own() -> None:
    """From 2.3, StrictForwardPorts=yes on the iptables backend puts <BUILTIN>_dnat chains and
    the jumps into them in the filter table: firewalld's, not another tool's (the matrix's stock
    firewalld.conf test on 2.3.1 and 2.5.2 with the iptables backend was refused, exit 13)."""
    from tproxy_firewalld.flush import foreign_in_save

    for ipv in ("ipv4", "ipv6"):
        assert foreign_in_save(STRICT_SAVE, ipv, DirectConfig(), OWNER, iptables_backend=True) == []


def daemon(version: str, backend: str = "nftables") -> DaemonInfo:
    return DaemonInfo("RUNNING", version, backend, "yes")


def test_when_firewalld_flushes_by_version_backend_and_direct_config() -> None:
    """FIREWALLD.md, "iptables flushes" (firewalld's fw_direct.py and fw.py): < 2.0 adding
    flushes nothing, every reload does; >= 2.0 (nftables) the first runtime entry flushes, a
    reload only while direct configuration exists; the iptables backend: every reload."""
    from tproxy_firewalld.flush import flush_reason

    first = "flushes every iptables table when the first direct entry is added"
    assert first in flush_reason(daemon("2.0.0"), direct_before=False, adds=True)
    assert first in flush_reason(daemon("2.5.2"), direct_before=False, adds=True)
    for quiet in (daemon("1.3.3"), daemon("0.9.3"), daemon("2.5.2", "iptables")):
        assert flush_reason(quiet, direct_before=False, adds=True) == "", quiet
    assert flush_reason(daemon("2.5.2"), direct_before=True, adds=True) == ""
    reload = ("StrictForwardPorts",)
    for flushing, why in (
        (daemon("1.3.3"), "(as firewalld < 2.0 does on every reload)"),
        (daemon("2.3.1", "iptables"), "(as the iptables backend does on every reload)"),
    ):
        assert flush_reason(
            flushing, direct_before=False, adds=False, reload=reload, direct_after=False
        ).endswith(why)
    assert "while direct configuration exists" in flush_reason(
        daemon("2.5.2"), direct_before=True, adds=False, reload=reload
    )
    # an uninstall that leaves no direct configuration: the reload does not flush on >= 2.0
    assert (
        flush_reason(daemon("2.5.2"), direct_before=False, adds=False, reload=reload,
                     direct_after=False) == ""
    )  # fmt: skip


def observed_on(version: str, **kw: Any) -> Observed:
    empty = DirectConfig()
    return Observed(
        Target(), "live", "", daemon(version), kw.pop("runtime", empty), kw.pop("permanent", empty),
        empty, kw.pop("record", None), **kw,
    )  # fmt: skip


def test_the_plan_refuses_without_consent_warns_with_it_and_uninstall_only_warns() -> None:
    from tproxy_firewalld.errors import IptablesFlushRefused

    settings = KumaSettings(kuma_dp_user="5678", exclude_inbound_ports=(22,))
    desired = build_ruleset(settings)
    docker = ("ipv4 nat DOCKER",)

    def install(version: str, foreign: tuple[str, ...], consent: bool = False) -> Plan:
        # a host with IPv6 (::6/128 already on lo): make_plan's plan carries every warning
        observed = observed_on(version, foreign_iptables=foreign, loopback={"::6/128": True})
        return make_plan(
            "install", desired, observed, OWNER, Record(settings), allow_iptables_flush=consent
        )

    with pytest.raises(IptablesFlushRefused) as info:
        install("2.5.2", docker)
    assert info.value.exit_code == 13 and "ipv4 nat DOCKER. Nothing was changed." in str(info.value)
    assert [w.code for w in install("2.5.2", docker, consent=True).warnings] == ["iptables-flush"]
    assert install("2.5.2", ()).warnings == () and install("1.3.3", docker).warnings == ()

    # uninstall putting RFC3964_IPv4 back reloads: on 1.3.3 that flushes; a warning, no refusal
    record = Record(settings, firewalld_conf=(ConfChange("RFC3964_IPv4", "yes", "no"),))
    observed = observed_on(
        "1.3.3", runtime=desired, permanent=desired, record=record, foreign_iptables=docker,
        conf=live_view(Path("/etc/firewalld/firewalld.conf"), {"RFC3964_IPv4": "no"}),
    )  # fmt: skip
    plan = make_plan("uninstall", DirectConfig(), observed, OWNER, None)
    assert plan.step("reload") is not None
    [warning] = plan.warnings
    assert warning.code == "iptables-flush" and warning.message.startswith(
        "the reload that applies RFC3964_IPv4 makes firewalld 1.3.3 flush every iptables table"
    )


# --------------------------------------------------------------------------- real firewalld


def add_docker(sb: Sandbox) -> None:
    for args in DOCKER:
        sb.run("iptables", *args)


def docker_found(text: str) -> set[str]:
    return {item for item in DOCKER_FOUND if item in text}


def listed(line: str) -> set[str]:
    """Everything a refusal names as other tools' state."""
    return set(
        line.split("chains and rules: ", 1)[1].split(". Nothing was changed.")[0].split("; ")
    )


def kernel_and_firewalld(sb: Sandbox) -> tuple[Any, ...]:
    return (
        sb.iptables_save("ipv4"),
        sb.iptables_save("ipv6"),
        direct_lines(sb),
        direct_lines(sb, permanent=True),
        sb.direct_xml.read_bytes() if sb.direct_xml.exists() else None,
        (sb.etc_dir / "firewalld.conf").read_bytes(),
    )


def docker_alive(sb: Sandbox) -> bool:
    return sb.run("iptables", "-t", "nat", "-S", "DOCKER", check=False).returncode == 0


def refused(sb: Sandbox, *args: str) -> str:
    """The one line install refuses with (exit 13, nothing on stdout, nothing changed)."""
    before = kernel_and_firewalld(sb)
    result = tpfw(sb, "install", *args, check=False)
    assert result.returncode == 13 and result.stdout == "", (result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert kernel_and_firewalld(sb) == before, "nothing changed"
    return result.stderr


def start(make_sandbox: SandboxFactory, suite: str, **kw: Any) -> Sandbox:
    version = version_of(suite)
    sb = make_sandbox("nftables", root=version.root, **kw)
    assert sb.firewalld_version() == version.upstream
    return sb


@pytest.mark.parametrize("suite", ["trixie", "forky"])
def test_firewalld_2_install_refuses_to_wipe_other_tools_iptables_rules_without_consent(
    make_sandbox: SandboxFactory, suite: str
) -> None:
    """2.3.1 and 2.5.2: with no direct config, our first entry flushes every iptables table.
    No other tool's state: install says nothing. Docker's: install refuses (exit 13, one line
    naming what would go and how to allow it), so do --dry-run and -o json; diff warns. With
    consent it installs, says what it wiped, and Docker's chains and rules are gone."""
    sb = start(make_sandbox, suite)
    version = sb.firewalld_version()
    quiet = tpfw(sb, "install", "--exclude-inbound-ports", "22")
    assert quiet.stderr == "" and quiet.stdout.startswith("install: runtime: +")
    tpfw(sb, "uninstall")
    assert direct_lines(sb) == [], "no direct config left: the next first entry flushes again"

    add_docker(sb)
    line = refused(sb, "--exclude-inbound-ports", "22")
    assert line.startswith(
        f"Error: firewalld {version} flushes every iptables table when the first direct entry "
        "is added (firewalld >= 2.0), and this run adds it: that wipes other tools' iptables "
        "chains and rules: "
    ), line
    assert listed(line) == DOCKER_FOUND, line
    assert "Nothing was changed." in line and "--allow-iptables-flush (config key" in line
    assert "kuma" not in line.lower().replace("kuma_transparent_proxy_allow", ""), "none of ours"
    assert refused(sb, "--exclude-inbound-ports", "22", "--dry-run") == line
    doc = json.loads(
        tpfw(sb, "install", "--exclude-inbound-ports", "22", "-o", "json", check=False).stdout
    )
    assert doc["error"]["exit_code"] == 13 and doc["error"]["kind"] == "IptablesFlushRefused"
    diff = tpfw(sb, "diff", "--exclude-inbound-ports", "22", "-o", "json", check=False)
    assert diff.returncode == 1
    [warning] = [w for w in json.loads(diff.stdout)["warnings"] if w["code"] == "iptables-flush"]
    assert warning["message"].startswith(f"install: firewalld {version} flushes every iptables")
    assert docker_found(warning["message"]) == DOCKER_FOUND
    assert docker_alive(sb)

    # Consent (here from the environment): installed, and Docker's state is gone, as said.
    done = sb.run(*TP, "install", "--exclude-inbound-ports", "22", env=CONSENT_ENV)
    assert done.stderr.startswith("Warning: firewalld ") and "DOCKER-USER" in done.stderr
    assert not docker_alive(sb) and docker_found(sb.iptables_save("ipv4")) == set()
    assert tpfw(sb, "diff").returncode == 0


def test_firewalld_2_with_direct_config_adds_without_flushing_and_refuses_a_reload(
    make_sandbox: SandboxFactory,
) -> None:
    """2.5.2 with direct config already there: adding entries flushes nothing (Docker's chains
    stay, no refusal), status warns that the next reload flushes; a plan with a reload
    (--configure-firewalld for StrictForwardPorts=yes) refuses. Other tools' firewalld direct
    entries (rules, a passthrough, a runtime-only rule) are firewalld's to put back: never
    named, never a reason to refuse."""
    sb = start(make_sandbox, "forky", conf={"StrictForwardPorts": "yes"})
    add_foreign(sb)
    consent = "--configure-firewalld"
    tpfw(sb, "install", consent, "--exclude-inbound-ports", "22")
    add_docker(sb)
    more = tpfw(sb, "install", consent, "--exclude-inbound-ports", "22,2222")
    assert more.stderr == "" and "runtime: +" in more.stdout
    assert docker_alive(sb), "measured: no flush when direct config exists"
    status = json.loads(tpfw(sb, "status", "-o", "json").stdout)
    [warning] = [w["message"] for w in status["warnings"] if w["code"] == "iptables-flush"]
    assert "once direct rules exist (firewalld >= 2.0)" in warning
    assert docker_found(warning) == DOCKER_FOUND

    conf = sb.etc_dir / "firewalld.conf"
    conf.write_text(conf.read_text().replace("StrictForwardPorts=no", "StrictForwardPorts=yes"))
    sb.reload()
    assert not docker_alive(sb), "measured: a reload with direct config flushes"
    add_docker(sb)
    line = refused(sb, consent, "--exclude-inbound-ports", "22,2222")
    assert line.startswith(
        "Error: the reload that applies StrictForwardPorts makes firewalld 2.5.2 flush every "
        "iptables table (as firewalld >= 2.0 does on a reload while direct configuration exists)"
    ), line
    assert listed(line) == DOCKER_FOUND and "--ip-family-mode" not in line


def test_firewalld_before_2_adds_without_flushing_and_refuses_a_reload(
    make_sandbox: SandboxFactory,
) -> None:
    """The host's 1.3.3 (stock RFC3964_IPv4=yes): adding direct entries flushes nothing, so an
    install with no reload is not refused and Docker's state stays (status warns: every reload
    flushes). --configure-firewalld's reload would flush: refused (with the IPv4-only way), and
    diff says so; with consent it installs and Docker's state is gone."""
    sb = start(make_sandbox, "bookworm", stock=True)
    add_docker(sb)
    ipv4 = tpfw(sb, "install", "--ip-family-mode", "ipv4", "--exclude-inbound-ports", "22")
    assert ipv4.stderr == "" and docker_alive(sb)
    status = json.loads(tpfw(sb, "status", "-o", "json").stdout)
    [warning] = [w["message"] for w in status["warnings"] if w["code"] == "iptables-flush"]
    assert "on every start, reload and stop (firewalld < 2.0)" in warning

    diff = tpfw(sb, "diff", "--exclude-inbound-ports", "22", "-o", "json", check=False)
    [warning] = [w for w in json.loads(diff.stdout)["warnings"] if w["code"] == "iptables-flush"]
    assert warning["message"].startswith("install: the reload that applies RFC3964_IPv4 makes ")
    line = refused(sb, "--configure-firewalld", "--exclude-inbound-ports", "22")
    assert line.startswith(
        "Error: the reload that applies RFC3964_IPv4 makes firewalld 1.3.3 flush every iptables "
        "table (as firewalld < 2.0 does on every reload): that wipes other tools' iptables "
    ), line
    assert listed(line) == DOCKER_FOUND and "(--ip-family-mode ipv4)" in line

    done = tpfw(
        sb, "install", "--configure-firewalld", "--allow-iptables-flush",
        "--exclude-inbound-ports", "22",
    )  # fmt: skip
    assert "Warning: the reload that applies RFC3964_IPv4" in done.stderr
    assert not docker_alive(sb)
    assert tpfw(sb, "diff").returncode == 0
