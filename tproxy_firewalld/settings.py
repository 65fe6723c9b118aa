"""Settings: the same as ``kumactl install transparent-proxy`` takes, from the same places.

Precedence, as in Kuma: defaults < ``--config`` files (in order; lists replace) <
``KUMA_TRANSPARENT_PROXY_*`` environment < flags. Every value is validated into a typed,
frozen :class:`Settings`; nothing unvalidated ever reaches a rule template, so no value can
carry extra iptables arguments. Errors are one line naming the flag, variable or config key
path, the value, and what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import pwd
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from tproxy_firewalld.errors import SettingsError

ENV_PREFIX = "KUMA_TRANSPARENT_PROXY_"
DEFAULT_UID = 5678
DEFAULT_USER = "kuma-dp"
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid"
#: A bound on every list setting: far beyond any real configuration, small enough that the
#: rule set stays well inside firewalld's and iptables' limits.
MAX_LIST = 256
#: iptables' multiport match takes at most 15 ports, a range counting as two.
MULTIPORT_MAX = 15


class Invalid(ValueError):
    """A value failed validation; the loader adds where the value came from."""


# --------------------------------------------------------------------------- typed values


@dataclass(frozen=True)
class UidExclusion:
    """One ``--exclude-outbound-ports-for-uids`` entry: ``[proto:][ports:]uids``."""

    protocols: tuple[str, ...]
    #: multiport tokens, ranges already in iptables' ``a:b`` form
    ports: tuple[str, ...]
    #: owner match token: ``1000`` or ``106:108``
    uids: str


@dataclass(frozen=True)
class VnetNetwork:
    iface: str
    cidr: str

    @property
    def ipv(self) -> str:
        return "ipv6" if ":" in self.cidr else "ipv4"


@dataclass(frozen=True)
class Settings:
    kuma_dp_user: str = ""
    kuma_dp_uid: int = DEFAULT_UID
    ip_family_mode: str = "dualstack"
    redirect_inbound: bool = True
    inbound_port: int = 15006
    inbound_exclude_ports: tuple[int, ...] = ()
    inbound_include_ports: tuple[int, ...] = ()
    inbound_exclude_ips: tuple[str, ...] = ()
    inbound_insert_instead_of_append: bool = False
    redirect_outbound: bool = True
    outbound_port: int = 15001
    outbound_exclude_ports: tuple[int, ...] = ()
    outbound_include_ports: tuple[int, ...] = ()
    outbound_exclude_ips: tuple[str, ...] = ()
    outbound_exclude_ports_for_uids: tuple[UidExclusion, ...] = ()
    outbound_insert_instead_of_append: bool = False
    dns_enabled: bool = False
    dns_capture_all: bool = False
    dns_port: int = 15053
    dns_skip_conntrack_zone_split: bool = False
    dns_resolv_conf_path: str = "/etc/resolv.conf"
    #: the nameservers read from resolv.conf when the settings were loaded
    dns_nameservers: tuple[str, ...] = ()
    vnet: tuple[VnetNetwork, ...] = ()
    log_enabled: bool = False
    log_level: int = 7
    drop_invalid_packets: bool = False
    #: things the admin should know (e.g. a setting that has no effect); not part of identity
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ipvs(self) -> tuple[str, ...]:
        return ("ipv4", "ipv6") if self.ip_family_mode == "dualstack" else ("ipv4",)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("warnings")
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)} - {"warnings"}
        unknown = set(data) - known
        if unknown:
            raise SettingsError(f"recorded settings have unknown fields: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name == "outbound_exclude_ports_for_uids":
                value = tuple(
                    UidExclusion(tuple(v["protocols"]), tuple(v["ports"]), v["uids"]) for v in value
                )
            elif name == "vnet":
                value = tuple(VnetNetwork(v["iface"], v["cidr"]) for v in value)
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)


# --------------------------------------------------------------------------- value parsers


def _show(value: object) -> str:
    """A value as it appears in an error: quoted, control characters escaped, one line."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"'{shown}'"


def parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    # Go's strconv.ParseBool, which Kuma's flags and envconfig use.
    text = str(raw)
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise Invalid(f"value {_show(raw)} is not a valid boolean (true or false)")


