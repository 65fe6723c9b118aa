"""The state record, ``/var/lib/tproxy-firewalld/installed.json``: what the last install applied.

It is read and validated before anything changes (a corrupt record is reported, never a
traceback), its settings go through the settings' parsers like any other input, and writing it
is a step of the plan like the others (see :mod:`apply`).
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tproxy_firewalld.errors import ExitCode, SettingsError, TproxyError, os_error
from tproxy_firewalld.fwconf import ConfChange
from tproxy_firewalld.kuma import KumaSettings
from tproxy_firewalld.readfile import NotRegular, TooLarge, read_regular

SCHEMA = "tproxy-firewalld/installed/2"
MAX_RECORD = 1024 * 1024


class RecordError(TproxyError):
    """The record exists but cannot be used (unreadable, not ours, corrupt)."""

    exit_code = ExitCode.IO_ERROR


@dataclass(frozen=True)
class Record:
    settings: KumaSettings
    #: addresses install put on lo (and uninstall takes away again), e.g. ("::6/128",)
    loopback_added: tuple[str, ...] = ()
    #: a custom rules template the rules were rendered from (None: the profile's own)
    template: Optional[str] = None
    profile: str = "kuma"
    #: not part of the identity: when it was written
    installed_at: str = field(default="", compare=False)
    #: firewalld.conf settings install changed (with --configure-firewalld), each with the
    #: value uninstall puts back. An optional key: records without it (older ones) mean none.
    firewalld_conf: tuple[ConfChange, ...] = ()
    #: the names among ``firewalld_conf`` that an uninstall has started to put back (written
    #: before it changes firewalld.conf): a run that finds one at its ``before`` value knows
    #: it was its own doing and finishes the job (the reload), instead of warning that
    #: somebody changed it. An optional key.
    conf_restoring: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        restoring = {"firewalld_conf_restoring": list(self.conf_restoring)}
        return {
            "schema": SCHEMA,
            "profile": self.profile,
            "installed_at": self.installed_at,
            "template": self.template,
            "loopback_added": list(self.loopback_added),
            "firewalld_conf": [c.to_json() for c in self.firewalld_conf],
            **(restoring if self.conf_restoring else {}),
            "settings": self.settings.to_json(),
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


def read_record(path: Path) -> Optional[Record]:
    """The record, None if there is none; RecordError if it cannot be used."""
    try:
        data = read_regular(path, MAX_RECORD, follow=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RecordError(f"{path}: is a symbolic link; refusing to follow it") from None
        raise RecordError(str(os_error(path, exc, "read"))) from None
    except NotRegular:
        raise RecordError(f"{path}: is not a regular file") from None
    except TooLarge:
        raise RecordError(f"{path}: larger than {MAX_RECORD} bytes; not a record of ours") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{path}: not valid JSON ({exc})") from None
    return record_from_json(doc, str(path))


def record_from_json(doc: Any, source: str) -> Record:
    """A record from its JSON document: every field's type is checked, so that a document of
    any shape is either a Record or a RecordError (never another exception)."""
    try:
        return _from_json(doc, source)
    except SettingsError as exc:
        raise RecordError(exc.message) from None


def _from_json(doc: Any, source: str) -> Record:
    if not isinstance(doc, dict):
        raise RecordError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if type(doc.get("version")) is int and doc["version"] == 1:
        return _from_v1(doc, source)
    if doc.get("schema") != SCHEMA:
        raise RecordError(f"{source}: unknown schema {doc.get('schema')!r} (expected {SCHEMA})")
    loopback = doc.get("loopback_added", [])
    template = doc.get("template")
    if not isinstance(loopback, list) or not all(a in ("::6/128",) for a in loopback):
        raise RecordError(f"{source}: loopback_added must be a list of known addresses")
    if template is not None and (not isinstance(template, str) or not template.startswith("/")):
        raise RecordError(f"{source}: template must be an absolute path or null")
    if doc.get("profile", "kuma") != "kuma":
        raise RecordError(f"{source}: unknown profile {doc.get('profile')!r}")
    installed_at = doc.get("installed_at", "")
    if not isinstance(installed_at, str) or len(installed_at) > 64:
        raise RecordError(f"{source}: installed_at must be a time (text)")
    conf = doc.get("firewalld_conf", [])
    if not isinstance(conf, list) or len(conf) > 8:
        raise RecordError(f"{source}: firewalld_conf must be a list of changed settings")
    changes = tuple(ConfChange.from_json(c, source) for c in conf)
    if len({c.name for c in changes}) != len(changes):
        raise RecordError(f"{source}: firewalld_conf names a setting twice")
    restoring = doc.get("firewalld_conf_restoring", [])
    names = {c.name for c in changes}
    if (
        not isinstance(restoring, list)
        or not all(isinstance(n, str) and n in names for n in restoring)
        or len(set(restoring)) != len(restoring)
    ):
        raise RecordError(
            f"{source}: firewalld_conf_restoring must list settings named in firewalld_conf"
        )
    return Record(
        settings=KumaSettings.from_json(doc.get("settings"), f"{source}: settings"),
        loopback_added=tuple(loopback),
        template=template,
        installed_at=installed_at,
        firewalld_conf=changes,
        conf_restoring=tuple(restoring),
    )


#: version 1 (tproxy-firewalld 0.1.0) named some settings differently
_V1_NAMES = {
    "inbound_port": "redirect_inbound_port",
    "outbound_port": "redirect_outbound_port",
    "dns_port": "redirect_dns_port",
    "inbound_exclude_ports": "exclude_inbound_ports",
    "inbound_include_ports": "include_inbound_ports",
    "inbound_exclude_ips": "exclude_inbound_ips",
    "inbound_insert_instead_of_append": "redirect_inbound_insert_instead_of_append",
    "outbound_exclude_ports": "exclude_outbound_ports",
    "outbound_include_ports": "include_outbound_ports",
    "outbound_exclude_ips": "exclude_outbound_ips",
    "outbound_exclude_ports_for_uids": "exclude_outbound_ports_for_uids",
    "outbound_insert_instead_of_append": "redirect_outbound_insert_instead_of_append",
    "dns_enabled": "redirect_dns",
    "dns_capture_all": "redirect_all_dns_traffic",
    "dns_skip_conntrack_zone_split": "skip_dns_conntrack_zone_split",
    "dns_resolv_conf_path": "resolv_conf_path",
    "log_enabled": "iptables_logs",
}


def _from_v1(doc: dict[str, Any], source: str) -> Record:
    old = doc.get("settings")
    if not isinstance(old, dict):
        raise RecordError(f"{source}: settings must be an object")
    new: dict[str, Any] = {}
    for name, value in old.items():
        if name == "outbound_exclude_ports_for_uids" and isinstance(value, list):
            value = [_v1_uid_exclusion(v, source) if isinstance(v, dict) else v for v in value]
        elif name == "vnet" and isinstance(value, list):
            value = [_v1_vnet(v, source) if isinstance(v, dict) else v for v in value]
        new[_V1_NAMES.get(name, str(name))] = value
    if new.get("redirect_all_dns_traffic"):
        new["redirect_dns"] = False  # 0.1.0 recorded the "implied" enabled flag
    added = doc.get("ipv6_loopback_added") is True
    return Record(
        settings=KumaSettings.from_json(new, f"{source}: settings"),
        loopback_added=("::6/128",) if added else (),
    )


def _v1_uid_exclusion(entry: dict[str, Any], source: str) -> Any:
    """0.1.0's {protocols: [..], ports: [..], uids: ".."} as the setting's text."""
    if not {"protocols", "ports", "uids"} <= set(entry):
        return entry  # the setting's parser refuses it
    protocols, ports, uids = entry["protocols"], entry["ports"], entry["uids"]
    if not (
        _strings(protocols) and _strings(ports) and isinstance(uids, str) and protocols and ports
    ):
        raise RecordError(
            f"{source}: settings: outbound_exclude_ports_for_uids entries must be "
            "{protocols: [text], ports: [text], uids: text}"
        )
    return ":".join(
        (",".join(protocols), ",".join(ports).replace(":", "-"), uids.replace(":", "-"))
    )


def _v1_vnet(entry: dict[str, Any], source: str) -> str:
    iface, cidr = entry.get("iface"), entry.get("cidr")
    if not isinstance(iface, str) or not isinstance(cidr, str):
        raise RecordError(f"{source}: settings: vnet entries must be {{iface: text, cidr: text}}")
    return f"{iface}:{cidr}"


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
