"""Other tools' iptables state, and when firewalld flushes it (issue 17).

firewalld runs ``-F``, ``-X`` and ``-Z`` on every iptables table (FIREWALLD.md, "iptables
flushes"): before 2.0 on every start, reload and stop; from 2.0 on the nftables backend only
while direct configuration exists, and when the first runtime direct entry is added; on the
iptables backend on every start, reload and stop. Whatever another tool (Docker, CNI,
kube-proxy) keeps in those tables is gone then. :func:`foreign_iptables` reads the kernel's
tables (the live system only); :func:`flush_reason` decides, purely, whether a plan makes
firewalld flush.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
from collections import Counter
from typing import TYPE_CHECKING, Optional

from tproxy_firewalld.entries import BUILT_IN_CHAINS, JUMPS, DirectConfig, Owner
from tproxy_firewalld.fwconf import parse_version

if TYPE_CHECKING:
    from tproxy_firewalld.firewalld import DaemonInfo

#: firewalld's own chains in the iptables tables (iptables backend: zones, policies, the
#: *_direct chains, RFC3964_IPv4 in every version, 2.5's <BUILTIN>_dispatch, and from 2.3 with
#: StrictForwardPorts=yes the <BUILTIN>_dnat chains)
FIREWALLD_CHAIN = re.compile(
    r"(.*_direct|.*_ZONES(_SOURCE)?|.*_POLICIES(_pre|_post)?|(IN|FWD|FWDI|FWDO|PRE|POST|OUT|FWD_IN|FWD_OUT)_.+"
    r"|RFC3964_IPv4|.*_dispatch|(INPUT|FORWARD|OUTPUT)_dnat)$"
)
_BUILTINS = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")
#: firewalld's own rules in the built-in chains on the iptables backend (ipXtables.py's
#: default rules: conntrack accepts, lo, INVALID drops, the final REJECT and their LOGs; the
#: IPv6 rpfilter rules with their neighbour-solicitation and router-advertisement accepts)
_FIREWALLD_BUILTIN_RULE = re.compile(
    r"(-m conntrack --ctstate \S+ (-j (ACCEPT|DROP)|.*-j LOG --log-prefix \"?STATE_INVALID_DROP: \"?)"
    r"|-m conntrack --ctstate DNAT -j (INPUT|FORWARD|OUTPUT)_dnat"
    r"|-[io] lo -j ACCEPT"
    r"|-j REJECT( --reject-with \S+)?"
    r"|.*-j LOG --log-prefix \"?FINAL_REJECT: \"?"
    r"|-m rpfilter( --[a-z]+)* -j (DROP|LOG --log-prefix \"?rpfilter_DROP: \"?)"
    r"|-p ipv6-icmp -m icmp6 --icmpv6-type (134|135) -j ACCEPT)$"
)
#: what iptables-save adds on its own and firewalld's args do not need to say
_IMPLIED_MATCHES = frozenset({"tcp", "udp", "icmp", "icmp6", "sctp", "udplite"})
#: how many of other tools' chains and rules a message names
SHOWN = 12


def _normal(tokens: list[str]) -> tuple[str, ...]:
    """A rule's tokens as iptables-save and firewalld's args both reduce to: without the
    implied ``-m tcp``, host prefixes (/32, /128) dropped, in sorted order."""
    out: list[str] = []
    skip = False
    for i, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        if token in ("-m", "--match") and i + 1 < len(tokens) and tokens[i + 1] in _IMPLIED_MATCHES:
            skip = True
            continue
        out.append(re.sub(r"/(32|128)$", "", token))
    return tuple(sorted(out))


def _expanded(args: tuple[str, ...]) -> list[tuple[str, ...]]:
    """firewalld splits ``-s a,b`` and ``-d a,b`` into one kernel rule per address."""
    choices: list[list[list[str]]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token in ("-s", "--source", "-d", "--destination") and i + 1 < len(args):
            choices.append([[token, value] for value in args[i + 1].split(",")])
            i += 2
        else:
            choices.append([[token]])
            i += 1
    return [_normal([t for part in combo for t in part]) for combo in itertools.product(*choices)]


def _passthrough_rule(args: tuple[str, ...]) -> Optional[tuple[str, str, tuple[str, ...]]]:
    """(table, chain, rule args) of a passthrough that appends or inserts a rule."""
    table, rest, chain = "filter", list(args), None
    if "-t" in rest:
        i = rest.index("-t")
        table = rest[i + 1] if i + 1 < len(rest) else table
        del rest[i : i + 2]
    for flag in ("-A", "--append", "-I", "--insert"):
        if flag in rest:
            i = rest.index(flag)
            if i + 1 >= len(rest):
                return None
            chain = rest[i + 1]
            del rest[i : i + 2]
            if flag in ("-I", "--insert") and i < len(rest) and rest[i].isdigit():
                del rest[i]
            return table, chain, tuple(rest)
    return None


def _passthrough_chain(args: tuple[str, ...]) -> Optional[tuple[str, str]]:
    table, rest = "filter", list(args)
    if "-t" in rest:
        i = rest.index("-t")
        table = rest[i + 1] if i + 1 < len(rest) else table
    for flag in ("-N", "--new-chain"):
        if flag in rest and rest.index(flag) + 1 < len(rest):
            return table, rest[rest.index(flag) + 1]
    return None


def foreign_in_save(
    text: str, ipv: str, runtime: Optional[DirectConfig], owner: Owner, iptables_backend: bool
) -> list[str]:
    """Other tools' chains and rules in one family's ``iptables-save`` output: neither ours
    (our prefixes), nor firewalld's (its chains; its default rules on the iptables backend),
    nor in firewalld's runtime direct configuration (firewalld puts those back after a
    flush). Each as ``ipv4 nat DOCKER`` (a chain) or ``ipv4 nat PREROUTING -m addrtype ...``
    (a rule in a built-in chain; the rules inside a foreign chain go with it)."""
    runtime = runtime or DirectConfig()
    direct_chains = {(c.table, c.chain) for c in runtime.chains if c.ipv == ipv}
    direct_rules: Counter[tuple[str, str, tuple[str, ...]]] = Counter()
    for rule in runtime.rules:
        if rule.ipv == ipv:
            direct_rules.update((rule.table, rule.chain, n) for n in _expanded(rule.args))
    for passthrough in runtime.passthroughs:
        if passthrough.ipv != ipv:
            continue
        added = _passthrough_rule(passthrough.args)
        if added is not None:
            direct_rules.update((added[0], added[1], n) for n in _expanded(added[2]))
        made = _passthrough_chain(passthrough.args)
        if made is not None:
            direct_chains.add(made)
    found: list[str] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name in BUILT_IN_CHAINS.get(table, ()) or name in _BUILTINS:
                continue
            if owner.owns_chain(name) or FIREWALLD_CHAIN.fullmatch(name):
                continue
            if (table, name) not in direct_chains:
                found.append(f"{ipv} {table} {name}")
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            chain, args = tokens[1], tokens[2:]
            if not (chain in BUILT_IN_CHAINS.get(table, ()) or chain in _BUILTINS):
                continue  # inside a chain: ours, firewalld's, or a foreign chain named above
            pairs = list(zip(args, args[1:]))
            if any(
                (flag in JUMPS and (owner.owns_chain(value) or FIREWALLD_CHAIN.fullmatch(value)))
                or (flag == "--comment" and value.startswith(owner.comment_prefix))
                for flag, value in pairs
            ):
                continue
            if iptables_backend and _FIREWALLD_BUILTIN_RULE.fullmatch(" ".join(args)):
                continue
            key = (table, chain, _normal(args))
            if direct_rules[key] > 0:
                direct_rules[key] -= 1
                continue
            found.append(f"{ipv} {table} {line[3:]}")
    return found


def foreign_iptables(
    runtime: Optional[DirectConfig], owner: Owner, iptables_backend: bool
) -> tuple[str, ...]:
    """Other tools' chains and rules in the kernel's iptables tables (both families)."""
    found: list[str] = []
    for ipv, save in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        binary = shutil.which(save) or shutil.which(save, path="/usr/sbin:/sbin")
        if binary is None:
            continue
        try:
            proc = subprocess.run([binary], capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found += foreign_in_save(proc.stdout, ipv, runtime, owner, iptables_backend)
    return tuple(found)


def before_2(daemon: DaemonInfo) -> bool:
    """firewalld < 2.0 (an unknown version counts as older: it flushes the most)."""
    return (parse_version(daemon.version) or (0,)) < (2, 0)


def reload_flushes(daemon: DaemonInfo, direct: bool) -> bool:
    """Whether a start, reload or stop of this firewalld flushes every iptables table:
    always before 2.0 and on the iptables backend, from 2.0 while ``direct`` configuration
    exists."""
    return before_2(daemon) or daemon.backend == "iptables" or direct


def flush_reason(
    daemon: DaemonInfo,
    *,
    direct_before: bool,
    adds: bool,
    reload: tuple[str, ...] = (),
    direct_after: bool = True,
) -> str:
    """Why a run makes firewalld flush every iptables table, or "" when it does not.

    ``direct_before``: firewalld's runtime holds direct entries (anybody's) before the run;
    ``adds``: the run adds runtime direct entries; ``reload``: the settings a reload of the
    run applies; ``direct_after``: direct configuration exists once the run is done."""
    v = daemon.version
    older = before_2(daemon)
    iptables_backend = daemon.backend == "iptables"
    if adds and not reload_flushes(daemon, direct_before):
        return (
            f"firewalld {v} flushes every iptables table when the first direct entry is added "
            "(firewalld >= 2.0), and this run adds it"
        )
    if reload and reload_flushes(daemon, direct_before or direct_after):
        why = (
            "as firewalld < 2.0 does on every reload"
            if older
            else "as the iptables backend does on every reload"
            if iptables_backend
            else "as firewalld >= 2.0 does on a reload while direct configuration exists"
        )
        return (
            f"the reload that applies {', '.join(reload)} makes firewalld {v} flush every "
            f"iptables table ({why})"
        )
    return ""


def shown(foreign: tuple[str, ...]) -> str:
    more = len(foreign) - SHOWN
    return "; ".join(foreign[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


#: how to give consent, in every place a setting can come from
CONSENT = (
    "--allow-iptables-flush (config key allowIptablesFlush, environment "
    "KUMA_TRANSPARENT_PROXY_ALLOW_IPTABLES_FLUSH, Ansible option allow_iptables_flush)"
)
