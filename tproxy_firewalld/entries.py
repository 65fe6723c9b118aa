"""firewalld's direct-config entries, named and identified exactly as firewalld does.

An entry's identity is its tuple: chain ``(ipv, table, chain)``, rule ``(ipv, table, chain,
priority, args)``, passthrough ``(ipv, args)``, with ``args`` a tuple of tokens. firewalld
re-quotes rule text when it rewrites direct.xml (``!`` comes back as ``'!'``), so entries are
always compared token by token, never as text.

Which entries are "ours" is decided by an :class:`Owner` (a rule-set profile's chain prefix
and comment prefix), never by where an entry came from.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, Union

_T = TypeVar("_T")

#: the chains every iptables table has of its own (firewalld's ipXtables.BUILT_IN_CHAINS);
#: a rule in one of them is a jump into ours
BUILT_IN_CHAINS = {
    "security": ("INPUT", "OUTPUT", "FORWARD"),
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "POSTROUTING", "INPUT", "OUTPUT", "FORWARD"),
    "nat": ("PREROUTING", "POSTROUTING", "OUTPUT"),
    "filter": ("INPUT", "OUTPUT", "FORWARD"),
}

#: iptables' limit on chain names (``iptables_max_len`` in firewalld's ipXtables).
MAX_CHAIN_NAME = 28


@dataclass(frozen=True, order=True)
class Chain:
    ipv: str
    table: str
    chain: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.ipv, self.table, self.chain)

    def describe(self) -> str:
        return f"chain {self.ipv} {self.table} {self.chain}"


@dataclass(frozen=True, order=True)
class Rule:
    ipv: str
    table: str
    chain: str
    priority: int
    args: tuple[str, ...]

    @property
    def chain_key(self) -> tuple[str, str, str]:
        return (self.ipv, self.table, self.chain)

    def describe(self) -> str:
        return f"rule {self.ipv} {self.table} {self.chain} {self.priority} {join_args(self.args)}"


@dataclass(frozen=True, order=True)
class Passthrough:
    ipv: str
    args: tuple[str, ...]

    def describe(self) -> str:
        return f"passthrough {self.ipv} {join_args(self.args)}"


Entry = Union[Chain, Rule, Passthrough]

JUMPS = ("-j", "--jump", "-g", "--goto")


def join_args(args: Iterable[str]) -> str:
    """firewalld's ``joinArgs``: how it writes rule text to direct.xml and prints it."""
    return " ".join(shlex.quote(a) for a in args)


def split_args(text: str) -> tuple[str, ...]:
    """firewalld's reading of rule text: newlines become spaces, then ``shlex.split``."""
    return posix_split(text.replace("\n", " "))


_SHLEX_SPECIAL = re.compile(r"['\"\\]")
_SHLEX_WHITESPACE = re.compile(r"[ \t\r\n]+")
_SHLEX_PLAIN = re.compile(r"[^ \t\r\n'\"\\]+")
_SHLEX_IN_DOUBLE = re.compile(r'[^"\\]+')


def posix_split(text: str) -> tuple[str, ...]:
    """Exactly ``shlex.split(text)`` (POSIX mode, no comments), in linear time.

    shlex builds each token by ``token += char`` on an attribute, which CPython cannot do in
    place: a single long token costs quadratic time (a 1 MiB rule text took minutes). This is
    the same state machine, taking runs of ordinary characters at once and collecting tokens
    in lists; it raises the same ValueErrors.
    """
    if not _SHLEX_SPECIAL.search(text):
        return tuple(t for t in _SHLEX_WHITESPACE.split(text) if t)
    tokens: list[str] = []
    token: list[str] = []
    quoted = False  # the current token had quotes (so an empty one still counts)
    state = " "  # " " between tokens, "a" in a word, a quote char, or "\\" after an escape
    escaped_from = "a"
    i, end = 0, len(text)
    while i < end:
        if state in (" ", "a"):
            plain = _SHLEX_PLAIN.match(text, i)
            if plain:
                token.append(plain.group())
                state, i = "a", plain.end()
                continue
            char = text[i]
            if char == "\\":
                escaped_from, state = "a", "\\"
            elif char in "'\"":
                quoted, state = True, char
            else:  # whitespace ends the token
                if token or quoted:
                    tokens.append("".join(token))
                token, quoted, state = [], False, " "
                i = _SHLEX_WHITESPACE.match(text, i).end()  # type: ignore[union-attr]
                continue
            i += 1
        elif state == "\\":
            char = text[i]
            if escaped_from == '"' and char not in ('"', "\\"):
                token.append("\\")  # inside "...", a backslash only escapes " and itself
            token.append(char)
            state, i = escaped_from, i + 1
        elif state == "'":
            close = text.find("'", i)
            if close < 0:
                raise ValueError("No closing quotation")
            token.append(text[i:close])
            state, i = "a", close + 1
        else:  # inside "..."
            run = _SHLEX_IN_DOUBLE.match(text, i)
            if run:
                token.append(run.group())
                i = run.end()
                continue
            if text[i] == '"':
                state = "a"
            else:
                escaped_from, state = '"', "\\"
            i += 1
    if state == "\\":
        raise ValueError("No escaped character")
    if state not in (" ", "a"):
        raise ValueError("No closing quotation")
    if token or quoted:
        tokens.append("".join(token))
    return tuple(tokens)


