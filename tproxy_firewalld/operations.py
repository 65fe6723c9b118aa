"""install / uninstall / diff / status: observe, plan, apply — the library behind the CLI.

Live (firewalld RUNNING on the system bus): runtime changes through the direct interface in
an order that never leaves a half-built redirect live, undone in reverse if a step fails;
then one ``config.direct.update`` with everyone else's entries kept, so firewalld's
in-memory permanent config and direct.xml agree. Never a reload.

Offline (no firewalld, ``--offline`` or ``--root``): direct.xml is merged and written
atomically; firewalld applies it at its next start.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tproxy_firewalld.directxml import BUILT_IN_CHAINS, read_direct_xml, render_direct_xml
from tproxy_firewalld.entries import CHAIN_PREFIX, DirectConfig, Entry
from tproxy_firewalld.errors import (
    DirectXmlError,
    PartiallyApplied,
    SettingsError,
    TproxyError,
)
from tproxy_firewalld.files import atomic_write, locked
from tproxy_firewalld.firewalld import DaemonInfo, Firewalld, try_connect
from tproxy_firewalld.guard import check_lockout
from tproxy_firewalld.iptables import check_rules
from tproxy_firewalld.plan import Diff, Plan, entry_json, make_plan
from tproxy_firewalld.ruleset import FAMILY, build_ruleset
from tproxy_firewalld.settings import Settings, read_nameservers

STATE_VERSION = 1
JSON_VERSION = 1
IPV6_PASSTHROUGH = FAMILY["ipv6"]["passthrough"]


@dataclass(frozen=True)
class Paths:
    """Where things live; ``root`` is ``/`` or an image root (``--root``)."""

    root: Path = Path("/")

    @property
    def firewalld_dir(self) -> Path:
        return self.root / "etc" / "firewalld"

    @property
    def direct_xml(self) -> Path:
        return self.firewalld_dir / "direct.xml"

    @property
    def state_file(self) -> Path:
        # Documented in the README: the settings the last install applied.
        return self.root / "var" / "lib" / "tproxy-firewalld" / "installed.json"


@dataclass(frozen=True)
class Record:
    settings: Settings
    ipv6_loopback_added: bool = False


def read_record(paths: Paths) -> Record | None:
    try:
        data = json.loads(paths.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{paths.state_file}: cannot be read: {exc}") from None
    if data.get("version") != STATE_VERSION:
        raise SettingsError(f"{paths.state_file}: unknown version {data.get('version')!r}")
    return Record(Settings.from_json(data["settings"]), bool(data.get("ipv6_loopback_added")))


def write_record(paths: Paths, record: Record) -> None:
    data = {
        "version": STATE_VERSION,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": record.settings.to_json(),
        "ipv6_loopback_added": record.ipv6_loopback_added,
    }
    atomic_write(paths.state_file, (json.dumps(data, indent=2) + "\n").encode(), backup=False)


def remove_record(paths: Paths) -> None:
    paths.state_file.unlink(missing_ok=True)


def diff_json(d: Diff | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"add": [entry_json(e) for e in d.add], "remove": [entry_json(e) for e in d.remove]}


@dataclass
class Result:
    """What install / uninstall did (or, with --dry-run, would do)."""

    action: str
    mode: str  # "live" or "offline"
    dry_run: bool
    runtime: Diff | None = None
    permanent: Diff | None = None
    file: Diff | None = None
    notes: list[str] = field(default_factory=list)
    dbus_changes: list[str] = field(default_factory=list)
    #: changes outside the direct config, e.g. "lo: +::6/128"
    other_changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        diffs = (self.runtime, self.permanent, self.file)
        return any(d is not None and not d.empty for d in diffs) or bool(self.other_changes)

    def summary(self) -> str:
        if not self.changed:
            return "nothing to do"
        parts = []
        if self.runtime is not None and not self.runtime.empty:
            parts.append(f"runtime: {self.runtime.summary()}")
        if self.permanent is not None and not self.permanent.empty:
            parts.append(f"permanent: updated ({self.permanent.summary()})")
        if self.file is not None and not self.file.empty:
            parts.append(f"direct.xml: {self.file.summary()}")
        parts += self.other_changes
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "action": self.action,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "summary": self.summary(),
            "runtime": diff_json(self.runtime),
            "permanent": diff_json(self.permanent),
            "file": diff_json(self.file),
            "other_changes": self.other_changes,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- install / uninstall


async def install(
    settings: Settings,
    *,
    paths: Paths = Paths(),
    offline: bool = False,
    dry_run: bool = False,
    bus_address: str | None = None,
    template: str | None = None,
    allow_ssh_redirect: bool = False,
) -> Result:
    desired = build_ruleset(settings, template) if template else build_ruleset(settings)
    unrecognised = desired.foreign()
    if not unrecognised.is_empty():
        example = next(iter(unrecognised.entries())).describe()
        raise SettingsError(
            f"the rules template produced entries tproxy-firewalld would not recognise as its own "
            f"(every chain must start with KUMA_MESH, every rule carry Kuma's comment), e.g. {example}"
        )
    if paths.root == Path("/") and not allow_ssh_redirect:
        check_lockout(settings)
    # One lock around observe, apply and record: concurrent runs serialise completely, and
    # the record always describes what is installed.
    with locked(paths.firewalld_dir) if not dry_run else _nolock():
        result = await _converge("install", desired, paths, offline, dry_run, bus_address)
        _loopback_and_record(result, settings, paths, dry_run)
    return result


def _loopback_and_record(result: Result, settings: Settings, paths: Paths, dry_run: bool) -> None:
    """::6/128 on lo for the IPv6 rules (live only), then the record of what is installed."""
    added_v6 = False
    if result.mode == "live" and "ipv6" in settings.ipvs and not has_ipv6_passthrough():
        if dry_run:
            result.other_changes.append(f"lo: +{IPV6_PASSTHROUGH}")
        else:
            added_v6 = ensure_ipv6_passthrough(result.notes)
            if added_v6:
                result.other_changes.append(f"lo: +{IPV6_PASSTHROUGH}")
                result.notes = [n for n in result.notes if not n.startswith("added ")]
    if dry_run:
        return
    previous = read_record(paths)
    record = Record(settings, added_v6 or bool(previous and previous.ipv6_loopback_added))
    if previous != record:  # an in-sync run writes nothing at all
        write_record(paths, record)


async def uninstall(
    *,
    paths: Paths = Paths(),
    offline: bool = False,
    dry_run: bool = False,
    bus_address: str | None = None,
) -> Result:
    with locked(paths.firewalld_dir) if not dry_run else _nolock():
        result = await _converge("uninstall", DirectConfig(), paths, offline, dry_run, bus_address)
        if not dry_run:
            record = read_record(paths)
            if (
                record
                and record.ipv6_loopback_added
                and result.mode == "live"
                and has_ipv6_passthrough()
            ):
                remove_ipv6_passthrough(result.notes)
                result.other_changes.append(f"lo: -{IPV6_PASSTHROUGH}")
                result.notes = [n for n in result.notes if not n.startswith("removed ")]
            remove_record(paths)
    return result


async def _converge(
    action: str,
    desired: DirectConfig,
    paths: Paths,
    offline: bool,
    dry_run: bool,
    bus_address: str | None,
) -> Result:
    fw: Firewalld | None = None
    why = "--offline given" if paths.root == Path("/") else "--root given"
    if not offline and paths.root == Path("/"):
        fw, why = await try_connect(bus_address)
    if fw is None:
        return _converge_offline(action, desired, paths, dry_run, why)
    try:
        return await _converge_live(action, fw, desired, paths, dry_run)
    finally:
        fw.disconnect()


def _converge_offline(
    action: str, desired: DirectConfig, paths: Paths, dry_run: bool, why: str
) -> Result:
    result = Result(action, "offline", dry_run)
    result.notes.append(f"firewalld not used ({why}); {paths.direct_xml} is written directly")
    existing = read_direct_xml(paths.direct_xml)
    merged = existing.merged_with(desired)
    result.file = Diff.between(desired, existing)
    if not result.file.empty:
        _precheck(desired, result)
        if not dry_run:
            atomic_write(paths.direct_xml, render_direct_xml(merged))
    if result.changed:
        result.notes.append("firewalld applies it at its next start (or `firewall-cmd --reload`)")
    return result


class _nolock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def _converge_live(
    action: str, fw: Firewalld, desired: DirectConfig, paths: Paths, dry_run: bool
) -> Result:
    result = Result(action, "live", dry_run)
    runtime = await fw.runtime()
    permanent = await fw.permanent()
    on_disk = read_direct_xml(paths.direct_xml)
    if on_disk.foreign().entries() != permanent.foreign().entries():
        raise DirectXmlError(
            f"{paths.direct_xml} holds other entries than firewalld's permanent configuration "
            "(edited by hand and not loaded yet); writing now would lose that edit. Load it "
            "with `firewall-cmd --reload`, or undo it, then run this again"
        )
    plan = make_plan(desired, runtime, permanent)
    if plan.permanent_after is None and not Diff.between(desired, on_disk).empty:
        # firewalld's copy is right but the file is not (an edit of our entries that
        # firewalld has not read): one update() makes firewalld write it out again.
        plan = replace(plan, permanent_after=permanent.merged_with(desired))
    result.runtime = plan.runtime
    result.permanent = plan.permanent_diff
    file_diff = Diff.between(desired, on_disk)
    if result.permanent.empty and not file_diff.empty:
        # only the file is off (a hand edit): firewalld's update() rewrites it
        result.file = file_diff
    if not plan.empty:
        _precheck(desired, result)
        if not dry_run:
            await apply_plan(fw, plan)
    result.dbus_changes = list(fw.changes)
    return result


def _precheck(desired: DirectConfig, result: Result) -> None:
    """The real iptables parser judges every rule before anything changes.

    Skipped when nothing is to change (an in-sync install stays cheap) and for removals
    only (uninstall adds no rule).
    """
    if desired.is_empty():
        return
    checked = check_rules(desired)
    result.notes += [f"warning: {note}" for note in checked.skipped]


async def apply_plan(fw: Firewalld, plan: Plan) -> None:
    """Runtime first (it can be undone step by step), then one permanent update.

    If any step fails, the runtime steps already done are undone in reverse and the error
    says exactly what was and was not undone.
    """
    done: list[tuple[str, Entry]] = []
    try:
        if plan.runtime is not None:
            for entry in plan.runtime.add:
                if await fw.add(entry):
                    done.append(("add", entry))
            for entry in plan.runtime.remove:
                if await fw.remove(entry):
                    done.append(("remove", entry))
        if plan.permanent_after is not None:
            await fw.update_permanent(plan.permanent_after)
    except TproxyError as exc:
        failed: list[str] = []
        for verb, entry in reversed(done):
            try:
                if verb == "add":
                    await fw.remove(entry)
                else:
                    await fw.add(entry)
            except TproxyError as undo_exc:
                failed.append(f"{entry.describe()} ({undo_exc})")
        if failed:
            raise PartiallyApplied(
                f"{exc}; undoing the {len(done)} runtime change(s) already made failed for "
                f"{len(failed)}: {'; '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}. "
                "The permanent configuration was not changed; run `tproxy-firewalld diff` to see "
                "the state and run the command again"
            ) from None
        exc.message = f"{exc.message}; undid the {len(done)} runtime change(s) already made, nothing was changed"
        exc.args = (exc.message,)
        raise


# --------------------------------------------------------------------------- IPv6 loopback


def _ip() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def has_ipv6_passthrough() -> bool:
    ip = _ip()
    if ip is None:
        return False
    out = subprocess.run(
        [ip, "-6", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=False
    )
    return f"inet6 {IPV6_PASSTHROUGH}" in out.stdout


def ensure_ipv6_passthrough(notes: list[str]) -> bool:
    """Kuma's IPv6 loop-prevention rule matches ``-s ::6/128``; that address must exist on lo."""
    ip = _ip()
    if ip is None or not Path("/proc/sys/net/ipv6").exists():
        notes.append(f"warning: cannot add {IPV6_PASSTHROUGH} to lo (no ip command or no IPv6)")
        return False
    if has_ipv6_passthrough():
        return False
    proc = subprocess.run(
        [ip, "-6", "addr", "add", IPV6_PASSTHROUGH, "dev", "lo"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        notes.append(f"warning: adding {IPV6_PASSTHROUGH} to lo failed: {proc.stderr.strip()}")
        return False
    notes.append(f"added {IPV6_PASSTHROUGH} to lo")
    return True


def remove_ipv6_passthrough(notes: list[str]) -> None:
    ip = _ip()
    if ip is None or not has_ipv6_passthrough():
        return
    subprocess.run(
        [ip, "-6", "addr", "del", IPV6_PASSTHROUGH, "dev", "lo"], capture_output=True, check=False
    )
    notes.append(f"removed {IPV6_PASSTHROUGH} from lo")


# --------------------------------------------------------------------------- diff


@dataclass
class DiffReport:
    desired_from: str  # "settings" or the state file
    live: bool
    runtime: Diff | None
    permanent: Diff | None
    file: Diff
    #: entries only in direct.xml / only in firewalld's permanent config (a hand edit)
    file_only: tuple[Entry, ...] = ()
    firewalld_only: tuple[Entry, ...] = ()

    @property
    def in_sync(self) -> bool:
        diffs = [self.runtime, self.permanent, self.file]
        return all(d is None or d.empty for d in diffs) and not (
            self.file_only or self.firewalld_only
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "in_sync": self.in_sync,
            "desired_from": self.desired_from,
            "firewalld_running": self.live,
            "runtime": diff_json(self.runtime),
            "permanent": diff_json(self.permanent),
            "file": diff_json(self.file),
            "file_vs_permanent": {
                "only_in_file": [entry_json(e) for e in self.file_only],
                "only_in_firewalld": [entry_json(e) for e in self.firewalld_only],
            },
        }


def desired_settings(settings: Settings | None, paths: Paths) -> tuple[Settings | None, str]:
    if settings is not None:
        return settings, "settings"
    record = read_record(paths)
    if record is None:
        return None, "nothing installed (no record)"
    return record.settings, str(paths.state_file)


async def diff(
    settings: Settings | None,
    *,
    paths: Paths = Paths(),
    offline: bool = False,
    bus_address: str | None = None,
) -> DiffReport:
    wanted, source = desired_settings(settings, paths)
    desired = build_ruleset(wanted) if wanted is not None else DirectConfig()
    on_disk = read_direct_xml(paths.direct_xml)
    fw = None
    if not offline and paths.root == Path("/"):
        fw, _why = await try_connect(bus_address)
    if fw is None:
        return DiffReport(source, False, None, None, Diff.between(desired, on_disk))
    try:
        runtime = await fw.runtime()
        permanent = await fw.permanent()
    finally:
        fw.disconnect()
    file_entries, perm_entries = on_disk.entries(), permanent.entries()
    return DiffReport(
        source,
        True,
        Diff.between(desired, runtime),
        Diff.between(desired, permanent),
        Diff.between(desired, on_disk),
        file_only=tuple(sorted(file_entries - perm_entries, key=str)),
        firewalld_only=tuple(sorted(perm_entries - file_entries, key=str)),
    )


# --------------------------------------------------------------------------- status


@dataclass
class Status:
    firewalld: DaemonInfo | None
    unavailable_reason: str
    installed: dict[str, int]
    drift: DiffReport | None
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        fw = self.firewalld
        return {
            "version": JSON_VERSION,
            "firewalld": None
            if fw is None
            else {
                "state": fw.state,
                "version": fw.version,
                "backend": fw.backend,
                "flush_all_on_reload": fw.flush_all_on_reload,
                "strict_forward_ports": fw.strict_forward_ports,
                "rfc3964_ipv4": fw.rfc3964_ipv4,
            },
            "firewalld_unavailable": self.unavailable_reason or None,
            "installed": self.installed,
            "in_sync": None if self.drift is None else self.drift.in_sync,
            "drift": None if self.drift is None else self.drift.to_json(),
            "warnings": self.warnings,
        }


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3]) or (0,)


