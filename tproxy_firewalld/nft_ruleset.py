"""Kuma's rule set as one native nftables table of ours, for the nftables store.

The decisions are not written twice: the table is translated, rule by rule, from the very
entries the direct store installs (``ruleset.build_ruleset``: Kuma's ``iptables-restore``
input in kumactl's final rule order), so every release and setting the templates know is
known here too, and a form the translator does not know is refused (:class:`NftError`), never
guessed. tests/test_nft_differential.py proves by traffic that the table does what kumactl's
iptables rules do.

**One ``inet`` table**, ``inet tproxy_firewalld_kuma`` (the name marks it as ours; firewalld
only ever deletes its own ``inet firewalld``, ``firewalld_policy_drop`` and
``firewalld_probe``: its ``build_flush_rules``; tests/test_nft_coexistence.py checks it on
0.9.3 - 2.5.2). ``inet`` because one name is one
thing to replace, list and delete atomically, whatever the settings: a rule both families of
kumactl's rules hold alike is written once; one that only one family holds (an address, an
IPv4-only install, Kuma 2.7's IPv6 inbound port) carries ``ip``/``ip6`` address matches or
``meta nfproto``, and the two families' orders are merged so that each family sees exactly
its own chain in kumactl's order.

**Chains**: Kuma's own chains keep their names (``KUMA_MESH_INBOUND``, ...). Each built-in
chain Kuma writes to becomes a base chain named ``<table>_<CHAIN>`` (firewalld's naming):

============================  ==========  ===========================================
chain                         priority    why there
============================  ==========  ===========================================
``raw_PREROUTING/OUTPUT``     -295        ``ct zone set`` works only before conntrack
                                          (-200); Kuma appends to raw, so after
                                          iptables-nft's raw (-300)
``mangle_PREROUTING``         -145        Kuma appends its INVALID drop: after
                                          iptables-nft's mangle (-150), before
                                          firewalld's mangle_PREROUTING (-140)
``nat_PREROUTING/OUTPUT``     -95 / -105  -95 when Kuma only appends to the chain (the
                                          default): after the rules other tools hold in
                                          iptables-nft's nat (-100); -105 when Kuma
                                          inserts (DNS, exclusions, --vnet, insert
                                          instead of append): above them. Either way
                                          before firewalld's nat chains (-90)
============================  ==========  ===========================================

Kuma's iptables rules live in iptables' shared built-in chains, where ``-I`` puts a rule above
whatever the chain holds and ``-A`` below. A table of its own cannot sit both above and below
another table, and one chain cannot be split in two (a RETURN among Kuma's inserted rules
must also skip its appended ones), so a chain sits where most of Kuma's rules in it want to
be: above other tools' iptables-nft rules if Kuma inserts anything there, below otherwise. A
numeric offset, never the same priority as iptables-nft's table: between base chains of equal
priority the kernel runs the one registered last first, so every reinstall would flip the
order. In nat the first chain that binds a connection wins (``nf_nat_inet_fn``), so a
connection Kuma redirects is not DNATed by firewalld's or another tool's chains after it.

**The one semantic difference** a table of its own brings: ``return`` (Kuma's RETURN) ends our
chain only. In iptables it also skipped every rule of other tools that came after Kuma's in
the same built-in chain; here those tools' chains still see the packet, exactly as if Kuma
were not installed, which is what Kuma's exclusions mean.

**Native expressions only** (no ``xt_*`` module, no ``nft_compat``): ``meta skuid``, ``redirect
to :PORT``, ``ct zone set``, ``ct state invalid drop``, anonymous sets instead of multiport,
``oifname``/``iifname`` (iptables' ``+`` wildcard is nft's ``*``), ``log``. Comments say which
of Kuma's rules each one is: Kuma's comment without its prefix (nft allows 128 characters,
Kuma's run to 223: longer ones are cut with "..."), or for Kuma 2.7, which has no comments, the
iptables rule itself.

**Negated owner matches.** ``-m owner ! --uid-owner U`` matches a packet without a socket
(or with a kernel socket, which has no file: NFS, SMB, iSCSI clients) — xt_owner answers
``(match ^ invert) == 0`` for it — while ``meta skuid != U`` never matches such a packet
(``nft_meta_get_eval`` breaks). So a rule ``COND ! --uid-owner U -j V`` becomes::

    COND meta skuid U goto <chain>_tail_<n>   # a socket of U: the negated rule does not match
    COND V                                    # no socket, or another UID: it does
    goto <chain>_tail_<n>                     # the chain's remaining rules live there

which is exact for every packet (``goto`` does not return, so the tail's end is the chain's).

Loaded as one ``nft -f`` transaction that declares, deletes and recreates the table (see
:func:`install_text`), so there is never a moment with half a rule set. Pure functions: no
I/O, and nothing here imports jinja2 or lxml (``build_ruleset`` renders lazily and caches).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from tproxy_firewalld.entries import DirectConfig, Rule
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import KUMA, KumaSettings, Profile
from tproxy_firewalld.ruleset import build_ruleset

FAMILY = "inet"
#: nft's limit on a rule comment (NFT_USERDATA_MAXLEN; nft 1.0.6: "128 characters maximum")
MAX_COMMENT = 128
#: base chain priorities (see the module docstring)
PRIORITY = {"raw": -295, "mangle": -145}
NAT_APPEND_PRIORITY = -95
NAT_INSERT_PRIORITY = -105
HOOK = {"PREROUTING": "prerouting", "OUTPUT": "output"}
CHAIN_TYPE = {"raw": "filter", "mangle": "filter", "nat": "nat"}
NFPROTO = {"ipv4": "ipv4", "ipv6": "ipv6"}
ADDR = {"ipv4": "ip", "ipv6": "ip6"}
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")


class NftError(SettingsError):
    """The rule set holds a form this translator does not know (a template change)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"nftables rule set: {message}", "rules_template")