def jump_target(args: tuple[str, ...]) -> str | None:
    """The chain a rule jumps or goes to (``-j X`` / ``--jump X`` / ``-g X``), if any."""
    for i, token in enumerate(args[:-1]):
        if token in JUMPS:
            return args[i + 1]
    return None


@dataclass(frozen=True)
class Owner:
    """What marks an entry as a profile's own: its chain-name prefix and comment prefix, and
    the entries its profile recognised exactly (``claimed``, see :class:`Recognition`).

    The prefixes are matched whole, separator included (``KUMA_MESH_`` and
    ``kuma/mesh/transparent/proxy/``), so ``KUMA_MESHCTL_ALLOW`` or a comment
    ``kuma/mesh/transparent/proxy-ops: ...`` are somebody else's.
    """

    chain_prefix: str
    comment_prefix: str
    #: entries recognised exactly (by the profile, for these settings): ours too
    claimed: frozenset[Entry] = frozenset()

    def claiming(self, entries: Iterable[Entry]) -> Owner:
        return Owner(self.chain_prefix, self.comment_prefix, self.claimed | frozenset(entries))

    def owns_chain(self, name: str) -> bool:
        return name.startswith(self.chain_prefix)

    def _claimed_chain(self, ipv: str, table: str, name: str) -> bool:
        return Chain(ipv, table, name) in self.claimed

    def marks(self, entry: Entry) -> bool:
        """Ours by its marks alone: a chain by its name; a rule if it lives in one of our
        chains, jumps into one, or carries our comment. Passthroughs never."""
        if isinstance(entry, Chain):
            return self.owns_chain(entry.chain)
        if isinstance(entry, Rule):
            if self.owns_chain(entry.chain):
                return True
            args = entry.args
            return any(
                (flag in JUMPS and self.owns_chain(value))
                or (flag == "--comment" and value.startswith(self.comment_prefix))
                for flag, value in zip(args, args[1:])
            )
        return False

    def owns(self, entry: Entry) -> bool:
        """Marked, or claimed; a rule also if it lives in or jumps into a claimed chain (a
        chain goes with its rules and the jumps into it, or firewalld breaks)."""
        if entry in self.claimed or self.marks(entry):
            return True
        if isinstance(entry, Rule) and self.claimed:
            if self._claimed_chain(entry.ipv, entry.table, entry.chain):
                return True
            target = jump_target(entry.args)
            return target is not None and self._claimed_chain(entry.ipv, entry.table, target)
        return False

    def mentions(self, passthrough: Passthrough) -> bool:
        """A passthrough that jumps into one of our chains (it would break when they go)."""
        target = jump_target(passthrough.args)
        if target is None:
            return False
        return self.owns_chain(target) or any(
            isinstance(c, Chain) and c.chain == target for c in self.claimed
        )


@dataclass(frozen=True)
class Suspect:
    """An entry that only might be the profile's: listed with why, removed only on request."""

    entry: Entry
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"entry": entry_json(self.entry), "reason": self.reason}


