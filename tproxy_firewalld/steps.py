"""The steps a plan is made of, each owning what it does: its summary, its JSON, what it
checks before anything changes (``prepare``), the change itself and its undo (``execute``).

A step changes the system only through the :class:`Effects` it is handed (the transaction
implements them, recording each change's undo), so this module, like the planner, imports no
I/O library. A new kind of step is one new class here; the planner decides when to yield it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Protocol, Union

from tproxy_firewalld.entries import (
    BUILT_IN_CHAINS,
    Chain,
    DirectConfig,
    Entry,
    Op,
    Owner,
    Passthrough,
    Rule,
    entry_json,
)
from tproxy_firewalld.errors import TproxyError
from tproxy_firewalld.fwconf import encode_conf, read_conf, set_in_conf
from tproxy_firewalld.record import Record


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
        return {
            "add": [entry_json(e) for e in self.add],
            "remove": [entry_json(e) for e in self.remove],
        }


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Prepared:
    """What a step made ready before anything changed: a temp file to rename into place, or
    the bytes to write."""

    tmp: Optional[Path] = None
    data: Optional[bytes] = None


class Effects(Protocol):
    """The changes a step can make. Each records its own undo (the transaction rolls them back
    in reverse on failure); the ``probe``/``prepare`` ones change nothing."""

    # before anything changes
    def check_config(self) -> None: ...

    def render_direct(self, config: DirectConfig, where: str) -> bytes: ...

    def probe_write(self, path: Path, data: bytes) -> None: ...

    def prepare_write(self, path: Path, data: bytes, mode: int) -> Path: ...

    def probe_directory(self, directory: Path) -> None: ...

    # the changes
    def change(self, phase: list[Op]) -> Optional[TproxyError]: ...

    def update_permanent(self, before: DirectConfig, after: DirectConfig) -> None: ...

    def write_file(self, path: Path, data: bytes) -> None: ...

    def commit_file(self, tmp: Path, path: Path) -> None: ...

    def remove_file(self, path: Path) -> None: ...

    def add_address(self, iface: str, address: str) -> None: ...

    def remove_address(self, iface: str, address: str) -> None: ...

    def set_conf(self, name: str, value: str, before: str) -> None: ...

    def conf_changing(self) -> None: ...

    def reload(self) -> None: ...


# --------------------------------------------------------------------------- steps


class BaseStep:
    """What every step has; the subclasses are frozen dataclasses."""

    kind: str
    #: what a failure's message calls the place, when it says what was not changed
    place: ClassVar[str]
    #: where the step comes in the one-line summary
    rank: ClassVar[int]

    def summary(self) -> str:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """The step's own fields in its JSON."""
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"step": self.kind, "summary": self.summary(), **self.details()}

    def entry_diff(self) -> Optional[Diff]:
        """Our direct entries the step adds and removes (None: it changes no entries)."""
        return None

    def listing(self) -> Optional[Diff]:
        """The entries a dry run lists under the step's summary."""
        return self.entry_diff()

    def prepare(self, fx: Effects) -> Prepared:
        return Prepared()

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class RuntimeStep(BaseStep):
    """firewalld's runtime: entries added and removed over D-Bus, in phases."""

    diff: Diff
    kind: str = field(default="runtime", init=False)
    place: ClassVar[str] = "firewalld's runtime"
    rank: ClassVar[int] = 0

    def phases(self) -> list[list[Op]]:
        adds = [[Op("add", e) for e in phase] for phase in add_phases(set(self.diff.add))]
        removes = [
            [Op("remove", e) for e in phase] for phase in remove_phases(set(self.diff.remove))
        ]
        return adds + removes

    def summary(self) -> str:
        return f"runtime: {self.diff.summary()}"

    def details(self) -> dict[str, Any]:
        return self.diff.to_json()

    def entry_diff(self) -> Optional[Diff]:
        return self.diff

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        # each phase one pipelined batch; the next only once the whole batch succeeded
        for phase in self.phases():
            failed = fx.change(phase)
            if failed is not None:
                raise failed


@dataclass(frozen=True)
class PermanentStep(BaseStep):
    """firewalld's permanent direct configuration, replaced in one ``config.direct.update``
    (firewalld writes direct.xml from it)."""

    before: DirectConfig
    after: DirectConfig
    diff: Diff
    #: only direct.xml is off (edited by hand, not loaded): the update rewrites it
    file_repair: bool = False
    kind: str = field(default="permanent", init=False)
    place: ClassVar[str] = "the permanent configuration"
    rank: ClassVar[int] = 1

    def summary(self) -> str:
        if self.file_repair:
            return "permanent: direct.xml rewritten from firewalld's permanent configuration"
        return f"permanent: updated ({self.diff.summary()})"

    def details(self) -> dict[str, Any]:
        return {**self.diff.to_json(), "file_repair": self.file_repair}

    def entry_diff(self) -> Optional[Diff]:
        return self.diff

    def listing(self) -> Optional[Diff]:
        return None if self.file_repair else self.diff

    def prepare(self, fx: Effects) -> Prepared:
        # firewalld writes it: the size check only (the next run could not read it back)
        return Prepared(data=fx.render_direct(self.after, "direct.xml"))

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        fx.update_permanent(self.before, self.after)


