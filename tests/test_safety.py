"""Never break the firewall, never lose an entry: files, concurrency, rollback, refusal.

File-level tests work on an image root (``--root``), which touches no firewall at all;
everything involving firewalld runs in the sandbox.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import Sandbox
from helpers import (
    MIDWAY_REJECTED,
    TP,
    add_foreign,
    direct_lines,
    file_config,
    foreign,
    load,
    ours,
    ready_root,
    run_in_sandbox,
    tpfw,
)

from tproxy_firewalld.directxml import parse_direct_xml, render_direct_xml
from tproxy_firewalld.entries import Chain, DirectConfig, Rule
from tproxy_firewalld.kuma import OWNER
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.target import Target

FOREIGN = DirectConfig(
    chains=(Chain("ipv4", "filter", "FOREIGN"),),
    rules=(
        Rule("ipv4", "filter", "FOREIGN", 0, ("-j", "RETURN")),
        Rule("ipv6", "nat", "OUTPUT", 0, ("-p", "udp", "--dport", "5353", "-j", "RETURN")),
    ),
)


def image_root(tmp_path: Path, content: DirectConfig = FOREIGN) -> Path:
    root = ready_root(tmp_path / "root")
    (root / "etc" / "firewalld" / "direct.xml").write_bytes(render_direct_xml(content))
    return root


def run_tp(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TP, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ours_for(port: int) -> DirectConfig:
    return build_ruleset(load({"--kuma-dp-user": "5678", "--redirect-outbound-port": str(port)}))


# --------------------------------------------------------------------------- files


def test_existing_mode_owner_and_selinux_label_are_kept(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    path = root / "etc/firewalld/direct.xml"
    os.chmod(path, 0o600)
    os.chown(path, 1234, 1235)
    os.setxattr(path, "security.selinux", b"system_u:object_r:firewalld_etc_rw_t:s0")
    assert run_tp("install", "--root", str(root)).returncode == 0
    info = os.stat(path)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 1234, 1235)
    assert os.getxattr(path, "security.selinux") == b"system_u:object_r:firewalld_etc_rw_t:s0"
    backup = path.with_name("direct.xml.old")
    assert parse_direct_xml(backup.read_bytes()) == FOREIGN, "firewalld-style .old backup"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "no temp file left"


def test_new_file_is_0644_root(tmp_path: Path) -> None:
    root = ready_root(tmp_path / "root")
    assert run_tp("install", "--root", str(root)).returncode == 0
    info = os.stat(root / "etc/firewalld/direct.xml")
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o644, 0, 0)


def _holds(config: DirectConfig, candidates: list[DirectConfig]) -> bool:
    return any(config.ours(OWNER).entries() == c.entries() for c in candidates)


#: Runs the CLI with every file-system step of a write counted; at step N the process dies on
#: the spot (os._exit: no cleanup, no finally), as if killed by SIGKILL right there.
CRASH = """
import os, sys, tempfile
at = int(os.environ["TPFW_CRASH_AT"])
root = os.environ["TPFW_CRASH_ROOT"]
count = [0]
def touches_root(args, kwargs):
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool):
            try:
                arg = os.readlink(f"/proc/self/fd/{arg}")
            except OSError:
                continue
        if isinstance(arg, (str, os.PathLike)) and os.fspath(arg).startswith(root):
            return True
    return False
def hooked(module, name):
    real = getattr(module, name)
    def step(*args, **kwargs):
        if touches_root(args, kwargs):  # only the image root's files: caches elsewhere vary
            count[0] += 1
            if count[0] == at:
                os._exit(137)
        return real(*args, **kwargs)
    setattr(module, name, step)
for name in ("replace", "fsync", "fchmod", "fchown", "unlink", "rename"):
    hooked(os, name)
hooked(tempfile, "mkstemp")
from tproxy_firewalld.cli import main
sys.argv = ["tproxy-firewalld", *sys.argv[1:]]
try:
    main()
finally:
    sys.stderr.write(f"STEPS {count[0]}\\n")