def _parse_uint(raw: object, low: int, high: int, what: str) -> int:
    if isinstance(raw, bool):
        raise Invalid(f"value {_show(raw)} is not a valid {what}")
    if isinstance(raw, int):
        value = raw
    else:
        text = str(raw)
        # Only plain ASCII digits: int() would also take " 5", "+5", "1_000" and other
        # scripts' digits, none of which iptables understands.
        if not re.fullmatch(r"[0-9]{1,10}", text):
            raise Invalid(f"value {_show(raw)} is not a valid {what}")
        value = int(text)
    if not low <= value <= high:
        raise Invalid(f"value {_show(raw)} is not a valid {what}")
    return value


def parse_port(raw: object) -> int:
    return _parse_uint(raw, 1, 65535, "port (uint16 in the range [1, 65535])")


def _items(raw: object) -> list[object]:
    """A list setting from any source: a YAML list, repeated flags, or comma-separated text."""
    if raw is None:
        return []
    values = raw if isinstance(raw, list | tuple) else [raw]
    items: list[object] = []
    for value in values:
        if isinstance(value, str):
            items.extend(part.strip() for part in value.split(",") if part.strip() != "")
        else:
            items.append(value)
    if len(items) > MAX_LIST:
        raise Invalid(f"has {len(items)} entries; at most {MAX_LIST} are allowed")
    return items


def parse_ports(raw: object) -> tuple[int, ...]:
    # Kuma keeps duplicates (and so renders a rule per entry); so do we.
    return tuple(parse_port(item) for item in _items(raw))


def _parse_ip(raw: object, *, need_prefix: bool = False) -> str:
    text = str(raw).strip() if isinstance(raw, str) else str(raw)
    try:
        if (need_prefix and "/" not in text) or "%" in text:
            raise ValueError
        # strict=False: Kuma passes "172.32.16.8/16" through and iptables normalises it.
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(
            f"invalid IP address: {_show(raw)}. Expected format: <ip> or <ip>/<cidr> "
            "(e.g., 10.0.0.1, 172.16.0.0/16, fe80::1, fe80::/10)"
        ) from None
    return text


def parse_ips(raw: object) -> tuple[str, ...]:
    return tuple(_parse_ip(item) for item in _items(raw))


def _port_range(text: str) -> str:
    low, sep, high = text.partition("-")
    first = parse_port(low)
    if not sep:
        return str(first)
    last = parse_port(high)
    if first > last:
        raise Invalid(f"invalid port range {_show(text)}: {first} is greater than {last}")
    return f"{first}:{last}"


def _uid_range(text: str) -> str:
    what = f"UID (an integer in the range [0, {MAX_UID}])"
    if text == "*":
        raise Invalid("wildcard '*' is not allowed for UIDs")
    if "," in text:
        raise Invalid(
            f"invalid UID entry: {_show(text)}. It should either be a single item or a range"
        )
    low, sep, high = text.partition("-")
    first = _parse_uint(low, 0, MAX_UID, what)
    if not sep:
        return str(first)
    last = _parse_uint(high, 0, MAX_UID, what)
    if first > last:
        raise Invalid(f"invalid UID range {_show(text)}: {first} is greater than {last}")
    return f"{first}:{last}"


def parse_uid_exclusion(raw: object) -> UidExclusion:
    text = str(raw).strip()
    parts = text.split(":")
    if len(parts) > 3 or text == "":
        raise Invalid(
            f"invalid format for excluding ports by UIDs: {_show(raw)}. "
            "Expected format: <protocol:>?<ports:>?<uids>"
        )
    protocols_text, ports_text = "*", "*"
    if len(parts) == 3:
        protocols_text, ports_text, uids_text = parts
    elif len(parts) == 2:
        ports_text, uids_text = parts
    else:
        (uids_text,) = parts
    if protocols_text in ("", "*"):
        protocols: tuple[str, ...] = ("tcp", "udp")
    else:
        names = [p.strip().lower() for p in protocols_text.split(",")]
        for name in names:
            if name not in ("tcp", "udp"):
                raise Invalid(f"invalid or unsupported protocol: {_show(name)} (tcp or udp)")
        protocols = tuple(dict.fromkeys(names))
    if ports_text in ("", "*"):
        ports: tuple[str, ...] = ("1:65535",)
    else:
        ports = tuple(_port_range(p.strip()) for p in ports_text.split(","))
        weight = sum(2 if ":" in p else 1 for p in ports)
        if weight > MULTIPORT_MAX:
            raise Invalid(
                f"too many ports in {_show(ports_text)}: iptables' multiport match takes at most "
                f"{MULTIPORT_MAX} (a range counts as two); split it into several entries"
            )
    return UidExclusion(protocols=protocols, ports=ports, uids=_uid_range(uids_text.strip()))


