"""desired x observed -> Plan: every change a run makes, as steps. Pure: no I/O.

A step is something the run yields (as in pyinfra): runtime entries to add and remove, the
permanent direct configuration to hand to firewalld, direct.xml to write (offline), an address
on lo, the state record (steps.py: what each step is and does; here: which steps, in what
order). ``changed`` means exactly "the plan has steps"; dry-run, diff and
install all look at the same plan. Uninstall is a plan whose desired set of ours is empty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from tproxy_firewalld import direct_store
from tproxy_firewalld.applied import Pending, pending_reloads
from tproxy_firewalld.entries import Chain, DirectConfig, Entry, Owner, Recognition
from tproxy_firewalld.errors import (
    DirectXmlError,
    FileError,
    FirewalldConfRefused,
    IptablesFlushRefused,
)
from tproxy_firewalld.flush import CONSENT, flush_reason, shown
from tproxy_firewalld.fwconf import (
    BY_NAME,
    KNOBS,
    ConfChange,
    ConfCheck,
    ConfView,
    checks,
    is_boolean,
    is_on,
)
from tproxy_firewalld.record import Record
from tproxy_firewalld.settings import Warning_
from tproxy_firewalld.steps import (
    FirewalldConfStep,
    LoopbackStep,
    RecordStep,
    ReloadStep,
    RuntimeStep,
    Step,
)

if TYPE_CHECKING:
    # the observation is data here; observe.py reads it (D-Bus, direct.xml with lxml)
    from tproxy_firewalld.observe import Observed


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
    #: the firewalld.conf settings the desired rules need, against what firewalld has (install)
    firewalld_conf: tuple[ConfCheck, ...] = ()

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
        return any(d is not None and d.add for d in (s.entry_diff() for s in self.steps))


def make_plan(
    action: str,
    desired: DirectConfig,
    observed: Observed,
    owner: Owner,
    record: Optional[Record],
    loopback: tuple[tuple[str, str], ...] = (),
    configure_firewalld: bool = False,
    allow_iptables_flush: bool = False,
    recognition: Optional[Recognition] = None,
    remove_suspected: bool = False,
) -> Plan:
    """What to change so that firewalld (runtime and permanent), direct.xml, lo and the
    record hold exactly ``desired`` of ours. Everyone else's entries are carried over
    untouched: the permanent config is the observed one with ours replaced.

    ``loopback``: (iface, address) pairs the desired rules need (install only).
    ``configure_firewalld``: the admin's consent to change the firewalld.conf settings that
    would defeat ``desired``; without it such a setting makes install refuse
    (FirewalldConfRefused). Uninstall puts back what install changed, if nobody changed it since.

    Order: lo, runtime, permanent (or direct.xml), then firewalld.conf and the reload, then the
    record. The reload comes after our direct entries are in place in both runtime and
    permanent, so whatever it re-applies (the permanent configuration, FlushAllOnReload=yes;
    the runtime as it was, =no) holds exactly ``desired`` of ours: the plan stays true. Before
    them, a reload would replace the runtime the runtime step was computed against.

    ``allow_iptables_flush``: the admin's consent to a plan that makes firewalld flush other
    tools' iptables chains and rules (``observed.foreign_iptables``); without it such an
    install refuses (IptablesFlushRefused), uninstall warns.

    ``recognition``: what the profile recognised beyond its marks (``owner`` claims it);
    ``remove_suspected``: whether the suspected entries go too. The plan is finished: its
    warnings are every warning of the run (the settings' own included).
    """
    steps: list[Step] = []
    target = observed.target
    if observed.live:
        for iface, address in loopback:
            if not observed.loopback.get(address, True):
                steps.append(LoopbackStep(iface, address, add=True))
    steps += direct_store.plan_steps(desired, observed, owner)
    if action == "uninstall" and observed.record is not None:
        for address in observed.record.loopback_added:
            if observed.loopback.get(address):
                steps.append(LoopbackStep("lo", address, add=False))
    conf_checks: tuple[ConfCheck, ...] = ()
    warnings: list[Warning_] = []
    reloads: tuple[str, ...] = ()
    if action == "install":
        conf_checks, conf_steps, changes, reloads = _install_conf(
            desired, observed, configure_firewalld
        )
    else:
        conf_steps, changes = _restore_conf(observed), ()
        reloads = _restore_reloads(observed)
        warnings = _kept_conf_warnings(observed)
    if conf_steps and observed.live:
        _refuse_unloaded_conf_edits(observed)
    # The record goes first when firewalld.conf changes (or a reload applies it): a run killed
    # between the change and the reload (or the record) leaves a record that says what was
    # changed and what to put back, and the next run finishes the job (issue 17, item 3).
    conf_at = len(steps)
    steps += conf_steps
    names = tuple(s.name for s in conf_steps)
    names += tuple(n for n in reloads if n not in names)
    if names and observed.live:
        steps.append(ReloadStep(names))
    if action == "install":
        assert record is not None
        added = {s.address for s in steps if isinstance(s, LoopbackStep) and s.add}
        kept = set(observed.record.loopback_added) if observed.record else set()
        record = Record(
            record.settings,
            tuple(sorted(added | kept)),
            record.template,
            record.profile,
            installed_at=record.installed_at,
            firewalld_conf=changes,
        )
        # installed_at: the time of the install that last changed something. A run with
        # nothing else to do rewrites no record just for a timestamp: the recorded one stays.
        if steps or record != observed.record or observed.record_error:
            at = conf_at if len(steps) > conf_at else len(steps)
            steps.insert(at, RecordStep(target.state_file, observed.record, record))
        elif observed.record is not None:
            record = observed.record
    elif observed.record is not None or observed.record_error:
        if conf_steps and observed.record is not None:
            restoring = dataclasses.replace(
                observed.record, conf_restoring=tuple(s.name for s in conf_steps)
            )
            steps.insert(conf_at, RecordStep(target.state_file, observed.record, restoring))
        steps.append(RecordStep(target.state_file, observed.record, None))
    warnings += _flush_check(action, observed, owner, steps, allow_iptables_flush)
    _refuse_dangling_passthroughs(steps, observed, owner)
    recognition = recognition or Recognition()
    warnings += _run_warnings(action, observed, record, recognition, remove_suspected)
    return Plan(
        action, observed, desired, tuple(steps), tuple(warnings), record=record, owner=owner,
        recognition=recognition, remove_suspected=remove_suspected, firewalld_conf=conf_checks,
    )  # fmt: skip


def _run_warnings(
    action: str,
    observed: Observed,
    record: Optional[Record],
    recognition: Recognition,
    remove_suspected: bool,
) -> list[Warning_]:
    """The settings' own warnings, and what the run does with an unreadable record, a host
    without IPv6 and the entries that only might be ours."""
    settings = record.settings if action == "install" and record is not None else None
    warnings: list[Warning_] = list(settings.warnings) if settings is not None else []
    if observed.record_error:
        what = (
            "is replaced"
            if settings is not None
            else "is removed (it cannot say whether install put ::6/128 on lo: that stays)"
        )
        warnings.append(
            Warning_(
                "record-unreadable",
                f"the record was unreadable and {what}: {observed.record_error}",
            )
        )
    if settings is not None and "ipv6" in settings.ipvs and observed.live and not observed.loopback:
        warnings.append(
            Warning_("no-ipv6", "IPv6 is disabled on this host: ::6/128 cannot be put on lo")
        )
    if recognition.suspected and not remove_suspected:
        warnings.append(
            Warning_(
                "suspected",
                f"{len(recognition.suspected)} entries might be Kuma's but match nothing exactly; left "
                "in place (`tproxy-firewalld status` lists them with the reason; --remove-suspected removes them)",
            )
        )
    return warnings


def _refuse_dangling_passthroughs(steps: list[Step], observed: Observed, owner: Owner) -> None:
    """Removing our chains while somebody's passthrough jumps into one would make firewalld
    fail at its next reload: refuse, naming it (firewalld refuses the same live)."""
    going = set()
    for step in steps:
        diff = step.entry_diff()
        if diff is not None:
            going |= {e.chain for e in diff.remove if isinstance(e, Chain)}
    if not going:
        return
    config = observed.permanent if observed.live else observed.file
    assert config is not None
    for passthrough in config.passthroughs:
        if owner.mentions(passthrough) and any(c in passthrough.args for c in going):
            raise DirectXmlError(
                f"{passthrough.describe()} (somebody else's) jumps into one of our chains; "
                "removing the chain would make firewalld fail at its next start. Remove that "
                "passthrough first, then run this again"
            )


# --------------------------------------------------------------------------- iptables flush


def _flush_check(
    action: str, observed: Observed, owner: Owner, steps: list[Step], consent: bool
) -> list[Warning_]:
    """A plan that makes firewalld flush every iptables table (its first direct entry on
    >= 2.0, a reload on any version) while other tools keep chains or rules there: install
    refuses without consent (IptablesFlushRefused); with consent, and on uninstall, a warning."""
    if not observed.foreign_iptables or observed.daemon is None or observed.runtime is None:
        return []
    adds = any(isinstance(s, RuntimeStep) and s.diff.add for s in steps)
    reload = next((s.names for s in steps if isinstance(s, ReloadStep)), ())
    if action == "install":
        after = True
    else:
        assert observed.permanent is not None
        after = not observed.permanent.foreign(owner).is_empty()
    why = flush_reason(
        observed.daemon,
        direct_before=not observed.runtime.is_empty(),
        adds=adds,
        reload=reload,
        direct_after=after,
    )
    if not why:
        return []
    what = f"{why}: that wipes other tools' iptables chains and rules: {shown(observed.foreign_iptables)}"
    if action == "install" and not consent:
        ipv4 = ""
        if reload and all(BY_NAME[n].ipv6_only for n in reload if n in BY_NAME):
            ipv4 = "; or install IPv4 rules only (--ip-family-mode ipv4), which needs no reload"
        raise IptablesFlushRefused(
            f"{what}. Nothing was changed. Once installed, every firewalld start, reload and stop "
            f"flushes them too, so their owners must put them back (restart them). To go on, "
            f"allow it: {CONSENT}{ipv4}"
        )
    return [Warning_("iptables-flush", f"{what} (their owners must put them back: restart them)")]


# --------------------------------------------------------------------------- firewalld.conf


def _install_conf(
    desired: DirectConfig, observed: Observed, consent: bool
) -> tuple[tuple[ConfCheck, ...], list[FirewalldConfStep], tuple[ConfChange, ...], tuple[str, ...]]:
    """The settings ``desired`` needs: the checks, the steps that fix them (with consent),
    what the record keeps (this run's changes, and earlier ones nobody has changed since) and
    the settings firewalld.conf has right but firewalld has not applied (a reload applies
    them). Refuses (FirewalldConfRefused) a setting that would defeat the rules without
    consent."""
    conf = observed.conf
    if conf is None:
        return (), [], (), ()
    if conf.error is not None and not desired.is_empty():
        raise FileError(
            f"{conf.error} (firewalld.conf is read to check RFC3964_IPv4 and StrictForwardPorts)"
        )
    found = checks(desired, conf)
    bad = [c for c in found if not c.ok]
    if bad and not consent:
        raise FirewalldConfRefused(refusal(bad, conf, observed.live))
    if bad and conf.missing:
        names = ", ".join(f"{c.name}={c.wanted}" for c in bad)
        raise FirewalldConfRefused(
            f"{conf.path} does not exist, so firewalld runs on its defaults, "
            f"{'; '.join(c.describe() for c in bad)}; nothing was changed. tproxy-firewalld does not "
            f"create that file (firewalld's package ships it): install firewalld first, then "
            f"--configure-firewalld sets {names}" + _ipv4_way(bad)
        )
    path = None if observed.live else conf.path
    steps = [FirewalldConfStep(c.name, c.value, c.wanted, path) for c in bad]
    changes = {c.name: ConfChange.of(c.name, c.value, c.wanted) for c in bad}
    recorded = {c.name: c for c in observed.record.firewalld_conf} if observed.record else {}
    for change in recorded.values():
        if change.name not in changes and change.still_ours(conf):
            changes[change.name] = change
    # firewalld.conf right, the value in force wrong: a Set without its reload (a run killed
    # between the two). Our own change (recorded) or consent: reload; else refuse.
    pending = pending_reloads(conf, observed.applied, (c.name for c in found if c.ok))
    foreign = [p for p in pending if p.name not in changes]
    if foreign and not consent:
        raise FirewalldConfRefused(_pending_refusal(foreign, conf))
    for p in foreign:
        # what this run's reload replaces is what was in force: uninstall puts that back
        changes[p.name] = ConfChange.of(p.name, p.applied, p.value)
    kept = tuple(changes[k.name] for k in KNOBS if k.name in changes)
    return found, steps, kept, tuple(p.name for p in pending)


def _pending_refusal(pending: list[Pending], conf: ConfView) -> str:
    what = "; ".join(f"{p.describe()}: {BY_NAME[p.name].breaks}" for p in pending)
    return (
        f"{what}. Nothing was changed. To go on, reload firewalld (`firewall-cmd --reload`), or let "
        f"tproxy-firewalld reload it (--configure-firewalld; uninstall puts back "
        f"{', '.join(f'{p.name}={p.applied}' for p in pending)} in {conf.path})"
    )


def _refuse_unloaded_conf_edits(observed: Observed) -> None:
    """firewalld's config ``Set`` writes firewalld.conf from its memory, every key: an edit of
    the file firewalld has not loaded yet would be lost (issue 17, item 4). Refuse, naming the
    keys, as for unloaded direct.xml edits."""
    conf, daemon = observed.conf, observed.daemon
    if observed.conf_file is None or daemon is None or conf is None:
        return
    # firewalld >= 2.0 reports IPv6_rpfilter's value as IPv6_rpfilter2 ("strict", "loose",
    # ...) and IPv6_rpfilter only as yes/no for older clients (seen on 2.3.1 and 2.5.2)
    loaded = {k: daemon.config.get(f"{k}2", v) for k, v in daemon.config.items()}
    differ = [
        f"{key}={observed.conf_file[key]} (firewalld has {loaded[key]})"
        for key in sorted(observed.conf_file)
        if key in loaded and not _same_value(observed.conf_file[key], loaded[key])
    ]
    if differ:
        raise FirewalldConfRefused(
            f"{conf.path} holds settings firewalld has not loaded ({', '.join(differ)}: edited by "
            "hand and not loaded yet); changing firewalld.conf through firewalld now would write "
            "its loaded values back over that edit. Nothing was changed. Load it with "
            "`firewall-cmd --reload`, or undo it, then run this again"
        )


def _same_value(file_value: str, loaded: str) -> bool:
    if is_boolean(file_value) and is_boolean(loaded):
        return is_on(file_value, "no") == is_on(loaded, "no")
    return file_value.strip() == loaded.strip()


def _ipv4_way(bad: list[ConfCheck]) -> str:
    if all(BY_NAME[c.name].ipv6_only for c in bad):
        return ", or install IPv4 rules only (--ip-family-mode ipv4)"
    return ""


def refusal(bad: list[ConfCheck], conf: ConfView, live: bool) -> str:
    """One line: the setting, what breaks, and the ways forward."""
    what = "; ".join(f"firewalld has {c.name}={c.value}: {c.breaks}" for c in bad)
    names = ", ".join(f"{c.name}={c.wanted}" for c in bad)
    how = (
        "it changes firewalld.conf through firewalld's D-Bus API and reloads firewalld"
        if live
        else f"it edits {conf.path}, which firewalld applies at its next start"
    )
    consent = (
        f"let tproxy-firewalld set {names} (--configure-firewalld: {how}; uninstall puts it back)"
    )
    if all(BY_NAME[c.name].ipv6_only for c in bad):
        return f"{what}. Nothing was changed. Either install IPv4 rules only (--ip-family-mode ipv4), or {consent}"
    return f"{what}. Nothing was changed. To go on, {consent}"


def _restore_conf(observed: Observed) -> list[FirewalldConfStep]:
    """Uninstall: every setting install changed goes back, unless somebody changed it since."""
    conf = observed.conf
    if observed.record is None or conf is None:
        return []
    path = None if observed.live else conf.path
    return [
        FirewalldConfStep(c.name, conf.value(c.name), c.before, path)
        for c in observed.record.firewalld_conf
        if c.still_ours(conf)
    ]


def _restored(change: ConfChange, conf: Optional[ConfView]) -> bool:
    """The setting means what it did before install (put back, maybe not yet applied)."""
    return ConfChange(change.name, change.after, change.before).still_ours(conf)


def _restore_reloads(observed: Observed) -> tuple[str, ...]:
    """Uninstall: the recorded settings an earlier uninstall put back in firewalld.conf but
    did not get to apply (killed before its reload): the reload applies them. A setting
    somebody else changed is theirs to apply (see _kept_conf_warnings)."""
    if observed.record is None:
        return ()
    back = [
        c.name
        for c in observed.record.firewalld_conf
        if c.name in observed.record.conf_restoring and _restored(c, observed.conf)
    ]
    return tuple(p.name for p in pending_reloads(observed.conf, observed.applied, back))


def _kept_conf_warnings(observed: Observed) -> list[Warning_]:
    conf = observed.conf
    if observed.record is None:
        return []
    out = []
    for c in observed.record.firewalld_conf:
        if c.still_ours(conf):
            continue
        if c.name in observed.record.conf_restoring and _restored(c, conf):
            continue  # put back by an uninstall that did not finish: not somebody else
        if conf is None or conf.error is not None or conf.missing or not conf.has(c.name):
            now = (
                f"cannot be read ({conf.error})"
                if conf is not None and conf.error
                else "is not set"
            )
        else:
            now = f"is {conf.value(c.name)} now"
        out.append(
            Warning_(
                "firewalld-conf-kept",
                f"{c.name} {now}, not the {c.after} install set: somebody changed it since, so it is "
                f"left as it is (it was {c.before} before install)",
            )
        )
    return out
