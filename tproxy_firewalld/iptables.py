"""The real iptables and the real kernel as the judges of every rule, before anything changes.

firewalld applies direct rules with ``iptables-restore -w -n``; a rule iptables or the kernel
rejects makes a reload fail and leaves firewalld in FAILED state. So the rendered rules are
committed first into a throw-away network namespace (``unshare --net``): iptables parses them,
the kernel loads every match and target module they use and accepts them (``--test`` alone
would miss what only the kernel refuses, such as ``! -d 0.0.0.0/0``), and the namespace, with
everything committed into it, vanishes when the check ends. Nothing on the host is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.errors import RulesRejected
from tproxy_firewalld.ruleset import restore_input

RESTORE = {"ipv4": "iptables-restore", "ipv6": "ip6tables-restore"}
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"

#: the package that holds a match or target module where a distribution splits them off
#: (RHEL 10: xt_owner, xt_comment, xt_conntrack, ... are in kernel-modules-extra)
MODULE_HINT = (
    "the kernel lacks the module for it; on RHEL and Fedora install it with "
    "`dnf install kernel-modules-extra` (then `modprobe {module}` or reboot)"
)
#: What iptables prints when the kernel cannot load an extension's module (libxtables and
#: iptables/nft.c, 1.8.x; the first line is a warning, the failure follows it):
#:   Warning: Extension owner revision 0 not supported, missing kernel module?   (nft and
#:       legacy since 1.8.8, then "line N: RULE_APPEND failed (No such file or directory)" or
#:       "iptables-restore: line N failed")
#:   Warning: Extension conntrack is not supported, missing kernel module?      (no revision
#:       of it is supported)
#:   Couldn't load match `owner':No such file or directory                      (before
#:       1.8.8, e.g. RHEL 8's 1.8.4/1.8.5; also after the warning above)
_MISSING = re.compile(
    r"Extension (?P<warned>[\w-]+) (?:revision \d+ not supported|is not supported), missing kernel module\?"
    r"|Couldn't load (?:match|target) [`'](?P<loaded>[\w-]+)':No such file or directory"
)
#: extensions whose kernel module has another name than xt_<name> (module names keep their
#: case: xt_REDIRECT, xt_CT, xt_LOG)
_MODULES = {
    "tcp": "xt_tcpudp",
    "udp": "xt_tcpudp",
    "state": "xt_state",
    "icmp": "ip_tables",
    "icmp6": "ip6_tables",
}


def module_for(extension: str) -> str:
    """The kernel module that provides an iptables match or target."""
    return _MODULES.get(extension, f"xt_{extension}")


@dataclass(frozen=True)
class CheckResult:
    #: why a family was not checked (binary missing, not root)
    skipped: tuple[str, ...]


def find_restore(ipv: str) -> str | None:
    name = RESTORE[ipv]
    return shutil.which(name) or shutil.which(name, path=SEARCH_PATH)


def _unshare() -> str | None:
    return shutil.which("unshare") or shutil.which("unshare", path=SEARCH_PATH)


def check_rules(config: DirectConfig) -> CheckResult:
    """Commit ``config``'s rules into a throw-away network namespace, per family.

    Raises RulesRejected naming the first problem, with a hint when a kernel module is
    missing. Skipped (with the reason) without root or without the binaries.
    """
    skipped: list[str] = []
    unshare = _unshare()
    for ipv in ("ipv4", "ipv6"):
        if not any(r.ipv == ipv for r in config.rules):
            continue
        binary = find_restore(ipv)
        if binary is None:
            skipped.append(f"{RESTORE[ipv]} not found; {ipv} rules not checked")
            continue
        if os.geteuid() != 0 or unshare is None:
            skipped.append(f"checking the {ipv} rules needs root and unshare; not checked")
            continue
        text = restore_input(config, ipv)
        try:
            proc = subprocess.run(
                [unshare, "--net", "--", binary, "--noflush"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RulesRejected(f"{RESTORE[ipv]} could not run: {exc}") from None
        if proc.returncode != 0:
            raise RulesRejected(_explain(ipv, proc.stderr, proc.returncode))
    return CheckResult(tuple(skipped))


def _explain(ipv: str, stderr: str, code: int) -> str:
    reason = " ".join(stderr.split()) or f"exit code {code}"
    missing = _MISSING.search(stderr)
    if missing:
        name = missing.group("warned") or missing.group("loaded")
        return (
            f"the kernel cannot load the {name} extension ({module_for(name)}) the {ipv} rules "
            f"use ({reason}); {MODULE_HINT.format(module=module_for(name))}; nothing was changed"
        )
    return f"{RESTORE[ipv]} rejects the rendered {ipv} rules: {reason}; nothing was changed"
