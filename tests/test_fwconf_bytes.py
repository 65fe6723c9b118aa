"""firewalld.conf is read the way firewalld reads it and kept byte for byte (issue 17, item 10).

firewalld reads it with ``for line in open(path)``: lines end at ``\\n``, ``\\r\\n`` or ``\\r``
only, each is ``strip()``ped. ``str.splitlines`` also splits at ``\\f``, ``\\v``,
``\\x1c``-``\\x1e``, ``\\x85`` and U+2028/9, so a comment line with one of those in it made a
setting that firewalld never sees. And an offline edit decoded the file with
``errors="replace"``: its non-UTF-8 bytes became U+FFFD for good (uninstall kept them).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import SandboxFactory
from helpers import STOCK_CONF, TP, load, stock_root, tpfw
from versions import Version, discover, version_of

from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.fwconf import parse_conf, read_conf, set_in_conf
from tproxy_firewalld.ruleset import build_ruleset

CONSENT = "--configure-firewalld"
APP_PORT, OUTBOUND_PORT = 8080, 15001
KEYS = ("RFC3964_IPv4", "StrictForwardPorts", "DefaultZone", "LogDenied")

#: comment lines with a line break of str.splitlines (not of firewalld's reader) in them, a
#: setting after leading whitespace that strip() removes, a lone \r (which does end a line)
TRICKY = (
    "# was \fRFC3964_IPv4=no\n"
    "# was \x85RFC3964_IPv4=no\n"
    "# was \u2028StrictForwardPorts=no\n"
    "; was \vStrictForwardPorts=no\n"
    "# was \x1cLogDenied=off\n"
    "\vDefaultZone=work\n"
    "RFC3964_IPv4=yes\r\n"
    "#old\rLogDenied=all\n"
)


def run_tp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TP, *args], capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ)
    )


def firewalld_reads(path: Path, root: Path | None) -> dict[str, str | None]:
    """What firewalld's own reader (firewall.core.io.firewalld_conf, of the firewalld installed
    on the host or in a version's root) makes of the file."""
    packages = (root or Path("/")) / "usr/lib/python3/dist-packages"
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(packages)!r})\n"
        "from firewall.core.io.firewalld_conf import firewalld_conf\n"
        f"c = firewalld_conf({str(path)!r}); c.read()\n"
        f"print(json.dumps({{k: c.get(k) for k in {KEYS!r}}}))\n"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", discover(), ids=lambda v: v.id)
def test_lines_end_and_are_stripped_as_firewalld_s_own_reader_does(
    tmp_path: Path, version: Version
) -> None:
    if version.problem:
        pytest.fail(version.problem, pytrace=False)
    path = tmp_path / "firewalld.conf"
    path.write_bytes(TRICKY.encode())
    theirs = firewalld_reads(path, version.root)
    assert theirs["RFC3964_IPv4"] == "yes" and theirs["DefaultZone"] == "work", theirs
    text = read_conf(path)
    assert text is not None
    ours = parse_conf(text)
    assert {k: ours.get(k) for k in KEYS} == theirs


def test_an_edit_changes_the_line_firewalld_reads_and_no_comment() -> None:
    edited = set_in_conf(TRICKY, "RFC3964_IPv4", "no")
    assert edited == TRICKY.replace("RFC3964_IPv4=yes\r\n", "RFC3964_IPv4=no\r\n")
    appended = set_in_conf("# was \u2028StrictForwardPorts=yes\r", "StrictForwardPorts", "no")
    assert appended == "# was \u2028StrictForwardPorts=yes\rStrictForwardPorts=no\n", (
        "a lone \\r ends the last line already"
    )


def test_a_control_character_in_a_comment_line_sets_nothing(tmp_path: Path) -> None:
    """Offline: the comment does not read as RFC3964_IPv4=no, so install refuses; with consent
    the setting is appended and the comment stays as it was."""
    conf_text = STOCK_CONF.replace("RFC3964_IPv4=yes\n", "# RFC 3964: \fRFC3964_IPv4=no\n")
    assert conf_text != STOCK_CONF
    root = stock_root(tmp_path, conf_text)
    conf = root / "etc/firewalld/firewalld.conf"
    refused = run_tp("install", "--root", str(root))
    assert refused.returncode == 12, (refused.stdout, refused.stderr)
    assert "firewalld has RFC3964_IPv4=yes" in refused.stderr
    done = run_tp("install", "--root", str(root), CONSENT)
    assert done.returncode == 0, done.stderr
    assert "firewalld.conf: RFC3964_IPv4=no (was yes, applied at firewalld's next start)" in (
        done.stdout
    )
    assert conf.read_bytes() == (conf_text + "RFC3964_IPv4=no\n").encode()


