"""Kuma's entries that carry no mark: what kumactl's ``--store-firewalld`` of every release
left in direct.xml, and the comment-less rules of Kuma 2.7 that tproxy-firewalld installs.

Every entry is recognised **exactly**: token for token (option spellings normalised, as
kumactl's ``--verbose`` writes them long), ipv, table, chain and priority as written, against
what each release would have written for the recorded, the given or the default settings —
never by a pattern. Entries that only look like Kuma's are *suspected*: listed with the reason,
removed only on request.

What kumactl's translator wrote (Kuma's pkg/transparentproxy/firewalld, every release since
1.2.0): the dry-run's iptables-restore text, ``-N`` as ``<chain ipv="ipv4">``, ``-A`` as
``<rule ipv="ipv4" priority="3">`` with the rest of the line verbatim; every table and both
families into ipv4; any ``-I`` line fails the whole run (``unsupported iptables mode [I]``), so
only configurations without inserts were ever stored; a real (not dry) install stored nothing.
The generations of what the dry-run printed (Kuma's source, see the README):

- Kuma 1.2.0 - 2.1.x default engine (Istio-derived; 2.2 - 2.4 behind
  ``--use-transparent-proxy-engine-v1``): chains MESH_INBOUND, MESH_REDIRECT, MESH_IN_REDIRECT,
  MESH_OUTPUT; IPv4 and (on a host with IPv6) IPv6 rules; uid *and gid* owner rules; port 22
  always excluded; IPv6 inbound port 15010. DNS used inserts. The translator's own test data
  has the same layout named KUMA_INBOUND, KUMA_REDIRECT, KUMA_IN_REDIRECT, KUMA_OUTPUT (no
  release is known to print those; they are recognised the same way).
- kuma-net engine (1.8.x with kuma-net v0.4.3, 2.0.0 - 2.0.7 with v0.8.6, behind
  ``--experimental-transparent-proxy-engine``): KUMA_MESH_* chains, and the DNS rules
  *appended* to nat OUTPUT without any mark (``-p udp --dport 53 -m owner --uid-owner U -j
  RETURN``, ``-p udp --dport 53 -j REDIRECT --to-ports P``), plus the raw-table conntrack zone
  rules; the dry-run passed no nameservers. One family (IPv6 on a host with IPv6).
- 2.0.8 - 2.8 (inserts for DNS and the rest; no comments) and 2.9+ (comments when the comment
  module was there and ``--disable-comments`` was not given): only configurations without
  inserts, whose entries are KUMA_MESH_* or jump into them — except mangle's
  ``-m conntrack --ctstate INVALID -j DROP`` (``--drop-invalid-packets``) without a comment.
"""

from __future__ import annotations

import dataclasses
import pwd
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Optional

from tproxy_firewalld.entries import (
    Chain,
    DirectConfig,
    Entry,
    Recognition,
    Rule,
    Suspect,
    jump_target,
    posix_split,
)
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import UNMARKED_RELEASES, KumaSettings, Profile
from tproxy_firewalld.ruleset import build_ruleset, render_restore

#: kumactl's translator: always ipv4, always this priority (defaultRulenum)
STORED_IPV = "ipv4"
STORED_PRIORITY = 3
#: chain-name schemes of the Istio-derived engine: the releases', the translator test data's
ISTIO_SCHEMES = ("MESH_", "KUMA_")
ISTIO_CHAINS = ("INBOUND", "REDIRECT", "IN_REDIRECT", "OUTPUT")
ISTIO_CHAIN_NAMES = frozenset(p + c for p in ISTIO_SCHEMES for c in ISTIO_CHAINS)
#: the Istio engine's defaults that kumactl never changed
ISTIO_TUNNEL_PORT = 15008
ISTIO_INBOUND_PORT_V6 = 15010
ISTIO_SSH_PORT = 22

#: iptables' long option spellings (kumactl --verbose) and their short forms
LONG_OPTIONS = {
    "--protocol": "-p",
    "--source": "-s",
    "--src": "-s",
    "--destination": "-d",
    "--dst": "-d",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--jump": "-j",
    "--goto": "-g",
    "--match": "-m",
    "--destination-port": "--dport",
    "--source-port": "--sport",
    "--destination-ports": "--dports",
    "--source-ports": "--sports",
    "--to-port": "--to-ports",
}


def normalise(args: Iterable[str]) -> tuple[str, ...]:
    """The tokens with iptables' long option spellings replaced by the short ones."""
    return tuple(LONG_OPTIONS.get(a, a) for a in args)