def parse_uid_exclusions(raw: object) -> tuple[UidExclusion, ...]:
    # Each entry is itself comma-separated ("tcp:53,80:1000"), so entries are separated by
    # ";" (as Kuma's docs write them) or given as separate flags / list items.
    values = raw if isinstance(raw, list | tuple) else [raw]
    entries = [
        part.strip()
        for value in values
        if value is not None
        for part in str(value).split(";")
        if part.strip()
    ]
    if len(entries) > MAX_LIST:
        raise Invalid(f"has {len(entries)} entries; at most {MAX_LIST} are allowed")
    return tuple(parse_uid_exclusion(v) for v in entries)


_IFACE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,14}\+?|\+")


def parse_vnet(raw: object) -> VnetNetwork:
    text = str(raw).strip()
    iface, sep, cidr = text.partition(":")
    if not sep:
        raise Invalid(
            f"invalid virtual network definition: {_show(raw)} (expected <interface>:<CIDR>)"
        )
    if not _IFACE.fullmatch(iface) or len(iface.rstrip("+")) > 15:
        raise Invalid(
            f"invalid interface name {_show(iface)} in {_show(raw)}: 1-15 characters from "
            "letters, digits, '_', '.', '-', '@', optionally ending in '+' (a wildcard)"
        )
    try:
        if "/" not in cidr:
            raise ValueError
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise Invalid(
            f"invalid CIDR definition for {_show(raw)}: {_show(cidr)} is not a CIDR"
        ) from None
    return VnetNetwork(iface=iface, cidr=cidr)


def parse_vnets(raw: object) -> tuple[VnetNetwork, ...]:
    return tuple(parse_vnet(item) for item in _items(raw))


def parse_ip_family_mode(raw: object) -> str:
    if raw in ("dualstack", "ipv4"):
        return str(raw)
    raise Invalid(f"value {_show(raw)} is not valid: must be one of 'dualstack' or 'ipv4'")


def parse_user(raw: object) -> str:
    text = str(raw).strip()
    if text and not re.fullmatch(r"[0-9]+|[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", text):
        raise Invalid(f"value {_show(raw)} is not a valid UID or username")
    if text.isdigit() and int(text) > MAX_UID:
        raise Invalid(f"value {_show(raw)} is not a valid UID (0-{MAX_UID})")
    return text


def parse_log_level(raw: object) -> int:
    return _parse_uint(raw, 0, 7, "log level (an integer in the range [0, 7])")


def parse_path(raw: object) -> str:
    text = str(raw)
    if not text or "\0" in text:
        raise Invalid(f"value {_show(raw)} is not a valid path")
    return text


def must_be_false(reason: str) -> Callable[[object], bool]:
    def parse(raw: object) -> bool:
        if parse_bool(raw):
            raise Invalid(f"is not supported: {reason}")
        return False

    return parse


def must_be_empty(reason: str) -> Callable[[object], tuple[object, ...]]:
    def parse(raw: object) -> tuple[object, ...]:
        if _items(raw):
            raise Invalid(f"is not supported: {reason}")
        return ()

    return parse


# --------------------------------------------------------------------------- the settings table


@dataclass(frozen=True)
class Field:
    #: Kuma's config key path (YAML/JSON)
    key: str
    #: the Settings attribute, or None for keys that must keep their default
    attr: str | None
    parse: Callable[[object], Any]
    #: the kumactl flag, if there is one
    flag: str | None = None

    @property
    def env(self) -> str:
        # Kuma's envconfig names: the key path in SCREAMING_SNAKE_CASE ("kumaDPUser" is the
        # one key whose acronym split_words cannot guess).
        if self.key == "kumaDPUser":
            return ENV_PREFIX + "KUMA_DP_USER"
        words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", self.key.replace(".", "_"))
        return ENV_PREFIX + words.upper().replace("I_PS", "IPS").replace("U_I_DS", "UIDS")


_INBOUND_UIDS_BUG = (
    "Kuma turns it into a rule that returns all inbound traffic, silently disabling inbound "
    "redirection; use --exclude-inbound-ports or --exclude-inbound-ips"
)
_COMMENTS = "tproxy-firewalld identifies its rules by Kuma's comments, so they cannot be turned off"