@dataclass(frozen=True)
class FileStep(BaseStep):
    """direct.xml written directly (offline): firewalld applies it at its next start."""

    path: Path
    before: DirectConfig
    after: DirectConfig
    diff: Diff
    kind: str = field(default="file", init=False)
    place: ClassVar[str] = "direct.xml"
    rank: ClassVar[int] = 2

    def summary(self) -> str:
        return f"direct.xml: {self.diff.summary()}"

    def details(self) -> dict[str, Any]:
        return {**self.diff.to_json(), "path": str(self.path)}

    def entry_diff(self) -> Optional[Diff]:
        return self.diff

    def prepare(self, fx: Effects) -> Prepared:
        data = fx.render_direct(self.after, str(self.path))
        fx.probe_write(self.path, data)
        return Prepared(data=data)

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        assert prepared.data is not None
        fx.write_file(self.path, prepared.data)


@dataclass(frozen=True)
class LoopbackStep(BaseStep):
    """An address on a loopback interface (Kuma's IPv6 rules match ``-s ::6/128``)."""

    iface: str
    address: str
    add: bool
    kind: str = field(default="loopback", init=False)
    place: ClassVar[str] = "lo"
    rank: ClassVar[int] = 5

    def summary(self) -> str:
        return f"{self.iface}: {'+' if self.add else '-'}{self.address}"

    def details(self) -> dict[str, Any]:
        return {"iface": self.iface, "address": self.address, "add": self.add}

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        if self.add:
            fx.add_address(self.iface, self.address)
        else:
            fx.remove_address(self.iface, self.address)


@dataclass(frozen=True)
class RecordStep(BaseStep):
    """The state record, written (``after``) or removed (``after`` is None)."""

    path: Path
    before: Optional[Record]
    after: Optional[Record]
    kind: str = field(default="record", init=False)
    place: ClassVar[str] = "the record"
    rank: ClassVar[int] = 6

    def summary(self) -> str:
        if self.after is not None and self.after.conf_restoring:
            # uninstall's note before it puts firewalld.conf back (a killed run is finished)
            return f"record: marked (putting back {', '.join(self.after.conf_restoring)})"
        return f"record: {'written' if self.after is not None else 'removed'}"

    def details(self) -> dict[str, Any]:
        return {"path": str(self.path), "write": self.after is not None}

    def prepare(self, fx: Effects) -> Prepared:
        if self.after is not None:
            return Prepared(tmp=fx.prepare_write(self.path, self.after.encode(), 0o644))
        # removing it must work too (a read-only /var): find out before anything changes
        fx.probe_directory(self.path.parent)
        return Prepared()

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        if prepared.tmp is not None:
            fx.commit_file(prepared.tmp, self.path)
        else:
            fx.remove_file(self.path)


@dataclass(frozen=True)
class FirewalldConfStep(BaseStep):
    """One firewalld.conf setting changed: live through firewalld's API (``Set`` on its config
    properties; firewalld writes firewalld.conf, and applies it at the reload that follows),
    offline in the file itself (``path``; firewalld applies it at its next start)."""

    name: str
    before: str
    after: str
    #: offline: the firewalld.conf written (None: live, over D-Bus)
    path: Optional[Path] = None
    kind: str = field(default="firewalld-conf", init=False)
    place: ClassVar[str] = "firewalld.conf"
    rank: ClassVar[int] = 3

    def summary(self) -> str:
        when = "" if self.path is None else ", applied at firewalld's next start"
        return f"firewalld.conf: {self.name}={self.after} (was {self.before}{when})"

    def details(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "path": str(self.path) if self.path is not None else None,
        }

    def _text(self, path: Path) -> bytes:
        return encode_conf(set_in_conf(read_conf(path) or "", self.name, self.after))

    def prepare(self, fx: Effects) -> Prepared:
        if self.path is not None:
            # only a probe: the write keeps the .old backup and the label
            fx.probe_write(self.path, self._text(self.path))
        return Prepared()

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        fx.conf_changing()
        if self.path is None:
            fx.set_conf(self.name, self.after, self.before)
        else:
            # as safely as direct.xml: temp file, fsync, rename, firewalld's .old backup, mode,
            # owner and label kept
            fx.write_file(self.path, self._text(self.path))


@dataclass(frozen=True)
class ReloadStep(BaseStep):
    """firewalld reloaded, so that it applies the firewalld.conf settings just changed: it
    reads firewalld.conf only when it starts or reloads. Like ``firewall-cmd --reload`` it
    re-applies the whole permanent configuration (ours included) and, with
    FlushAllOnReload=yes, drops runtime-only changes."""

    names: tuple[str, ...]
    kind: str = field(default="reload", init=False)
    place: ClassVar[str] = "firewalld's reload"
    rank: ClassVar[int] = 4

    def summary(self) -> str:
        return f"firewalld reloaded (applies {', '.join(self.names)})"

    def details(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    def prepare(self, fx: Effects) -> Prepared:
        # Before anything changes: a reload of a configuration firewalld would not load fails
        # (>= 1.2 refuses it, older ones half-apply it); somebody's broken file shows here.
        fx.check_config()
        return Prepared()

    def execute(self, fx: Effects, prepared: Prepared) -> None:
        fx.reload()


Step = Union[
    RuntimeStep, PermanentStep, FileStep, LoopbackStep, FirewalldConfStep, ReloadStep, RecordStep
]
