"""Issue 17 items 5-8: races and odd environments at the tool's boundaries.

5. A firewalld whose process runs but that has not taken its D-Bus name yet is waited for,
   never written behind. 6. ``--root`` paths are resolved fully inside the root, and a root that
   is ``/`` (by device and inode, e.g. a bind mount of it) is the live system. 7. No ``unshare``
   is a warning, not rejected rules. 8. A read-only or full /var/cache never fails a command.

Everything that starts firewalld, mounts or changes netfilter runs in the sandbox (tests/harness);
image-root runs touch only pytest's tmp_path. As in test_boundaries.py, the CLI runs as a
separate process, so ``TPFW_CLI_PYTHONPATH=/an/old/checkout`` puts that checkout's CLI under
these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest
from harness import Sandbox, SandboxFactory
from helpers import TP, direct_lines, ours
from versions import version_of

from tproxy_firewalld.presence import is_firewalld

#: a checkout whose CLI to run instead of this one (see the module's docstring)
CLI_PYTHONPATH = os.environ.get("TPFW_CLI_PYTHONPATH")

# -------------------------------------------------- 5. a firewalld that has no bus name yet

#: imported by python at its start (PYTHONPATH), before firewalld's own code runs: the process
#: (cmdline `python3 /usr/sbin/firewalld ...`) exists, its D-Bus name has no owner yet: the
#: window in which firewalld 2.5 loads direct.xml, held open until the test sends SIGCONT
HOLD_AT_START = """
import os, signal
with open(os.path.join(os.path.dirname(__file__), "pid"), "w") as f:
    f.write(str(os.getpid()))
os.kill(os.getpid(), signal.SIGSTOP)
"""


def cli_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    return {**({"PYTHONPATH": CLI_PYTHONPATH} if CLI_PYTHONPATH else {}), **(extra or {})}


def tp(
    sb: Sandbox, *args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The CLI inside the sandbox; never raises for its exit code."""
    return sb.run(*TP, *args, check=False, env=cli_env(env), timeout=timeout)


def described(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}"


def error_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit ``code`` with exactly one ``Error:`` line (warnings aside) holding ``words``."""
    assert result.returncode == code, described(result)
    assert "Traceback" not in result.stderr, described(result)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), described(result)
    for word in words:
        assert word in lines[0], f"{word!r} missing: {described(result)}"
    return lines[0]


def test_what_counts_as_a_firewalld_process() -> None:
    assert is_firewalld([b"/usr/bin/python3", b"-s", b"/usr/sbin/firewalld", b"--nofork", b""])
    assert is_firewalld([b"/usr/bin/python3.14", b"/usr/sbin/firewalld"])
    assert is_firewalld([b"firewalld", b"--nofork"])
    assert not is_firewalld([b"/usr/bin/python3", b"/usr/bin/firewall-cmd", b"--state"])
    assert not is_firewalld([b"/usr/bin/python3", b"-m", b"tproxy_firewalld", b"firewalld"])
    assert not is_firewalld([b""])


def test_a_firewalld_process_without_its_bus_name_is_waited_for_never_written_behind(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """firewalld 2.5.2's start, frozen after its process began and before it took its name:
    the install waits (bounded: exit 5, direct.xml untouched), and when firewalld goes on it
    installs live. Before: offline, direct.xml written behind firewalld, exit 0."""
    root = version_of("forky").root
    assert root is not None
    sb = make_sandbox(root=root)
    sb.stop_firewalld()
    before = sb.direct_xml.read_bytes() if sb.direct_xml.exists() else None
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(HOLD_AT_START)
    firewalld = [
        *sb._nsenter(), "timeout", "600", "chroot", str(root),
        "env", f"PYTHONPATH={hold}", "/usr/bin/python3", "/usr/sbin/firewalld", "--nofork",
        "--nopid",
    ]  # fmt: skip
    with subprocess.Popen(firewalld, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as proc:
        try:
            deadline = time.monotonic() + 30
            while not (hold / "pid").exists() or not (hold / "pid").read_text():
                assert time.monotonic() < deadline and proc.poll() is None, "firewalld started"
                time.sleep(0.1)
            pid = (hold / "pid").read_text()
            stat = sb.run("cat", f"/proc/{pid}/stat").stdout
            assert stat.rsplit(")", 1)[1].split()[0] == "T", stat
            assert sb.state().startswith("not running"), "its name has no owner"

            started = time.monotonic()
            result = tp(sb, "install", env={"TPROXY_FIREWALLD_TIMEOUT": "3"})
            error_line(result, 5, "starting or stopping", f"pid {pid}", "within 3 s")
            assert 3 <= time.monotonic() - started < 60, "waited for its name, then gave up"
            assert (sb.direct_xml.read_bytes() if sb.direct_xml.exists() else None) == before

            with ThreadPoolExecutor(1) as pool:
                running = pool.submit(
                    tp, sb, "install", "-o", "json", env={"TPROXY_FIREWALLD_TIMEOUT": "120"}
                )
                time.sleep(1)
                sb.run("kill", "-CONT", pid)
                result = running.result()
            assert result.returncode == 0, described(result)
            assert json.loads(result.stdout)["mode"] == "live", described(result)
            assert sb.state() == "running"
            assert len(ours(direct_lines(sb))) == 30, "installed into the running firewalld"
        finally:
            proc.kill()


# -------------------------------------------------- 6. --root: the last component, aliases of /

IMAGE_CONF = "# the image's own firewalld.conf\nDefaultZone=public\nRFC3964_IPv4=yes\n"
HOST_CONF = "# a file outside the image\nDefaultZone=public\nRFC3964_IPv4=no\n"


def tp_here(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI on this machine: only ever with --root (an image root under tmp_path)."""
    assert "--root" in args, "never the live system outside the sandbox"
    return subprocess.run(
        [*TP, *args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **cli_env()}, cwd="/",  # "-m" looks in the cwd first
    )  # fmt: skip


