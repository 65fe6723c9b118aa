"""A `--configure-firewalld` run that is killed midway is finished by the next run, and a live
firewalld.conf change never reverts an admin's unloaded edit (issue 17, items 3 and 4).

firewalld applies firewalld.conf only when it starts or reloads; its config properties (what
`Set` changes) are its memory. So a run killed between the `Set` and the reload leaves
firewalld.conf saying one thing and the kernel enforcing the other. The kill is made
deterministic here: the library runs as the CLI does, with firewalld's reload replaced by an
immediate ``os._exit`` (the process dies as with ``kill -9`` just before the reload).

Against a real firewalld: 1.3.3 (the host) with its stock RFC3964_IPv4=yes, which rejects IPv6
to ``::1`` (outbound redirects); 2.5.2 with StrictForwardPorts=yes, which rejects every
REDIRECTed connection (the setting --configure-firewalld changes there).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_firewalld import world
from harness import Backend, Family, Peer, Sandbox, SandboxFactory, endpoint
from helpers import load, tpfw
from versions import version_of

from tproxy_firewalld import api
from tproxy_firewalld.errors import FirewalldConfRefused
from tproxy_firewalld.fwconf import ConfChange, parse_conf
from tproxy_firewalld.record import RecordError, read_record

APP_PORT, OUTBOUND_PORT = 8080, 15001
RECORD = "/var/lib/tproxy-firewalld/installed.json"

#: the CLI, killed (exit 9, no cleanup: as kill -9) when it is about to reload firewalld
KILLED_AT_RELOAD = """
import os, sys
from tproxy_firewalld.firewalld import DbusFirewalld
def killed(self):
    os._exit(9)