"""


def _offline_check(root: Path, data: bytes, checked: dict[bytes, bool]) -> None:
    """firewalld's own check of the whole configuration, once per distinct content."""
    if data in checked:
        return
    (root / "check" / "direct.xml").write_bytes(data)
    check = subprocess.run(
        # its own net and mount namespaces: no firewall, and its log goes to a tmpfs
        ["unshare", "--net", "--mount", "sh", "-c",
         'mount -t tmpfs tmpfs /var/log && exec firewall-offline-cmd --system-config "$0" --check-config',
         str(root / "check")],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    checked[data] = check.returncode == 0
    assert check.returncode == 0, check.stdout + check.stderr


def _crash_run(root: Path, command: list[str], at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CRASH, *command, "--root", str(root)],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "TPFW_CRASH_AT": str(at), "TPFW_CRASH_ROOT": str(root)},
    )  # fmt: skip


def test_a_crash_at_every_step_of_a_write_leaves_old_or_new_file(tmp_path: Path) -> None:
    """Fault injection: install, reinstall with other settings and uninstall, each killed at
    every file-system step of its writes in turn; after each the file is whole, firewalld
    takes it, and it holds exactly the old or the new complete set with the foreign entries."""
    root = image_root(tmp_path)
    path = root / "etc/firewalld/direct.xml"
    shutil.copytree("/etc/firewalld", root / "check", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("direct.xml*"))  # fmt: skip
    checked: dict[bytes, bool] = {}
    commands = [["install"], ["install", "--redirect-outbound-port", "16001"], ["uninstall"]]
    expected = [ours_for(15001), ours_for(16001), DirectConfig()]
    crashes = 0
    record = root / "var/lib/tproxy-firewalld/installed.json"

    def snapshot() -> tuple[bytes, bytes | None]:
        return path.read_bytes(), record.read_bytes() if record.exists() else None

    def restore(saved: tuple[bytes, bytes | None]) -> None:
        path.write_bytes(saved[0])
        if saved[1] is None:
            record.unlink(missing_ok=True)
        else:
            record.write_bytes(saved[1])

    for i, command in enumerate(commands):
        before = snapshot()
        full = _crash_run(root, command, 0)  # counts the steps, crashes nowhere
        assert full.returncode == 0, full.stderr
        steps = int(full.stderr.rsplit("STEPS ", 1)[1])
        after = snapshot()
        assert steps >= 4, "the writes were counted"
        for at in range(1, steps + 1):
            restore(before)
            proc = _crash_run(root, command, at)
            assert proc.returncode == 137, (at, proc.stderr)
            crashes += 1
            data = path.read_bytes()
            config = parse_direct_xml(data)  # parses: never torn
            assert config.foreign(OWNER) == FOREIGN, f"{command} step {at}: foreign entries intact"
            olds = [expected[i - 1]] if i else [DirectConfig()]
            assert _holds(config, [*olds, expected[i]]), f"{command} step {at}: old or new set"
            _offline_check(root, data, checked)
            # the next run converges
            assert subprocess.run([*TP, *command, "--root", str(root)], capture_output=True,
                                  check=False).returncode == 0  # fmt: skip
            assert path.read_bytes() == after[0]
        restore(after)
    assert crashes >= 12
    print(f"fault injection: {crashes} crashes, {len(checked)} distinct files, all valid")


