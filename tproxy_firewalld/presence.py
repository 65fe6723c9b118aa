"""Whether firewalld is starting (or still stopping) on this system, seen without D-Bus.

A bus name without an owner does not mean "no firewalld": between the start of its process and
the moment it takes its name, firewalld may already have read its configuration (firewalld 2.5
loads direct.xml before it claims the name, and never reads it again). A run that went offline
then would write direct.xml behind it. So offline needs two more facts: systemd's unit is not
active or activating (when systemd runs), and no ``firewalld`` process runs in this network
namespace (firewalld started by hand, by a container's init, or by a test harness).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

UNIT = "firewalld.service"
#: exists when systemd is PID 1 (sd_booted())
SYSTEMD_RUN_DIR = "/run/systemd/system"
#: `systemctl is-active` answers that mean the unit's process is (or is about to be) there
BUSY_UNIT_STATES = frozenset({"active", "activating", "reloading", "deactivating", "refreshing"})
PYTHONS = ("python", "python3")


def starting(proc: Path = Path("/proc")) -> Optional[str]:
    """Why firewalld may be starting or stopping (its unit's state, a process), or None when it
    positively is not."""
    unit = unit_state()
    if unit in BUSY_UNIT_STATES:
        return f"{UNIT} is {unit}"
    pid = firewalld_process(proc)
    if pid is not None:
        return f"a firewalld process (pid {pid}) is running"
    return None


def unit_state() -> Optional[str]:
    """``systemctl is-active firewalld.service`` when systemd runs this system, else None."""
    if not os.path.isdir(SYSTEMD_RUN_DIR):
        return None  # systemd is not PID 1 (a container, a chroot, a test sandbox)
    systemctl = shutil.which("systemctl") or shutil.which("systemctl", path="/usr/bin:/bin")
    if systemctl is None:
        return None
    try:
        proc = subprocess.run(
            [systemctl, "is-active", UNIT],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def firewalld_process(proc: Path = Path("/proc")) -> Optional[int]:
    """The pid of a firewalld process in this network namespace (any, if that cannot be told)."""
    own_net = _net_namespace(proc / "self")
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = (Path(entry.path) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not is_firewalld(argv):
            continue
        net = _net_namespace(Path(entry.path))
        if own_net is not None and net is not None and net != own_net:
            continue  # another network namespace's firewall (a container's)
        return int(entry.name)
    return None


def is_firewalld(argv: list[bytes]) -> bool:
    """``/usr/sbin/firewalld ...`` or ``python3 [-options] /usr/sbin/firewalld ...``."""
    words = [os.path.basename(word).decode(errors="replace") for word in argv if word]
    if not words:
        return False
    if words[0] == "firewalld":
        return True
    if words[0].startswith(PYTHONS):
        script = next((w for w in words[1:] if not w.startswith("-")), None)
        return script == "firewalld"
    return False


def _net_namespace(pid_dir: Path) -> Optional[str]:
    try:
        return os.readlink(pid_dir / "ns" / "net")
    except OSError:
        return None
