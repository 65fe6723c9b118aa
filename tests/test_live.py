"""install / diff / uninstall against a real firewalld (both backends), as an admin runs them.

Every test starts with other tools' entries in firewalld (runtime-only and permanent rules,
a foreign chain, a passthrough) and checks they come through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from harness import Sandbox, SandboxFactory
from helpers import (
    CHANGING_MEMBERS,
    KUMA_COMMENT,
    add_foreign,
    direct_lines,
    file_config,
    foreign,
    ours,
    tpfw,
    watch_bus,
)

from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.entries import Chain, DirectConfig, Rule
from tproxy_firewalld.kuma import OWNER


def test_install_is_live_permanent_and_keeps_foreign(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before_runtime, before_permanent = direct_lines(sb), direct_lines(sb, permanent=True)

    out = tpfw(sb, "install").stdout
    assert (
        "install: runtime: +8 chains +22 rules; permanent: updated (+8 chains +22 rules); "
        "lo: +::6/128; record: written" in out
    )

    runtime, permanent = direct_lines(sb), direct_lines(sb, permanent=True)
    assert foreign(runtime) == before_runtime and foreign(permanent) == before_permanent
    assert len(ours(runtime)) == 30 and ours(runtime) == ours(permanent)
    on_disk = file_config(sb)
    assert len(on_disk.ours(OWNER).entries()) == 30
    assert {e.describe() for e in on_disk.foreign(OWNER).entries()} >= {"chain ipv4 filter FOREIGN"}
    nat = sb.iptables_save("ipv4", "nat") + sb.iptables_save("ipv6", "nat")
    assert (
        nat.count("-j REDIRECT --to-ports 15001") == 2
        and nat.count("-j REDIRECT --to-ports 15006") == 2
    )
    assert "inet6 ::6/128" in sb.run("ip", "-6", "addr", "show", "dev", "lo").stdout

    # Run twice: the second install changes nothing and makes no changing D-Bus call.
    with watch_bus(sb) as members:
        again = tpfw(sb, "install", "--output", "json")
    assert json.loads(again.stdout)["changed"] is False
    assert "getAllRules" in members, "the watcher saw the read calls"
    assert not CHANGING_MEMBERS & set(members), members
    assert tpfw(sb, "install").stdout.strip().endswith("install: nothing to do")


def test_reload_and_restart_keep_the_rules(make_sandbox: SandboxFactory) -> None:
    for flush in ("yes", "no"):
        sb = make_sandbox("nftables", flush)
        add_foreign(sb)
        tpfw(sb, "install")
        sb.reload()
        assert tpfw(sb, "diff", check=False).returncode == 0, flush
        assert sb.restart_firewalld() == "running"
        result = tpfw(sb, "diff", check=False)
        assert result.returncode == 0, result.stdout
        assert "KUMA_MESH_OUTBOUND" in sb.iptables_save("ipv4", "nat")


def test_diff_names_drift_and_install_repairs_it(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    tpfw(sb, "install")
    assert tpfw(sb, "diff", check=False).returncode == 0

    # 1. one of our rules removed at runtime by hand
    jump = next(
        line
        for line in direct_lines(sb)
        if line.startswith("ipv4 nat OUTPUT") and KUMA_COMMENT in line
    )
    sb.run("sh", "-c", f"firewall-cmd --direct --remove-rule {jump}")
    result = tpfw(sb, "diff", check=False)
    assert result.returncode == 1
    assert "runtime: +1 rule" in result.stdout and "+ rule ipv4 nat OUTPUT" in result.stdout
    data = json.loads(tpfw(sb, "diff", "--output", "json", check=False).stdout)
    assert data["schema"] == "tproxy-firewalld/diff/2" and data["in_sync"] is False
    assert [e["chain"] for e in data["runtime"]["add"]] == ["OUTPUT"]
    assert "runtime: +1 rule" in tpfw(sb, "install").stdout
    assert tpfw(sb, "diff", check=False).returncode == 0

    # 2. the file edited by hand (one of our rules dropped), not loaded by firewalld
    config = file_config(sb)
    dropped = next(
        r for r in config.rules if r.chain == "KUMA_MESH_INBOUND_REDIRECT" and r.ipv == "ipv6"
    )
    edited = DirectConfig(
        config.chains, tuple(r for r in config.rules if r != dropped), config.passthroughs
    )
    sb.direct_xml.write_bytes(render_direct_xml(edited))
    result = tpfw(sb, "diff", check=False)
    assert result.returncode == 1, result.stdout
    assert "permanent (direct.xml): +1 rule" in result.stdout
    assert f"only in firewalld:  {dropped.describe()}" in result.stdout
    tpfw(sb, "install")
    assert tpfw(sb, "diff", check=False).returncode == 0
    assert dropped in file_config(sb).rules

    # 3. a changed setting
    result = tpfw(sb, "diff", "--redirect-outbound-port", "15999", check=False)
    assert result.returncode == 1 and "--to-ports 15999" in result.stdout
    out = tpfw(sb, "install", "--redirect-outbound-port", "15999").stdout
    assert (
        "runtime: +2 rules -2 rules; permanent: updated (+2 rules -2 rules); record: written" in out
    ), out
    assert tpfw(sb, "diff", check=False).returncode == 0, "diff follows the recorded settings"
    assert "--to-ports 15999" in sb.iptables_save("ipv6", "nat")


def test_foreign_hand_edit_not_loaded_is_never_overwritten(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    tpfw(sb, "install")
    config = file_config(sb)
    mine = Rule("ipv4", "filter", "INPUT", 0, ("-p", "tcp", "--dport", "2022", "-j", "ACCEPT"))
    edited = render_direct_xml(
        DirectConfig(config.chains, (*config.rules, mine), config.passthroughs)
    )
    sb.direct_xml.write_bytes(edited)
    result = tpfw(sb, "install", "--redirect-outbound-port", "15999", check=False)
    assert result.returncode == 3 and "edited by hand and not loaded" in result.stderr
    assert sb.direct_xml.read_bytes() == edited
    diff = tpfw(sb, "diff", check=False)
    assert diff.returncode == 1 and f"only in direct.xml: {mine.describe()}" in diff.stdout


def test_uninstall_removes_exactly_ours(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before_runtime, before_permanent = direct_lines(sb), direct_lines(sb, permanent=True)
    tpfw(sb, "install", "--redirect-all-dns-traffic", "--iptables-logs")
    out = tpfw(sb, "uninstall").stdout
    assert "uninstall: runtime: -8 chains" in out and "permanent: updated" in out
    assert direct_lines(sb) == before_runtime
    assert direct_lines(sb, permanent=True) == before_permanent
    assert file_config(sb).ours(OWNER).is_empty()
    for ipv in ("ipv4", "ipv6"):
        saved = "".join(sb.iptables_save(ipv, t) for t in ("raw", "nat", "mangle"))
        assert "KUMA" not in saved and KUMA_COMMENT not in saved
    assert "::6/128" not in sb.run("ip", "-6", "addr", "show", "dev", "lo").stdout
    assert tpfw(sb, "uninstall").stdout.strip().endswith("uninstall: nothing to do")


def test_traffic_redirected_after_install_and_not_after_uninstall(
    firewalld_sandbox: Sandbox,
) -> None:
    sb = firewalld_sandbox
    peer = sb.add_peer()
    with (
        sb.listen(15001, name="proxy", family="ipv4"),
        sb.listen(8080, name="remote", netns=peer.name),
    ):
        assert sb.connect(peer.ipv4, 8080)["server"] == "remote"  # type: ignore[index]
        tpfw(sb, "install")
        reply = sb.connect(peer.ipv4, 8080)
        assert (
            reply is not None
            and reply["server"] == "proxy"
            and reply["orig_dst"] == f"{peer.ipv4}:8080"
        )
        kuma_dp = sb.connect(peer.ipv4, 8080, uid=5678)
        assert kuma_dp is not None and kuma_dp["server"] == "remote", (
            "the proxy's own uid is exempt"
        )
        tpfw(sb, "uninstall")
        reply = sb.connect(peer.ipv4, 8080)
        assert reply is not None and reply["server"] == "remote" and reply["orig_dst"] is None


def test_offline_install_applies_at_next_start(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    sb.stop_firewalld()
    out = tpfw(sb, "install").stdout + ""
    assert "install: direct.xml: +8 chains +22 rules; record: written" in out
    assert sb.start_firewalld() == "running"
    assert len(ours(direct_lines(sb))) == 30
    assert "FOREIGN" in " ".join(direct_lines(sb))
    assert tpfw(sb, "diff", check=False).returncode == 0
    # offline, nothing was added to lo; the first live run adds the IPv6 passthrough address
    assert tpfw(sb, "install").stdout.strip() == "install: lo: +::6/128; record: written"
    assert tpfw(sb, "install").stdout.strip().endswith("nothing to do")


def test_uninstall_cleans_up_after_kumas_store_firewalld(firewalld_sandbox: Sandbox) -> None:
    """kumactl --store-firewalld labels every rule ipv4 at priority 3, IPv6 ones included."""
    sb = firewalld_sandbox
    sb.stop_firewalld()
    kuma = DirectConfig(
        chains=(Chain("ipv4", "nat", "KUMA_MESH_OUTBOUND"), Chain("ipv4", "filter", "FOREIGN")),
        rules=(
            Rule(
                "ipv4",
                "nat",
                "OUTPUT",
                3,
                (
                    "-m",
                    "comment",
                    "--comment",
                    f"{KUMA_COMMENT}/redirect outbound TCP traffic to our custom chain for processing",
                    "-p",
                    "tcp",
                    "-j",
                    "KUMA_MESH_OUTBOUND",
                ),
            ),
            Rule(
                "ipv4",
                "nat",
                "KUMA_MESH_OUTBOUND",
                3,
                ("-s", "::6/128", "-o", "lo", "-j", "RETURN"),
            ),
            Rule("ipv4", "filter", "FOREIGN", 0, ("-j", "RETURN")),
        ),
    )
    sb.direct_xml.write_bytes(render_direct_xml(kuma))
    out = tpfw(sb, "uninstall").stdout
    assert "uninstall: direct.xml: -1 chain -2 rules" in out
    left = file_config(sb)
    assert left == DirectConfig(
        chains=(Chain("ipv4", "filter", "FOREIGN"),), rules=(kuma.rules[2],)
    )
    assert sb.start_firewalld() == "running"


def test_dry_run_changes_nothing(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before = (direct_lines(sb), direct_lines(sb, permanent=True), sb.direct_xml.read_bytes())
    result = tpfw(sb, "install", "--dry-run")
    assert "install: would change: runtime: +8 chains +22 rules" in result.stdout
    assert "+ rule ipv4 nat OUTPUT 1" in result.stdout
    assert (
        direct_lines(sb),
        direct_lines(sb, permanent=True),
        sb.direct_xml.read_bytes(),
    ) == before
    tpfw(sb, "install")
    after_install = (direct_lines(sb), sb.direct_xml.read_bytes())
    assert "would change" in tpfw(sb, "uninstall", "--dry-run").stdout
    assert (direct_lines(sb), sb.direct_xml.read_bytes()) == after_install


def test_status_reports_state_and_warnings(make_sandbox: SandboxFactory) -> None:
    sb = make_sandbox("nftables", "yes")  # RFC3964_IPv4=no: the rules are not defeated
    tpfw(sb, "install")
    quiet = json.loads(tpfw(sb, "status", "--output", "json").stdout)
    assert quiet["warnings"] == []
    # firewalld's default put back behind our back (firewalld.conf edited, then a reload)
    conf = sb.etc_dir / "firewalld.conf"
    conf.write_text(conf.read_text().replace("RFC3964_IPv4=no", "RFC3964_IPv4=yes"))
    sb.reload()
    sb.run("iptables", "-t", "filter", "-N", "DOCKER-USER")  # another tool's chain
    data: dict[str, Any] = json.loads(tpfw(sb, "status", "--output", "json").stdout)
    assert data["firewalld"]["state"] == "RUNNING" and data["firewalld"]["backend"] == "nftables"
    assert data["installed"] == {"runtime": 30, "permanent": 30, "file": 30}
    assert data["in_sync"] is False, "RFC3964_IPv4 is part of the desired state"
    messages = [w["message"] for w in data["warnings"]]
    assert any("DOCKER-USER" in m and "flushes all iptables tables" in m for m in messages)
    assert any(
        w["code"] == "rfc3964-ipv4"
        and w["message"].startswith("RFC3964_IPv4=yes")
        and "`tproxy-firewalld install --configure-firewalld` sets RFC3964_IPv4=no" in w["message"]
        for w in data["warnings"]
    ), "firewalld's default, and what consent would change"
    text = tpfw(sb, "status").stdout
    assert "firewalld: RUNNING, version" in text and "drift: yes" in text
