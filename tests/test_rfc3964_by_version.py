"""RFC3964_IPv4=yes defeats Kuma's IPv6 outbound redirect only before firewalld 2.3 (issue 17,
item 2). From 2.3.0 firewalld's filter OUTPUT accepts DNATed connections (REDIRECT is DNAT)
before its RFC 3964 reject, both backends (firewalld commit 2bcab5a7). So install refuses
(exit 12) and offers --configure-firewalld only where the setting defeats the rules: decided by
the running firewalld's version, offline by the image's; an unknown version keeps refusing.

Offline and pure tests first; then the proof by traffic against a real firewalld with its stock
firewalld.conf (the sandbox): 1.3.3 (the host), 2.3.1 (trixie), 2.5.2 (forky).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from fake_firewalld import FakeFirewalld, world
from harness import Backend, Peer, Sandbox, SandboxFactory, endpoint
from helpers import STOCK_CONF, TP, load, stock_root, tpfw
from versions import version_of

from tproxy_firewalld import api
from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.errors import FirewalldConfRefused
from tproxy_firewalld.fwconf import RFC3964, STRICT_FORWARD_PORTS, parse_version, version_in
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.target import Target

CONSENT = "--configure-firewalld"
APP_PORT, OUTBOUND_PORT = 8080, 15001


def run_tp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TP, *args], capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ)
    )


def image(tmp_path: Path, version: str | None) -> Path:
    """An image root with firewalld's stock firewalld.conf and (unless None) the Python package
    of firewalld ``version``, where the image's version is read from."""
    root = stock_root(tmp_path / str(version))
    if version is not None:
        package = root / "usr/lib/python3/dist-packages/firewall/config"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f'VERSION = "{version}"\n')
    return root


def test_the_knob_defeats_the_rules_only_before_2_3() -> None:
    assert [RFC3964.defeats(v) for v in ((0, 9, 3), (1, 3, 3), (2, 2, 9), (2, 3), (2, 5, 2))] == [
        True, True, True, False, False,
    ]  # fmt: skip
    assert RFC3964.defeats(None), "an unknown version: the safe side"
    assert STRICT_FORWARD_PORTS.defeats((2, 5, 2)) and STRICT_FORWARD_PORTS.defeats(None)
    assert [parse_version(t) for t in ("2.3.1", "1.3.3\n", "2.5.0a1", "?", "")] == [
        (2, 3, 1), (1, 3, 3), (2, 5, 0), None, None,
    ]  # fmt: skip


@pytest.mark.parametrize("version", ["2.3.1", "2.5.2"])
def test_offline_an_image_with_firewalld_2_3_or_later_installs_without_touching_the_conf(
    tmp_path: Path, version: str
) -> None:
    root = image(tmp_path, version)
    conf = root / "etc/firewalld/firewalld.conf"
    out = run_tp("install", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert "firewalld.conf" not in out.stdout, out.stdout
    assert conf.read_text() == STOCK_CONF and not conf.with_name("firewalld.conf.old").exists()
    record = json.loads((root / "var/lib/tproxy-firewalld/installed.json").read_text())
    assert record["firewalld_conf"] == []
    diff = run_tp("diff", "--root", str(root))
    assert diff.returncode == 0 and "RFC3964_IPv4" not in diff.stdout, diff.stdout
    status = json.loads(run_tp("status", "--root", str(root), "-o", "json").stdout)
    assert [w["code"] for w in status["warnings"] if w["code"] == "rfc3964-ipv4"] == []
    # with consent (recorded as a setting) firewalld.conf stays as it is: nothing needs it
    again = run_tp("install", "--root", str(root), CONSENT)
    assert again.stdout.strip() == "install: record: written", again.stdout
    assert conf.read_text() == STOCK_CONF


@pytest.mark.parametrize("version", ["0.9.3", "1.3.3", None])
def test_offline_older_or_unknown_firewalld_still_refuses(
    tmp_path: Path, version: str | None
) -> None:
    root = image(tmp_path, version)
    refused = run_tp("install", "--root", str(root))
    assert refused.returncode == 12, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and line.startswith("Error: firewalld has RFC3964_IPv4=yes: ")
    assert "firewalld before 2.3 rejects IPv6 packets to ::/96" in line
    unknown = "the image's firewalld's version is unknown, so it is taken to be older than 2.3"
    assert (unknown in line) == (version is None), line
    assert (root / "etc/firewalld/firewalld.conf").read_text() == STOCK_CONF


def test_the_image_s_version_is_read_inside_the_image_even_through_an_absolute_symlink(
    tmp_path: Path,
) -> None:
    """An image whose usr/lib/python3.13 is an absolute symlink to /usr/lib/python3 (as
    distributions link versioned directories): inside the image it leads to the image's own
    firewalld, whose version decides. Read through this host it would find the host's firewalld
    and decide the other way (issue 17.6: every path of an image root resolved inside it)."""
    host = version_in(Path("/usr/lib/python3/dist-packages/firewall/config/__init__.py"))
    assert host is not None, "this test needs firewalld installed on this host"
    inside = "2.5.2" if host < (2, 3) else "1.3.3"  # the other side of 2.3 from the host's
    root = image(tmp_path, inside)
    (root / "usr/lib/python3.13").symlink_to("/usr/lib/python3")
    (root / "usr/lib/python3").rename(root / "usr/lib/python3.real")
    (root / "usr/lib/python3").symlink_to("/usr/lib/python3.real")
    assert Target.make(root).firewalld_version() == parse_version(inside)
    out = run_tp("install", "--root", str(root))
    assert out.returncode == (0 if inside == "2.5.2" else 12), out.stderr


def test_a_change_made_on_an_older_firewalld_is_still_put_back_after_an_upgrade(
    tmp_path: Path,
) -> None:
    """The record keeps RFC3964_IPv4's old value through an upgrade to 2.3: install leaves it
    (nothing to do), uninstall puts it back."""
    root = image(tmp_path, "1.3.3")
    conf = root / "etc/firewalld/firewalld.conf"
    assert run_tp("install", "--root", str(root), CONSENT).returncode == 0
    assert "RFC3964_IPv4=no" in conf.read_text()
    (root / "usr/lib/python3/dist-packages/firewall/config/__init__.py").write_text(
        'VERSION = "2.3.1"\n'
    )
    assert run_tp("install", "--root", str(root), CONSENT).stdout.strip() == (
        "install: nothing to do"
    )
    assert run_tp("install", "--root", str(root)).returncode == 0, "no consent needed on 2.3"
    record = json.loads((root / "var/lib/tproxy-firewalld/installed.json").read_text())
    assert record["firewalld_conf"] == [{"name": "RFC3964_IPv4", "before": "yes", "after": "no"}]
    status = run_tp("status", "--root", str(root)).stdout
    assert "RFC3964_IPv4=no (set by install, was yes; uninstall puts it back)" in status, status
    out = run_tp("uninstall", "--root", str(root)).stdout
    assert "firewalld.conf: RFC3964_IPv4=yes (was no, applied at firewalld's next start)" in out
    assert conf.read_text() == STOCK_CONF


@pytest.mark.parametrize(("version", "refused"), [("1.3.3", True), ("2.3.1", False), ("?", True)])
def test_live_the_running_firewalld_s_version_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, refused: bool
) -> None:
    """Live, the version firewalld reports decides; one it does not tell (the CLI shows "?")
    keeps refusing, and says so."""
    target, fake = world(tmp_path)
    fake.conf["RFC3964_IPv4"] = "yes"
    info = FakeFirewalld.info
    monkeypatch.setattr(FakeFirewalld, "info", lambda self: replace(info(self), version=version))
    settings = load({"--kuma-dp-user": "5678"})
    if refused:
        with pytest.raises(FirewalldConfRefused) as error:
            api.install(settings, target=target, client=fake.factory())
        unknown = "the running firewalld's version is unknown, so it is taken to be older than 2.3"
        assert (unknown in error.value.message) == (version == "?"), error.value.message
        assert fake.changes == []
        return
    result = api.install(settings, target=target, client=fake.factory())
    assert [s.kind for s in result.steps] == ["runtime", "permanent", "record"]
    assert fake.conf == {"RFC3964_IPv4": "yes"} and "reload" not in fake.changes