def test_kill_9_at_random_moments_leaves_old_or_new_file(tmp_path: Path) -> None:
    """A short random run on top: real SIGKILLs at random points of whole runs."""
    root = image_root(tmp_path)
    path = root / "etc/firewalld/direct.xml"
    variants = [DirectConfig(), ours_for(15001), ours_for(16001)]
    rng = random.Random(4)
    kills = 0
    for run in range(30):
        command = rng.choice(
            [["install", "--redirect-outbound-port", "16001"], ["install"], ["uninstall"]]
        )
        proc = subprocess.Popen([*TP, *command, "--root", str(root)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        config = parse_direct_xml(path.read_bytes())
        assert config.foreign(OWNER) == FOREIGN, f"run {run}"
        assert _holds(config, variants), f"run {run}: a complete set of ours"
    assert kills >= 5, kills


def test_concurrent_installs_serialise(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    ports = [15001, 16001, 17001, 18001, 19001, 20001]
    procs = [
        subprocess.Popen([*TP, "install", "--root", str(root), "--redirect-outbound-port", str(p)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in ports
    ]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    config = parse_direct_xml((root / "etc/firewalld/direct.xml").read_bytes())
    assert config.foreign(OWNER) == FOREIGN
    assert _holds(config, [ours_for(p) for p in ports]), "exactly one complete set"
    assert len(config.rules) == len(set(config.rules)) and len(config.chains) == len(
        set(config.chains)
    )


def test_concurrent_live_installs_end_with_one_complete_set(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before = foreign(direct_lines(sb)), foreign(direct_lines(sb, permanent=True))
    ports = [15001, 16001, 17001, 18001]
    procs = [
        subprocess.Popen([*sb._nsenter(), "timeout", "120", *TP, "install", "--redirect-outbound-port", str(p)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in ports
    ]  # fmt: skip
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    runtime, permanent = direct_lines(sb), direct_lines(sb, permanent=True)
    assert (foreign(runtime), foreign(permanent)) == before
    assert ours(runtime) == ours(permanent) and len(ours(runtime)) == 30, (
        "one complete set, no duplicates"
    )
    assert _holds(file_config(sb), [ours_for(p) for p in ports])
    assert tpfw(sb, "diff", check=False).returncode == 0


def test_lock_timeout_gives_a_clear_message(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    with Target.make(root).locked():
        env = {**os.environ, "TPROXY_FIREWALLD_LOCK_TIMEOUT": "0.5"}
        proc = subprocess.run(
            [*TP, "install", "--root", str(root)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    assert proc.returncode == 9, proc.stderr
    assert (
        proc.stderr.startswith("Error: another tproxy-firewalld run holds")
        and proc.stderr.count("\n") == 1
    )


HOSTILE = {
    "malformed": b"<direct><rule",
    "unknown-element": b'<?xml version="1.0"?>\n<direct><zone/></direct>\n',
    "unknown-attribute": b'<direct><chain ipv="ipv4" table="nat" chain="X" owner="me"/></direct>',
    "xxe": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><direct>&x;</direct>',
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><direct><passthrough ipv="ipv4">&c;</passthrough></direct>',
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_direct_xml_is_refused_and_nothing_written(tmp_path: Path, data: bytes) -> None:
    root = image_root(tmp_path)
    path = root / "etc/firewalld/direct.xml"
    path.write_bytes(data)
    proc = run_tp("install", "--root", str(root))
    assert (
        proc.returncode == 3 and proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1
    ), proc.stderr
    assert "root:" not in proc.stderr and "aaaaaaaaaaaaaaaaaaaa" not in proc.stderr, (
        "nothing expanded"
    )
    assert path.read_bytes() == data and not path.with_name("direct.xml.old").exists()


def test_huge_symlinked_and_special_files_are_refused(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    path = root / "etc/firewalld/direct.xml"
    real = tmp_path / "elsewhere.xml"
    real.write_bytes(render_direct_xml(FOREIGN))
    path.unlink()
    path.symlink_to(real)
    proc = run_tp("install", "--root", str(root))
    # in an image root an absolute symlink leads into the image, as in a chroot (issue 17.6):
    # the host's file is neither read nor written; the image's own target is written
    assert proc.returncode == 0, proc.stderr
    assert path.is_symlink() and real.read_bytes() == render_direct_xml(FOREIGN)
    assert b"KUMA_MESH_OUTBOUND" in (root / str(real).lstrip("/")).read_bytes()
    path.unlink()
    os.mkfifo(path)
    proc = run_tp("install", "--root", str(root), timeout=20)
    assert proc.returncode == 3 and "not a regular file" in proc.stderr
    path.unlink()
    with open(path, "wb") as f:
        f.write(b"<direct>" + b" " * (17 * 1024 * 1024) + b"</direct>")
    proc = run_tp("install", "--root", str(root))
    assert proc.returncode == 3 and "refused" in proc.stderr
    assert path.stat().st_size > 17 * 1024 * 1024


# --------------------------------------------------------------------------- firewalld

BAD_TEMPLATE = """\
* nat
-N KUMA_MESH_OUTBOUND
-A KUMA_MESH_OUTBOUND -m comment --comment "kuma/mesh/transparent/proxy/x" -j RETURN
-A OUTPUT -m comment --comment "kuma/mesh/transparent/proxy/y" -p tcp --bogus-option -j KUMA_MESH_OUTBOUND
COMMIT
"""


def test_rule_iptables_rejects_changes_nothing(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    template = sb.workdir / "bad.rules.j2"
    template.write_text(BAD_TEMPLATE)
    before = (direct_lines(sb), direct_lines(sb, permanent=True), sb.direct_xml.read_bytes())
    result = tpfw(sb, "install", "--rules-template", str(template), check=False)
    assert result.returncode == 4, result.stderr
    assert (
        "rejects the rendered ipv4 rules" in result.stderr
        and "nothing was changed" in result.stderr
    )
    assert (
        direct_lines(sb),
        direct_lines(sb, permanent=True),
        sb.direct_xml.read_bytes(),
    ) == before
    assert sb.state() == "running"
    sb.reload()
    assert sb.state() == "running"


def test_a_step_firewalld_rejects_midway_is_rolled_back(firewalld_sandbox: Sandbox) -> None:
    """Bypass the iptables pre-check: a rule jumping to a missing chain fails in firewalld."""
    sb = firewalld_sandbox
    add_foreign(sb)
    before = direct_lines(sb), direct_lines(sb, permanent=True)
    out = run_in_sandbox(sb, MIDWAY_REJECTED).stdout
    assert out.startswith("FirewalldRejected 6 ") and "COMMAND_FAILED" in out, out
    assert re.search(r"undid the \d+ change\(s\) already made, nothing was changed\n$", out), out
    assert out.count("\n") == 1, "one line"
    assert (direct_lines(sb), direct_lines(sb, permanent=True)) == before
    assert sb.state() == "running"


def test_firewalld_killed_during_install_then_a_later_run_converges(
    firewalld_sandbox: Sandbox,
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    # A watcher inside the sandbox kills firewalld as soon as some of our rules are live —
    # in the middle of the install — without going through D-Bus itself.
    watcher = subprocess.Popen(
        [*sb._nsenter(), "timeout", "60", "sh", "-c",
         f"until [ $(iptables-save -t nat | grep -c KUMA_MESH_OUTBOUND) -ge 3 ]; do :; done; kill -KILL {sb.firewalld_pid}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    result = tpfw(sb, "install", check=False)
    watcher.communicate(timeout=60)
    assert watcher.returncode == 0, "the watcher killed firewalld"
    assert result.returncode == 8, (result.returncode, result.stderr)
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert (
        "change(s) made before could not be undone" in result.stderr
        and "not changed: the permanent configuration" in result.stderr
    )
    sb.stop_firewalld()  # reap it
    assert sb.start_firewalld() == "running"
    assert ours(direct_lines(sb, permanent=True)) == [], (
        "nothing half-written to the permanent config"
    )
    assert tpfw(sb, "install").returncode == 0
    assert tpfw(sb, "diff", check=False).returncode == 0
    assert "FOREIGN" in " ".join(direct_lines(sb))


def test_non_root_caller_gets_one_clear_line_and_nothing_changes(
    firewalld_sandbox: Sandbox,
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before = direct_lines(sb), sb.direct_xml.read_bytes()
    # uid 65534, as firewalld sees it; the file capabilities only let it read this checkout's
    # Python under /root (mode 0700) and take the lock, so it gets as far as D-Bus.
    caps = "+dac_read_search,+dac_override"
    result = sb.run(
        "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
        "--inh-caps", caps, "--ambient-caps", caps, *TP, "install", check=False,
    )  # fmt: skip
    assert result.returncode == 7, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "not authorised by firewalld" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (direct_lines(sb), sb.direct_xml.read_bytes()) == before


def test_lockout_guard_refuses_to_redirect_sshd(firewalld_sandbox: Sandbox) -> None:
    sb = firewalld_sandbox
    fake = sb.workdir / "sshd.py"
    # A listener whose process name (comm) is "sshd", as `ss -ltnp` would show it.
    fake.write_text(
        "import ctypes, socket, sys\n"
        "ctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0)\n"
        "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('::', 2222)); s.listen(); print('LISTENING', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [*sb._nsenter(), "timeout", "120", sys.executable, str(fake)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("LISTENING")
        assert "sshd" in sb.run("sh", "-c", "cat /proc/*/comm").stdout.split()
        result = tpfw(sb, "install", check=False)
        assert result.returncode == 10, (result.returncode, result.stdout, result.stderr)
        assert "--exclude-inbound-ports 2222" in result.stderr and result.stderr.count("\n") == 1
        assert ours(direct_lines(sb)) == []
        assert tpfw(sb, "install", "--exclude-inbound-ports", "2222").returncode == 0
        tpfw(sb, "uninstall")
        assert tpfw(sb, "install", "--redirect-inbound=false").returncode == 0
        tpfw(sb, "uninstall")
        assert tpfw(sb, "install", "--allow-ssh-redirect").returncode == 0
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)
