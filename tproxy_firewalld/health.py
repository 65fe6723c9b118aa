"""status: firewalld's state, where our entries are, drift against the record, and what the
admin should know (firewalld settings that defeat the rules, other tools' chains a reload
would flush, nameservers that moved, a kernel that lacks a module)."""

from __future__ import annotations

import contextlib
from typing import Optional

from tproxy_firewalld.api import diff_observed, ownership
from tproxy_firewalld.errors import RulesRejected, SettingsError, TproxyError
from tproxy_firewalld.firewalld import DaemonInfo
from tproxy_firewalld.flush import before_2, reload_flushes, shown
from tproxy_firewalld.fwconf import KNOBS, RFC3964, STRICT_FORWARD_PORTS, WANTED
from tproxy_firewalld.iptables import check_rules
from tproxy_firewalld.kuma import KUMA, Profile, read_nameservers
from tproxy_firewalld.observe import ClientFactory, Observed, session
from tproxy_firewalld.report import Status
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.settings import Warning_
from tproxy_firewalld.target import Target


def status(
    *,
    target: Optional[Target] = None,
    client: Optional[ClientFactory] = None,
    profile: Profile = KUMA,
) -> Status:
    target = target or Target()
    try:
        with session(target, client, profile) as (observed, _fw):
            return _status(observed, "", profile)
    except TproxyError as exc:
        if isinstance(exc, SettingsError):
            raise
        # FAILED state, no answer, a broken direct.xml: still report what can be seen
        return Status(None, str(exc), {}, None, ())


def _status(observed: Observed, reason: str, profile: Profile) -> Status:
    owner, recognition = ownership(observed, None, profile)
    installed = {}
    if observed.live:
        assert observed.runtime is not None and observed.permanent is not None
        installed["runtime"] = len(observed.runtime.ours(owner))
        installed["permanent"] = len(observed.permanent.ours(owner))
    installed["file"] = len(observed.file.ours(owner))
    warnings: list[Warning_] = []
    drift = None
    record = observed.record
    if observed.record_error:
        warnings.append(
            Warning_("record-unreadable", f"the record is unreadable: {observed.record_error}")
        )
    if record is not None:
        drift = diff_observed(observed, None, None, profile)
        warnings += _nameserver_warnings(observed)
        warnings += _module_warnings(observed, profile)
    warnings += conf_warnings(observed)
    daemon = observed.daemon
    if daemon is not None:
        warnings += _daemon_warnings(daemon, observed, installed)
    wanted: set[object] = set()
    if record is not None:
        with contextlib.suppress(TproxyError):  # reported by the drift already
            wanted = set(build_ruleset(record.settings, profile, record.template).entries())
    return Status(
        daemon,
        reason or observed.offline_reason,
        installed,
        drift,
        tuple(warnings),
        record.to_json() if record is not None else None,
        leftovers=tuple(sorted((e for e in recognition.leftovers if e not in wanted), key=str)),
        suspected=recognition.suspected,
        conf=observed.conf,
    )


#: the codes of the warnings about the firewalld.conf settings, by setting
CONF_WARNING = {RFC3964.name: "rfc3964-ipv4", STRICT_FORWARD_PORTS.name: "strict-forward-ports"}


def conf_warnings(observed: Observed) -> list[Warning_]:
    """The firewalld.conf settings that defeat the rules, each with what consent would change.
    StrictForwardPorts=yes is named even with nothing installed (it defeats any install);
    RFC3964_IPv4=yes when the recorded rules include IPv6 ones (and firewalld is older than
    2.3, or of an unknown version)."""
    conf, record = observed.conf, observed.record
    if conf is None or conf.error is not None:
        return []
    how = (
        "and reloads firewalld"
        if observed.live
        else "in firewalld.conf, applied at firewalld's next start"
    )
    out = []
    for knob in KNOBS:
        if not conf.has(knob.name) or not conf.on(knob.name) or not knob.defeats(conf.version):
            continue
        if knob.ipv6_only and not (record is not None and "ipv6" in record.settings.ipvs):
            continue
        out.append(
            Warning_(
                CONF_WARNING[knob.name],
                f"{knob.name}={conf.value(knob.name)}: {knob.breaks}; `tproxy-firewalld install "
                f"--configure-firewalld` sets {knob.name}={WANTED} {how} (uninstall puts it back), "
                f"or set it yourself",
            )
        )
    return out


def _nameserver_warnings(observed: Observed) -> list[Warning_]:
    assert observed.record is not None
    s = observed.record.settings
    if not (s.redirect_dns and not s.redirect_all_dns_traffic):
        return []
    try:
        now = read_nameservers(str(observed.target.path(s.resolv_conf_path.lstrip("/"))))
    except SettingsError:
        now = ()
    if set(now) == set(s.dns_nameservers or ()):
        return []
    return [
        Warning_(
            "nameservers-moved",
            f"the nameservers in {s.resolv_conf_path} ({', '.join(now) or 'none'}) differ from those "
            f"in the installed DNS rules ({', '.join(s.dns_nameservers or ()) or 'none'}); "
            "run install again to follow them",
            "redirect_dns",
        )
    ]


def _module_warnings(observed: Observed, profile: Profile) -> list[Warning_]:
    """The kernel must still be able to load what the installed rules use (a new kernel
    without kernel-modules-extra puts firewalld into FAILED at its next start)."""
    if not observed.target.live_system or observed.record is None:
        return []
    try:
        check_rules(build_ruleset(observed.record.settings, profile, observed.record.template))
    except RulesRejected as exc:
        return [Warning_("rules-rejected", exc.message)]
    except TproxyError:
        return []
    return []


def _daemon_warnings(
    daemon: DaemonInfo, observed: Observed, installed: dict[str, int]
) -> list[Warning_]:
    warnings = []
    # the kernel's tables are the live system's only (read by observe)
    foreign = observed.foreign_iptables
    direct = any(c is not None and not c.is_empty() for c in (observed.runtime, observed.permanent))
    if foreign and reload_flushes(daemon, direct):
        when = (
            "on every start, reload and stop (firewalld < 2.0)"
            if before_2(daemon)
            else "on every start, reload and stop (FirewallBackend=iptables)"
            if daemon.backend == "iptables"
            else "on start, reload and stop once direct rules exist (firewalld >= 2.0)"
        )
        chains = all(len(f.split()) == 3 for f in foreign)
        rules = all(len(f.split()) > 3 for f in foreign)
        what = "chains" if chains else "rules" if rules else "chains and rules"
        warnings.append(
            Warning_(
                "iptables-flush",
                f"firewalld flushes all iptables tables {when}; these {what} of other tools would be "
                f"wiped: {shown(foreign)}",
            )
        )
    return warnings
