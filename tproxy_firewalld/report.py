"""Results of install / uninstall / diff / status, and their one renderer each: text for
people, versioned JSON for programs. Every JSON document names its kind and version in
``schema`` (``tproxy-firewalld/<kind>/<version>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from tproxy_firewalld.applied import Pending
from tproxy_firewalld.entries import DirectConfig, Entry, Suspect, entry_json
from tproxy_firewalld.errors import TproxyError
from tproxy_firewalld.firewalld import DaemonInfo
from tproxy_firewalld.fwconf import ConfCheck, ConfView
from tproxy_firewalld.planning import Plan
from tproxy_firewalld.settings import Warning_
from tproxy_firewalld.steps import Diff, Step, order_adds

SCHEMA_VERSION = 2
ERROR_SCHEMA = "tproxy-firewalld/error/1"


def schema(kind: str) -> str:
    return f"tproxy-firewalld/{kind}/{SCHEMA_VERSION}"


@dataclass(frozen=True)
class Change:
    """Our entries in one place, before and after (in the order they would be added)."""

    before: tuple[Entry, ...]
    after: tuple[Entry, ...]

    @classmethod
    def of(cls, before: DirectConfig, after: DirectConfig) -> Change:
        return cls(tuple(order_adds(before.entries())), tuple(order_adds(after.entries())))

    def to_json(self) -> dict[str, Any]:
        return {
            "before": [entry_json(e) for e in self.before],
            "after": [entry_json(e) for e in self.after],
        }

    def lines(self, which: str) -> str:
        return "".join(
            e.describe() + "\n" for e in (self.before if which == "before" else self.after)
        )


@dataclass(frozen=True)
class Result:
    """What install / uninstall did — or, with ``dry_run``, would do."""

    action: str
    mode: str
    dry_run: bool
    steps: tuple[Step, ...]
    #: our entries before and after, per place (runtime and permanent: None offline)
    runtime: Optional[Change]
    permanent: Optional[Change]
    file: Change
    warnings: tuple[Warning_, ...] = ()
    settings: Optional[dict[str, Any]] = None
    #: kumactl's leftovers the run removes (they are among the steps' removals)
    leftovers: tuple[Entry, ...] = ()
    #: entries that only might be Kuma's (removed only with remove_suspected)
    suspected: tuple[Suspect, ...] = ()
    suspected_removed: bool = False
    #: install: the firewalld.conf settings the rules need, as firewalld had them before
    firewalld_conf: tuple[ConfCheck, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @classmethod
    def of(cls, plan: Plan, dry_run: bool, warnings: tuple[Warning_, ...] = ()) -> Result:
        obs = plan.observed
        ours = plan.desired
        return cls(
            action=plan.action,
            mode=plan.mode,
            dry_run=dry_run,
            steps=plan.steps,
            runtime=Change.of(plan.observed_ours("runtime"), ours) if obs.live else None,
            permanent=Change.of(plan.observed_ours("permanent"), ours) if obs.live else None,
            file=Change.of(plan.observed_ours("file"), ours),
            warnings=plan.warnings + warnings,
            settings=plan.record.settings.to_json() if plan.record is not None else None,
            leftovers=plan.leftovers_removed(),
            suspected=plan.recognition.suspected,
            suspected_removed=plan.remove_suspected,
            firewalld_conf=plan.firewalld_conf,
        )

    def summary(self) -> str:
        if not self.steps:
            return "nothing to do"
        return "; ".join(s.summary() for s in sorted(self.steps, key=lambda s: s.rank))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": schema(self.action),
            "action": self.action,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "summary": self.summary(),
            "steps": [s.to_json() for s in self.steps],
            "runtime": self.runtime.to_json() if self.runtime else None,
            "permanent": self.permanent.to_json() if self.permanent else None,
            "file": self.file.to_json(),
            "warnings": [w.to_json() for w in self.warnings],
            "settings": self.settings,
            "leftovers": [entry_json(e) for e in self.leftovers],
            "suspected": [s.to_json() for s in self.suspected],
            "suspected_removed": self.suspected_removed,
            "firewalld_conf": [c.to_json() for c in self.firewalld_conf],
        }

    def text(self) -> list[str]:
        """The lines a person reads: with --dry-run every entry, then the summary."""
        lines: list[str] = []
        left = set(self.leftovers)
        if self.dry_run:
            for step in self.steps:
                lines.append(f"{step.summary()}")
                diff = step.listing()
                if diff is not None:
                    lines += [f"  + {e.describe()}" for e in diff.add]
                    lines += [
                        f"  - {e.describe()}{LEFTOVER if e in left else ''}" for e in diff.remove
                    ]
        prefix = "would change: " if self.dry_run and self.changed else ""
        lines.append(f"{self.action}: {prefix}{self.summary()}")
        if self.leftovers:
            verb = "would remove" if self.dry_run else "removed"
            lines.append(f"{self.action}: {verb} {len(self.leftovers)} kumactl leftovers")
        return lines


LEFTOVER = "  (kumactl leftover)"


def suspect_lines(suspected: tuple[Suspect, ...], removed: bool = False) -> list[str]:
    if not suspected:
        return []
    how = "removed on request" if removed else "left in place; --remove-suspected removes them"
    lines = [f"suspected (might be Kuma's, match nothing exactly; {how}):"]
    for s in suspected:
        lines += [f"  ? {s.entry.describe()}", f"      {s.reason}"]
    return lines


def warning_lines(warnings: tuple[Warning_, ...]) -> list[str]:
    return [f"warning: {w.message}" for w in warnings]


@dataclass(frozen=True)
class DiffReport:
    #: "settings" (given), the record's path, or "nothing installed (no record)"
    desired_from: str
    mode: str
    runtime: Optional[Diff]
    permanent: Optional[Diff]
    file: Diff
    #: entries only in direct.xml / only in firewalld's permanent config (a hand edit)
    file_only: tuple[Entry, ...] = ()
    firewalld_only: tuple[Entry, ...] = ()
    warnings: tuple[Warning_, ...] = ()
    #: kumactl's leftovers (among the removals)
    leftovers: tuple[Entry, ...] = ()
    #: entries that only might be Kuma's (not among the removals)
    suspected: tuple[Suspect, ...] = ()
    #: the firewalld.conf settings the desired rules need, against what firewalld has
    firewalld_conf: tuple[ConfCheck, ...] = ()
    #: settings firewalld.conf has, but firewalld has not applied yet (a reload is pending)
    conf_pending: tuple[Pending, ...] = ()

    @property
    def in_sync(self) -> bool:
        diffs = [self.runtime, self.permanent, self.file]
        return (
            all(d is None or d.empty for d in diffs)
            and not (self.file_only or self.firewalld_only)
            and all(c.ok for c in self.firewalld_conf)
            and not self.conf_pending
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": schema("diff"),
            "in_sync": self.in_sync,
            "desired_from": self.desired_from,
            "mode": self.mode,
            "runtime": self.runtime.to_json() if self.runtime else None,
            "permanent": self.permanent.to_json() if self.permanent else None,
            "file": self.file.to_json(),
            "file_vs_permanent": {
                "only_in_file": [entry_json(e) for e in self.file_only],
                "only_in_firewalld": [entry_json(e) for e in self.firewalld_only],
            },
            "firewalld_conf": [c.to_json() for c in self.firewalld_conf],
            "firewalld_conf_pending": [p.to_json() for p in self.conf_pending],
            "warnings": [w.to_json() for w in self.warnings],
            "leftovers": [entry_json(e) for e in self.leftovers],
            "suspected": [s.to_json() for s in self.suspected],
        }

    def text(self) -> list[str]:
        lines = [f"desired: {self.desired_from}"]
        left = set(self.leftovers)

        def show(title: str, d: Diff) -> None:
            lines.append(f"{title}: {d.summary()}")
            lines.extend(f"  + {e.describe()}" for e in d.add)
            lines.extend(f"  - {e.describe()}{LEFTOVER if e in left else ''}" for e in d.remove)

        if self.runtime is not None and self.permanent is not None:
            show("runtime", self.runtime)
            show("permanent (firewalld)", self.permanent)
        else:
            lines.append("runtime: firewalld is not running")
        show("permanent (direct.xml)", self.file)
        if self.file_only or self.firewalld_only:
            lines.append(
                "direct.xml and firewalld's permanent configuration disagree (edited by hand and not "
                "loaded; `firewall-cmd --reload` loads the file):"
            )
            lines += [f"  only in direct.xml: {e.describe()}" for e in self.file_only]
            lines += [f"  only in firewalld:  {e.describe()}" for e in self.firewalld_only]
        if self.leftovers:
            lines.append(
                f"kumactl leftovers: {len(self.leftovers)} (what kumactl --store-firewalld wrote; "
                "install and uninstall remove them)"
            )
        lines += suspect_lines(self.suspected)
        lines += [conf_line(c) for c in self.firewalld_conf]
        lines += [
            f"firewalld.conf: {p.describe()}; `tproxy-firewalld install` (or uninstall) or "
            "`firewall-cmd --reload` applies it"
            for p in self.conf_pending
        ]
        lines += warning_lines(self.warnings)
        lines.append("in sync" if self.in_sync else "differences found")
        return lines


def conf_line(check: ConfCheck) -> str:
    if check.ok:
        return (
            f"firewalld.conf: {check.name}={check.value}: in sync (the rules need {check.wanted})"
        )
    return (
        f"firewalld.conf: {check.name}={check.value}, the rules need {check.wanted} ({check.breaks}); "
        f"`install --configure-firewalld` sets it"
    )


@dataclass(frozen=True)
class Status:
    daemon: Optional[DaemonInfo]
    unavailable_reason: str
    installed: dict[str, int]
    #: the drift against the record (None: nothing recorded)
    drift: Optional[DiffReport]
    warnings: tuple[Warning_, ...]
    record: Optional[dict[str, Any]] = None
    #: kumactl's leftovers (what its --store-firewalld wrote), wherever they are
    leftovers: tuple[Entry, ...] = ()
    suspected: tuple[Suspect, ...] = ()
    #: the firewalld.conf settings that can defeat the rules, as firewalld (or the file) has them
    conf: Optional[ConfView] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": schema("status"),
            "firewalld": self.daemon.to_json() if self.daemon else None,
            "firewalld_conf": self.conf.to_json() if self.conf else None,
            "firewalld_unavailable": self.unavailable_reason or None,
            "installed": self.installed,
            "in_sync": None if self.drift is None else self.drift.in_sync,
            "drift": None if self.drift is None else self.drift.to_json(),
            "record": self.record,
            "warnings": [w.to_json() for w in self.warnings],
            "leftovers": [entry_json(e) for e in self.leftovers],
            "suspected": [s.to_json() for s in self.suspected],
        }

    def text(self) -> list[str]:
        lines = []
        fw = self.daemon
        if fw is None:
            lines.append(f"firewalld: not available ({self.unavailable_reason})")
        else:
            extra = (
                f", StrictForwardPorts={fw.strict_forward_ports}" if fw.strict_forward_ports else ""
            )
            lines.append(
                f"firewalld: {fw.state}, version {fw.version}, backend {fw.backend}, "
                f"FlushAllOnReload={fw.flush_all_on_reload}{extra}"
            )
        if self.conf is not None and self.conf.values:
            changed = {c["name"]: c for c in (self.record or {}).get("firewalld_conf", [])}
            shown = ", ".join(
                f"{k}={v}"
                + (
                    f" (set by install, was {changed[k]['before']}; uninstall puts it back)"
                    if k in changed
                    else ""
                )
                for k, v in self.conf.values.items()
            )
            missing = " (no such file: firewalld's defaults)" if self.conf.missing else ""
            lines.append(f"firewalld.conf: {shown}{missing}")
        for where, n in self.installed.items():
            lines.append(f"{where}: {n} of our entries" if n else f"{where}: not installed")
        if self.record is not None:
            settings = self.record.get("settings") or {}
            release = settings.get("kuma_version")
            at = self.record.get("installed_at") or "unknown time"
            lines.append(
                f"recorded: Kuma {release} rule set, installed {at}"
                if release
                else f"recorded: installed {at}"
            )
        if self.drift is not None:
            lines.append(
                "drift: none" if self.drift.in_sync else "drift: yes (see `tproxy-firewalld diff`)"
            )
        if self.leftovers:
            lines.append(
                f"kumactl leftovers: {len(self.leftovers)} entries kumactl --store-firewalld wrote "
                "(`tproxy-firewalld uninstall` removes them, install replaces them):"
            )
            lines += [f"  {e.describe()}" for e in self.leftovers]
        lines += suspect_lines(self.suspected)
        lines += warning_lines(self.warnings)
        return lines


def error_json(exc: TproxyError) -> dict[str, Any]:
    return {
        "schema": ERROR_SCHEMA,
        "error": {
            "exit_code": int(exc.exit_code),
            "kind": type(exc).__name__,
            "message": exc.message,
            "setting": getattr(exc, "setting", None),
        },
    }
