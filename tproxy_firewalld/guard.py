"""The lock-out guard: never redirect the port sshd listens on to a proxy that may not run.

Redirecting inbound SSH to an absent proxy locks admins out of the host (this happened to Kuma
users: kumactl no longer excludes port 22 by default). The listening sockets are read from
/proc, as ``ss -ltnp`` does: TCP sockets in LISTEN state, matched by inode to the processes
that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path

from tproxy_firewalld.errors import LockoutRefused
from tproxy_firewalld.settings import Settings

LISTEN = "0A"
SSH_DAEMONS = ("sshd",)


def listening_ports(proc: Path = Path("/proc")) -> dict[int, set[str]]:
    """TCP port -> names of the processes listening on it (IPv4 and IPv6)."""
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
    owners: dict[int, set[str]] = {}
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
                owners.setdefault(inodes[target[8:-1]], set()).add(name)
    return owners


def captured_inbound(settings: Settings, port: int) -> bool:
    """Would inbound TCP to ``port`` be redirected to the proxy? (Source exclusions aside.)"""
    if not settings.redirect_inbound:
        return False
    if settings.inbound_include_ports:
        return port in settings.inbound_include_ports
    return port not in settings.inbound_exclude_ports


def check_lockout(settings: Settings, proc: Path = Path("/proc")) -> None:
    ssh = sorted(
        port
        for port, names in listening_ports(proc).items()
        if names & set(SSH_DAEMONS) and captured_inbound(settings, port)
    )
    if ssh:
        ports = ",".join(str(p) for p in ssh)
        raise LockoutRefused(
            f"inbound redirection would capture port {ports}, where sshd listens: if the proxy "
            f"is not listening on {settings.inbound_port}, SSH to this host stops working. "
            f"Exclude it with --exclude-inbound-ports {ports} (or pass --allow-ssh-redirect if "
            "that is really what you want)"
        )