def test_an_image_firewalld_conf_that_is_an_absolute_symlink_is_the_images_file(
    tmp_path: Path,
) -> None:
    """ROOT/etc/firewalld/firewalld.conf -> /X means ROOT/X (as in a chroot), not the host's /X.
    Before, the last component was opened as it was, through the symlink to this machine's
    file: RFC3964_IPv4=no there, so the install went ahead (exit 0) where the image says yes."""
    outside = tmp_path / "outside" / "firewalld.conf"  # stands for the host's file
    outside.parent.mkdir()
    outside.write_text(HOST_CONF)
    root = tmp_path / "root"
    (root / "etc/firewalld").mkdir(parents=True)
    inside = root / str(outside).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text(IMAGE_CONF)
    (root / "etc/firewalld/firewalld.conf").symlink_to(outside)
    error_line(tp_here("install", "--root", str(root)), 12, "RFC3964_IPv4")
    assert not (root / "etc/firewalld/direct.xml").exists()
    assert outside.read_text() == HOST_CONF and inside.read_text() == IMAGE_CONF


def test_a_bind_mount_of_slash_as_root_is_the_live_system(make_sandbox: SandboxFactory) -> None:
    """`--root DIR` where DIR is `/` mounted again (a container's `-v /:/host`): the same
    directory by device and inode, so the live system: the SSH guard holds and firewalld is
    talked to. Before, it was an image root: no guard, direct.xml written behind firewalld."""
    sb = make_sandbox()
    alias = sb.workdir / "host"
    alias.mkdir()
    sb.run("mount", "--rbind", "/", alias)  # in the sandbox's private mount namespace
    before = sb.direct_xml.read_bytes() if sb.direct_xml.exists() else None
    with sb.listen(22, name="sshd"):
        error_line(tp(sb, "install", "--root", str(alias)), 10, "port 22", "SSH")
    assert (sb.direct_xml.read_bytes() if sb.direct_xml.exists() else None) == before
    result = tp(sb, "install", "--root", str(alias), "-o", "json")
    assert result.returncode == 0, described(result)
    assert json.loads(result.stdout)["mode"] == "live", described(result)
    assert len(ours(direct_lines(sb))) == 30 and len(ours(direct_lines(sb, permanent=True))) == 30


# -------------------------------------------------- 7. no unshare

#: as in a container without CAP_SYS_ADMIN (Docker's default): `unshare --net` fails with
#: "unshare failed: Operation not permitted"; iptables (CAP_NET_ADMIN) still works
NO_SYS_ADMIN = ("setpriv", "--bounding-set=-sys_admin")
BAD_PORT_TEMPLATE = """\
* nat
-N KUMA_MESH_X
-A KUMA_MESH_X -m comment --comment "kuma/mesh/transparent/proxy/x" -p tcp --dport notaport -j RETURN
COMMIT
"""


