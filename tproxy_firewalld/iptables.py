"""The real iptables parser as the judge of every rule, before anything changes.

firewalld applies direct rules with ``iptables-restore -w -n``; a rule iptables rejects makes
a reload fail and leaves firewalld in FAILED state. So the rendered rules go through
``iptables-restore --test`` / ``ip6tables-restore --test`` first: they parse and build the
ruleset without committing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.errors import RulesRejected
from tproxy_firewalld.ruleset import restore_input

RESTORE = {"ipv4": "iptables-restore", "ipv6": "ip6tables-restore"}
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def _isolation() -> list[str]:
    """Run the check in a new, empty network namespace when we can.

    ``--test`` commits nothing, but it still reads the live tables and (legacy iptables)
    takes the xtables lock firewalld uses. In a throw-away namespace the check cannot
    disturb or wait on anything; kernel module support is the same there.
    """
    unshare = shutil.which("unshare") or shutil.which("unshare", path=SEARCH_PATH)
    return [unshare, "--net", "--"] if unshare else []


@dataclass(frozen=True)
class CheckResult:
    checked: tuple[str, ...]
    #: why a family was not checked (binary missing, not root)
    skipped: tuple[str, ...]


def find_restore(ipv: str) -> str | None:
    name = RESTORE[ipv]
    return shutil.which(name) or shutil.which(name, path=SEARCH_PATH)


def check_rules(config: DirectConfig) -> CheckResult:
    checked: list[str] = []
    skipped: list[str] = []
    for ipv in ("ipv4", "ipv6"):
        if not any(r.ipv == ipv for r in config.rules):
            continue
        binary = find_restore(ipv)
        if binary is None:
            skipped.append(f"{RESTORE[ipv]} not found; {ipv} rules not checked")
            continue
        if os.geteuid() != 0:
            skipped.append(f"{RESTORE[ipv]} --test needs root; {ipv} rules not checked")
            continue
        text = restore_input(config, ipv)
        try:
            proc = subprocess.run(
                [*_isolation(), binary, "--test", "--noflush"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RulesRejected(f"{RESTORE[ipv]} --test could not run: {exc}") from None
        if proc.returncode != 0:
            reason = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            raise RulesRejected(
                f"{RESTORE[ipv]} rejects the rendered {ipv} rules: {reason}; nothing was changed"
            )
        checked.append(ipv)
    return CheckResult(tuple(checked), tuple(skipped))
