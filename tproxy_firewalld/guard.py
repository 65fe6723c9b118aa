"""The lock-out guard: never redirect the port an SSH daemon listens on to a proxy that may not run.

Redirecting inbound SSH to an absent proxy locks admins out of the host (this happened to Kuma
users: kumactl no longer excludes port 22 by default). The listening sockets are read from
/proc, as ``ss -ltnp`` does: TCP sockets in LISTEN state, matched by inode to the processes
that hold them. Guarded: every port sshd or dropbear listens on; every port systemd holds for
a socket-activated SSH unit (``ssh.socket``, ``sshd.socket``, ``dropbear.socket``, their
``ListenStream=``); and port 22 whenever anything at all listens on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from tproxy_firewalld.errors import LockoutRefused
from tproxy_firewalld.kuma import KumaSettings

LISTEN = "0A"
SSH_DAEMONS = frozenset({"sshd", "dropbear"})
SSH_PORT = 22
SOCKET_UNITS = ("ssh.socket", "sshd.socket", "dropbear.socket")
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)


def listening_ports(proc: Path = Path("/proc")) -> dict[int, set[str]]:
    """TCP port -> names of the processes listening on it (IPv4 and IPv6); a port whose
    holder cannot be seen maps to an empty set."""
    inodes: dict[str, int] = {}
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN:
                inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    owners: dict[int, set[str]] = {port: set() for port in inodes.values()}
    for pid in (p for p in os.listdir(proc) if p.isdigit()):
        try:
            fds = os.listdir(proc / pid / "fd")
            name = (proc / pid / "comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(proc / pid / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners[inodes[target[8:-1]]].add(name)
    return owners


def ssh_socket_ports(unit_dirs: Iterable[str] = UNIT_DIRS) -> set[int]:
    """The ports of socket-activated SSH units (``ListenStream=22``, ``=[::]:2222``, ...)."""
    ports: set[int] = set()
    for directory in unit_dirs:
        for unit in SOCKET_UNITS:
            for path in [
                Path(directory) / unit,
                *sorted(Path(directory, unit + ".d").glob("*.conf")),
            ]:
                try:
                    text = path.read_text()
                except OSError:
                    continue
                for value in re.findall(r"^\s*ListenStream\s*=\s*(\S+)", text, re.M):
                    port = value.rsplit(":", 1)[-1]
                    if port.isdigit():
                        ports.add(int(port))
    return ports


def captured_inbound(settings: KumaSettings, port: int) -> bool:
    """Would inbound TCP to ``port`` be redirected to the proxy? (Source exclusions aside.)"""
    if not settings.redirect_inbound:
        return False
    if settings.include_inbound_ports:
        return port in settings.include_inbound_ports
    return port not in settings.exclude_inbound_ports


def ssh_ports(proc: Path = Path("/proc"), unit_dirs: Iterable[str] = UNIT_DIRS) -> dict[int, str]:
    """Ports an SSH daemon listens on -> who holds them."""
    socket_ports = None
    found: dict[int, str] = {}
    for port, names in listening_ports(proc).items():
        if names & SSH_DAEMONS:
            found[port] = "/".join(sorted(names & SSH_DAEMONS))
        elif port == SSH_PORT:
            found[port] = "/".join(sorted(names)) or "a process"
        elif "systemd" in names:
            if socket_ports is None:
                socket_ports = ssh_socket_ports(unit_dirs)
            if port in socket_ports:
                found[port] = "systemd (socket-activated SSH)"
    return found


def check_lockout(
    settings: KumaSettings, proc: Path = Path("/proc"), unit_dirs: Iterable[str] = UNIT_DIRS
) -> None:
    guarded = {
        p: who for p, who in ssh_ports(proc, unit_dirs).items() if captured_inbound(settings, p)
    }
    if guarded:
        ports = ",".join(str(p) for p in sorted(guarded))
        holders = ", ".join(f"{p} ({guarded[p]})" for p in sorted(guarded))
        raise LockoutRefused(
            f"inbound redirection would capture port {holders}, where SSH listens: if the proxy "
            f"is not listening on {settings.redirect_inbound_port}, SSH to this host stops working. "
            f"Exclude it from inbound redirection (--exclude-inbound-ports {ports}, the setting "
            "exclude_inbound_ports), or allow it if that is really what you want "
            "(--allow-ssh-redirect, allow_ssh_redirect)"
        )
