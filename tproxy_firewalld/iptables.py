"""The real iptables and the real kernel as the judges of every rule, before anything changes.

firewalld applies direct rules with ``iptables-restore -w -n``; a rule iptables or the kernel
rejects makes a reload fail and leaves firewalld in FAILED state. So the rendered rules are
committed first into a throw-away network namespace (``unshare --net``): iptables parses them,
the kernel loads every match and target module they use and accepts them (``--test`` alone
would miss what only the kernel refuses, such as ``! -d 0.0.0.0/0``), and the namespace, with
everything committed into it, vanishes when the check ends. Nothing on the host is touched.
Where no namespace can be made (``unshare`` not permitted: a container, an image build), the
rules are parsed with ``--test`` (nothing committed) and the run says the kernel did not check.
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

#: what iptables says when it may not talk to netfilter at all (no CAP_NET_ADMIN): not the
#: rules' fault
NO_NET_ADMIN = "Permission denied (you must be root)"
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
    missing. Skipped (with the reason) without root or without the binaries. Where no
    namespace can be made, ``iptables-restore --test`` still parses them, with a warning.
    """
    skipped: list[str] = []
    unshare = _unshare()
    #: why no throw-away namespace can be made (found out at the first failure), else None
    no_namespace: str | None = None
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
        if no_namespace is None:
            proc = _run(ipv, [unshare, "--net", "--", binary, "--noflush"], text)
            if proc.returncode == 0:
                continue
            no_namespace = _cannot_unshare(unshare)
            if no_namespace is None:  # the namespace was made: the rules were refused
                raise RulesRejected(_explain(ipv, proc.stderr, proc.returncode))
        # No throw-away namespace here (a container without CAP_SYS_ADMIN, an image build):
        # iptables still parses every rule, without committing; only the kernel's word is lost.
        proc = _run(ipv, [binary, "--test", "--noflush"], text)
        if proc.returncode != 0 and NO_NET_ADMIN in proc.stderr:
            skipped.append(
                f"neither a throw-away network namespace ({no_namespace}) nor {RESTORE[ipv]} "
                f"--test is permitted here; the {ipv} rules were not checked"
            )
            continue
        if proc.returncode != 0:
            raise RulesRejected(_explain(ipv, proc.stderr, proc.returncode))
        skipped.append(
            f"no throw-away network namespace for the kernel's check of the {ipv} rules "
            f"({no_namespace}); checked with {RESTORE[ipv]} --test only"
        )
    return CheckResult(tuple(skipped))


def _run(ipv: str, argv: list[str], text: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, input=text, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RulesRejected(f"{RESTORE[ipv]} could not run: {exc}") from None


def _cannot_unshare(unshare: str) -> str | None:
    """Why no network namespace can be made here (``unshare: unshare failed: Operation not
    permitted``), or None when it can: asked only after a check failed, to tell whose fault."""
    try:
        proc = subprocess.run(
            [unshare, "--net", "--", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare could not run: {exc}"
    if proc.returncode == 0:
        return None
    return " ".join(proc.stderr.split()) or f"unshare --net: exit code {proc.returncode}"


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