def test_no_unshare_is_a_warning_and_iptables_test_still_judges_the_rules(
    make_sandbox: SandboxFactory,
) -> None:
    """Before: exit 4, "iptables-restore rejects the rendered ipv4 rules: unshare failed:
    Operation not permitted". Now the install goes ahead with a warning that only
    `iptables-restore --test` checked the rules, and a rule --test refuses is still exit 4."""
    sb = make_sandbox()
    assert "Operation not permitted" in sb.run(*NO_SYS_ADMIN, "unshare", "--net", "true",
                                               check=False).stderr  # fmt: skip
    result = sb.run(*NO_SYS_ADMIN, *TP, "install", check=False, env=cli_env())
    assert result.returncode == 0, described(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    for ipv in ("ipv4", "ipv6"):
        assert any(
            f"of the {ipv} rules (unshare: unshare failed: Operation not permitted); checked "
            f"with {'ip6' if ipv == 'ipv6' else 'ip'}tables-restore --test only" in line
            for line in warnings
        ), described(result)
    assert len(ours(direct_lines(sb))) == 30
    template = sb.workdir / "bad-port.rules.j2"
    template.write_text(BAD_PORT_TEMPLATE)
    result = sb.run(
        *NO_SYS_ADMIN, *TP, "render", "--direct-xml", "/nonexistent", "--rules-template",
        str(template), check=False, env=cli_env(),
    )  # fmt: skip
    line = error_line(result, 4, "iptables-restore rejects the rendered ipv4 rules", "notaport")
    assert "unshare" not in line


# -------------------------------------------------- 8. a read-only or full /var/cache

CACHE = "/var/cache/tproxy-firewalld"
#: /var/cache/tproxy-firewalld as a fresh file system (in the sandbox's private mount namespace)
#: with an empty bytecode directory, then made read-only, or filled up
READ_ONLY_CACHE = f"mount -t tmpfs -o mode=0755 tmpfs {CACHE} && mkdir -m 0700 {CACHE}/templates \
&& mount -o remount,ro {CACHE}"
FULL_CACHE = f"umount {CACHE}; mount -t tmpfs -o mode=0755,size=64k tmpfs {CACHE} \
&& mkdir -m 0700 {CACHE}/templates && (cat /dev/zero >{CACHE}/filler 2>/dev/null; true)"


def test_a_read_only_or_full_cache_never_fails_a_command(make_sandbox: SandboxFactory) -> None:
    """Before: exit 2 "rules template ...: [Errno 30] Read-only file system" (or 28, No space
    left on device) from jinja2's bytecode cache, for render, diff and install alike. A cache
    is only a cache. Writing our own record where that is impossible stays exit 11."""
    sb = make_sandbox()
    for setup, errno_text in ((READ_ONLY_CACHE, "Read-only"), (FULL_CACHE, "No space")):
        sb.run("sh", "-c", setup)
        probe = sb.run("sh", "-c", f"head -c 8192 /dev/zero >{CACHE}/templates/probe", check=False)
        assert errno_text in probe.stderr, probe.stderr  # the cache cannot be written
        result = tp(sb, "render", "--direct-xml", "/nonexistent")
        assert result.returncode == 0 and "KUMA_MESH" in result.stdout, described(result)
        result = tp(sb, "diff", "--kuma-version", "2.14")
        assert result.returncode == 1, f"differences, nothing installed yet: {described(result)}"
        result = tp(sb, "install")
        assert result.returncode == 0, described(result)
        assert len(ours(direct_lines(sb))) == 30
        result = tp(sb, "uninstall")
        assert result.returncode == 0, described(result)
    # our own state is not a cache: a read-only /var/lib/tproxy-firewalld is exit 11
    sb.run("mount", "-o", "remount,ro", "/var/lib/tproxy-firewalld")
    error_line(tp(sb, "install"), 11, "/var/lib/tproxy-firewalld", "Read-only file system")
    assert ours(direct_lines(sb)) == [], "nothing changed"


def fake_process(proc: Path, pid: int, argv: list[str], net: str) -> None:
    (proc / str(pid) / "ns").mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (proc / str(pid) / "ns" / "net").symlink_to(net)


def test_starting_means_its_unit_is_busy_or_its_process_runs_in_our_network_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pure code over a made-up /proc and systemctl (the sandbox has no systemd)."""
    from tproxy_firewalld import presence

    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").symlink_to("net:[1]")
    fake_process(proc, 10, ["/usr/bin/python3", "/usr/bin/firewall-cmd", "--state"], "net:[1]")
    fake_process(proc, 11, ["/usr/bin/python3", "/usr/sbin/firewalld", "--nofork"], "net:[2]")
    monkeypatch.setattr(presence, "SYSTEMD_RUN_DIR", str(tmp_path / "no-systemd"))
    assert presence.starting(proc) is None, "a container's firewalld is another firewall"
    fake_process(proc, 12, ["/usr/bin/python3", "-s", "/usr/sbin/firewalld"], "net:[1]")
    assert presence.starting(proc) == "a firewalld process (pid 12) is running"
    # systemd: the unit's state, from systemctl
    (tmp_path / "systemd").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    monkeypatch.setattr(presence, "SYSTEMD_RUN_DIR", str(tmp_path / "systemd"))
    monkeypatch.setenv("PATH", str(bin_dir))
    empty = tmp_path / "empty-proc"
    (empty / "self" / "ns").mkdir(parents=True)
    for state, expected in (("activating", "firewalld.service is activating"), ("inactive", None)):
        systemctl.write_text(
            f"#!/bin/sh\n[ \"$*\" = 'is-active firewalld.service' ] && echo {state}\n"
        )
        systemctl.chmod(0o755)
        assert presence.starting(empty) == expected