@dataclass(frozen=True)
class Recognition:
    """What a profile recognises among the observed entries beyond its marks: each exactly
    (token for token, after normalising option spellings) an entry that it renders, or that
    an older tool of its kind wrote, for the recorded, given or default settings.

    ours: entries of its own rule sets that carry no mark (e.g. Kuma 2.7's, without comments);
    leftovers: what another tool of the profile left behind (kumactl --store-firewalld);
    suspected: look like the profile's but match nothing exactly.
    """

    ours: frozenset[Entry] = frozenset()
    leftovers: frozenset[Entry] = frozenset()
    suspected: tuple[Suspect, ...] = ()

    def claimed(self, remove_suspected: bool = False) -> frozenset[Entry]:
        extra = frozenset(s.entry for s in self.suspected) if remove_suspected else frozenset()
        return self.ours | self.leftovers | extra


@dataclass(frozen=True)
class DirectConfig:
    """The three lists of a direct config, in firewalld's order (``getSettings`` shape)."""

    chains: tuple[Chain, ...] = ()
    rules: tuple[Rule, ...] = ()
    passthroughs: tuple[Passthrough, ...] = ()

    def ours(self, owner: Owner) -> DirectConfig:
        return DirectConfig(
            chains=tuple(c for c in self.chains if owner.owns(c)),
            rules=tuple(r for r in self.rules if owner.owns(r)),
        )

    def foreign(self, owner: Owner) -> DirectConfig:
        return DirectConfig(
            chains=tuple(c for c in self.chains if not owner.owns(c)),
            rules=tuple(r for r in self.rules if not owner.owns(r)),
            passthroughs=self.passthroughs,
        )

    def entries(self) -> set[Entry]:
        return {*self.chains, *self.rules, *self.passthroughs}

    def __len__(self) -> int:
        return len(self.chains) + len(self.rules) + len(self.passthroughs)

    def is_empty(self) -> bool:
        return not (self.chains or self.rules or self.passthroughs)

    def merged_with(self, ours: DirectConfig, owner: Owner) -> DirectConfig:
        """Everyone else's entries unchanged and in place, ours replaced by ``ours``."""
        foreign = self.foreign(owner)
        return DirectConfig(
            chains=_dedup(foreign.chains + ours.chains),
            rules=_dedup(foreign.rules + ours.rules),
            passthroughs=_dedup(foreign.passthroughs + ours.passthroughs),
        )

    def to_dbus(self) -> list[list[list[Any]]]:
        """The ``(a(sss)a(sssias)a(sas))`` structure; dbus-next wants lists, not tuples."""
        return [
            [[c.ipv, c.table, c.chain] for c in self.chains],
            [[r.ipv, r.table, r.chain, r.priority, list(r.args)] for r in self.rules],
            [[p.ipv, list(p.args)] for p in self.passthroughs],
        ]

    @classmethod
    def from_dbus(cls, chains: Any, rules: Any, passthroughs: Any) -> DirectConfig:
        return cls(
            chains=tuple(Chain(str(c[0]), str(c[1]), str(c[2])) for c in chains),
            rules=tuple(
                Rule(str(r[0]), str(r[1]), str(r[2]), int(r[3]), tuple(str(a) for a in r[4]))
                for r in rules
            ),
            passthroughs=tuple(
                Passthrough(str(p[0]), tuple(str(a) for a in p[1])) for p in passthroughs
            ),
        )


def entry_json(entry: Entry) -> dict[str, Any]:
    if isinstance(entry, Chain):
        return {"kind": "chain", "ipv": entry.ipv, "table": entry.table, "chain": entry.chain}
    if isinstance(entry, Rule):
        return {
            "kind": "rule",
            "ipv": entry.ipv,
            "table": entry.table,
            "chain": entry.chain,
            "priority": entry.priority,
            "args": list(entry.args),
        }
    return {"kind": "passthrough", "ipv": entry.ipv, "args": list(entry.args)}


def _dedup(items: tuple[_T, ...]) -> tuple[_T, ...]:
    # firewalld silently drops duplicate entries on import; do the same, keeping first-seen order.
    return tuple(dict.fromkeys(items))


class Op(NamedTuple):
    """One runtime change of one entry: what the planner yields and firewalld carries out."""

    verb: str  # "add" or "remove"
    entry: Entry

    def undo(self) -> Op:
        return Op("remove" if self.verb == "add" else "add", self.entry)

    def describe(self) -> str:
        return f"{self.verb} {self.entry.describe()}"
