"""desired x observed -> Plan. Pure: no I/O, so dry-run, diff and install share it exactly.

Uninstall is a plan whose desired set of ours is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tproxy_firewalld.directxml import BUILT_IN_CHAINS
from tproxy_firewalld.entries import Chain, DirectConfig, Entry, Passthrough, Rule


def _is_builtin(rule: Rule) -> bool:
    return rule.chain in BUILT_IN_CHAINS.get(rule.table, ())


def order_adds(entries: set[Entry]) -> list[Entry]:
    """Chains first, then the rules inside our chains, then rules in built-in chains.

    So the jumps that make traffic enter our chains are added last, when everything they
    lead to is in place: no half-built redirect is ever live.
    """
    chains = sorted(e for e in entries if isinstance(e, Chain))
    rules = [e for e in entries if isinstance(e, Rule)]
    inner = sorted((r for r in rules if not _is_builtin(r)), key=_rule_key)
    outer = sorted((r for r in rules if _is_builtin(r)), key=_rule_key)
    passthroughs = sorted(e for e in entries if isinstance(e, Passthrough))
    return [*chains, *inner, *outer, *passthroughs]


def order_removes(entries: set[Entry]) -> list[Entry]:
    """The reverse: jumps out of built-in chains first, chains last (``-X`` needs them empty)."""
    return list(reversed(order_adds(entries)))


def _rule_key(rule: Rule) -> tuple[str, str, str, int, tuple[str, ...]]:
    return (rule.ipv, rule.table, rule.chain, rule.priority, rule.args)


@dataclass(frozen=True)
class Diff:
    add: tuple[Entry, ...] = ()
    remove: tuple[Entry, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove)

    @classmethod
    def between(cls, desired_ours: DirectConfig, observed: DirectConfig) -> Diff:
        want = desired_ours.entries()
        have = observed.ours().entries()
        return cls(add=tuple(order_adds(want - have)), remove=tuple(order_removes(have - want)))

    def summary(self) -> str:
        def count(kind: type, entries: tuple[Entry, ...]) -> int:
            return sum(isinstance(e, kind) for e in entries)

        parts = []
        for sign, entries in (("+", self.add), ("-", self.remove)):
            for kind, noun in ((Chain, "chains"), (Rule, "rules")):
                n = count(kind, entries)
                if n:
                    parts.append(f"{sign}{n} {noun if n != 1 else noun[:-1]}")
        return " ".join(parts) or "in sync"


@dataclass(frozen=True)
class Plan:
    desired: DirectConfig
    #: runtime changes, in the order they are carried out: adds then removes
    runtime: Diff | None
    #: the complete permanent config to hand to config.direct.update (None: no change)
    permanent_before: DirectConfig
    permanent_after: DirectConfig | None

    @property
    def empty(self) -> bool:
        return (self.runtime is None or self.runtime.empty) and self.permanent_after is None

    @property
    def permanent_diff(self) -> Diff:
        if self.permanent_after is None:
            return Diff()
        return Diff.between(self.permanent_after.ours(), self.permanent_before)


def make_plan(
    desired_ours: DirectConfig, runtime: DirectConfig | None, permanent: DirectConfig
) -> Plan:
    """What to change so that runtime and permanent hold exactly ``desired_ours`` of ours.

    Everyone else's entries are carried over untouched: the permanent config is the
    observed one with ours replaced.
    """
    runtime_diff = Diff.between(desired_ours, runtime) if runtime is not None else None
    merged = permanent.merged_with(desired_ours)
    permanent_after = None if merged.entries() == permanent.entries() else merged
    return Plan(desired_ours, runtime_diff, permanent, permanent_after)


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