FIELDS: tuple[Field, ...] = (
    Field("kumaDPUser", "kuma_dp_user", parse_user, "--kuma-dp-user"),
    Field("ipFamilyMode", "ip_family_mode", parse_ip_family_mode, "--ip-family-mode"),
    Field("redirect.inbound.enabled", "redirect_inbound", parse_bool, "--redirect-inbound"),
    Field("redirect.inbound.port", "inbound_port", parse_port, "--redirect-inbound-port"),
    Field(
        "redirect.inbound.excludePorts",
        "inbound_exclude_ports",
        parse_ports,
        "--exclude-inbound-ports",
    ),
    Field("redirect.inbound.includePorts", "inbound_include_ports", parse_ports),
    Field(
        "redirect.inbound.excludePortsForIPs",
        "inbound_exclude_ips",
        parse_ips,
        "--exclude-inbound-ips",
    ),
    Field("redirect.inbound.excludePortsForUIDs", None, must_be_empty(_INBOUND_UIDS_BUG)),
    Field(
        "redirect.inbound.insertRedirectInsteadOfAppend",
        "inbound_insert_instead_of_append",
        parse_bool,
        "--redirect-inbound-insert-instead-of-append",
    ),
    Field("redirect.outbound.enabled", "redirect_outbound", parse_bool),
    Field("redirect.outbound.port", "outbound_port", parse_port, "--redirect-outbound-port"),
    Field(
        "redirect.outbound.excludePorts",
        "outbound_exclude_ports",
        parse_ports,
        "--exclude-outbound-ports",
    ),
    Field("redirect.outbound.includePorts", "outbound_include_ports", parse_ports),
    Field(
        "redirect.outbound.excludePortsForIPs",
        "outbound_exclude_ips",
        parse_ips,
        "--exclude-outbound-ips",
    ),
    Field(
        "redirect.outbound.excludePortsForUIDs",
        "outbound_exclude_ports_for_uids",
        parse_uid_exclusions,
        "--exclude-outbound-ports-for-uids",
    ),
    Field(
        "redirect.outbound.insertRedirectInsteadOfAppend",
        "outbound_insert_instead_of_append",
        parse_bool,
        "--redirect-outbound-insert-instead-of-append",
    ),
    Field("redirect.dns.enabled", "dns_enabled", parse_bool, "--redirect-dns"),
    Field("redirect.dns.captureAll", "dns_capture_all", parse_bool, "--redirect-all-dns-traffic"),
    Field("redirect.dns.port", "dns_port", parse_port, "--redirect-dns-port"),
    Field(
        "redirect.dns.skipConntrackZoneSplit",
        "dns_skip_conntrack_zone_split",
        parse_bool,
        "--skip-dns-conntrack-zone-split",
    ),
    Field("redirect.dns.resolvConfigPath", "dns_resolv_conf_path", parse_path),
    Field("redirect.vnet.networks", "vnet", parse_vnets, "--vnet"),
    Field("log.enabled", "log_enabled", parse_bool, "--iptables-logs"),
    Field("log.level", "log_level", parse_log_level),
    Field("dropInvalidPackets", "drop_invalid_packets", parse_bool, "--drop-invalid-packets"),
    Field("comments.disabled", None, must_be_false(_COMMENTS)),
)

FIELDS_BY_KEY = {f.key: f for f in FIELDS}
FIELDS_BY_ENV = {f.env: f for f in FIELDS}
FIELDS_BY_FLAG = {f.flag: f for f in FIELDS if f.flag}

#: Kuma config keys that steer how kumactl runs iptables, not which rules exist. They are
#: accepted (a config file written for kumactl must load) and have no effect here.
IGNORED_KEYS = frozenset(
    {
        "dryRun",
        "verbose",
        "wait",
        "waitInterval",
        "storeFirewalld",
        "cniMode",
        "retry.maxRetries",
        "retry.sleepBetweenRetries",
        "iptablesExecutables",
        "iptablesExecutables.iptables",
        "iptablesExecutables.iptables-save",
        "iptablesExecutables.iptables-restore",
        "iptablesExecutables.ip6tables",
        "iptablesExecutables.ip6tables-save",
        "iptablesExecutables.ip6tables-restore",
        "executables",
        "redirect.inbound.chainName",
        "redirect.inbound.redirectChainName",
        "redirect.outbound.chainName",
        "redirect.outbound.redirectChainName",
    }
)
IGNORED_ENV = frozenset(
    ENV_PREFIX + name
    for name in (
        "DRY_RUN",
        "VERBOSE",
        "WAIT",
        "WAIT_INTERVAL",
        "STORE_FIREWALLD",
        "CNI_MODE",
        "RETRY_MAX_RETRIES",
        "RETRY_SLEEP_BETWEEN_RETRIES",
        "IPTABLES_EXECUTABLES",
    )
)
#: Kuma reads these (envconfig) but a different chain name would break Kuma's own uninstall
#: and ours; only the defaults are accepted.
FIXED_CHAIN_ENV = {
    ENV_PREFIX + "REDIRECT_INBOUND_CHAIN_NAME": "INBOUND",
    ENV_PREFIX + "REDIRECT_INBOUND_REDIRECT_CHAIN_NAME": "INBOUND_REDIRECT",
    ENV_PREFIX + "REDIRECT_OUTBOUND_CHAIN_NAME": "OUTBOUND",
    ENV_PREFIX + "REDIRECT_OUTBOUND_REDIRECT_CHAIN_NAME": "OUTBOUND_REDIRECT",
}


