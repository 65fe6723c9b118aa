"""The library's synchronous API: the CLI, the Ansible module and the RPM scriptlets all call
these, the same way.

    import tproxy_firewalld as tpfw

    settings = tpfw.Settings.load(exclude_inbound_ports=[22], config_files=["/etc/kuma/tp.yaml"])
    result = tpfw.install(settings)              # or: plan = tpfw.plan(settings); tpfw.apply(plan)
    print(result.changed, result.summary())
    tpfw.uninstall()

Every function takes a :class:`Target` (default: the live system) and raises
:class:`TproxyError` subclasses, each with its exit code and a one-line message.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from tproxy_firewalld.entries import DirectConfig, Owner, Recognition
from tproxy_firewalld.errors import Locked
from tproxy_firewalld.firewalld import Firewalld
from tproxy_firewalld.fwconf import ConfCheck
from tproxy_firewalld.kuma import KUMA, KumaSettings, Profile
from tproxy_firewalld.kuma_leftovers import recognise
from tproxy_firewalld.observe import ClientFactory, Observed, session
from tproxy_firewalld.planning import Plan, make_plan
from tproxy_firewalld.record import Record, RecordError
from tproxy_firewalld.report import DiffReport, Result
from tproxy_firewalld.settings import Warning_
from tproxy_firewalld.steps import Diff
from tproxy_firewalld.target import Target
from tproxy_firewalld.transaction import apply_plan


def _desired(
    settings: Optional[KumaSettings], template: Optional[str], profile: Profile
) -> tuple[DirectConfig, Optional[Record]]:
    if settings is None:
        return DirectConfig(), None
    from tproxy_firewalld.ruleset import build_ruleset

    desired = build_ruleset(settings, profile, template)
    template_path = str(Path(template).absolute()) if template else None
    record = Record(
        settings,
        template=template_path,
        profile=profile.name,
        installed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return desired, record


def ownership(
    observed: Observed,
    settings: Optional[KumaSettings],
    profile: Profile,
    remove_suspected: bool = False,
) -> tuple[Owner, Recognition]:
    """Whose entries are ours: the profile's marks, plus what it recognises exactly for the
    recorded and given settings (its unmarked rules, kumactl's leftovers); the suspected
    entries too when asked to."""
    given = [
        s
        for s in (settings, observed.record.settings if observed.record else None)
        if s is not None
    ]
    configs = [c for c in (observed.runtime, observed.permanent, observed.file) if c is not None]
    recognition = recognise(configs, given, profile)
    return profile.owner.claiming(recognition.claimed(remove_suspected)), recognition


def _make(
    settings: Optional[KumaSettings],
    desired: DirectConfig,
    record: Optional[Record],
    observed: Observed,
    profile: Profile,
    remove_suspected: bool = False,
) -> Plan:
    action = "uninstall" if settings is None else "install"
    loopback: tuple[tuple[str, str], ...] = ()
    if settings is not None:
        loopback = tuple(("lo", a) for ipv, a in profile.loopback.items() if ipv in settings.ipvs)
    owner, recognition = ownership(observed, settings, profile, remove_suspected)
    consent = settings is not None and settings.configure_firewalld
    flush = settings is not None and settings.allow_iptables_flush
    return make_plan(
        action, desired, observed, owner, record, loopback, consent, flush,
        recognition=recognition, remove_suspected=remove_suspected,
    )  # fmt: skip


def _checks(
    plan: Plan, settings: Optional[KumaSettings], allow_ssh_redirect: bool
) -> tuple[Warning_, ...]:
    """Before anything changes: the kernel accepts every rule, and no admin is locked out."""
    if not plan.adds_entries():
        return ()
    from tproxy_firewalld.iptables import check_rules

    checked = check_rules(plan.desired)
    if settings is not None and plan.observed.target.live_system and not allow_ssh_redirect:
        from tproxy_firewalld.guard import check_lockout

        check_lockout(settings)
    return tuple(Warning_("not-checked", note) for note in checked.skipped)


def plan(
    settings: Optional[KumaSettings],
    *,
    target: Optional[Target] = None,
    rules_template: Optional[str] = None,
    client: Optional[ClientFactory] = None,
    profile: Profile = KUMA,
    remove_suspected: bool = False,
) -> Plan:
    """What install (``settings``) or uninstall (``None``) would change; changes nothing.
    ``remove_suspected``: also remove the entries that only might be the profile's."""
    target = target or Target()
    desired, record = _desired(settings, rules_template, profile)
    with session(target, client, profile) as (observed, _fw):
        return _make(settings, desired, record, observed, profile, remove_suspected)


def apply(
    planned: Plan,
    *,
    allow_ssh_redirect: bool = False,
    client: Optional[ClientFactory] = None,
    profile: Profile = KUMA,
) -> Result:
    """Carry out a plan made by :func:`plan`, all or nothing. Under the lock the system is
    observed again; if it changed since the plan was made, nothing is done (Locked)."""
    target = planned.observed.target
    with target.locked(), session(target, client, profile) as (observed, fw):
        return _apply_observed(planned, observed, fw, allow_ssh_redirect, profile)


def _apply_observed(
    planned: Plan,
    observed: Observed,
    fw: Optional[Firewalld],
    allow_ssh_redirect: bool,
    profile: Profile,
) -> Result:
    """The one path every change takes (apply, install, uninstall), under the lock: the plan
    made again against what is observed now must be the same, then the checks, then the steps."""
    settings = planned.record.settings if planned.record is not None else None
    fresh = planned
    if planned.observed is not observed:
        fresh = _make(
            settings, planned.desired, planned.record, observed, profile, planned.remove_suspected
        )
        if fresh.steps != planned.steps:
            raise Locked(
                "the system changed since the plan was made; make a new plan and apply that"
            )
    warnings = _checks(fresh, settings, allow_ssh_redirect)
    if fresh.steps:
        apply_plan(fresh, fw)
    return Result.of(fresh, dry_run=False, warnings=warnings)


def install(
    settings: KumaSettings,
    *,
    target: Optional[Target] = None,
    dry_run: bool = False,
    rules_template: Optional[str] = None,
    allow_ssh_redirect: bool = False,
    client: Optional[ClientFactory] = None,
    profile: Profile = KUMA,
    remove_suspected: bool = False,
) -> Result:
    """Install the rules for ``settings``: live in firewalld (runtime and permanent, no
    reload) when it runs, else into direct.xml. Only the differences are applied; kumactl's
    leftovers are replaced (and the suspected entries with ``remove_suspected``)."""
    return _converge(
        settings,
        target,
        dry_run,
        rules_template,
        allow_ssh_redirect,
        client,
        profile,
        remove_suspected,
    )


def uninstall(
    *,
    target: Optional[Target] = None,
    dry_run: bool = False,
    client: Optional[ClientFactory] = None,
    profile: Profile = KUMA,
    remove_suspected: bool = False,
) -> Result:
    """Remove every entry of ours (runtime, permanent, direct.xml) and every leftover of
    kumactl's --store-firewalld, lo's address if install added it, and the record. Nothing
    else is touched; entries that only might be Kuma's go only with ``remove_suspected``."""
    return _converge(None, target, dry_run, None, False, client, profile, remove_suspected)


def _converge(
    settings: Optional[KumaSettings],
    target: Optional[Target],
    dry_run: bool,
    rules_template: Optional[str],
    allow_ssh_redirect: bool,
    client: Optional[ClientFactory],
    profile: Profile,
    remove_suspected: bool = False,
) -> Result:
    """``apply(plan(...))`` under one lock (observed once: the plan is made under the lock,
    so it cannot be stale); a dry run is the plan alone, with the checks and no lock."""
    target = target or Target()
    desired, record = _desired(settings, rules_template, profile)
    if dry_run:
        with session(target, client, profile) as (observed, _fw):
            planned = _make(settings, desired, record, observed, profile, remove_suspected)
            warnings = _checks(planned, settings, allow_ssh_redirect) if planned.steps else ()
            return Result.of(planned, dry_run, warnings)
    # One lock around observe, apply and record: concurrent runs serialise completely, and the
    # record always describes what is installed.
    with target.locked(), session(target, client, profile) as (observed, fw):
        planned = _make(settings, desired, record, observed, profile, remove_suspected)
        return _apply_observed(planned, observed, fw, allow_ssh_redirect, profile)


def diff(
    settings: Optional[KumaSettings] = None,
    *,
    target: Optional[Target] = None,
    rules_template: Optional[str] = None,
    client: Optional[ClientFactory] = None,
    profile: Profile = KUMA,
) -> DiffReport:
    """Our entries: desired (``settings``, or what the record says) against runtime, permanent
    and direct.xml; and whether direct.xml and firewalld's permanent configuration agree."""
    target = target or Target()
    with session(target, client, profile) as (observed, _fw):
        return diff_observed(observed, settings, rules_template, profile)


def diff_observed(
    observed: Observed,
    settings: Optional[KumaSettings],
    rules_template: Optional[str],
    profile: Profile,
) -> DiffReport:
    from tproxy_firewalld.applied import pending_reloads
    from tproxy_firewalld.fwconf import checks
    from tproxy_firewalld.ruleset import build_ruleset

    owner, recognition = ownership(observed, settings, profile)
    if settings is not None:
        desired, source = build_ruleset(settings, profile, rules_template), "settings"
    elif observed.record is not None:
        record = observed.record
        desired = build_ruleset(record.settings, profile, record.template)
        source = str(observed.target.state_file)
    elif observed.record_error:
        raise RecordError(f"{observed.record_error}; give the settings to compare against")
    else:
        desired, source = DirectConfig(), "nothing installed (no record)"
    file = Diff.between(desired, observed.file, owner)
    wanted = desired.entries()
    leftovers = tuple(sorted((e for e in recognition.leftovers if e not in wanted), key=str))
    conf = checks(desired, observed.conf)
    recorded = [c.name for c in observed.record.firewalld_conf] if observed.record else []
    pending = pending_reloads(observed.conf, observed.applied, [c.name for c in conf] + recorded)
    if not observed.live:
        return DiffReport(
            source,
            observed.mode,
            None,
            None,
            file,
            leftovers=leftovers,
            suspected=recognition.suspected,
            firewalld_conf=conf,
        )
    assert observed.runtime is not None and observed.permanent is not None
    file_entries, perm_entries = observed.file.entries(), observed.permanent.entries()
    runtime = Diff.between(desired, observed.runtime, owner)
    return DiffReport(
        source,
        observed.mode,
        runtime,
        Diff.between(desired, observed.permanent, owner),
        file,
        file_only=tuple(sorted(file_entries - perm_entries, key=str)),
        firewalld_only=tuple(sorted(perm_entries - file_entries, key=str)),
        warnings=_flush_warnings(observed, runtime, conf),
        leftovers=leftovers,
        suspected=recognition.suspected,
        firewalld_conf=conf,
        conf_pending=pending,
    )


def _flush_warnings(
    observed: Observed, runtime: Diff, conf: tuple[ConfCheck, ...]
) -> tuple[Warning_, ...]:
    """What install would make firewalld flush (the refusal install makes without consent)."""
    from tproxy_firewalld.flush import CONSENT, flush_reason, shown

    if not observed.foreign_iptables or observed.daemon is None or observed.runtime is None:
        return ()
    why = flush_reason(
        observed.daemon,
        direct_before=not observed.runtime.is_empty(),
        adds=bool(runtime.add),
        reload=tuple(c.name for c in conf if not c.ok),  # install --configure-firewalld reloads
    )
    if not why:
        return ()
    return (
        Warning_(
            "iptables-flush",
            f"install: {why}: that wipes other tools' iptables chains and rules: "
            f"{shown(observed.foreign_iptables)}; install refuses (exit 13) unless allowed with {CONSENT}",
        ),
    )


def render(
    settings: KumaSettings,
    direct_xml: Path,
    *,
    rules_template: Optional[str] = None,
    profile: Profile = KUMA,
) -> tuple[bytes, tuple[Warning_, ...]]:
    """The complete direct.xml ``direct_xml`` would become: everyone else's entries kept, ours
    rendered and checked by the kernel. Changes nothing."""
    from tproxy_firewalld.directxml import read_direct_xml, render_direct_xml
    from tproxy_firewalld.iptables import check_rules
    from tproxy_firewalld.ruleset import build_ruleset

    existing = read_direct_xml(direct_xml)
    ours = build_ruleset(settings, profile, rules_template)
    recognition = recognise([existing], [settings], profile)
    owner = profile.owner.claiming(recognition.claimed())
    checked = check_rules(ours)
    warnings = settings.warnings + tuple(Warning_("not-checked", n) for n in checked.skipped)
    return render_direct_xml(existing.merged_with(ours, owner)), warnings
