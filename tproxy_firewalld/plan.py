"""desired x observed -> Plan: every change a run makes, as steps. Pure: no I/O.

A step is something the run yields (as in pyinfra): runtime entries to add and remove, the
permanent direct configuration to hand to firewalld, direct.xml to write (offline), an address
on lo, the state record. ``changed`` means exactly "the plan has steps"; dry-run, diff and
install all look at the same plan. Uninstall is a plan whose desired set of ours is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from tproxy_firewalld.directxml import BUILT_IN_CHAINS
from tproxy_firewalld.entries import (
    Chain,
    DirectConfig,
    Entry,
    Owner,
    Passthrough,
    Recognition,
    Rule,
    entry_json,
)
from tproxy_firewalld.errors import DirectXmlError
from tproxy_firewalld.firewalld import Op
from tproxy_firewalld.observe import Observed
from tproxy_firewalld.record import Record
from tproxy_firewalld.settings import Warning_


def is_builtin(rule: Rule) -> bool:
    return rule.chain in BUILT_IN_CHAINS.get(rule.table, ())


def _rule_key(rule: Rule) -> tuple[str, str, str, int, tuple[str, ...]]:
    return (rule.ipv, rule.table, rule.chain, rule.priority, rule.args)


def add_phases(entries: set[Entry]) -> list[list[Entry]]:
    """Chains, then the rules inside them, then the rules in built-in chains (the jumps).

    So the jumps that make traffic enter our chains are added last, when everything they
    lead to is in place: no half-built redirect is ever live. Each phase is sent as one
    pipelined batch; the next starts only when the whole batch succeeded.
    """
    chains = sorted(e for e in entries if isinstance(e, Chain))
    rules = [e for e in entries if isinstance(e, Rule)]
    inner = sorted((r for r in rules if not is_builtin(r)), key=_rule_key)
    outer = sorted((r for r in rules if is_builtin(r)), key=_rule_key)
    passthroughs = sorted(e for e in entries if isinstance(e, Passthrough))
    return [phase for phase in (chains, inner, outer, passthroughs) if phase]  # type: ignore[misc]


def remove_phases(entries: set[Entry]) -> list[list[Entry]]:
    """The reverse: jumps out of built-in chains first, chains last (``-X`` needs them empty)."""
    return [list(reversed(phase)) for phase in reversed(add_phases(entries))]


def order_adds(entries: set[Entry]) -> list[Entry]:
    return [e for phase in add_phases(entries) for e in phase]


def order_removes(entries: set[Entry]) -> list[Entry]:
    return [e for phase in remove_phases(entries) for e in phase]


@dataclass(frozen=True)
class Diff:
    """Our entries to add to and remove from one place, in the order they are carried out."""

    add: tuple[Entry, ...] = ()
    remove: tuple[Entry, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove)

    @classmethod
    def between(cls, desired_ours: DirectConfig, observed: DirectConfig, owner: Owner) -> Diff:
        want = desired_ours.entries()
        have = observed.ours(owner).entries()
        return cls(add=tuple(order_adds(want - have)), remove=tuple(order_removes(have - want)))

    def summary(self) -> str:
        parts = []
        for sign, entries in (("+", self.add), ("-", self.remove)):
            for kind, noun in ((Chain, "chain"), (Rule, "rule"), (Passthrough, "passthrough")):
                n = sum(isinstance(e, kind) for e in entries)
                if n:
                    parts.append(f"{sign}{n} {noun}{'s' if n != 1 else ''}")
        return " ".join(parts) or "in sync"

    def to_json(self) -> dict[str, Any]:
        return {"add": [entry_json(e) for e in self.add], "remove": [entry_json(e) for e in self.remove]}


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class RuntimeStep:
    """firewalld's runtime: entries added and removed over D-Bus, in phases."""

    diff: Diff
    kind: str = field(default="runtime", init=False)

    def phases(self) -> list[list[Op]]:
        adds = [[Op("add", e) for e in phase] for phase in add_phases(set(self.diff.add))]
        removes = [[Op("remove", e) for e in phase] for phase in remove_phases(set(self.diff.remove))]
        return adds + removes

    def summary(self) -> str:
        return f"runtime: {self.diff.summary()}"


@dataclass(frozen=True)
class PermanentStep:
    """firewalld's permanent direct configuration, replaced in one ``config.direct.update``
    (firewalld writes direct.xml from it)."""

    before: DirectConfig
    after: DirectConfig
    diff: Diff
    #: only direct.xml is off (edited by hand, not loaded): the update rewrites it
    file_repair: bool = False
    kind: str = field(default="permanent", init=False)

    def summary(self) -> str:
        if self.file_repair:
            return "permanent: direct.xml rewritten from firewalld's permanent configuration"
        return f"permanent: updated ({self.diff.summary()})"


@dataclass(frozen=True)
class FileStep:
    """direct.xml written directly (offline): firewalld applies it at its next start."""

    path: Path
    before: DirectConfig
    after: DirectConfig
    diff: Diff
    kind: str = field(default="file", init=False)

    def summary(self) -> str:
        return f"direct.xml: {self.diff.summary()}"


@dataclass(frozen=True)
class LoopbackStep:
    """An address on a loopback interface (Kuma's IPv6 rules match ``-s ::6/128``)."""

    iface: str
    address: str
    add: bool
    kind: str = field(default="loopback", init=False)

    def summary(self) -> str:
        return f"{self.iface}: {'+' if self.add else '-'}{self.address}"


