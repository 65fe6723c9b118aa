"""The host outside firewalld: addresses on lo (Kuma's IPv6 rules need ``::6/128`` there).

Reading is a look at ``/proc/net/if_inet6`` (no process started); changing runs ``ip``.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

from tproxy_firewalld.errors import FileError, NotPermitted, TproxyError

IF_INET6 = Path("/proc/net/if_inet6")
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def ipv6_available() -> bool:
    return IF_INET6.exists()


def has_address(iface: str, address: str) -> bool:
    """Whether the IPv6 ``address`` (``::6/128``) is on ``iface``."""
    net = ipaddress.ip_interface(address)
    wanted = (net.ip.packed.hex(), net.network.prefixlen)
    try:
        lines = IF_INET6.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5] == iface and (fields[0], int(fields[2], 16)) == wanted:
            return True
    return False


def _ip(*args: str) -> None:
    ip = shutil.which("ip") or shutil.which("ip", path=SEARCH_PATH)
    if ip is None:
        raise FileError(
            "the ip command (iproute2) is not installed; it is needed for lo's addresses"
        )
    try:
        proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FileError(f"`ip {' '.join(args)}` could not run: {exc}") from None
    if proc.returncode != 0:
        reason = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
        error: type[TproxyError] = NotPermitted if "not permitted" in reason.lower() else FileError
        raise error(f"`ip {' '.join(args)}` failed: {reason}")


def add_address(iface: str, address: str) -> None:
    _ip("-6", "addr", "add", address, "dev", iface)


def remove_address(iface: str, address: str) -> None:
    _ip("-6", "addr", "del", address, "dev", iface)