def table_name(profile_name: str = "kuma") -> str:
    return f"tproxy_firewalld_{profile_name}"


@dataclass(frozen=True)
class NftRule:
    """One rule of a chain: its matches, the negated UID (see the docstring), its verdict
    or statement, and the comment that says which of Kuma's rules it is."""

    matches: tuple[str, ...]
    statement: str
    comment: str
    #: the UID (or ``a-b``) of a ``! --uid-owner`` match, which needs the tail form
    not_uid: Optional[str] = None
    #: set when only one family has this rule (and no address match says so already)
    only: Optional[str] = None

    def text(self, extra: Sequence[str] = (), statement: Optional[str] = None) -> str:
        head = [f"meta nfproto {NFPROTO[self.only]}"] if self.only else []
        parts = [*head, *self.matches, *extra, statement or self.statement]
        return " ".join([*parts, f'comment "{self.comment}"'])


@dataclass
class NftChain:
    name: str
    #: "type filter hook prerouting priority -295; policy accept;" for a base chain
    hook: Optional[str] = None
    rules: list[str] = field(default_factory=list)


# -- iptables arguments -> nft ------------------------------------------------------------


def _ports(spec: str) -> str:
    """iptables' ``53``, ``1:65535`` or multiport ``53,3000:5000`` -> nft, overlapping or
    adjacent ranges merged (nft refuses overlapping elements of an anonymous set)."""
    spans: list[tuple[int, int]] = []
    for part in spec.split(","):
        first, _, last = part.replace("-", ":").partition(":")
        spans.append((int(first), int(last or first)))
    merged: list[list[int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    items = [str(a) if a == b else f"{a}-{b}" for a, b in merged]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _iface(name: str) -> Optional[str]:
    # iptables' trailing + is a prefix wildcard, nft's is *; a lone + matches every interface
    if name == "+":
        return None
    return f'"{name[:-1]}*"' if name.endswith("+") else f'"{name}"'


def _comment(args: Sequence[str], text: Optional[str], comment_prefix: str) -> str:
    if text is not None:
        body = "kuma: " + (text[len(comment_prefix) :] if text.startswith(comment_prefix) else text)
    else:  # Kuma 2.7 writes no comments: the rule itself says which one it is
        body = "kuma 2.7: " + " ".join(args)
    body = body.replace('"', "'").replace("\\", "/")
    if len(body) > MAX_COMMENT:
        body = body[: MAX_COMMENT - 3] + "..."
    return body


def translate(rule: Rule, comment_prefix: str) -> NftRule:
    """One of kumactl's iptables rules (its arguments) -> one nft rule of our table."""
    args = rule.args
    matches: dict[str, str] = {}
    proto: Optional[str] = None
    ports: list[tuple[str, str, bool]] = []
    not_uid: Optional[str] = None
    comment: Optional[str] = None
    target: Optional[str] = None
    params: dict[str, str] = {}
    i, negate = 0, False
    while i < len(args):
        token = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if token == "!":
            negate, i = True, i + 1
            continue
        if value is None:
            raise NftError(f"{token} without a value in {rule.describe()}")
        neg = "!= " if negate else ""
        if token == "-m":
            if value not in ("comment", "multiport", "tcp", "udp", "owner", "conntrack"):
                raise NftError(f"match -m {value} is not translated: {rule.describe()}")
        elif token == "--comment":
            comment = value
        elif token == "-p":
            if value not in ("tcp", "udp") or negate:
                raise NftError(f"protocol {'! ' if negate else ''}{value}: {rule.describe()}")
            proto = value
        elif token in ("--dport", "--dports", "--sport", "--sports"):
            ports.append(("dport" if token.startswith("--d") else "sport", value, negate))
        elif token in ("-s", "-d"):
            network = ipaddress.ip_network(value, strict=False)
            ipv = "ipv6" if network.version == 6 else "ipv4"
            addr = (
                str(network.network_address)
                if network.prefixlen == network.max_prefixlen
                else str(network)
            )
            key = "saddr" if token == "-s" else "daddr"
            matches[key] = f"{ADDR[ipv]} {key} {neg}{addr}"
        elif token in ("-i", "-o"):
            name = _iface(value)
            key = "iifname" if token == "-i" else "oifname"
            if name is not None:
                matches[key] = f"{key} {neg}{name}"
            elif negate:  # ! -i + matches nothing
                raise NftError(f"! {token} + is not translated: {rule.describe()}")
        elif token == "--uid-owner":
            uid = value.replace(":", "-")
            if negate:
                not_uid = uid
            else:
                matches["skuid"] = f"meta skuid {uid}"
        elif token == "--ctstate":
            if value != "INVALID" or negate:
                raise NftError(f"conntrack state {value}: {rule.describe()}")
            matches["ct"] = "ct state invalid"
        elif token in ("-j", "--jump"):
            target = value
        elif token in ("--to-ports", "--zone", "--log-prefix", "--log-level"):
            params[token] = value
        else:
            raise NftError(f"option {token} is not translated: {rule.describe()}")
        negate = False
        i += 2

    ordered = [matches.pop(k) for k in ("iifname", "oifname", "saddr", "daddr") if k in matches]
    if proto and not ports:
        ordered.append(f"meta l4proto {proto}")
    for which, spec, inverted in ports:
        if proto is None:
            raise NftError(f"a port without -p: {rule.describe()}")
        ordered.append(f"{proto} {which} {'!= ' if inverted else ''}{_ports(spec)}")
    ordered += [matches.pop(k) for k in ("skuid", "ct") if k in matches]

    if target == "RETURN":
        statement = "return"
    elif target == "DROP":
        statement = "drop"
    elif target == "REDIRECT":
        if proto is None or "--to-ports" not in params:
            raise NftError(f"REDIRECT needs -p and --to-ports: {rule.describe()}")
        statement = f"redirect to :{params['--to-ports']}"
    elif target == "CT":
        if "--zone" not in params:
            raise NftError(f"CT without --zone: {rule.describe()}")
        statement = f"ct zone set {int(params['--zone'])}"
    elif target == "LOG":
        level = LOG_LEVELS[int(params.get("--log-level", "4"))]
        prefix = params.get("--log-prefix", "").replace('"', "'")
        statement = f'log prefix "{prefix}" level {level}'
    elif target is not None and target.startswith("KUMA_MESH_"):
        statement = f"jump {target}"
    else:
        raise NftError(f"target {target} is not translated: {rule.describe()}")
    return NftRule(
        matches=tuple(ordered),
        statement=statement,
        comment=_comment(args, comment, comment_prefix),
        not_uid=not_uid,
    )


# -- the two families' chains, merged -------------------------------------------------------


def _merge(v4: Sequence[NftRule], v6: Sequence[NftRule]) -> list[NftRule]:
    """Both families' rule lists as one: a shortest common supersequence, so each family
    meets its own rules in its own order; a rule only one family has is marked for it."""
    n, m = len(v4), len(v6)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            lcs[i][j] = (
                lcs[i + 1][j + 1] + 1 if v4[i] == v6[j] else max(lcs[i + 1][j], lcs[i][j + 1])
            )
    out: list[NftRule] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and v4[i] == v6[j]:
            out.append(v4[i])
            i, j = i + 1, j + 1
        elif j >= m or (i < n and lcs[i + 1][j] >= lcs[i][j + 1]):
            out.append(_only(v4[i], "ipv4"))
            i += 1
        else:
            out.append(_only(v6[j], "ipv6"))
            j += 1
    return out


def _only(rule: NftRule, ipv: str) -> NftRule:
    if any(m.startswith(("ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr")) for m in rule.matches):
        return rule  # an address match already holds the rule to its family
    return NftRule(rule.matches, rule.statement, rule.comment, rule.not_uid, ipv)


def _chain_rules(name: str, rules: Sequence[NftRule]) -> list[NftChain]:
    """A chain's rules as nft text; a negated owner match splits off a tail chain."""
    chains = [NftChain(name)]
    count = 0
    for n, rule in enumerate(rules):
        current = chains[-1]
        if rule.not_uid is None:
            current.rules.append(rule.text())
            continue
        if n == len(rules) - 1:  # nothing after it: not matching is the chain's end, too
            current.rules.append(rule.text([f"meta skuid {rule.not_uid}"], "return"))
            current.rules.append(rule.text())
            continue
        count += 1
        tail = f"{name}_tail_{count}"
        current.rules.append(rule.text([f"meta skuid {rule.not_uid}"], f"goto {tail}"))
        current.rules.append(rule.text())
        current.rules.append(f'goto {tail} comment "the rest of {name}"')
        chains.append(NftChain(tail))
    return chains


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    chains: tuple[NftChain, ...]

    def text(self) -> str:
        """The table's definition as ``nft -f`` reads it (and ``nft list table`` prints)."""
        lines = [f"table {self.family} {self.name} {{"]
        for chain in self.chains:
            lines.append(f"\tchain {chain.name} {{")
            if chain.hook:
                lines.append(f"\t\t{chain.hook}")
            lines += [f"\t\t{r}" for r in chain.rules]
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"


def nft_table(config: DirectConfig, comment_prefix: str, name: str) -> NftTable:
    """Direct entries (both families, firewalld's priorities fixing kumactl's order) -> our
    table."""
    per_chain: dict[tuple[str, str], dict[str, list[Rule]]] = {}
    for declared in config.chains:
        per_chain.setdefault((declared.table, declared.chain), {})
    for rule in config.rules:
        per_chain.setdefault((rule.table, rule.chain), {}).setdefault(rule.ipv, []).append(rule)
    base: list[NftChain] = []
    regular: list[NftChain] = []
    for (table, chain), families in per_chain.items():
        if table not in CHAIN_TYPE:
            raise NftError(f"table {table} is not translated")
        is_base = not chain.startswith("KUMA_MESH_")
        if is_base and chain not in HOOK:
            raise NftError(f"built-in chain {table} {chain} is not translated")
        lists = {
            ipv: [translate(r, comment_prefix) for r in sorted(rules, key=lambda r: r.priority)]
            for ipv, rules in families.items()
        }
        merged = _merge(lists.get("ipv4", []), lists.get("ipv6", []))
        nft_name = f"{table}_{chain}" if is_base else chain
        made = _chain_rules(nft_name, merged)
        if is_base:
            if table == "nat":
                inserts = any(r.priority < 0 for rs in families.values() for r in rs)
                priority = NAT_INSERT_PRIORITY if inserts else NAT_APPEND_PRIORITY
            else:
                priority = PRIORITY[table]
            made[
                0
            ].hook = (
                f"type {CHAIN_TYPE[table]} hook {HOOK[chain]} priority {priority}; policy accept;"
            )
            base.append(made[0])
            regular += made[1:]
        else:
            regular += made
    # regular chains first: every jump and goto then names a chain already declared
    return NftTable(FAMILY, name, tuple(regular + base))


def build_nft_table(settings: KumaSettings, profile: Optional[Profile] = None) -> NftTable:
    """The settings' rule set (of their Kuma release) as our nftables table."""
    profile = profile or KUMA
    config = build_ruleset(settings, profile)
    return nft_table(config, profile.owner.comment_prefix, table_name(profile.name))


def install_text(table: NftTable) -> str:
    """One ``nft -f`` transaction that replaces the table whole (or creates it): declare it
    (a no-op if it exists), delete it, define it. Never ``add``+``flush``: that keeps stale
    chains and cannot change a base chain's priority (NFTABLES.md, "Idempotency")."""
    head = f"table {table.family} {table.name} {{}}\ndelete table {table.family} {table.name}\n"
    return head + table.text()


def uninstall_text(family: str = FAMILY, name: str = table_name()) -> str:
    """One ``nft -f`` transaction that removes the table, present or not (nft 1.0.6 has no
    ``destroy``)."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n"
