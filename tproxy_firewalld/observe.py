"""Observe: what firewalld, direct.xml, lo and the record hold now. Reads only.

The one place that decides live or offline: live when firewalld runs (see
:func:`firewalld.connect`: offline only when it positively does not), offline with
``--offline``, ``--root`` or no firewalld.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional

from tproxy_firewalld import host
from tproxy_firewalld.directxml import read_direct_xml
from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.errors import FileError
from tproxy_firewalld.firewalld import DaemonInfo, Firewalld, connect
from tproxy_firewalld.flush import foreign_iptables
from tproxy_firewalld.fwconf import (
    ConfView,
    file_view,
    live_view,
    parse_conf,
    read_conf,
)
from tproxy_firewalld.kuma import KUMA, Profile
from tproxy_firewalld.record import Record, RecordError, read_record
from tproxy_firewalld.target import Target

ClientFactory = Callable[[Target], tuple[Optional[Firewalld], str]]


@dataclass(frozen=True)
class Observed:
    target: Target
    #: "live" (firewalld over D-Bus) or "offline" (direct.xml only)
    mode: str
    offline_reason: str
    daemon: Optional[DaemonInfo]
    runtime: Optional[DirectConfig]
    permanent: Optional[DirectConfig]
    file: DirectConfig
    record: Optional[Record]
    #: why the record could not be used (it exists but is corrupt, unreadable, ...)
    record_error: Optional[str] = None
    #: addresses the profile needs on lo -> whether they are there (live system only)
    loopback: dict[str, bool] = field(default_factory=dict)
    #: the firewalld.conf settings that can defeat the rules (RFC3964_IPv4, StrictForwardPorts)
    conf: Optional[ConfView] = None
    #: other tools' chains and rules in the kernel's iptables tables, which a firewalld flush
    #: would wipe (live system, firewalld running, only)
    foreign_iptables: tuple[str, ...] = ()
    #: live: those settings as the kernel shows them in force (firewalld applies firewalld.conf
    #: only at start and reload; ``conf`` is its memory, which a Set changes at once). A
    #: setting the kernel does not show is left out (see :mod:`applied`).
    applied: Mapping[str, str] = field(default_factory=dict)
    #: live: firewalld.conf on disk, KEY=VALUE as firewalld reads it (None: no file, or it
    #: cannot be read); set against ``daemon.config`` it shows edits firewalld has not loaded
    conf_file: Optional[Mapping[str, str]] = None

    @property
    def live(self) -> bool:
        return self.mode == "live"


def default_client(target: Target) -> tuple[Optional[Firewalld], str]:
    if target.root is not None:
        return None, "--root given"
    if target.offline:
        return None, "--offline given"
    return connect(target.bus_address, target.timeout)


@contextlib.contextmanager
def session(
    target: Target, client: Optional[ClientFactory] = None, profile: Profile = KUMA
) -> Iterator[tuple[Observed, Optional[Firewalld]]]:
    """Connect (when firewalld runs), observe, and close the connection at the end."""
    fw, why = (client or default_client)(target)
    try:
        yield observe(target, fw, why, profile), fw
    finally:
        if fw is not None:
            fw.close()


def observe(target: Target, fw: Optional[Firewalld], why: str, profile: Profile = KUMA) -> Observed:
    record, record_error = None, None
    try:
        record = read_record(target.state_file)
    except RecordError as exc:
        record_error = exc.message
    file = read_direct_xml(target.direct_xml)
    loopback: dict[str, bool] = {}
    if target.live_system and host.ipv6_available():
        loopback = {
            address: host.has_address("lo", address) for address in profile.loopback.values()
        }
    conf_path = target.conf_file
    if fw is None:
        conf = file_view(conf_path, target.firewalld_version())
        return Observed(
            target, "offline", why, None, None, None, file, record, record_error, loopback, conf
        )
    daemon = fw.daemon or fw.info()
    runtime = fw.runtime()
    foreign: tuple[str, ...] = ()
    if target.live_system:
        foreign = foreign_iptables(runtime, profile.owner, daemon.backend == "iptables")
    conf = live_view(conf_path, daemon.config, daemon.version)
    applied = {k: v for k, v in fw.applied_conf().items() if conf.has(k)}
    try:
        text = read_conf(conf_path)
    except FileError:
        text = None
    return Observed(
        target,
        "live",
        "",
        daemon,
        runtime,
        fw.permanent(),
        file,
        record,
        record_error,
        loopback,
        conf,
        foreign,
        applied=applied,
        conf_file=parse_conf(text) if text is not None else None,
    )