def key(entry: Entry) -> Entry:
    """An entry as it is compared: option spellings normalised."""
    if isinstance(entry, Rule):
        return dataclasses.replace(entry, args=normalise(entry.args))
    return entry


# --------------------------------------------------------------------------- kumactl's translator


def stored(texts: Sequence[str]) -> Optional[frozenset[Entry]]:
    """What kumactl's ``--store-firewalld`` wrote for dry-run restore texts (each family it
    printed): every ``-N``/``-A`` as ipv4, priority 3. None when a line inserts (the translator
    then fails and writes nothing)."""
    out: set[Entry] = set()
    for text in texts:
        table = ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line[1:].strip()
                continue
            if line == "COMMIT":
                continue
            tokens = posix_split(line)  # as ruleset.parse_restore reads the same text
            mode = LONG_OPTIONS.get(tokens[0], tokens[0])
            if mode in ("-N", "--new-chain"):
                out.add(Chain(STORED_IPV, table, tokens[1]))
            elif mode in ("-A", "--append"):
                out.add(Rule(STORED_IPV, table, tokens[1], STORED_PRIORITY, tuple(tokens[2:])))
            else:
                return None  # unsupported iptables mode [I]
    return frozenset(out)


def without_comments(text: str) -> str:
    """The dry-run text of a host without the comment module, or with --disable-comments
    (as Kuma's own test strips them)."""
    return re.sub(r'-m comment --comment "(?:[^"\\]|\\.)*" ', "", text)


# --------------------------------------------------------------------------- the generations