@dataclass(frozen=True)
class RawValue:
    value: object
    #: where it came from, as it appears in errors: "--flag", "ENV_VAR", "file.yaml: a.b"
    source: str


# --------------------------------------------------------------------------- loading


def _flatten(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, RawValue]:
    out: dict[str, RawValue] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise SettingsError(
                f"{source}: key {_show(key)} under {_show(prefix[:-1] or '/')} is not a string"
            )
        if path in FIELDS_BY_KEY:
            out[path] = RawValue(value, f"{source}: {path}")
        elif path in IGNORED_KEYS:
            continue
        elif isinstance(value, Mapping) and _is_section(path):
            out.update(_flatten(value, source, path + "."))
        elif value is None and any(k.startswith(path + ".") for k in FIELDS_BY_KEY):
            continue  # an empty section ("dns:") is fine
        else:
            raise SettingsError(f"{source}: unknown key {_show(path)}; {_known_keys_hint(path)}")
    return out


def _is_section(path: str) -> bool:
    return any(k.startswith(path + ".") for k in (*FIELDS_BY_KEY, *IGNORED_KEYS))


def _known_keys_hint(path: str) -> str:
    parent = path.rpartition(".")[0]
    siblings = sorted(
        k.removeprefix(parent + ".").split(".")[0]
        for k in FIELDS_BY_KEY
        if not parent or k.startswith(parent + ".")
    )
    where = f"under '{parent}'" if parent else "at the top level"
    return f"known keys {where}: {', '.join(dict.fromkeys(siblings))}"


def read_config_file(name: str, stdin: TextIO | None = None) -> dict[str, RawValue]:
    if name == "-":
        text = (stdin or sys.stdin).read()
        label = "<stdin>"
    else:
        label = name
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise SettingsError(
                f"unable to access configuration file '{name}', please check if the file exists "
                "and has the correct permissions"
            ) from None
    import yaml  # only when a config file is given: it is the slowest import of a run

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "not valid YAML or JSON"
        raise SettingsError(
            f"parsing configuration from file '{label}' failed{at}: {problem}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SettingsError(
            f"parsing configuration from file '{label}' failed: expected a mapping of settings, "
            f"got {type(data).__name__}"
        )
    return _flatten(data, label)


def read_env(env: Mapping[str, str]) -> dict[str, RawValue]:
    out: dict[str, RawValue] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in IGNORED_ENV:
            continue
        if name in FIXED_CHAIN_ENV:
            if value != FIXED_CHAIN_ENV[name]:
                raise SettingsError(
                    f"{name}: value {_show(value)} is not supported: the chain names are fixed "
                    f"(KUMA_MESH_{FIXED_CHAIN_ENV[name]}) so that uninstall can find them"
                )
            continue
        known = FIELDS_BY_ENV.get(name)
        if known is None:
            raise SettingsError(
                f"{name}: unknown variable; known: {', '.join(sorted(FIELDS_BY_ENV))}"
            )
        out[known.key] = RawValue(value, name)
    return out


def layer_flags(flags: Mapping[str, object]) -> dict[str, RawValue]:
    """Flags given on the command line (name -> value; None or [] means "not given")."""
    out: dict[str, RawValue] = {}
    for flag, value in flags.items():
        if value is None or value == [] or value == ():
            continue
        known = FIELDS_BY_FLAG[flag]
        out[known.key] = RawValue(value, flag)
    return out


