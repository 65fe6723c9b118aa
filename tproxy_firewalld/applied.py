"""What firewalld has applied of firewalld.conf: read from the kernel, not from firewalld.

firewalld's config properties (what :mod:`fwconf` reads live) are firewalld.conf as firewalld
holds it in memory, and ``Set`` changes them at once; firewalld applies firewalld.conf only
when it starts or reloads. So after a ``Set`` without the reload (a run killed between the
two, or anybody's ``Set``) the properties say one thing and the kernel still holds the rules of
the other. The kernel is the judge of what is in force (seen in the sandbox, firewalld 1.3.3
and 2.5.2, both backends):

- ``RFC3964_IPv4=yes``: ``ip6 daddr { ::/96, ... } reject`` in ``table inet firewalld``
  (nftables backend); ``-A RFC3964_IPv4 -d ::/96 -j REJECT`` in ip6tables' filter table
  (iptables backend). Without it, neither.
- ``StrictForwardPorts`` (>= 2.3): ``ct status dnat jump filter_INPUT_dnat`` when yes,
  ``ct status dnat accept`` when no (nftables); ``--ctstate DNAT -j INPUT_dnat`` when yes,
  ``--ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT`` when no (iptables).

A setting whose state the kernel does not show (no nft or ip6tables-save, not root, firewalld's
ruleset not found) is left out: the caller then takes the properties for what is applied.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

from tproxy_firewalld.fwconf import KNOBS, ConfView, is_on

SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"

_RFC3964_NFT = re.compile(r"ip6 daddr .*::/96\b.*\breject\b")
_RFC3964_IPT = re.compile(r"^-A \S+ -d ::/96 .*-j REJECT\b", re.M)
_SFP_ON_IPT = re.compile(r"^-A INPUT .*--ctstate DNAT -j INPUT_dnat\b", re.M)
_SFP_OFF_IPT = re.compile(r"^-A INPUT .*--ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\b", re.M)


def from_nft(text: str) -> dict[str, str]:
    """The settings ``nft list table inet firewalld`` shows applied (nftables backend)."""
    if "chain filter_OUTPUT" not in text:
        return {}  # not firewalld's table (or not all of it)
    out = {"RFC3964_IPv4": "yes" if _RFC3964_NFT.search(text) else "no"}
    if "ct status dnat jump filter_INPUT_dnat" in text:
        out["StrictForwardPorts"] = "yes"
    elif "ct status dnat accept" in text:
        out["StrictForwardPorts"] = "no"
    return out


def from_iptables(ipv6_filter: str) -> dict[str, str]:
    """The settings ``ip6tables-save -t filter`` shows applied (iptables backend)."""
    out: dict[str, str] = {}
    if _SFP_ON_IPT.search(ipv6_filter):
        out["StrictForwardPorts"] = "yes"
    elif _SFP_OFF_IPT.search(ipv6_filter):
        out["StrictForwardPorts"] = "no"
    else:
        return {}  # firewalld's INPUT rules are not there: nothing to judge by
    out["RFC3964_IPv4"] = "yes" if _RFC3964_IPT.search(ipv6_filter) else "no"
    return out


def _run(argv: list[str]) -> str | None:
    binary = shutil.which(argv[0]) or shutil.which(argv[0], path=SEARCH_PATH)
    if binary is None:
        return None
    try:
        proc = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def read_applied(backend: str, names: Iterable[str]) -> dict[str, str]:
    """name -> "yes"/"no" as the kernel shows it in force, for those of ``names`` it shows."""
    if backend == "iptables":
        text = _run(["ip6tables-save", "-t", "filter"])
        found = from_iptables(text) if text is not None else {}
    else:
        text = _run(["nft", "list", "table", "inet", "firewalld"])
        found = from_nft(text) if text is not None else {}
    wanted = set(names)
    return {k: v for k, v in found.items() if k in wanted}


@dataclass(frozen=True)
class Pending:
    """A setting whose value in firewalld.conf (as firewalld holds it) is not in force yet:
    firewalld applies it at its next reload."""

    name: str
    #: firewalld.conf's value, as firewalld's config properties report it
    value: str
    #: the value in force (the kernel)
    applied: str

    def describe(self) -> str:
        return (
            f"firewalld.conf says {self.name}={self.value}, firewalld has applied "
            f"{self.applied} (reload pending)"
        )

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "value": self.value, "applied": self.applied}


def pending_reloads(
    conf: Optional[ConfView], applied: Mapping[str, str], names: Iterable[str]
) -> tuple[Pending, ...]:
    """Those of ``names`` whose value in force differs from firewalld.conf's, in KNOBS order."""
    if conf is None or conf.error is not None:
        return ()
    wanted = set(names)
    return tuple(
        Pending(k.name, conf.value(k.name), applied[k.name])
        for k in KNOBS
        if k.name in wanted
        and conf.has(k.name)
        and k.name in applied
        and conf.on(k.name) != is_on(applied[k.name], k.default)
    )