def test_non_utf8_bytes_are_kept_through_an_offline_configure_and_uninstall(
    tmp_path: Path,
) -> None:
    """The file after install and uninstall is the file before, byte for byte."""
    original = (
        b"# R\xe9seau interne \xff\xfe (latin-1, not UTF-8)\r\n"
        + STOCK_CONF.encode()
        + b"# fin du fichier \x80\x85"
    )
    root = stock_root(tmp_path)
    conf = root / "etc/firewalld/firewalld.conf"
    conf.write_bytes(original)
    assert run_tp("install", "--root", str(root)).returncode == 12

    done = run_tp("install", "--root", str(root), CONSENT)
    assert done.returncode == 0, done.stderr
    assert "RFC3964_IPv4=no (was yes" in done.stdout, done.stdout
    assert conf.read_bytes() == original.replace(b"\nRFC3964_IPv4=yes\n", b"\nRFC3964_IPv4=no\n")
    assert conf.with_name("firewalld.conf.old").read_bytes() == original

    out = run_tp("uninstall", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert "firewalld.conf: RFC3964_IPv4=yes (was no" in out.stdout, out.stdout
    assert conf.read_bytes() == original


def test_a_strict_forward_ports_value_other_than_no_is_on_as_firewalld_takes_it(
    tmp_path: Path,
) -> None:
    """firewalld (fw.py, 2.3 to 2.5) turns StrictForwardPorts on for any value but no/false:
    "on" defeats the rules, so install refuses; with consent it becomes no, and uninstall puts
    back yes (what firewalld made of "on")."""
    root = stock_root(tmp_path, STOCK_CONF.replace("RFC3964_IPv4=yes", "RFC3964_IPv4=no"))
    conf = root / "etc/firewalld/firewalld.conf"
    conf.write_text(conf.read_text() + "StrictForwardPorts=on\n")
    package = root / "usr/lib/python3/dist-packages/firewall/config"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('VERSION = "2.3.1"\n')
    refused = run_tp("install", "--root", str(root))
    assert refused.returncode == 12, refused.stderr
    assert "firewalld has StrictForwardPorts=on: " in refused.stderr
    done = run_tp("install", "--root", str(root), CONSENT)
    assert "firewalld.conf: StrictForwardPorts=no (was on" in done.stdout, done.stdout
    record = json.loads((root / "var/lib/tproxy-firewalld/installed.json").read_text())
    assert record["firewalld_conf"] == [
        {"name": "StrictForwardPorts", "before": "yes", "after": "no"}
    ]
    run_tp("uninstall", "--root", str(root))
    assert conf.read_text().endswith("\nStrictForwardPorts=yes\n")


def test_a_real_firewalld_takes_strict_forward_ports_on_as_yes(
    make_sandbox: SandboxFactory,
) -> None:
    """firewalld 2.3.1 with StrictForwardPorts=on: our rules, loaded by hand, lose the IPv4
    outbound connection (so "on" is on), and install refuses."""
    version = version_of("trixie")
    sb = make_sandbox("nftables", "yes", version.root, conf={"StrictForwardPorts": "on"})
    peer = sb.add_peer()
    with (
        sb.listen(OUTBOUND_PORT, name="proxy-out"),
        sb.listen(APP_PORT, name="remote", netns=peer.name),
    ):
        assert sb.connect(peer.ipv4, APP_PORT, timeout=2) is not None
        refused = tpfw(sb, "install", check=False)
        assert refused.returncode == 12, refused.stderr
        assert "firewalld has StrictForwardPorts=on: " in refused.stderr
        sb.direct_xml.write_bytes(
            render_direct_xml(build_ruleset(load({"--kuma-dp-user": "5678"})))
        )
        sb.reload()
        assert sb.connect(peer.ipv4, APP_PORT, timeout=2) is None, "rejected: on is on"