def load_settings(
    *,
    config_files: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    stdin: TextIO | None = None,
    resolve: bool = True,
) -> Settings:
    """Build the settings from defaults, files, environment and flags, in that order.

    ``resolve`` looks up the host facts the rule set depends on: the kuma-dp user in the
    passwd database and the nameservers in resolv.conf.
    """
    raw: dict[str, RawValue] = {}
    for spec in config_files:
        for name in (n for n in spec.split(",") if n) if spec != "-" else ["-"]:
            raw.update(read_config_file(name, stdin))
    raw.update(read_env(env or {}))
    flag_layer = layer_flags(flags or {})
    if _given_true(flag_layer, "redirect.dns.enabled") and _given_true(
        flag_layer, "redirect.dns.captureAll"
    ):
        raise SettingsError(
            "only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified"
        )
    raw.update(flag_layer)

    values: dict[str, Any] = {}
    for key, item in raw.items():
        known = FIELDS_BY_KEY[key]
        try:
            parsed = known.parse(item.value)
        except Invalid as exc:
            raise SettingsError(f"{item.source}: {exc}") from None
        if known.attr:
            values[known.attr] = parsed
    return _finish(values, resolve=resolve)


def _given_true(layer: Mapping[str, RawValue], key: str) -> bool:
    item = layer.get(key)
    if item is None:
        return False
    try:
        return parse_bool(item.value)
    except Invalid:
        return False


def _finish(values: dict[str, Any], *, resolve: bool) -> Settings:
    warnings: list[str] = []
    if values.get("dns_capture_all"):
        values["dns_enabled"] = True  # Kuma: captureAll implies enabled
    user = values.get("kuma_dp_user", "")
    values["kuma_dp_uid"] = resolve_kuma_dp_user(user) if resolve else _uid_unresolved(user)
    for direction in ("inbound", "outbound"):
        if values.get(f"{direction}_include_ports") and values.get(f"{direction}_exclude_ports"):
            warnings.append(
                f"redirect.{direction}.excludePorts has no effect because "
                f"redirect.{direction}.includePorts is set (as in Kuma)"
            )
    ports = {
        "--redirect-inbound-port": values.get("inbound_port", 15006),
        "--redirect-outbound-port": values.get("outbound_port", 15001),
    }
    if values.get("dns_enabled"):
        ports["--redirect-dns-port"] = values.get("dns_port", 15053)
    if len(set(ports.values())) < len(ports):
        warnings.append(f"the redirect ports are not distinct: {ports}")
    if values.get("dns_enabled") and resolve:
        path = values.get("dns_resolv_conf_path", "/etc/resolv.conf")
        values["dns_nameservers"] = read_nameservers(path)
        if not values.get("dns_capture_all"):
            ipvs = (
                ("ipv4", "ipv6")
                if values.get("ip_family_mode", "dualstack") == "dualstack"
                else ("ipv4",)
            )
            for ipv in ipvs:
                if not [n for n in values["dns_nameservers"] if _ipv_of(n) == ipv]:
                    name = "IPv4" if ipv == "ipv4" else "IPv6"
                    warnings.append(
                        f"no {name} DNS servers found in {path}. "
                        f"DNS traffic capture for {name} will be disabled"
                    )
    values["warnings"] = tuple(warnings)
    return Settings(**values)


def _uid_unresolved(user: str) -> int:
    return int(user) if user.isdigit() else DEFAULT_UID


def resolve_kuma_dp_user(user: str) -> int:
    """Kuma's lookup: a numeric uid as is (it need not exist yet), else a user name.

    With nothing given: uid 5678 if it exists, else user ``kuma-dp``, else 5678 (the proxy's
    package may create the user later; the numeric uid is what the rules match).
    """
    if user == "":
        try:
            return pwd.getpwuid(DEFAULT_UID).pw_uid
        except KeyError:
            pass
        try:
            return pwd.getpwnam(DEFAULT_USER).pw_uid
        except KeyError:
            return DEFAULT_UID
    if user.isdigit():
        uid = int(user)
        if uid > MAX_UID:
            raise SettingsError(f"--kuma-dp-user: value '{user}' is not a valid UID (0-{MAX_UID})")
        return uid
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise SettingsError(
            f"the specified UID or username ('{user}') does not refer to a valid user on the host"
        ) from None


def _ipv_of(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def read_nameservers(path: str) -> tuple[str, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        raise SettingsError(f"unable to read file {path}") from None
    servers: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            if "%" in words[1]:
                continue  # a scoped "fe80::1%eth0": iptables cannot match the scope
            try:
                servers.append(str(ipaddress.ip_address(words[1])))
            except ValueError:
                continue
    return tuple(dict.fromkeys(servers))


def iter_flag_names() -> Iterable[str]:
    return FIELDS_BY_FLAG.keys()