def foreign_iptables_chains(direct_chains: set[tuple[str, str, str]] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Chains in the kernel's iptables tables that neither we nor firewalld own."""
    found: list[str] = []
    for ipv, save in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        binary = shutil.which(save) or shutil.which(save, path="/usr/sbin:/sbin")
        if binary is None:
            continue
        proc = subprocess.run([binary], capture_output=True, text=True, check=False, timeout=30)
        table = ""
        for line in proc.stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                name = line[1:].split()[0]
                if name in BUILT_IN_CHAINS.get(table, ()) or name in (
                    "INPUT",
                    "FORWARD",
                    "OUTPUT",
                    "PREROUTING",
                    "POSTROUTING",
                ):
                    continue
                if (
                    name.startswith(CHAIN_PREFIX)
                    or _is_firewalld_chain(name)
                    or (ipv, table, name) in direct_chains
                ):
                    continue
                found.append(f"{ipv} {table} {name}")
    return found


_FIREWALLD_CHAIN = re.compile(
    r"(.*_direct|.*_ZONES(_SOURCE)?|.*_POLICIES(_pre|_post)?|(IN|FWD|FWDI|FWDO|PRE|POST|OUT|FWD_IN|FWD_OUT)_.+"
    # iptables backend: RFC3964_IPv4 (every version), <BUILTIN>_dispatch (2.5)
    r"|RFC3964_IPv4|.*_dispatch)$"
)


def _is_firewalld_chain(name: str) -> bool:
    return bool(_FIREWALLD_CHAIN.fullmatch(name))


async def status(*, paths: Paths = Paths(), bus_address: str | None = None) -> Status:
    info: DaemonInfo | None = None
    reason = ""
    installed: dict[str, int] = {}
    fw = None
    if paths.root == Path("/"):
        try:
            fw, reason = await try_connect(bus_address)
        except TproxyError as exc:  # FAILED state: still report what we can
            reason = str(exc)
    else:
        reason = "--root given"
    direct_chains: set[tuple[str, str, str]] = set()
    if fw is not None:
        try:
            info = await fw.info()
            live = await fw.runtime()
            direct_chains = {c.key for c in live.chains}
            installed["runtime"] = len(live.ours().entries())
            installed["permanent"] = len((await fw.permanent()).ours().entries())
        finally:
            fw.disconnect()
    try:
        installed["file"] = len(read_direct_xml(paths.direct_xml).ours().entries())
    except DirectXmlError as exc:
        reason = reason or str(exc)
    record = read_record(paths)
    drift = None
    warnings: list[str] = []
    if record is not None:
        drift = await diff(
            record.settings, paths=paths, offline=info is None, bus_address=bus_address
        )
        s = record.settings
        if s.dns_enabled and not s.dns_capture_all:
            try:
                now = read_nameservers(str(paths.root / s.dns_resolv_conf_path.lstrip("/")))
            except SettingsError:
                now = ()
            if set(now) != set(s.dns_nameservers):
                warnings.append(
                    f"the nameservers in {s.dns_resolv_conf_path} ({', '.join(now) or 'none'}) differ "
                    f"from those in the installed DNS rules ({', '.join(s.dns_nameservers) or 'none'}); "
                    "run install again to follow them"
                )
    if info is not None:
        if (info.strict_forward_ports or "").lower() == "yes":
            warnings.append(
                "StrictForwardPorts=yes: firewalld rejects traffic DNAT'd by others, which breaks the "
                "REDIRECTs of the transparent proxy; set StrictForwardPorts=no in firewalld.conf"
            )
        if (info.rfc3964_ipv4 or "").lower() == "yes" and record and "ipv6" in record.settings.ipvs:
            # Seen in the sandbox, both backends: firewalld's RFC 3964 filter rejects ::/96,
            # which includes ::1 — where the IPv6 REDIRECT sends outbound traffic.
            warnings.append(
                "RFC3964_IPv4=yes: firewalld rejects IPv6 packets to ::/96, which includes ::1, so "
                "IPv6 outbound traffic REDIRECTed to the proxy is rejected; set RFC3964_IPv4=no in "
                "firewalld.conf if the proxy serves IPv6"
            )
        before_2 = _version_tuple(info.version) < (2, 0)
        iptables_backend = info.backend == "iptables"  # it flushes its own tables in any version
        foreign = foreign_iptables_chains(direct_chains)
        if foreign and (
            before_2 or iptables_backend or installed.get("runtime") or installed.get("permanent")
        ):
            when = (
                "on every start, reload and stop (firewalld < 2.0)"
                if before_2
                else "on every start, reload and stop (FirewallBackend=iptables)"
                if iptables_backend
                else "on start, reload and stop once direct rules exist (firewalld >= 2.0)"
            )
            warnings.append(
                f"firewalld flushes all iptables tables {when}; these chains of other tools would be "
                f"wiped: {', '.join(foreign[:20])}{' ...' if len(foreign) > 20 else ''}"
            )
    return Status(info, reason, installed, drift, warnings)
