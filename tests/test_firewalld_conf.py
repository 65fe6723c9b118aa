"""firewalld.conf settings that defeat the redirects (issue 14): RFC3964_IPv4=yes with IPv6
rules, StrictForwardPorts=yes with any. Without consent install refuses (exit 12) and changes
nothing; with --configure-firewalld it changes exactly that setting (firewalld's API live, the
file offline), reloads firewalld, records the old value, and uninstall puts it back unless
somebody changed it since.

File-level and plan/apply tests first (an image root, the in-memory firewalld); then the proof
against a real firewalld on its stock configuration, with real traffic (the sandbox). The same
against every firewalld version is in tests/test_matrix.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fake_firewalld import FOREIGN, world
from harness import Peer, Sandbox, SandboxFactory, endpoint
from helpers import (
    CHANGING_MEMBERS,
    STOCK_CONF,
    TP,
    direct_lines,
    load,
    stock_root,
    tpfw,
    watch_bus,
)

from tproxy_firewalld import api, transaction
from tproxy_firewalld.errors import ExitCode, FileError, FirewalldConfRefused, FirewalldRejected
from tproxy_firewalld.fwconf import ConfChange, is_on, parse_conf, set_in_conf
from tproxy_firewalld.kuma import OWNER, KumaSettings
from tproxy_firewalld.record import RecordError, read_record
from tproxy_firewalld.ruleset import build_ruleset

CONSENT = "--configure-firewalld"


def run_tp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TP, *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under root but the lock (which a changing run takes first)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".lock-")
    }


# --------------------------------------------------------------------------- firewalld.conf


def test_the_file_is_read_and_edited_as_firewalld_reads_it() -> None:
    text = "# RFC3964_IPv4=no\n;RFC3964_IPv4=no\n RFC3964_IPv4 = Yes \nRFC3964_IPv4=no\nX=a=b\n"
    assert parse_conf(text) == {"RFC3964_IPv4": "Yes"}, (
        "comments skipped, the first definition wins"
    )
    edited = set_in_conf(text, "RFC3964_IPv4", "no")
    assert edited == text.replace(" RFC3964_IPv4 = Yes \n", "RFC3964_IPv4=no\n"), (
        "that line, nothing else"
    )
    assert (
        set_in_conf("A=1\r\nRFC3964_IPv4=yes\r\n", "RFC3964_IPv4", "no")
        == "A=1\r\nRFC3964_IPv4=no\r\n"
    )
    assert set_in_conf("A=1", "StrictForwardPorts", "no") == "A=1\nStrictForwardPorts=no\n", (
        "appended"
    )
    assert set_in_conf("RFC3964_IPv4=\n", "RFC3964_IPv4", "no").endswith(
        "RFC3964_IPv4=\nRFC3964_IPv4=no\n"
    )
    # firewalld: no/false (any case) off, nothing the default, anything else on
    assert [is_on(v, "yes") for v in ("no", "FALSE", "yes", "True", "maybe", "", None)] == [
        False, False, True, True, True, True, True,
    ]  # fmt: skip
    assert is_on("maybe", "no") is True and is_on("", "no") is False


def test_without_consent_an_ipv6_install_refuses_and_changes_nothing(tmp_path: Path) -> None:
    root = stock_root(tmp_path)
    before = files_of(root)
    for dry in ([], ["--dry-run"]):
        result = run_tp("install", "--root", str(root), *dry)
        assert result.returncode == ExitCode.FIREWALLD_CONF == 12, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and line.startswith("Error: firewalld has RFC3964_IPv4=yes: ")
        for words in (
            "IPv6 outbound connection REDIRECTed to the proxy fails",  # what breaks
            "Nothing was changed",
            "--ip-family-mode ipv4",  # way 1
            "let tproxy-firewalld set RFC3964_IPv4=no (--configure-firewalld: it edits",  # way 2
        ):
            assert words in line, line
        assert files_of(root) == before, "no direct.xml, no record, firewalld.conf as it was"
    doc = json.loads(run_tp("install", "--root", str(root), "-o", "json").stdout)
    assert doc["error"]["exit_code"] == 12 and doc["error"]["kind"] == "FirewalldConfRefused"
    # way 1: IPv4 rules only; firewalld.conf is not touched
    assert run_tp("install", "--root", str(root), "--ip-family-mode", "ipv4").returncode == 0
    assert (root / "etc/firewalld/firewalld.conf").read_text() == STOCK_CONF
    diff = run_tp("diff", "--root", str(root))
    assert diff.returncode == 0 and "RFC3964_IPv4" not in diff.stdout, "IPv4 rules do not need it"


def test_with_consent_offline_the_file_is_changed_recorded_and_put_back(tmp_path: Path) -> None:
    root = stock_root(tmp_path)
    conf = root / "etc/firewalld/firewalld.conf"
    os.chmod(conf, 0o640)
    os.chown(conf, 1234, 1235)
    before = files_of(root)

    dry = run_tp("install", "--root", str(root), CONSENT, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (
        "firewalld.conf: RFC3964_IPv4=no (was yes, applied at firewalld's next start)" in dry.stdout
    )
    assert files_of(root) == before, "--dry-run changes nothing"
    doc = json.loads(
        run_tp("install", "--root", str(root), CONSENT, "--dry-run", "-o", "json").stdout
    )
    assert doc["changed"] is True
    assert {
        "step": "firewalld-conf",
        "name": "RFC3964_IPv4",
        "before": "yes",
        "after": "no",
    }.items() <= (next(s for s in doc["steps"] if s["step"] == "firewalld-conf").items())
    assert [s["step"] for s in doc["steps"]] == ["file", "record", "firewalld-conf"], (
        "no reload offline; the record (what to put back) before firewalld.conf changes"
    )
    assert {"name": "RFC3964_IPv4", "value": "yes", "wanted": "no", "in_sync": False} in doc[
        "firewalld_conf"
    ]

    out = run_tp("install", "--root", str(root), CONSENT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "install: direct.xml: +8 chains +22 rules; firewalld.conf: RFC3964_IPv4=no (was yes, applied "
        "at firewalld's next start); record: written"
    )
    assert conf.read_text() == STOCK_CONF.replace("RFC3964_IPv4=yes", "RFC3964_IPv4=no"), "one line"
    info = os.stat(conf)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 1234, 1235)
    assert conf.with_name("firewalld.conf.old").read_text() == STOCK_CONF, (
        "firewalld-style .old backup"
    )
    record = read_record(root / "var/lib/tproxy-firewalld/installed.json")
    assert record is not None and record.firewalld_conf == (
        ConfChange("RFC3964_IPv4", "yes", "no"),
    )
    assert (
        run_tp("install", "--root", str(root), CONSENT).stdout.strip() == "install: nothing to do"
    )
    diff = run_tp("diff", "--root", str(root))
    assert diff.returncode == 0 and "firewalld.conf: RFC3964_IPv4=no: in sync" in diff.stdout
    status = run_tp("status", "--root", str(root)).stdout
    assert (
        "firewalld.conf: RFC3964_IPv4=no (set by install, was yes; uninstall puts it back)"
        in status
    )

    out = run_tp("uninstall", "--root", str(root)).stdout
    assert "firewalld.conf: RFC3964_IPv4=yes (was no, applied at firewalld's next start)" in out, (
        out
    )
    assert conf.read_text() == STOCK_CONF
    assert file_config_of(root).ours(OWNER).is_empty()


def file_config_of(root: Path) -> Any:
    from tproxy_firewalld.directxml import read_direct_xml

    return read_direct_xml(root / "etc/firewalld/direct.xml")


def test_uninstall_leaves_a_setting_somebody_changed_since(tmp_path: Path) -> None:
    root = stock_root(tmp_path)
    conf = root / "etc/firewalld/firewalld.conf"
    assert run_tp("install", "--root", str(root), CONSENT).returncode == 0
    conf.write_text(conf.read_text().replace("RFC3964_IPv4=no", "RFC3964_IPv4=false"))  # the same
    assert run_tp("install", "--root", str(root)).stdout.strip() == "install: record: written", (
        "still as the rules need it: no consent needed (the record no longer says consent)"
    )
    conf.write_text(conf.read_text().replace("RFC3964_IPv4=false", "RFC3964_IPv4=yes"))  # changed
    result = run_tp("uninstall", "--root", str(root))
    assert result.returncode == 0 and "firewalld.conf" not in result.stdout
    assert (
        "Warning: RFC3964_IPv4 is yes now, not the no install set: somebody changed it since, so it "
        "is left as it is (it was yes before install)"
    ) in result.stderr
    assert "RFC3964_IPv4=yes" in conf.read_text()


def test_a_missing_firewalld_conf_means_firewalld_defaults_and_is_never_created(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    result = run_tp("install", "--root", str(root))
    assert result.returncode == 12 and "firewalld has RFC3964_IPv4=yes" in result.stderr
    result = run_tp("install", "--root", str(root), CONSENT)
    assert (
        result.returncode == 12
        and "does not exist" in result.stderr
        and "install firewalld first" in result.stderr
    )
    assert files_of(root) == {}, "nothing created"


def test_strict_forward_ports_counts_only_where_firewalld_has_it(tmp_path: Path) -> None:
    """Offline the version of the image's firewalld decides (its Python package); a line an
    older firewalld ignores is no reason to refuse."""
    conf = "DefaultZone=public\nRFC3964_IPv4=no\nStrictForwardPorts=yes\n"
    for version, refused in (("0.9.3", False), ("2.3.1", True), (None, True)):
        root = stock_root(tmp_path / str(version), conf)
        if version is not None:
            package = root / "usr/lib/python3/dist-packages/firewall/config"
            package.mkdir(parents=True)
            (package / "__init__.py").write_text(f'VERSION = "{version}"\n')
        result = run_tp("install", "--root", str(root), "--ip-family-mode", "ipv4")
        if refused:
            assert result.returncode == 12, (version, result.stderr)
            assert "firewalld has StrictForwardPorts=yes: " in result.stderr
            assert "inbound and outbound connections to the proxy fail" in result.stderr
            assert "--ip-family-mode" not in result.stderr, "IPv4 rules do not help here"
        else:
            assert result.returncode == 0, result.stderr


def test_consent_from_the_config_file_and_the_environment(tmp_path: Path) -> None:
    root = stock_root(tmp_path)
    config = tmp_path / "tp.yaml"
    config.write_text("configureFirewalld: true\n")
    assert (
        run_tp("install", "--root", str(root), "--config", str(config), "--dry-run").returncode == 0
    )
    env = {"KUMA_TRANSPARENT_PROXY_CONFIGURE_FIREWALLD": "true"}
    assert run_tp("install", "--root", str(root), "--dry-run", env=env).returncode == 0
    assert run_tp("install", "--root", str(root), "--dry-run").returncode == 12
    assert (
        KumaSettings.field("configure_firewalld").env
        == "KUMA_TRANSPARENT_PROXY_CONFIGURE_FIREWALLD"
    )


def test_the_record_without_firewalld_conf_still_reads_and_a_bad_one_is_refused(
    tmp_path: Path,
) -> None:
    root = stock_root(tmp_path)
    assert run_tp("install", "--root", str(root), CONSENT).returncode == 0
    path = root / "var/lib/tproxy-firewalld/installed.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == "tproxy-firewalld/installed/2"
    assert doc["firewalld_conf"] == [{"name": "RFC3964_IPv4", "before": "yes", "after": "no"}]
    old = {k: v for k, v in doc.items() if k != "firewalld_conf"}
    old["settings"] = {k: v for k, v in doc["settings"].items() if k != "configure_firewalld"}
    path.write_text(json.dumps(old))  # as an install before this change wrote it
    record = read_record(path)
    assert record is not None and record.firewalld_conf == ()
    for bad in (
        [{"name": "LogDenied", "before": "off", "after": "all"}],
        [{"name": "RFC3964_IPv4", "before": "yes\n", "after": "no; x"}],
        "yes",
    ):
        path.write_text(json.dumps({**doc, "firewalld_conf": bad}))
        with pytest.raises(RecordError):
            read_record(path)


# --------------------------------------------------------------------------- plan and apply


def consented(**kw: str) -> KumaSettings:
    return load({"--kuma-dp-user": "5678", CONSENT: "true", **kw})


def test_live_steps_in_order_and_uninstall_puts_it_back(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    fake.conf.update(RFC3964_IPv4="yes", StrictForwardPorts="yes")
    fake.applied = dict(fake.conf)
    with pytest.raises(FirewalldConfRefused) as refused:
        api.install(load({"--kuma-dp-user": "5678"}), target=target, client=fake.factory())
    message = refused.value.message
    assert "RFC3964_IPv4=yes" in message and "StrictForwardPorts=yes" in message
    assert "--ip-family-mode" not in message, (
        "IPv4 rules would still be defeated by StrictForwardPorts"
    )
    assert (
        "it changes firewalld.conf through firewalld's D-Bus API and reloads firewalld" in message
    )
    assert fake.changes == []

    result = api.install(consented(), target=target, client=fake.factory())
    assert [s.kind for s in result.steps] == [
        "runtime", "permanent", "record", "firewalld-conf", "firewalld-conf", "reload",
    ]  # fmt: skip
    assert fake.changes[-4:] == [
        "config.direct.update", "config.Set RFC3964_IPv4=no", "config.Set StrictForwardPorts=no", "reload",
    ]  # fmt: skip
    assert fake.applied == {"RFC3964_IPv4": "no", "StrictForwardPorts": "no"}
    assert fake.runtime().ours(OWNER).entries() == build_ruleset(consented()).entries(), (
        "the reload (FlushAllOnReload=yes here) re-applied our permanent entries"
    )
    assert "firewalld reloaded (applies RFC3964_IPv4, StrictForwardPorts)" in result.summary()
    again = api.install(consented(), target=target, client=fake.factory())
    assert not again.changed

    fake.changes.clear()
    result = api.uninstall(target=target, client=fake.factory())
    assert fake.changes[-3:] == [
        "config.Set RFC3964_IPv4=yes",
        "config.Set StrictForwardPorts=yes",
        "reload",
    ]
    assert fake.applied == {"RFC3964_IPv4": "yes", "StrictForwardPorts": "yes"}
    assert fake.runtime().ours(OWNER).is_empty() and fake.permanent() == FOREIGN


def test_a_failed_reload_undoes_the_setting_and_the_rules(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    fake.conf["RFC3964_IPv4"] = "yes"
    before = (set(fake.runtime().entries()), fake.permanent(), dict(fake.conf))
    fake.fail_reload = "COMMAND_FAILED"
    with pytest.raises(FirewalldRejected) as failed:
        api.install(consented(), target=target, client=fake.factory())
    assert "nothing was changed" in failed.value.message
    assert (set(fake.runtime().entries()), fake.permanent(), dict(fake.conf)) == before
    assert fake.changes.index("config.Set RFC3964_IPv4=yes") > fake.changes.index("reload"), (
        "the setting put back"
    )
    assert not target.state_file.exists()


def test_a_failure_after_the_reload_puts_the_setting_back_before_reloading_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Install writes its record before it changes firewalld.conf (so that a run killed midway
    leaves what to put back); uninstall removes the record last, after its reload."""
    target, fake = world(tmp_path)
    fake.conf["RFC3964_IPv4"] = "yes"
    fake.applied = dict(fake.conf)
    api.install(consented(), target=target, client=fake.factory())
    installed = (fake.permanent(), set(fake.runtime().entries()), dict(fake.conf))
    fake.changes.clear()

    def read_only(path: Path) -> None:
        raise FileError(f"cannot remove {path}: Read-only file system")

    monkeypatch.setattr(transaction, "remove_file", read_only)  # the record, the last step, fails
    with pytest.raises(FileError) as failed:
        api.uninstall(target=target, client=fake.factory())
    assert "nothing was changed" in failed.value.message
    undone = fake.changes[fake.changes.index("reload") + 1 :]  # after uninstall's own reload
    assert undone[:3] == ["config.Set RFC3964_IPv4=no", "reload", "config.direct.update"], (
        "the setting goes back first, then the reload that applies it, then the permanent entries"
    )
    assert fake.applied == {"RFC3964_IPv4": "no"} and fake.conf == {"RFC3964_IPv4": "no"}
    assert (fake.permanent(), set(fake.runtime().entries()), dict(fake.conf)) == installed
    record = read_record(target.state_file)
    assert record is not None and record.conf_restoring == (), "the record as install wrote it"