# --------------------------------------------------------------------------- a real firewalld


def ipv6_outbound(sb: Sandbox, peer: Peer) -> tuple[object, object] | None:
    reply = sb.connect(peer.ipv6, APP_PORT, timeout=2)
    return None if reply is None else (reply["server"], reply["orig_dst"])


@pytest.mark.parametrize(
    ("suite", "backend"),
    [("bookworm", "nftables"), ("trixie", "nftables"), ("trixie", "iptables"),
     ("forky", "nftables"), ("forky", "iptables")],
)  # fmt: skip
def test_stock_rfc3964_defeats_ipv6_outbound_redirects_only_before_2_3(
    make_sandbox: SandboxFactory, suite: str, backend: Backend
) -> None:
    """firewalld's stock firewalld.conf (RFC3964_IPv4=yes), Kuma's default dual-stack rules.
    1.3.3: install refuses (exit 12); the rules loaded by hand show why (the IPv6 outbound
    connection is rejected). 2.3.1 and 2.5.2: install goes through without touching
    firewalld.conf or reloading, and the IPv6 outbound connection reaches the proxy with its
    original destination."""
    version = version_of(suite)
    sb = make_sandbox(backend, "yes", version.root, stock=True)
    assert sb.firewalld_version() == version.upstream
    conf = sb.etc_dir / "firewalld.conf"
    stock = conf.read_bytes()
    assert b"\nRFC3964_IPv4=yes\n" in stock, "firewalld's stock setting"
    newer = version.number >= (2, 3)
    peer = sb.add_peer()
    with (
        sb.listen(OUTBOUND_PORT, family="ipv6", name="proxy-out"),
        sb.listen(APP_PORT, family="ipv6", name="remote", netns=peer.name),
    ):
        assert ipv6_outbound(sb, peer) == ("remote", None)
        redirected = ("proxy-out", endpoint(peer.ipv6, APP_PORT))
        if not newer:
            refused = tpfw(sb, "install", check=False)
            assert refused.returncode == 12, refused.stderr
            assert refused.stderr.startswith("Error: firewalld has RFC3964_IPv4=yes: ")
            assert conf.read_bytes() == stock
            # the evidence: the same rules, loaded by hand under the stock setting
            sb.direct_xml.write_bytes(
                render_direct_xml(build_ruleset(load({"--kuma-dp-user": "5678"})))
            )
            sb.reload()
            assert ipv6_outbound(sb, peer) is None, "RFC3964_IPv4=yes rejects it"
            sb.direct_xml.write_bytes(render_direct_xml(DirectConfig()))
            sb.reload()
            return
        out = tpfw(sb, "install").stdout
        assert "firewalld.conf" not in out and "reloaded" not in out, out
        assert conf.read_bytes() == stock
        status = json.loads(tpfw(sb, "status", "-o", "json").stdout)
        assert status["firewalld"]["rfc3964_ipv4"] == "yes", "firewalld still has it on"
        assert status["in_sync"] is True and status["warnings"] == [], status["warnings"]
        assert ipv6_outbound(sb, peer) == redirected
        tpfw(sb, "uninstall")
        assert ipv6_outbound(sb, peer) == ("remote", None)
        assert conf.read_bytes() == stock