@dataclass(frozen=True)
class RecordStep:
    """The state record, written (``after``) or removed (``after`` is None)."""

    path: Path
    before: Optional[Record]
    after: Optional[Record]
    kind: str = field(default="record", init=False)

    def summary(self) -> str:
        return f"record: {'written' if self.after is not None else 'removed'}"


Step = Union[RuntimeStep, PermanentStep, FileStep, LoopbackStep, RecordStep]


def step_json(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"step": step.kind, "summary": step.summary()}
    if isinstance(step, (RuntimeStep, PermanentStep, FileStep)):
        out.update(step.diff.to_json())
    if isinstance(step, FileStep):
        out["path"] = str(step.path)
    if isinstance(step, PermanentStep):
        out["file_repair"] = step.file_repair
    if isinstance(step, LoopbackStep):
        out.update(iface=step.iface, address=step.address, add=step.add)
    if isinstance(step, RecordStep):
        out.update(path=str(step.path), write=step.after is not None)
    return out


@dataclass(frozen=True)
class Plan:
    action: str  # "install" or "uninstall"
    observed: Observed
    #: our entries as they should be (empty for uninstall)
    desired: DirectConfig
    #: in the order they are carried out
    steps: tuple[Step, ...]
    warnings: tuple[Warning_, ...] = ()
    #: the record install writes (None for uninstall)
    record: Optional[Record] = None
    #: the profile's marks plus the entries it recognised exactly (and, on request, suspected)
    owner: Optional[Owner] = None
    #: what the profile recognised beyond its marks (kumactl's leftovers, suspected entries)
    recognition: Recognition = field(default_factory=Recognition)
    #: whether suspected entries are removed too
    remove_suspected: bool = False

    def leftovers_removed(self) -> tuple[Entry, ...]:
        """kumactl's leftovers this plan removes (somewhere), in removal order."""
        desired = self.desired.entries()
        return tuple(sorted((e for e in self.recognition.leftovers if e not in desired), key=str))

    def observed_ours(self, place: str) -> DirectConfig:
        """Our entries as observed in "runtime", "permanent" or "file"."""
        assert self.owner is not None
        config = getattr(self.observed, place)
        return config.ours(self.owner) if config is not None else DirectConfig()

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def mode(self) -> str:
        return self.observed.mode

    def step(self, kind: str) -> Optional[Step]:
        return next((s for s in self.steps if s.kind == kind), None)

    def adds_entries(self) -> bool:
        """Whether the plan puts rules in place (so they must pass the checks first)."""
        for s in self.steps:
            if isinstance(s, (RuntimeStep, PermanentStep, FileStep)) and s.diff.add:
                return True
        return False


def make_plan(
    action: str,
    desired: DirectConfig,
    observed: Observed,
    owner: Owner,
    record: Optional[Record],
    loopback: tuple[tuple[str, str], ...] = (),
) -> Plan:
    """What to change so that firewalld (runtime and permanent), direct.xml, lo and the
    record hold exactly ``desired`` of ours. Everyone else's entries are carried over
    untouched: the permanent config is the observed one with ours replaced.

    ``loopback``: (iface, address) pairs the desired rules need (install only).
    """
    steps: list[Step] = []
    target = observed.target
    if observed.live:
        assert observed.runtime is not None and observed.permanent is not None
        if observed.file.foreign(owner).entries() != observed.permanent.foreign(owner).entries():
            raise DirectXmlError(
                f"{target.direct_xml} holds other entries than firewalld's permanent configuration "
                "(edited by hand and not loaded yet); writing now would lose that edit. Load it "
                "with `firewall-cmd --reload`, or undo it, then run this again"
            )
        for iface, address in loopback:
            if not observed.loopback.get(address, True):
                steps.append(LoopbackStep(iface, address, add=True))
        runtime = Diff.between(desired, observed.runtime, owner)
        if not runtime.empty:
            steps.append(RuntimeStep(runtime))
        merged = observed.permanent.merged_with(desired, owner)
        permanent = Diff.between(desired, observed.permanent, owner)
        if merged.entries() != observed.permanent.entries():
            steps.append(PermanentStep(observed.permanent, merged, permanent))
        elif not Diff.between(desired, observed.file, owner).empty:
            # firewalld's copy is right but the file is not (an edit of our entries that
            # firewalld has not read): one update() makes firewalld write it out again.
            steps.append(
                PermanentStep(observed.permanent, merged, Diff.between(desired, observed.file, owner), file_repair=True)
            )
    else:
        file = Diff.between(desired, observed.file, owner)
        if not file.empty:
            steps.append(FileStep(target.direct_xml, observed.file, observed.file.merged_with(desired, owner), file))
    if action == "uninstall" and observed.record is not None:
        for address in observed.record.loopback_added:
            if observed.loopback.get(address):
                steps.append(LoopbackStep("lo", address, add=False))
    if action == "install":
        assert record is not None
        added = {s.address for s in steps if isinstance(s, LoopbackStep) and s.add}
        kept = set(observed.record.loopback_added) if observed.record else set()
        record = Record(
            record.settings,
            tuple(sorted(added | kept)),
            record.template,
            record.profile,
        )
        if record != observed.record or observed.record_error:
            steps.append(RecordStep(target.state_file, observed.record, record))
    elif observed.record is not None or observed.record_error:
        steps.append(RecordStep(target.state_file, observed.record, None))
    return Plan(action, observed, desired, tuple(steps), record=record, owner=owner)
