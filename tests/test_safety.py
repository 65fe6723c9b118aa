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
from harness import Sandbox, SandboxFactory
from test_live import add_foreign, direct_lines, file_config, foreign, ours, tpfw

from tproxy_firewalld.directxml import parse_direct_xml, render_direct_xml
from tproxy_firewalld.entries import Chain, DirectConfig, Rule
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.settings import load_settings

FOREIGN = DirectConfig(
    chains=(Chain("ipv4", "filter", "FOREIGN"),),
    rules=(
        Rule("ipv4", "filter", "FOREIGN", 0, ("-j", "RETURN")),
        Rule("ipv6", "nat", "OUTPUT", 0, ("-p", "udp", "--dport", "5353", "-j", "RETURN")),
    ),
)
TP = [sys.executable, "-m", "tproxy_firewalld"]


def image_root(tmp_path: Path, content: DirectConfig = FOREIGN) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "firewalld").mkdir(parents=True)
    (root / "etc" / "firewalld" / "direct.xml").write_bytes(render_direct_xml(content))
    return root


def run_tp(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TP, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ours_for(port: int) -> DirectConfig:
    return build_ruleset(
        load_settings(flags={"--kuma-dp-user": "5678", "--redirect-outbound-port": str(port)})
    )


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
    root = tmp_path / "root"
    assert run_tp("install", "--root", str(root)).returncode == 0
    info = os.stat(root / "etc/firewalld/direct.xml")
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o644, 0, 0)


def _holds(config: DirectConfig, candidates: list[DirectConfig]) -> bool:
    return any(config.ours().entries() == c.entries() for c in candidates)


def test_kill_9_at_any_moment_leaves_old_or_new_file(tmp_path: Path) -> None:
    """100 install/uninstall runs killed at random points; after each the file is whole."""
    root = image_root(tmp_path)
    path = root / "etc/firewalld/direct.xml"
    shutil.copytree(
        "/etc/firewalld",
        root / "check",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("direct.xml*"),
    )
    variants = [DirectConfig(), ours_for(15001), ours_for(16001)]
    durations: list[float] = []
    checked: dict[bytes, bool] = {}
    rng = random.Random(4)
    kills = runs = 0
    while kills < 100:
        runs += 1
        assert runs < 400, f"only {kills} of {runs} runs could be killed mid-way"
        command = rng.choice(
            [["install", "--redirect-outbound-port", "16001"], ["install"], ["uninstall"]]
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [*TP, *command, "--root", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if len(durations) < 3:  # learn how long a whole run takes here
            proc.wait(timeout=60)
            durations.append(time.monotonic() - started)
        else:
            # Spread the kills over the whole run, weighted towards its end (the write).
            typical = sorted(durations)[len(durations) // 2]
            time.sleep(rng.uniform(0.3, 1.0) * typical)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            else:
                durations.append(time.monotonic() - started)
            proc.wait(timeout=30)
        i = runs
        data = path.read_bytes()
        config = parse_direct_xml(data)  # parses: never torn
        assert config.foreign() == FOREIGN, f"run {i}: foreign entries intact"
        assert _holds(config, variants), f"run {i}: a complete set of ours (old or new)"
        if data not in checked:
            # firewalld's own check of the whole configuration, once per distinct content
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
    print(
        f"kill -9: {kills} runs killed mid-way ({runs} runs); {len(checked)} distinct files, all valid"
    )


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
    assert config.foreign() == FOREIGN
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
    from tproxy_firewalld.files import locked

    root = image_root(tmp_path)
    with locked(root / "etc/firewalld"):
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
    assert proc.returncode == 3 and "symbolic link" in proc.stderr
    assert path.is_symlink() and real.read_bytes() == render_direct_xml(FOREIGN)
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
    script = f"""
import asyncio, sys
from tproxy_firewalld.firewalld import Firewalld
from tproxy_firewalld.operations import apply_plan
from tproxy_firewalld.plan import make_plan
from tproxy_firewalld.entries import DirectConfig, Rule
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.settings import load_settings
from tproxy_firewalld.errors import TproxyError
async def main():
    fw = await Firewalld.connect()
    good = build_ruleset(load_settings(flags={{"--kuma-dp-user": "5678"}}))
    bad = Rule("ipv4", "nat", "OUTPUT", 7, ("-m", "comment", "--comment", "kuma/mesh/transparent/proxy/z", "-j", "KUMA_MESH_MISSING"))
    desired = DirectConfig(good.chains, good.rules + (bad,))
    plan = make_plan(desired, await fw.runtime(), await fw.permanent())
    try:
        await apply_plan(fw, plan)
    except TproxyError as exc:
        print(type(exc).__name__, exc.exit_code, exc)
        return
    print("applied")
asyncio.run(main())
"""
    out = sb.run(sys.executable, "-c", script).stdout
    assert out.startswith("FirewalldRejected 6 ") and "COMMAND_FAILED" in out, out
    assert re.search(
        r"undid the \d+ runtime change\(s\) already made, nothing was changed\n$", out
    ), out
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
        "undoing the" in result.stderr
        and "The permanent configuration was not changed" in result.stderr
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