def test_live_uninstall_leaves_a_setting_somebody_changed_since(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    fake.conf["RFC3964_IPv4"] = "yes"
    api.install(consented(), target=target, client=fake.factory())
    fake.conf["RFC3964_IPv4"] = "true"  # an admin turned it back on (another spelling of yes)
    fake.changes.clear()
    result = api.uninstall(target=target, client=fake.factory())
    assert not [c for c in fake.changes if c.startswith("config.Set") or c == "reload"], (
        fake.changes
    )
    assert [w.code for w in result.warnings] == ["firewalld-conf-kept"]
    assert result.warnings[0].message.startswith("RFC3964_IPv4 is true now, not the no install set")
    assert fake.conf["RFC3964_IPv4"] == "true"


def test_a_broken_permanent_configuration_is_found_before_anything_changes(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    fake.conf["RFC3964_IPv4"] = "yes"
    fake.fail_check = "INVALID_ZONE"
    with pytest.raises(FirewalldRejected):
        api.install(consented(), target=target, client=fake.factory())
    assert fake.changes == [], "checked before the first change"


# --------------------------------------------------------------------------- a real firewalld


def sandbox_state(sb: Sandbox) -> tuple[Any, ...]:
    """Everything install may change: firewalld's runtime and permanent direct config,
    direct.xml, firewalld.conf, lo's addresses, the record."""
    record = sb.run("cat", "/var/lib/tproxy-firewalld/installed.json", check=False).stdout
    return (
        direct_lines(sb),
        direct_lines(sb, permanent=True),
        sb.direct_xml.read_bytes() if sb.direct_xml.exists() else None,
        (sb.etc_dir / "firewalld.conf").read_bytes(),
        "::6/128" in sb.run("ip", "-6", "addr", "show", "dev", "lo").stdout,
        record,
    )


def ipv6_served(sb: Sandbox, peer: Peer, inbound: bool = False) -> tuple[Any, Any] | None:
    if inbound:
        reply = sb.connect(peer.local_ipv6, APP_PORT, netns=peer.name, timeout=2)
    else:
        reply = sb.connect(peer.ipv6, APP_PORT, timeout=2)
    return None if reply is None else (reply["server"], reply["orig_dst"])


APP_PORT, OUTBOUND_PORT, INBOUND_PORT = 8080, 15001, 15006


def test_stock_firewalld_refuses_then_consent_makes_ipv6_redirects_work_and_uninstall_undoes_it(
    make_sandbox: SandboxFactory,
) -> None:
    """This host's firewalld (1.3.3) with its stock firewalld.conf, both IPv6 directions.
    (Every version and both backends, IPv4 too: tests/test_matrix.py.)"""
    sb = make_sandbox("nftables", stock=True)
    peer = sb.add_peer()
    with (
        sb.listen(OUTBOUND_PORT, family="ipv6", name="proxy-out"),
        sb.listen(INBOUND_PORT, family="ipv6", name="proxy-in"),
        sb.listen(APP_PORT, family="ipv6", name="remote", netns=peer.name),
    ):
        direct = ("remote", None)
        assert ipv6_served(sb, peer) == direct
        before = sandbox_state(sb)

        # Without consent: one line, exit 12, and not one changing call to firewalld.
        with watch_bus(sb) as members:
            refused = tpfw(sb, "install", check=False)
        assert refused.returncode == 12 and refused.stdout == ""
        assert (
            refused.stderr.startswith("Error: firewalld has RFC3964_IPv4=yes: ")
            and refused.stderr.count("\n") == 1
        )
        assert (
            "getAllRules" in members
            and not CHANGING_MEMBERS & set(members)
            and "Set" not in members
        )
        assert sandbox_state(sb) == before
        assert ipv6_served(sb, peer) == direct

        # --dry-run with consent shows the change and makes none.
        dry = tpfw(sb, "install", "--configure-firewalld", "--dry-run").stdout
        assert (
            "firewalld.conf: RFC3964_IPv4=no (was yes)\nfirewalld reloaded (applies RFC3964_IPv4)\n"
            in dry
        )
        assert sandbox_state(sb) == before

        # With consent: set over D-Bus, reloaded; both directions reach the proxy.
        with watch_bus(sb) as members:
            doc = json.loads(tpfw(sb, "install", "--configure-firewalld", "-o", "json").stdout)
        assert [s["step"] for s in doc["steps"]] == [
            "loopback", "runtime", "permanent", "record", "firewalld-conf", "reload",
        ]  # fmt: skip
        assert doc["changed"] is True and doc["firewalld_conf"][0] == {
            "name": "RFC3964_IPv4", "value": "yes", "wanted": "no", "in_sync": False,
        }  # fmt: skip
        assert members.count("Set") == 1 and members.count("reload") == 1
        assert members.index("update") < members.index("Set") < members.index("reload"), members
        assert "RFC3964_IPv4=no" in (sb.etc_dir / "firewalld.conf").read_text()
        assert ipv6_served(sb, peer) == ("proxy-out", endpoint(peer.ipv6, APP_PORT))
        assert ipv6_served(sb, peer, inbound=True) == (
            "proxy-in",
            endpoint(peer.local_ipv6, APP_PORT),
        )
        assert (
            tpfw(sb, "install", "--configure-firewalld").stdout.strip() == "install: nothing to do"
        )
        assert tpfw(sb, "diff").stdout.count("firewalld.conf: RFC3964_IPv4=no: in sync") == 1
        # firewalld.conf, not firewalld's memory: it survives a restart
        assert sb.restart_firewalld() == "running"
        assert ipv6_served(sb, peer) == ("proxy-out", endpoint(peer.ipv6, APP_PORT))

        out = tpfw(sb, "uninstall").stdout
        assert (
            "firewalld.conf: RFC3964_IPv4=yes (was no); firewalld reloaded (applies RFC3964_IPv4)"
            in out
        )
        after = sandbox_state(sb)
        assert after[:2] == before[:2] and after[4:] == before[4:], "firewalld, lo and the record"
        assert parse_conf(after[3].decode()) == parse_conf(before[3].decode()), (
            "firewalld.conf's settings"
        )
        assert ipv6_served(sb, peer) == direct
        assert ipv6_served(sb, peer, inbound=True) is None, "nothing listens on 8080 here"