def _gid(uid: int) -> int:
    """kumactl 1.x's findUidGid: the user's group, or the uid itself for an unknown uid."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def istio_engine(s: KumaSettings, prefix: str, ipv6: bool, inbound_v6: int) -> frozenset[Entry]:
    """Kuma 1.2 - 2.4's Istio-derived engine (pkg/transparentproxy/istio/tools/istio-iptables
    run.go, unchanged in what kumactl reaches from 1.2.0 to 2.4.x), without DNS (which
    inserts): its dry-run text as the translator stored it."""
    inbound, redirect, in_redirect, output = (prefix + c for c in ISTIO_CHAINS)
    uid, gid = str(s.uid), str(_gid(s.uid))
    families = [("127.0.0.6/32", "127.0.0.1/32", s.redirect_inbound_port)]
    if ipv6:
        families.append(("::6/128", "::1/128", inbound_v6))
    rules: list[tuple[str, ...]] = []
    for passthrough, localhost, port in families:
        rules += [
            (inbound, "-p", "tcp", "--dport", str(ISTIO_TUNNEL_PORT), "-j", "RETURN"),
            (redirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(s.redirect_outbound_port)),
            (in_redirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(port)),
        ]
        if s.redirect_inbound:
            rules += [
                ("PREROUTING", "-p", "tcp", "-j", inbound),
                (inbound, "-p", "tcp", "--dport", str(ISTIO_SSH_PORT), "-j", "RETURN"),
                *(
                    (inbound, "-p", "tcp", "--dport", str(p), "-j", "RETURN")
                    for p in s.exclude_inbound_ports
                ),
                (inbound, "-p", "tcp", "-j", in_redirect),
            ]
        rules += [
            ("OUTPUT", "-p", "tcp", "-j", output),
            *(
                (output, "-p", "tcp", "--dport", str(p), "-j", "RETURN")
                for p in s.exclude_outbound_ports
            ),
            (output, "-o", "lo", "-s", passthrough, "-j", "RETURN"),
        ]
        for owner, who in (("--uid-owner", uid), ("--gid-owner", gid)):
            rules += [
                (
                    output,
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    localhost,
                    "-m",
                    "owner",
                    owner,
                    who,
                    "-j",
                    in_redirect,
                ),
                (output, "-o", "lo", "-m", "owner", "!", owner, who, "-j", "RETURN"),
                (output, "-m", "owner", owner, who, "-j", "RETURN"),
            ]
        rules += [(output, "-d", localhost, "-j", "RETURN"), (output, "-j", redirect)]
    chains = {c for c, *_ in rules if c.startswith(prefix)}
    return frozenset(
        [Chain(STORED_IPV, "nat", c) for c in chains]
        + [Rule(STORED_IPV, "nat", c, STORED_PRIORITY, tuple(a)) for c, *a in rules]
    )


def kuma_net_appended_dns(s: KumaSettings, capture_all: bool, conntrack: bool) -> frozenset[Entry]:
    """Kuma 1.8.x and 2.0.0 - 2.0.7 with --experimental-transparent-proxy-engine (kuma-net
    v0.4.3 / v0.8.6 iptables/builder): the engine Kuma 2.7 still has, except that it
    *appended* the DNS rules to nat OUTPUT (so they could be stored), for --redirect-dns or
    (``capture_all``) --redirect-all-dns-traffic with the settings' kuma-dp UID and DNS port;
    the dry-run passed no nameservers. One family per run (IPv6 on a host with IPv6)."""
    r = _as_release(
        s,
        "2.7",
        redirect_dns=not capture_all,
        redirect_all_dns_traffic=capture_all,
        skip_dns_conntrack_zone_split=not conntrack,
        dns_nameservers=(),
        exclude_outbound_ports_for_uids=(),  # 2.0.x appended these in another form
        exclude_outbound_tcp_ports_for_uids=(),
        exclude_outbound_udp_ports_for_uids=(),
        vnet=(),
        redirect_inbound_port_v6=15010,  # kumactl 1.8 - 2.0's default: the IPv4 port
    )
    if r is None:
        return frozenset()
    out: set[Entry] = set()
    for ipv in r.ipvs:
        text = render_restore(r, ipv)
        appended = "\n".join(
            "-A " + " ".join(line.split(" ")[1:2] + line.split(" ")[3:])
            if line.startswith("-I ")
            else line
            for line in text.splitlines()
        )
        run = stored([appended])
        if run is not None:
            out |= run
    return frozenset(out)


def _storable(s: KumaSettings) -> Optional[KumaSettings]:
    """The settings without what makes kumactl insert (its translator fails on -I): DNS,
    UID and IP exclusions, vnet, logs, insert-instead-of-append."""
    try:
        return s.replace(
            redirect_dns=False,
            redirect_all_dns_traffic=False,
            exclude_outbound_ports_for_uids=(),
            exclude_outbound_tcp_ports_for_uids=(),
            exclude_outbound_udp_ports_for_uids=(),
            exclude_outbound_ips=(),
            vnet=(),
            iptables_logs=False,
            redirect_inbound_insert_instead_of_append=False,
            redirect_outbound_insert_instead_of_append=False,
            dns_nameservers=(),
        )
    except SettingsError:
        return None


def _as_release(s: KumaSettings, release: str, **changes: object) -> Optional[KumaSettings]:
    """The settings as that release takes them: what it has no setting for could not have
    been given to it, so it is left at the default."""
    for f in s.fields():
        if not f.ignored and not f.derived and not s.has_setting(f, release):
            changes.setdefault(f.name, f.default)
    try:
        return s.replace(kuma_version=release, **changes)
    except SettingsError:
        return None


@lru_cache(maxsize=64)
def kumactl_runs(s: KumaSettings) -> frozenset[Entry]:
    """Every entry kumactl's --store-firewalld of any release wrote for these settings, in any
    environment kumactl varied on (IPv6 on the host or not, the comment and conntrack modules
    there or not)."""
    out: set[Entry] = set()
    for prefix in ISTIO_SCHEMES:
        for ipv6 in (False, True):
            for v6_port in {ISTIO_INBOUND_PORT_V6, s.redirect_inbound_port}:
                out |= istio_engine(s, prefix, ipv6, v6_port)
    # DNS is a switch of kumactl's command line; the values it writes (UID, port) are the
    # settings': both DNS modes count, whether or not these settings redirect DNS now
    for capture_all in (False, True):
        for conntrack in (False, True):
            out |= kuma_net_appended_dns(s, capture_all, conntrack)
    base = _storable(s)
    if base is None:
        return frozenset(out)
    for release in ("2.7", "2.11", "2.14"):  # 2.0.8-2.8; 2.9-2.13; 2.14+
        r = _as_release(base, release)
        if r is None:
            continue
        texts = [render_restore(r, ipv) for ipv in r.ipvs]
        # 2.7 (and kuma-net) dry-runs print one family; 2.9+ both
        variants = [[t] for t in texts] if release == "2.7" else [texts]
        for group in variants:
            for comments in (True, False):
                run = stored(group if comments else [without_comments(t) for t in group])
                if run is not None:
                    out |= run
    return frozenset(out)


_RENDERED: dict[tuple[KumaSettings, str], frozenset[Entry]] = {}


def ours_rendered(s: KumaSettings, profile: Profile, releases: Iterable[str]) -> frozenset[Entry]:
    """The entries our own installs of these releases render for these settings."""
    out: set[Entry] = set()
    for release in releases:
        r = _as_release(s, release)
        if r is None:
            continue
        cache = (r, profile.name)
        if cache not in _RENDERED:
            if len(_RENDERED) > 64:
                _RENDERED.clear()
            config = build_ruleset(r, profile)
            _RENDERED[cache] = frozenset((*config.chains, *config.rules))
        out |= _RENDERED[cache]
    return frozenset(out)


def _stored_like(e: Entry) -> bool:
    """Whether an entry could be kumactl's --store-firewalld at all: it wrote every entry as
    ipv4, every rule at priority 3."""
    if isinstance(e, Chain):
        return e.ipv == STORED_IPV
    return isinstance(e, Rule) and e.ipv == STORED_IPV and e.priority == STORED_PRIORITY


_2_7_TOKENS = frozenset({"53", "CT", "multiport", "REDIRECT"})


def _unmarked_2_7_like(e: Entry) -> bool:
    """Whether an entry could be one of Kuma 2.7's unmarked rules: DNS, conntrack, UID
    exclusions and vnet redirects in built-in nat and raw chains."""
    return (
        isinstance(e, Rule)
        and e.table in ("nat", "raw")
        and e.chain in ("PREROUTING", "OUTPUT")
        and not _2_7_TOKENS.isdisjoint(e.args)
    )


# --------------------------------------------------------------------------- recognition


def candidates(given: Sequence[KumaSettings]) -> list[KumaSettings]:
    """The settings to recognise against: the recorded and given ones, and the defaults."""
    out = list(dict.fromkeys(given))
    try:
        default = KumaSettings()
    except SettingsError:
        return out
    return out if default in out else [*out, default]


def recognise(
    configs: Sequence[DirectConfig], given: Sequence[KumaSettings], profile: Profile
) -> Recognition:
    """Kuma's unmarked entries among ``configs`` (runtime, permanent, direct.xml), for the
    ``given`` settings (the recorded ones, those given now) and the defaults."""
    owner = profile.owner
    observed: set[Entry] = set()
    for c in configs:
        observed.update(c.chains)
        observed.update(c.rules)
    unmarked = {e for e in observed if not owner.marks(e)}
    settings = candidates(given)

    # Only what could match is rendered: the common case (marked entries, other tools' rules
    # elsewhere) renders nothing.
    ours_keys: set[Entry] = set()
    if any(_unmarked_2_7_like(e) for e in unmarked):
        # our own installs of a release without comments: exactly what the recorded (or given)
        # settings render, never the defaults: an unmarked rule somebody else wrote that happens
        # to equal a default rendering must not be taken for ours (it is suspected instead)
        ours_keys = {
            key(e)
            for s in given
            for e in ours_rendered(s, profile, sorted(UNMARKED_RELEASES))
            if not owner.marks(e)
        }
    kumactl_keys: set[Entry] = set()
    installed: set[Entry] = set()
    stored_like = [e for e in observed if _stored_like(e)]
    if stored_like:
        # entries we install for the recorded or given settings are never labelled kumactl's
        installed = {key(e) for s in given for e in ours_rendered(s, profile, [s.kuma_version])}
    if any(key(e) not in installed for e in stored_like):
        # kumactl's runs are rendered only when something could be one of them: an install in
        # step with its record (the common case) renders none (about 40 ms)
        kumactl_keys = {key(e) for s in settings for e in kumactl_runs(s)}
    # kumactl's, unless the recorded or given settings install it: such an entry is both
    left = {e for e in observed if key(e) in kumactl_keys and key(e) not in installed}
    ours = {e for e in unmarked if key(e) in ours_keys} - left
    suspected: dict[Entry, str] = {}
    # A chain of an old scheme goes only with everything in it and every jump into it, and
    # with the chains it jumps to or is jumped from: each entry of such a group must be
    # exactly kumactl's, or the whole group is only suspected (a chain must never go while a
    # kept rule is in it or jumps to it).
    old = {
        (c.ipv, c.table, c.chain): c for c in left if isinstance(c, Chain) and not owner.marks(c)
    }
    members: dict[tuple[str, str, str], list[Entry]] = {k: [c] for k, c in old.items()}
    group = {k: k for k in old}

    def find(k: tuple[str, str, str]) -> tuple[str, str, str]:
        while group[k] != k:
            k = group[k]
        return k

    for e in observed:
        if not isinstance(e, Rule):
            continue
        inside = (e.ipv, e.table, e.chain)
        target = jump_target(e.args)
        to = (e.ipv, e.table, target) if target else None
        for k in (inside, to):
            if k in old:
                members[k].append(e)
        if inside in old and to in old:
            assert to is not None
            group[find(inside)] = find(to)
    strays: dict[tuple[str, str, str], Entry] = {}
    for k, entries in members.items():
        for e in entries:
            if e not in left:
                strays.setdefault(find(k), e)
    for k in old:
        stray = strays.get(find(k))
        if stray is None:
            continue
        reason = (
            f"chain {k[2]} is named as kumactl 1.2-2.4 named its chains, but it (or a chain it "
            f"jumps to or from) holds or is jumped to by an entry kumactl would not have written "
            f"for the known settings: {stray.describe()}"
        )
        for e in members[k]:
            left.discard(e)
            suspected[e] = reason
    uids = sorted({s.uid for s in settings})
    ports = sorted({s.redirect_dns_port for s in settings})
    for e in sorted(unmarked - ours - left, key=str):
        if e in suspected:
            continue
        reason = _suspicion(e, uids, ports)
        if reason:
            suspected[e] = reason
    return Recognition(
        ours=frozenset(ours),
        leftovers=frozenset(left),
        suspected=tuple(
            Suspect(e, r) for e, r in sorted(suspected.items(), key=lambda i: str(i[0]))
        ),
    )


def _suspicion(entry: Entry, uids: list[int], ports: list[int]) -> str:
    """Why an unmarked entry might be Kuma's though it matches nothing exactly ('' if not)."""
    known = (
        f"not what any kumactl release or tproxy-firewalld writes for the recorded, given or "
        f"default settings (kuma-dp UID {', '.join(map(str, uids))}, DNS port "
        f"{', '.join(map(str, ports))})"
    )
    if isinstance(entry, Chain):
        if entry.chain in ISTIO_CHAIN_NAMES and entry.table == "nat":
            return f"chain {entry.chain} is named as kumactl 1.2-2.4 named its chains, but it is {known}"
        return ""
    if not isinstance(entry, Rule):
        return ""
    args = normalise(entry.args)
    pairs = dict(zip(args, args[1:]))
    target = jump_target(args)
    if entry.chain in ISTIO_CHAIN_NAMES or target in ISTIO_CHAIN_NAMES:
        return f"it is in or jumps to {entry.chain if entry.chain in ISTIO_CHAIN_NAMES else target}, named as kumactl 1.2-2.4 named its chains, but {known}"
    dns = "53" in (pairs.get("--dport"), pairs.get("--sport"))
    if entry.table == "nat" and target == "REDIRECT" and dns:
        return f"it redirects DNS (port 53) to port {pairs.get('--to-ports', '?')} as Kuma's DNS rules do, but it is {known}"
    if (
        entry.table == "nat"
        and entry.chain == "OUTPUT"
        and dns
        and "--uid-owner" in pairs
        and target == "RETURN"
    ):
        return f"it returns the DNS of UID {pairs['--uid-owner']} early as Kuma's DNS rule does, but it is {known}"
    if (
        entry.table == "raw"
        and target == "CT"
        and pairs.get("--zone") in ("1", "2")
        and "-p" in pairs
    ):
        return f"it puts DNS into conntrack zone {pairs['--zone']} as Kuma's DNS rules do, but it is {known}"
    if (
        entry.table == "nat"
        and entry.chain == "OUTPUT"
        and target == "RETURN"
        and "--uid-owner" in pairs
        and "multiport" in args
    ):
        return f"it returns traffic of UID {pairs['--uid-owner']} as Kuma's --exclude-outbound-ports-for-uids does, but it is {known}"
    if (
        entry.table == "nat"
        and entry.chain == "PREROUTING"
        and target == "REDIRECT"
        and "-i" in pairs
    ):
        return f"it redirects traffic of interface {pairs['-i']} as Kuma's --vnet does, but it is {known}"
    if (
        entry.table == "mangle"
        and entry.chain == "PREROUTING"
        and args == ("-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        and (entry.ipv, entry.priority) == (STORED_IPV, STORED_PRIORITY)
    ):
        return (
            "it is kumactl's --drop-invalid-packets rule without its comment, at the priority "
            "kumactl stored every rule with, but the recorded and given settings do not drop invalid packets"
        )
    return ""
