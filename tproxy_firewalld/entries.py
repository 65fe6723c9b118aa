"""firewalld's direct-config entries, named and identified exactly as firewalld does.

An entry's identity is its tuple: chain ``(ipv, table, chain)``, rule ``(ipv, table, chain,
priority, args)``, passthrough ``(ipv, args)``, with ``args`` a tuple of tokens. firewalld
re-quotes rule text when it rewrites direct.xml (``!`` comes back as ``'!'``), so entries are
always compared token by token, never as text.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

_T = TypeVar("_T")

Ipv = Literal["ipv4", "ipv6", "eb"]

#: Kuma's chain prefix (``consts.IptablesChainsPrefix``); not configurable in Kuma either.
CHAIN_PREFIX = "KUMA_MESH"
#: Kuma's comment prefix (``consts.IptablesRuleCommentPrefix``). Keeping it means
#: ``kumactl uninstall transparent-proxy`` recognises our rules as well.
COMMENT_PREFIX = "kuma/mesh/transparent/proxy"

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


Entry = Chain | Rule | Passthrough


def join_args(args: Iterable[str]) -> str:
    """firewalld's ``joinArgs``: how it writes rule text to direct.xml and prints it."""
    return " ".join(shlex.quote(a) for a in args)


def split_args(text: str) -> tuple[str, ...]:
    """firewalld's reading of rule text: newlines become spaces, then ``shlex.split``."""
    return tuple(shlex.split(text.replace("\n", " ")))


def is_ours_chain(chain: Chain) -> bool:
    return chain.chain.startswith(CHAIN_PREFIX)


def _mentions_ours(args: tuple[str, ...]) -> bool:
    for i, token in enumerate(args):
        if (
            token.startswith(CHAIN_PREFIX)
            and i > 0
            and args[i - 1] in ("-j", "--jump", "-g", "--goto")
        ):
            return True
        if token.startswith(COMMENT_PREFIX) and i > 0 and args[i - 1] == "--comment":
            return True
    return False


def is_ours_rule(rule: Rule) -> bool:
    """A rule is ours if it lives in one of our chains, jumps into one, or carries our comment.

    The same test recognises what ``kumactl install --store-firewalld`` left behind (its
    rules carry the same chain and comment prefixes, whatever ipv or priority it wrote).
    """
    return rule.chain.startswith(CHAIN_PREFIX) or _mentions_ours(rule.args)


@dataclass(frozen=True)
class DirectConfig:
    """The three lists of a direct config, in firewalld's order (``getSettings`` shape)."""

    chains: tuple[Chain, ...] = ()
    rules: tuple[Rule, ...] = ()
    passthroughs: tuple[Passthrough, ...] = field(default=())

    def ours(self) -> DirectConfig:
        return DirectConfig(
            chains=tuple(c for c in self.chains if is_ours_chain(c)),
            rules=tuple(r for r in self.rules if is_ours_rule(r)),
            passthroughs=(),
        )

    def foreign(self) -> DirectConfig:
        return DirectConfig(
            chains=tuple(c for c in self.chains if not is_ours_chain(c)),
            rules=tuple(r for r in self.rules if not is_ours_rule(r)),
            passthroughs=self.passthroughs,
        )

    def entries(self) -> set[Entry]:
        return {*self.chains, *self.rules, *self.passthroughs}

    def is_empty(self) -> bool:
        return not (self.chains or self.rules or self.passthroughs)

    def merged_with(self, ours: DirectConfig) -> DirectConfig:
        """Everyone else's entries unchanged and in place, ours replaced by ``ours``."""
        foreign = self.foreign()
        return DirectConfig(
            chains=_dedup(foreign.chains + ours.chains),
            rules=_dedup(foreign.rules + ours.rules),
            passthroughs=_dedup(foreign.passthroughs + ours.passthroughs),
        )

    def to_dbus(self) -> list[list[list[object]]]:
        """The ``(a(sss)a(sssias)a(sas))`` structure; dbus-next wants lists, not tuples."""
        return [
            [[c.ipv, c.table, c.chain] for c in self.chains],
            [[r.ipv, r.table, r.chain, r.priority, list(r.args)] for r in self.rules],
            [[p.ipv, list(p.args)] for p in self.passthroughs],
        ]

    @classmethod
    def from_dbus(cls, chains: object, rules: object, passthroughs: object) -> DirectConfig:
        return cls(
            chains=tuple(Chain(str(c[0]), str(c[1]), str(c[2])) for c in chains),  # type: ignore[attr-defined]
            rules=tuple(
                Rule(str(r[0]), str(r[1]), str(r[2]), int(r[3]), tuple(str(a) for a in r[4]))
                for r in rules  # type: ignore[attr-defined]
            ),
            passthroughs=tuple(
                Passthrough(str(p[0]), tuple(str(a) for a in p[1]))
                for p in passthroughs  # type: ignore[attr-defined]
            ),
        )


def _dedup(items: tuple[_T, ...]) -> tuple[_T, ...]:
    # firewalld silently drops duplicate entries on import; do the same, keeping first-seen order.
    return tuple(dict.fromkeys(items))