DbusFirewalld.reload = killed
sys.argv = ["tproxy-firewalld", *sys.argv[1:]]
from tproxy_firewalld.cli import main
main()
"""


@dataclass(frozen=True)
class Case:
    suite: str
    #: the setting --configure-firewalld changes there, its stock value and the IP family whose
    #: outbound redirect it breaks
    name: str
    stock: str
    family: Family
    conf: dict[str, str]
    stock_conf: bool
    backend: Backend = "nftables"


CASES = [
    pytest.param(Case("bookworm", "RFC3964_IPv4", "yes", "ipv6", {}, True), id="1.3.3-RFC3964"),
    pytest.param(
        Case("bookworm", "RFC3964_IPv4", "yes", "ipv6", {}, True, "iptables"),
        id="1.3.3-iptables-RFC3964",
    ),
    pytest.param(
        Case("forky", "StrictForwardPorts", "yes", "ipv4", {"StrictForwardPorts": "yes"}, False),
        id="2.5.2-StrictForwardPorts",
    ),
]


def start(make_sandbox: SandboxFactory, case: Case) -> Sandbox:
    version = version_of(case.suite)
    return make_sandbox(case.backend, root=version.root, conf=case.conf, stock=case.stock_conf)


def killed(sb: Sandbox, *args: str) -> None:
    result = sb.run(sys.executable, "-c", KILLED_AT_RELOAD, *args, check=False, timeout=120)
    assert result.returncode == 9, (result.returncode, result.stdout, result.stderr)


def in_file(sb: Sandbox, name: str) -> str | None:
    return parse_conf((sb.etc_dir / "firewalld.conf").read_text()).get(name)


def in_force(sb: Sandbox, name: str) -> str:
    """What the kernel enforces: firewalld's own nftables table (or ip6tables' filter table,
    iptables backend), read with the host's tools (the rules firewalld 1.3.3 and 2.5.2 make
    for each setting, tproxy_firewalld/applied.py)."""
    if sb.backend == "iptables":
        assert name == "RFC3964_IPv4"
        rules = sb.iptables_save("ipv6", "filter").splitlines()
        on = any(" -d ::/96 " in line and "-j REJECT" in line for line in rules)
        return "yes" if on else "no"
    table = sb.run("nft", "list", "table", "inet", "firewalld").stdout
    if name == "RFC3964_IPv4":
        on = any("::/96" in line and "reject" in line for line in table.splitlines())
    else:
        assert "ct status dnat" in table
        on = "ct status dnat jump filter_INPUT_dnat" in table
    return "yes" if on else "no"


def served(sb: Sandbox, peer: Peer, family: Family) -> tuple[Any, Any] | None:
    """Who answers an outbound connection to the peer's app, and the original destination it
    sees (None: the connection failed)."""
    reply = sb.connect(peer.address(family), APP_PORT, timeout=2)
    return None if reply is None else (reply["server"], reply["orig_dst"])


def record_of(sb: Sandbox) -> Any:
    text = sb.run("cat", RECORD, check=False).stdout
    return json.loads(text) if text else None


@pytest.mark.parametrize("case", CASES)
def test_a_killed_install_and_a_killed_uninstall_are_finished_by_the_next_run(
    make_sandbox: SandboxFactory, case: Case
) -> None:
    sb = start(make_sandbox, case)
    peer = sb.add_peer()
    with (
        sb.listen(OUTBOUND_PORT, family=case.family, name="proxy-out"),
        sb.listen(APP_PORT, family=case.family, name="remote", netns=peer.name),
    ):
        assert (in_file(sb, case.name) or case.stock, in_force(sb, case.name)) == ("yes", "yes")

        # install killed between firewalld.conf's change and the reload
        killed(sb, "install", "--configure-firewalld")
        assert (in_file(sb, case.name), in_force(sb, case.name)) == ("no", "yes")
        diff = tpfw(sb, "diff", check=False)
        assert diff.returncode == 1, diff.stdout
        assert (
            f"firewalld.conf says {case.name}=no, firewalld has applied yes (reload pending)"
            in diff.stdout
        )
        status = tpfw(sb, "status").stdout
        assert "drift: yes" in status, status
        record = record_of(sb)
        assert record is not None and record["firewalld_conf"] == [
            {"name": case.name, "before": case.stock, "after": "no"}
        ], "the record, written before firewalld.conf changed, says what to put back"
        assert served(sb, peer, case.family) is None, "the setting still in force"

        again = tpfw(sb, "install", "--configure-firewalld").stdout
        assert f"firewalld reloaded (applies {case.name})" in again, again
        assert (in_file(sb, case.name), in_force(sb, case.name)) == ("no", "no")
        proxied = ("proxy-out", endpoint(peer.address(case.family), APP_PORT))
        assert served(sb, peer, case.family) == proxied
        assert tpfw(sb, "diff").returncode == 0
        assert tpfw(sb, "install", "--configure-firewalld").stdout.strip() == (
            "install: nothing to do"
        )

        # uninstall killed the same way: firewalld.conf put back, not applied
        killed(sb, "uninstall")
        assert (in_file(sb, case.name), in_force(sb, case.name)) == ("yes", "no")
        assert tpfw(sb, "diff", check=False).returncode == 1

        out = tpfw(sb, "uninstall")
        assert f"firewalld reloaded (applies {case.name})" in out.stdout, out.stdout
        assert "Warning" not in out.stderr, "its own restore, not somebody else's change"
        assert (in_file(sb, case.name), in_force(sb, case.name)) == ("yes", "yes")
        assert tpfw(sb, "uninstall").stdout.strip() == "uninstall: nothing to do"
        assert record_of(sb) is None
        assert served(sb, peer, case.family) == ("remote", None)


def test_uninstall_after_a_killed_install_puts_the_setting_back_in_file_and_kernel(
    make_sandbox: SandboxFactory,
) -> None:
    sb = make_sandbox("nftables", stock=True)  # 1.3.3, RFC3964_IPv4=yes
    killed(sb, "install", "--configure-firewalld")
    assert (in_file(sb, "RFC3964_IPv4"), in_force(sb, "RFC3964_IPv4")) == ("no", "yes")
    out = tpfw(sb, "uninstall").stdout
    assert "firewalld.conf: RFC3964_IPv4=yes (was no)" in out, out
    assert (in_file(sb, "RFC3964_IPv4"), in_force(sb, "RFC3964_IPv4")) == ("yes", "yes")
    assert record_of(sb) is None


@pytest.mark.parametrize("case", [CASES[0], CASES[2]])
def test_a_live_change_refuses_an_unloaded_firewalld_conf_edit(
    make_sandbox: SandboxFactory, case: Case
) -> None:
    """firewalld's Set writes every key from its memory: LogDenied=all, written to the file but
    not loaded, would go back to off. Refused, naming the key, until firewalld loads it."""
    sb = start(make_sandbox, case)
    conf = sb.etc_dir / "firewalld.conf"
    edited = conf.read_text().replace("LogDenied=off", "LogDenied=all")
    assert "LogDenied=all" in edited
    conf.write_text(edited)

    refused = tpfw(sb, "install", "--configure-firewalld", check=False)
    assert refused.returncode == 12, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "LogDenied=all (firewalld has off)" in line, line
    assert "`firewall-cmd --reload`" in line and "Nothing was changed" in line
    assert conf.read_text() == edited, "the edit is still there, nothing else changed"
    assert in_force(sb, case.name) == "yes"

    sb.reload()
    tpfw(sb, "install", "--configure-firewalld")
    after = parse_conf(conf.read_text())
    assert after["LogDenied"] == "all" and after[case.name] == "no"
    assert in_force(sb, case.name) == "no"


def test_the_kernel_shows_what_is_in_force() -> None:
    """The readers, on what firewalld 1.3.3 and 2.5.2 put in the kernel (seen in the sandbox)."""
    from tproxy_firewalld.applied import from_iptables, from_nft

    nft_on = (
        "table inet firewalld {\n\tchain filter_OUTPUT {\n\t\tct status dnat jump filter_OUTPUT_dnat\n"
        "\t\tip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24 } reject with icmpv6 addr-unreachable\n"
        "\t}\n\tchain filter_INPUT {\n\t\tct status dnat jump filter_INPUT_dnat\n\t}\n}\n"
    )
    nft_off = "table inet firewalld {\n\tchain filter_OUTPUT {\n\t\tct status dnat accept\n\t}\n}\n"
    assert from_nft(nft_on) == {"RFC3964_IPv4": "yes", "StrictForwardPorts": "yes"}
    assert from_nft(nft_off) == {"RFC3964_IPv4": "no", "StrictForwardPorts": "no"}
    assert from_nft("") == {}, "no firewalld table: nothing to judge by"
    ipt_on = (
        "*filter\n-A INPUT -m conntrack --ctstate DNAT -j INPUT_dnat\n"
        "-A RFC3964_IPv4 -d ::/96 -j REJECT --reject-with icmp6-addr-unreachable\nCOMMIT\n"
    )
    ipt_off = (
        "*filter\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\nCOMMIT\n"
    )
    assert from_iptables(ipt_on) == {"RFC3964_IPv4": "yes", "StrictForwardPorts": "yes"}
    assert from_iptables(ipt_off) == {"RFC3964_IPv4": "no", "StrictForwardPorts": "no"}
    assert from_iptables("*filter\nCOMMIT\n") == {}


# --------------------------------------------------------------------------- plan (fake firewalld)


def test_a_pending_reload_not_ours_needs_consent_and_is_then_recorded(tmp_path: Path) -> None:
    """Somebody's Set without a reload: firewalld.conf says RFC3964_IPv4=no, the kernel still
    rejects ::/96. Without consent install refuses (the rules would not work); with it, it
    reloads (no Set) and records what was in force, which uninstall puts back."""
    target, fake = world(tmp_path)
    fake.applied = {"RFC3964_IPv4": "yes"}
    settings = load({"--kuma-dp-user": "5678"})
    with pytest.raises(FirewalldConfRefused) as refused:
        api.install(settings, target=target, client=fake.factory())
    assert refused.value.exit_code == 12
    assert refused.value.message.startswith(
        "firewalld.conf says RFC3964_IPv4=no, firewalld has applied yes (reload pending): "
    )
    assert "Nothing was changed" in refused.value.message and fake.changes == []
    report = api.diff(settings, target=target, client=fake.factory())
    assert not report.in_sync and [p.name for p in report.conf_pending] == ["RFC3964_IPv4"]

    result = api.install(
        load({"--kuma-dp-user": "5678", "--configure-firewalld": "true"}),
        target=target,
        client=fake.factory(),
    )
    assert [s.kind for s in result.steps] == ["runtime", "permanent", "record", "reload"]
    assert fake.changes[-1] == "reload" and not any("config.Set" in c for c in fake.changes)
    assert fake.applied == {"RFC3964_IPv4": "no"}
    record = read_record(target.state_file)
    assert record is not None
    assert record.firewalld_conf == (ConfChange("RFC3964_IPv4", "yes", "no"),)
    undone = api.uninstall(target=target, client=fake.factory())
    assert fake.conf == {"RFC3964_IPv4": "yes"} and fake.applied == {"RFC3964_IPv4": "yes"}
    assert [s.kind for s in undone.steps][-4:] == ["record", "firewalld-conf", "reload", "record"]
    assert undone.summary().endswith(
        "firewalld.conf: RFC3964_IPv4=yes (was no); firewalld reloaded (applies RFC3964_IPv4); "
        "record: marked (putting back RFC3964_IPv4); record: removed"
    )


def test_the_restoring_mark_of_the_record_is_checked(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    fake.conf["RFC3964_IPv4"] = "yes"
    api.install(
        load({"--kuma-dp-user": "5678", "--configure-firewalld": "true"}),
        target=target,
        client=fake.factory(),
    )
    doc = json.loads(target.state_file.read_text())
    assert "firewalld_conf_restoring" not in doc, "an optional key, only while restoring"
    for good in ([], ["RFC3964_IPv4"]):
        target.state_file.write_text(json.dumps({**doc, "firewalld_conf_restoring": good}))
        record = read_record(target.state_file)
        assert record is not None and record.conf_restoring == tuple(good)
    for bad in (["StrictForwardPorts"], "RFC3964_IPv4", [["RFC3964_IPv4"]], ["RFC3964_IPv4"] * 2):
        target.state_file.write_text(json.dumps({**doc, "firewalld_conf_restoring": bad}))
        with pytest.raises(RecordError):
            read_record(target.state_file)
