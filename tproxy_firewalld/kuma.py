"""Kuma's transparent proxy: its settings (as ``kumactl install transparent-proxy`` takes them)
and its rule-set profile (templates, ownership marks).

Every setting is declared once, below. Precedence, as in Kuma: defaults < ``--config`` files
(in order; lists replace) < ``KUMA_TRANSPARENT_PROXY_*`` environment < flags.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, TextIO

from tproxy_firewalld.entries import Owner
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.readfile import NotRegular, TooLarge, read_regular
from tproxy_firewalld.settings import (
    Invalid,
    RawValue,
    Settings,
    Warning_,
    family,
    items,
    parse_bool,
    parse_ip,
    parse_path,
    parse_port,
    parse_ports,
    parse_uint,
    refuse_nonempty,
    refuse_true,
    setting,
    show,
)

ENV_PREFIX = "KUMA_TRANSPARENT_PROXY_"
#: The maintained Kuma release lines whose rule sets and flags are reproduced, oldest first,
#: and the patch release each is read from (Kuma's tags; the rules changed within lines).
KUMA_RELEASES = ("2.7", "2.11", "2.12", "2.13", "2.14")
KUMA_TAGS = {
    "2.7": "2.7.29",
    "2.11": "2.11.18",
    "2.12": "2.12.14",
    "2.13": "2.13.10",
    "2.14": "2.14.3",
}
NEWEST = KUMA_RELEASES[-1]
#: The releases with kumactl's newer engine (2.9+): comments, config files, more flags.
SINCE_2_9 = ("2.11", "2.12", "2.13", "2.14")
ONLY_2_7 = ("2.7",)
DEFAULT_UID = 5678
DEFAULT_USER = "kuma-dp"
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid"
#: iptables' multiport match takes at most 15 ports, a range counting as two.
MULTIPORT_MAX = 15
#: Kuma's chain prefix (``consts.IptablesChainsPrefix``) and comment prefix
#: (``consts.IptablesRuleCommentPrefix``), each with its separator: what marks an entry as ours.
CHAIN_PREFIX = "KUMA_MESH_"
COMMENT_PREFIX = "kuma/mesh/transparent/proxy/"
OWNER = Owner(CHAIN_PREFIX, COMMENT_PREFIX)
#: the address Kuma's IPv6 loop-prevention rule matches (``-s ::6/128``); it must be on lo
IPV6_PASSTHROUGH = "::6/128"


def env_name(key: str) -> str:
    """Kuma's envconfig name for a config key: the path in SCREAMING_SNAKE_CASE."""
    if key == "kumaDPUser":  # the one key whose acronym split_words cannot guess
        return ENV_PREFIX + "KUMA_DP_USER"
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key.replace(".", "_"))
    return ENV_PREFIX + words.upper().replace("I_PS", "IPS").replace("U_I_DS", "UIDS")


def kuma(default: Any, parse: Any, help: str, *, key: Optional[str] = None, **kw: Any) -> Any:
    """A setting with Kuma's config key and the environment variable derived from it."""
    return setting(default, parse, help, key=key, env=env_name(key) if key else None, **kw)


# --------------------------------------------------------------------------- typed values


@dataclass(frozen=True)
class UidExclusion:
    """One ``--exclude-outbound-ports-for-uids`` entry: ``[proto:][ports:]uids``."""

    protocols: tuple[str, ...]
    #: multiport tokens, ranges already in iptables' ``a:b`` form
    ports: tuple[str, ...]
    #: owner match token: ``1000`` or ``106:108``
    uids: str

    def to_text(self) -> str:
        return ":".join(
            (
                ",".join(self.protocols),
                ",".join(p.replace(":", "-") for p in self.ports),
                self.uids.replace(":", "-"),
            )
        )


@dataclass(frozen=True)
class VnetNetwork:
    iface: str
    cidr: str

    @property
    def ipv(self) -> str:
        return family(self.cidr)

    def to_text(self) -> str:
        return f"{self.iface}:{self.cidr}"


def _port_range(text: str) -> str:
    low, sep, high = text.partition("-")
    first = parse_port(low)
    if not sep:
        return str(first)
    last = parse_port(high)
    if first > last:
        raise Invalid(f"invalid port range {show(text)}: {first} is greater than {last}")
    return f"{first}:{last}"


_EMPTY_UIDS = (
    "an empty UID is refused: kumactl 2.9+ turns it into a RETURN without an owner match, "
    "which takes all outbound TCP and UDP traffic out of the mesh (kumactl 2.7 refuses it)"
)


def _uid_range(text: str) -> str:
    what = f"UID (an integer in the range [0, {MAX_UID}])"
    if text == "*":
        raise Invalid("wildcard '*' is not allowed for UIDs")
    if text == "":
        raise Invalid(_EMPTY_UIDS)
    if "," in text:
        raise Invalid(
            f"invalid UID entry: {show(text)}. It should either be a single item or a range"
        )
    low, sep, high = text.partition("-")
    first = parse_uint(low, 0, MAX_UID, what)
    if not sep:
        return str(first)
    last = parse_uint(high, 0, MAX_UID, what)
    if first > last:
        raise Invalid(f"invalid UID range {show(text)}: {first} is greater than {last}")
    return f"{first}:{last}"


def parse_uid_exclusion(raw: object) -> UidExclusion:
    if isinstance(raw, UidExclusion):
        raw = raw.to_text()
    if not isinstance(raw, (str, int)) or isinstance(raw, bool):
        raise Invalid(f"invalid format for excluding ports by UIDs: {show(raw)}")
    text = str(raw).strip()
    if text == "":
        raise Invalid(_EMPTY_UIDS)
    parts = text.split(":")
    if len(parts) > 3:
        raise Invalid(
            f"invalid format for excluding ports by UIDs: {show(raw)}. "
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
                raise Invalid(f"invalid or unsupported protocol: {show(name)} (tcp or udp)")
        protocols = tuple(dict.fromkeys(names))
    if ports_text in ("", "*"):
        ports: tuple[str, ...] = ("1:65535",)
    else:
        ports = tuple(_port_range(p.strip()) for p in ports_text.split(","))
        weight = sum(2 if ":" in p else 1 for p in ports)
        if weight > MULTIPORT_MAX:
            raise Invalid(
                f"too many ports in {show(ports_text)}: iptables' multiport match takes at most "
                f"{MULTIPORT_MAX} (a range counts as two); split it into several entries"
            )
    return UidExclusion(protocols=protocols, ports=ports, uids=_uid_range(uids_text.strip()))


def parse_uid_exclusions(raw: object, protocol: str = "") -> tuple[UidExclusion, ...]:
    # Each entry is itself comma-separated ("tcp:53,80:1000"), so entries are separated by
    # ";" (as Kuma's docs write them) or given as separate flags / list items.
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    entries: list[Any] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, UidExclusion):
            entries.append(value)
        elif isinstance(value, str) and value.strip() == "":
            raise Invalid(_EMPTY_UIDS)
        else:
            entries += [part.strip() for part in str(value).split(";") if part.strip()]
    if len(entries) > 256:
        raise Invalid(f"has {len(entries)} entries; at most 256 are allowed")
    if protocol:
        # kumactl 2.7's --exclude-outbound-{tcp,udp}-ports-for-uids PORTS:UIDS, which it
        # turns into "tcp:PORTS:UIDS" itself
        out = []
        for entry in entries:
            if isinstance(entry, UidExclusion):
                if entry.protocols != (protocol,):
                    raise Invalid(f"{entry.to_text()} is not a {protocol} entry")
                out.append(entry)
            else:
                # PORTS:UIDS; a full "tcp:PORTS:UIDS" is this parser's own output (the record)
                text = entry if entry.count(":") == 2 else f"{protocol}:{entry}"
                parsed = parse_uid_exclusion(text)
                if parsed.protocols != (protocol,):
                    raise Invalid(f"{show(entry)} is not a {protocol} entry (expected PORTS:UIDS)")
                out.append(parsed)
        return tuple(out)
    return tuple(parse_uid_exclusion(v) for v in entries)


def parse_tcp_uid_exclusions(raw: object) -> tuple[UidExclusion, ...]:
    return parse_uid_exclusions(raw, "tcp")


def parse_udp_uid_exclusions(raw: object) -> tuple[UidExclusion, ...]:
    return parse_uid_exclusions(raw, "udp")


_IFACE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,14}\+?|\+")


def parse_vnet(raw: object) -> VnetNetwork:
    if isinstance(raw, VnetNetwork):
        raw = raw.to_text()
    if not isinstance(raw, str):
        raise Invalid(
            f"invalid virtual network definition: {show(raw)} (expected <interface>:<CIDR>)"
        )
    text = raw.strip()
    iface, sep, cidr = text.partition(":")
    if not sep:
        raise Invalid(
            f"invalid virtual network definition: {show(raw)} (expected <interface>:<CIDR>)"
        )
    if not _IFACE.fullmatch(iface) or len(iface.rstrip("+")) > 15:
        raise Invalid(
            f"invalid interface name {show(iface)} in {show(raw)}: 1-15 characters from "
            "letters, digits, '_', '.', '-', '@', optionally ending in '+' (a wildcard)"
        )
    try:
        if "/" not in cidr:
            raise ValueError
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise Invalid(
            f"invalid CIDR definition for {show(raw)}: {show(cidr)} is not a CIDR"
        ) from None
    if getattr(network.network_address, "ipv4_mapped", None) is not None:
        raise Invalid(
            f"{show(raw)} is refused: kumactl counts an IPv4-mapped network as IPv4 and writes it "
            "verbatim into its IPv4 rules, where iptables refuses the prefix; write it as IPv4"
        )
    # A /0 is refused only where it is rendered: KumaSettings._refuse_rendered_slash_zero.
    return VnetNetwork(iface=iface, cidr=cidr)


def parse_vnets(raw: object) -> tuple[VnetNetwork, ...]:
    return tuple(parse_vnet(item) for item in items(raw))


def parse_kuma_version(raw: object) -> str:
    if isinstance(raw, str) and raw.strip() in KUMA_RELEASES:
        return raw.strip()
    hint = ""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        hint = " (give it as a string: YAML reads 2.10 as the number 2.1)"
    tags = ", ".join(KUMA_TAGS[r] for r in KUMA_RELEASES)
    raise Invalid(
        f"value {show(raw)} is not a supported Kuma release{hint}: one of "
        f"{', '.join(KUMA_RELEASES)} (the rule sets of {tags})"
    )


def parse_ip_family_mode(raw: object) -> str:
    # kumactl (2.9+) accepts both values in any case, and "" for dualstack; but it then
    # compares exactly, so "IPv4" is accepted and means dual-stack. Such a value is refused
    # here: installing IPv6 rules for "IPv4" is a trap, and IPv4 only is not what kumactl does.
    if isinstance(raw, str):
        if raw == "ipv4" or raw.lower() == "dualstack" or raw == "":
            return raw.lower() or "dualstack"
        if raw.lower() == "ipv4":
            raise Invalid(
                f"value {show(raw)} is refused: kumactl accepts it but compares case-sensitively, "
                "so it means dualstack there; write ipv4 (IPv4 only) or dualstack"
            )
    raise Invalid(f"value {show(raw)} is not valid: must be one of 'dualstack' or 'ipv4'")


def parse_user(raw: object) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise Invalid(f"value {show(raw)} is not a valid UID or username")
    text = raw.strip()
    if text and not re.fullmatch(r"[0-9]+|[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", text):
        raise Invalid(f"value {show(raw)} is not a valid UID or username")
    if text.isdigit() and int(text) > MAX_UID:
        raise Invalid(f"value {show(raw)} is not a valid UID (0-{MAX_UID})")
    return text


def parse_uid(raw: object) -> Optional[int]:
    """kumactl's --kuma-dp-uid: a numeric UID, used as given (it need not exist, as in
    kumactl 2.7); a user name is looked up (2.11-2.14 take the flag as --kuma-dp-user)."""
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip() and not raw.strip().isdigit():
        name = parse_user(raw)
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            raise Invalid(
                f"the specified UID or username ({show(name)}) does not refer to a valid user on the host"
            ) from None
    return parse_uint(raw, 0, MAX_UID, f"UID (an integer in the range [0, {MAX_UID}])")


def parse_port_v6(raw: object) -> int:
    # kumactl 2.7's parseUint16: 0 (IPv6 off) is a value here
    return parse_uint(raw, 0, 65535, "port (uint16 in the range [0, 65535])")


def parse_log_level(raw: object) -> int:
    return parse_uint(raw, 0, 7, "log level (an integer in the range [0, 7])")


def nameserver_address(text: str) -> str:
    """A nameserver as Kuma writes it in the rules: an IPv4-mapped IPv6 address is IPv4 (Kuma
    2.11+ prints its net.IP as a.b.c.d; 2.7 writes it verbatim, which iptables reads as
    a.b.c.d/32: the same rule)."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_nameservers(raw: object) -> Optional[tuple[str, ...]]:
    if raw is None:
        return None
    out = []
    for item in items(raw):
        try:
            out.append(nameserver_address(str(item)))
        except ValueError:
            raise Invalid(f"value {show(item)} is not a nameserver address") from None
    return tuple(out)


def parse_exclusion_ips(raw: object) -> tuple[str, ...]:
    """--exclude-{inbound,outbound}-ips: kumactl refuses an empty value (but not "," or " ")."""
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    if any(isinstance(v, str) and v == "" for v in values):
        raise Invalid("invalid exclusion rule: the rule cannot be empty")
    return tuple(_exclusion_ip(item) for item in items(raw))


def _exclusion_ip(item: object) -> str:
    text = parse_ip(item)
    network = ipaddress.ip_network(text, strict=False)
    mapped = getattr(network.network_address, "ipv4_mapped", None)
    if mapped is None:
        return text
    if "/" in text:
        raise Invalid(
            f"{show(item)} is refused: kumactl counts an IPv4-mapped address as IPv4 and writes it "
            "verbatim into its IPv4 rules, where iptables refuses the prefix (invalid mask), so "
            f"kumactl's install fails; write it as IPv4 ({mapped}/{max(network.prefixlen - 96, 0)})"
        )
    # kumactl writes it verbatim; iptables reads -d ::ffff:a.b.c.d in an IPv4 rule as
    # -d a.b.c.d/32 (checked with iptables 1.8.9, nft and legacy). Written as IPv4 here.
    return str(mapped)


# -- kumactl's operational settings: how it runs iptables. No effect here, but a value kumactl
# -- would refuse is refused too (a pasted kumactl command line works or fails with a reason).

_GO_UINT = re.compile(r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|0[0-7_]*|[1-9][0-9_]*")
_GO_DURATION = re.compile(r"[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)")


def _go_int(raw: object, signed: bool, what: str) -> int:
    """Go's strconv.Parse(U)Int(s, 0, 64), as pflag's uint and int flags use it."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        text = raw[1:] if signed and raw[:1] in "+-" else raw
        if not _GO_UINT.fullmatch(text) or text.startswith("_") or text.endswith("_"):
            raise Invalid(f"value {show(raw)} is not a valid {what}")
        digits = text.replace("_", "")
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            digits = "0o" + digits[1:]  # Go's legacy octal 017
        value = int(digits, 0) * (-1 if raw.startswith("-") else 1)
    else:
        raise Invalid(f"value {show(raw)} is not a valid {what}")
    low, high = (-(2**63), 2**63 - 1) if signed else (0, 2**64 - 1)
    if not low <= value <= high:
        raise Invalid(f"value {show(raw)} is not a valid {what}")
    return value


def parse_go_uint(raw: object) -> int:
    return _go_int(raw, False, "unsigned integer")


def parse_go_int(raw: object) -> int:
    """kumactl 2.7's --max-retries is an int (a negative value: no try at all); 2.9+ take a uint
    (checked per release)."""
    return _go_int(raw, True, "integer")


def parse_duration(raw: object) -> object:
    """kumactl's retry pause: a Go duration ("2s"), a number of nanoseconds, or (2.9+ flag, read
    as JSON) a quoted duration ('"2s"'). Which spelling a flag takes is checked per release."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
        if _GO_DURATION.fullmatch(text) or re.fullmatch(r"-?[0-9]+", text):
            return raw
    raise Invalid(f"value {show(raw)} is not a valid duration (e.g. 2s, 500ms, 1m30s)")


EXECUTABLES = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
)


def parse_executables(raw: object) -> object:
    """kumactl's --iptables-executables (name:path[,name:path]) or iptablesExecutables (a
    mapping): validated as kumactl does; the paths are not used (firewalld runs its own)."""
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, str):
        pairs = []
        for item in (i.strip() for i in raw.strip().split(",")):
            if not item:
                continue
            name, sep, path = item.partition(":")
            if not sep:
                raise Invalid(
                    f"invalid format in {show(item)}: expected '<name>:<path>' (e.g., "
                    "'iptables:/usr/sbin/iptables' or 'ip6tables-save:/usr/sbin/ip6tables-save')"
                )
            pairs.append((name, path))
    else:
        raise Invalid(f"value {show(raw)} is not a list of executables (name:path[,name:path])")
    for name, path in pairs:
        if name not in EXECUTABLES:
            raise Invalid(
                f"unsupported executable name {show(name)}: valid names are {', '.join(EXECUTABLES)}"
            )
        if not isinstance(path, str):
            raise Invalid(f"the path of {name} ({show(path)}) is not a string")
    return raw


def parse_text(raw: object) -> object:
    if not isinstance(raw, str):
        raise Invalid(f"value {show(raw)} is not a string")
    return raw


_INBOUND_UIDS_BUG = (
    "Kuma turns it into a rule that returns all inbound traffic, silently disabling inbound "
    "redirection; use --exclude-inbound-ports or --exclude-inbound-ips"
)
_COMMENTS = (
    "the comments are how tproxy-firewalld and `kumactl uninstall transparent-proxy` recognise "
    "Kuma's rules, so they cannot be turned off (Kuma 2.7's rules, which never had comments: "
    "--kuma-version 2.7)"
)
_EBPF = "eBPF mode installs no iptables rules; tproxy-firewalld keeps the iptables rules only"
_FIXED_CHAIN = "the chain names are fixed (KUMA_MESH_{}) so that uninstall can find them"


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class KumaSettings(Settings):
    """The settings of ``kumactl install transparent-proxy``, validated and typed."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX
    RELEASE_SETTING: ClassVar[Optional[str]] = "kuma_version"
    RELEASES: ClassVar[tuple[str, ...]] = KUMA_RELEASES
    RELEASE_OF: ClassVar[str] = "Kuma"
    #: Kuma config keys that steer how kumactl runs iptables, not which rules exist: a config
    #: file written for kumactl must load. (Their flags are ignored settings, below.)
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "executables",
            "redirect.inbound.chainName",
            "redirect.inbound.redirectChainName",
            "redirect.outbound.chainName",
            "redirect.outbound.redirectChainName",
        }
    )
    #: Kuma reads these (envconfig), but another chain name would break Kuma's own uninstall
    #: and ours: only the defaults are accepted.
    FIXED_ENV: ClassVar[dict[str, tuple[str, str]]] = {
        ENV_PREFIX + f"REDIRECT_{name}_CHAIN_NAME": (name, _FIXED_CHAIN.format(name))
        for name in ("INBOUND", "INBOUND_REDIRECT", "OUTBOUND", "OUTBOUND_REDIRECT")
    }

    kuma_version: str = kuma(
        NEWEST, parse_kuma_version,
        "The Kuma release whose rule set and kumactl flags to reproduce: 2.7 (LTS), 2.11, 2.12, "
        "2.13 or 2.14 (each as of its newest patch release). Recorded with the installed rules.",
        key="kumaVersion", flag="--kuma-version", metavar="X.Y",
    )  # fmt: skip
    kuma_dp_user: str = kuma(
        "", parse_user,
        "User name or numeric UID the proxy runs as; its own traffic is not redirected. "
        "Default: UID 5678 if it exists, else user kuma-dp, else 5678. A numeric UID need not exist yet.",
        key="kumaDPUser", flag="--kuma-dp-user", metavar="USER|UID",
    )  # fmt: skip
    ip_family_mode: str = kuma(
        "dualstack", parse_ip_family_mode,
        "dualstack (IPv4 and IPv6 rules) or ipv4.",
        key="ipFamilyMode", flag="--ip-family-mode", metavar="dualstack|ipv4",
    )  # fmt: skip
    redirect_inbound: bool = kuma(
        True, parse_bool,
        "Redirect inbound TCP traffic to the proxy (--redirect-inbound=false turns it off).",
        key="redirect.inbound.enabled", flag="--redirect-inbound", kind="bool",
    )  # fmt: skip
    redirect_inbound_port: int = kuma(
        15006, parse_port, "Port inbound traffic is redirected to.",
        key="redirect.inbound.port", flag="--redirect-inbound-port", metavar="PORT", file_type="integer",
    )  # fmt: skip
    redirect_inbound_port_v6: int = setting(
        15006, parse_port_v6,
        "Kuma 2.7 only: port IPv6 inbound traffic is redirected to (kumactl 2.7's own default "
        "15006, whatever --redirect-inbound-port says; 15010 means --redirect-inbound-port; 0 "
        "turns IPv6 off).",
        flag="--redirect-inbound-port-v6", metavar="PORT", releases=ONLY_2_7,
    )  # fmt: skip
    exclude_inbound_ports: tuple[int, ...] = kuma(
        (), parse_ports,
        "Inbound TCP ports not to redirect (comma list; a repeated flag replaces the list, as in "
        "kumactl). Note: 22 is NOT excluded by default.",
        key="redirect.inbound.excludePorts", flag="--exclude-inbound-ports", metavar="PORTS", kind="list",
    )  # fmt: skip
    include_inbound_ports: tuple[int, ...] = kuma(
        (), parse_ports,
        "Only these inbound TCP ports are redirected (config file only; excludePorts then has no effect).",
        key="redirect.inbound.includePorts", kind="list", releases=SINCE_2_9,
    )  # fmt: skip
    exclude_inbound_ips: tuple[str, ...] = kuma(
        (), parse_exclusion_ips,
        "Source IPs/CIDRs whose inbound traffic is not redirected, each in its own family "
        "(comma list; repeated flags add up).",
        key="redirect.inbound.excludePortsForIPs", flag="--exclude-inbound-ips", metavar="IPS",
        kind="list", repeat="accumulate", releases=SINCE_2_9,
    )  # fmt: skip
    exclude_inbound_ports_for_uids: tuple[Any, ...] = kuma(
        (), refuse_nonempty(_INBOUND_UIDS_BUG), "Refused (Kuma's rule for it disables inbound redirection).",
        key="redirect.inbound.excludePortsForUIDs", kind="list",
    )  # fmt: skip
    redirect_inbound_insert_instead_of_append: bool = kuma(
        False, parse_bool, "Insert the PREROUTING jump above other rules instead of appending it.",
        key="redirect.inbound.insertRedirectInsteadOfAppend",
        flag="--redirect-inbound-insert-instead-of-append", kind="bool", releases=SINCE_2_9,
    )  # fmt: skip
    redirect_outbound: bool = kuma(
        True, parse_bool, "Redirect outbound TCP traffic to the proxy (config file only).",
        key="redirect.outbound.enabled", kind="bool", releases=SINCE_2_9,
    )  # fmt: skip
    redirect_outbound_port: int = kuma(
        15001, parse_port, "Port outbound traffic is redirected to.",
        key="redirect.outbound.port", flag="--redirect-outbound-port", metavar="PORT", file_type="integer",
    )  # fmt: skip
    exclude_outbound_ports: tuple[int, ...] = kuma(
        (), parse_ports,
        "Outbound TCP ports not to redirect (comma list; a repeated flag replaces the list, as in kumactl).",
        key="redirect.outbound.excludePorts", flag="--exclude-outbound-ports", metavar="PORTS", kind="list",
    )  # fmt: skip
    include_outbound_ports: tuple[int, ...] = kuma(
        (), parse_ports,
        "Only these outbound TCP ports are redirected (config file only; excludePorts then has no effect).",
        key="redirect.outbound.includePorts", kind="list", releases=SINCE_2_9,
    )  # fmt: skip
    exclude_outbound_ips: tuple[str, ...] = kuma(
        (), parse_exclusion_ips,
        "Destination IPs/CIDRs whose outbound traffic is not redirected, each in its own family "
        "(comma list; repeated flags add up).",
        key="redirect.outbound.excludePortsForIPs", flag="--exclude-outbound-ips", metavar="IPS",
        kind="list", repeat="accumulate", releases=SINCE_2_9,
    )  # fmt: skip
    exclude_outbound_ports_for_uids: tuple[UidExclusion, ...] = kuma(
        (), parse_uid_exclusions,
        "[tcp|udp:][ports:]uids, e.g. tcp:53,3000-5000:106-108: outbound traffic of these UIDs to "
        "these ports is not redirected (repeated flags add up; ';' separates entries).",
        key="redirect.outbound.excludePortsForUIDs", flag="--exclude-outbound-ports-for-uids",
        metavar="[PROTO:][PORTS:]UIDS", kind="list", repeat="accumulate",
    )  # fmt: skip
    exclude_outbound_tcp_ports_for_uids: tuple[UidExclusion, ...] = setting(
        (), parse_tcp_uid_exclusions,
        "Kuma 2.7 only (deprecated there): ports:uids, as --exclude-outbound-ports-for-uids tcp:ports:uids "
        "(repeated flags add up; they come after the --exclude-outbound-ports-for-uids entries).",
        flag="--exclude-outbound-tcp-ports-for-uids", metavar="PORTS:UIDS", kind="list",
        repeat="accumulate", releases=ONLY_2_7,
    )  # fmt: skip
    exclude_outbound_udp_ports_for_uids: tuple[UidExclusion, ...] = setting(
        (), parse_udp_uid_exclusions,
        "Kuma 2.7 only (deprecated there): ports:uids, as --exclude-outbound-ports-for-uids udp:ports:uids "
        "(repeated flags add up; they come after the tcp entries).",
        flag="--exclude-outbound-udp-ports-for-uids", metavar="PORTS:UIDS", kind="list",
        repeat="accumulate", releases=ONLY_2_7,
    )  # fmt: skip
    redirect_outbound_insert_instead_of_append: bool = kuma(
        False, parse_bool, "Insert the OUTPUT jump above other rules instead of appending it.",
        key="redirect.outbound.insertRedirectInsteadOfAppend",
        flag="--redirect-outbound-insert-instead-of-append", kind="bool", releases=SINCE_2_9,
    )  # fmt: skip
    redirect_dns: bool = kuma(
        False, parse_bool, "Redirect DNS to the nameservers in resolv.conf to the kuma-dp DNS proxy.",
        key="redirect.dns.enabled", flag="--redirect-dns", kind="bool",
    )  # fmt: skip
    redirect_all_dns_traffic: bool = kuma(
        False, parse_bool, "Redirect all DNS traffic (UDP 53) to the kuma-dp DNS proxy.",
        key="redirect.dns.captureAll", flag="--redirect-all-dns-traffic", kind="bool",
    )  # fmt: skip
    redirect_dns_port: int = kuma(
        15053, parse_port, "Port of the kuma-dp DNS proxy.",
        key="redirect.dns.port", flag="--redirect-dns-port", metavar="PORT", file_type="integer",
    )  # fmt: skip
    skip_dns_conntrack_zone_split: bool = kuma(
        False, parse_bool, "Do not add the raw-table conntrack zone rules for DNS.",
        key="redirect.dns.skipConntrackZoneSplit", flag="--skip-dns-conntrack-zone-split", kind="bool",
    )  # fmt: skip
    resolv_conf_path: str = kuma(
        "/etc/resolv.conf", parse_path, "Where the nameservers for --redirect-dns are read (config file only).",
        key="redirect.dns.resolvConfigPath",
    )  # fmt: skip
    vnet: tuple[VnetNetwork, ...] = kuma(
        (), parse_vnets,
        "IFACE:CIDR of a virtual network (e.g. docker0:172.17.0.0/16) whose traffic is redirected "
        "too (repeated flags add up).",
        key="redirect.vnet.networks", flag="--vnet", metavar="IFACE:CIDR", kind="list", repeat="accumulate",
    )  # fmt: skip
    iptables_logs: bool = kuma(
        False, parse_bool, "Log matching packets with the kernel's LOG target.",
        key="log.enabled", flag="--iptables-logs", kind="bool", releases=SINCE_2_9,
    )  # fmt: skip
    log_level: int = kuma(
        7, parse_log_level, "Level of those log messages (config file only).", key="log.level",
        file_type="integer", releases=SINCE_2_9,
    )  # fmt: skip
    drop_invalid_packets: bool = kuma(
        False, parse_bool, "Drop packets in conntrack state INVALID (mangle PREROUTING).",
        key="dropInvalidPackets", flag="--drop-invalid-packets", kind="bool", releases=SINCE_2_9,
    )  # fmt: skip
    disable_comments: bool = kuma(
        False, refuse_true(_COMMENTS), "Refused: the comments are how the rules are recognised.",
        key="comments.disabled", flag="--disable-comments", kind="bool", releases=SINCE_2_9,
    )  # fmt: skip
    # -- tproxy-firewalld's own (kumactl has no such setting)
    configure_firewalld: bool = kuma(
        False, parse_bool,
        "tproxy-firewalld's own, not kumactl's: let install set the firewalld.conf settings that "
        "would defeat the rules (RFC3964_IPv4=no for IPv6 rules, StrictForwardPorts=no) and reload "
        "firewalld to apply them; uninstall puts the old values back. Without it install refuses (exit 12).",
        key="configureFirewalld", flag="--configure-firewalld", kind="bool",
    )  # fmt: skip
    allow_iptables_flush: bool = kuma(
        False, parse_bool,
        "tproxy-firewalld's own, not kumactl's: install even though firewalld will then flush other "
        "tools' iptables chains and rules (Docker's, ...): firewalld >= 2.0 when the first direct "
        "entry is added, every version at the reload --configure-firewalld makes. Without it install "
        "refuses (exit 13) when there are any.",
        key="allowIptablesFlush", flag="--allow-iptables-flush", kind="bool",
    )  # fmt: skip
    # -- kumactl's operational settings: how it runs iptables. Accepted (with kumactl's checks
    # -- of their values), without effect here.
    dry_run: Any = kuma(
        None, parse_bool,
        "kumactl's dry run. On install: print the plan, change nothing (as tproxy-firewalld's own "
        "--dry-run). Elsewhere, and in a config file, no effect.",
        key="dryRun", flag="--dry-run", kind="bool", ignored=True,
    )  # fmt: skip
    verbose: Any = kuma(
        None, parse_bool, "kumactl's verbose output; no effect here.", key="verbose", flag="--verbose",
        kind="bool", ignored=True,
    )  # fmt: skip
    store_firewalld: Any = kuma(
        None, parse_bool, "kumactl's firewalld storage: this tool is that; no effect here.",
        key="storeFirewalld", flag="--store-firewalld", kind="bool", ignored=True,
    )  # fmt: skip
    wait: Any = kuma(
        None, parse_go_uint, "kumactl's xtables lock wait (seconds); no effect here.", key="wait",
        flag="--wait", metavar="SECONDS", file_type="integer", ignored=True,
    )  # fmt: skip
    wait_interval: Any = kuma(
        None, parse_go_uint, "kumactl's xtables lock wait interval (microseconds); no effect here.",
        key="waitInterval", flag="--wait-interval", metavar="MICROSECONDS", file_type="integer", ignored=True,
    )  # fmt: skip
    max_retries: Any = kuma(
        None, parse_go_int, "kumactl's restore retries; no effect here.", key="retry.maxRetries",
        flag="--max-retries", metavar="N", file_type="integer", ignored=True,
    )  # fmt: skip
    sleep_between_retries: Any = kuma(
        None, parse_duration, "kumactl's pause between retries; no effect here.",
        key="retry.sleepBetweenRetries", flag="--sleep-between-retries", metavar="DURATION", ignored=True,
    )  # fmt: skip
    iptables_executables: Any = kuma(
        None, parse_executables, "kumactl's iptables binaries; firewalld runs its own. No effect here.",
        key="iptablesExecutables", flag="--iptables-executables", metavar="NAME:PATH[,NAME:PATH]",
        ignored=True, releases=SINCE_2_9,
    )  # fmt: skip
    cni_mode: Any = kuma(
        None, parse_bool, "kumactl's CNI mode; no effect here.", key="cniMode", kind="bool", ignored=True,
        releases=SINCE_2_9,
    )  # fmt: skip
    redirect_dns_upstream_target_chain: Any = setting(
        None, parse_text, "kumactl 2.7's deprecated DNS upstream chain; no effect there either.",
        flag="--redirect-dns-upstream-target-chain", metavar="CHAIN", ignored=True, releases=ONLY_2_7,
    )  # fmt: skip
    ebpf_enabled: Any = kuma(
        None, refuse_true(_EBPF), "Refused when true: kumactl's eBPF mode installs no iptables rules.",
        key="ebpf.enabled", flag="--ebpf-enabled", kind="bool", ignored=True,
    )  # fmt: skip
    ebpf_programs_source_path: Any = kuma(
        None, parse_text, "kumactl's eBPF programs; no effect here.", key="ebpf.programsSourcePath",
        flag="--ebpf-programs-source-path", metavar="PATH", ignored=True,
    )  # fmt: skip
    ebpf_instance_ip: Any = kuma(
        None, parse_text, "kumactl's eBPF instance IP; no effect here.", key="ebpf.instanceIP",
        flag="--ebpf-instance-ip", metavar="IP", ignored=True,
    )  # fmt: skip
    ebpf_bpffs_path: Any = kuma(
        None, parse_text, "kumactl's BPF file system; no effect here.", key="ebpf.bpffsPath",
        flag="--ebpf-bpffs-path", metavar="PATH", ignored=True,
    )  # fmt: skip
    ebpf_cgroup_path: Any = kuma(
        None, parse_text, "kumactl's cgroup2 path for eBPF; no effect here.", key="ebpf.cgroupPath",
        flag="--ebpf-cgroup-path", metavar="PATH", ignored=True,
    )  # fmt: skip
    ebpf_tc_attach_iface: Any = kuma(
        None, parse_text, "kumactl's eBPF TC interface; no effect here.", key="ebpf.tcAttachIface",
        flag="--ebpf-tc-attach-iface", metavar="IFACE", ignored=True,
    )  # fmt: skip
    # -- resolved from the host when not given, recorded with the settings
    kuma_dp_uid: Optional[int] = setting(
        None, parse_uid,
        "kumactl's --kuma-dp-uid: the UID as given, used even if no such user exists (as kumactl "
        "2.7 does, except that with --kuma-dp-user too it then takes that user's UID; 2.11-2.14 "
        "take it as --kuma-dp-user). Else resolved from kuma_dp_user.",
        derived=True, flag="--kuma-dp-uid", metavar="UID",
    )  # fmt: skip
    dns_nameservers: Optional[tuple[str, ...]] = setting(
        None, parse_nameservers, "The nameservers read from resolv_conf_path.", derived=True
    )

    def vnet_rendered(self, ipv: str) -> tuple[VnetNetwork, ...]:
        """The --vnet networks a family's rules have, as kumactl picks them (VNet.Initialize,
        2.7's builder): the family's entries in a map by interface, so a later entry for an
        interface replaces an earlier one, walked in byte-wise sorted order (Go's sorted
        map iteration in the golden output)."""
        latest = {v.iface: v for v in self.vnet if v.ipv == ipv}
        return tuple(sorted(latest.values(), key=lambda v: v.iface.encode()))

    def _refuse_rendered_slash_zero(self) -> None:
        # Kuma's rule redirects what is NOT for this network (`! -d CIDR`): a /0 leaves nothing
        # to redirect, and the kernel refuses `! -d 0.0.0.0/0` at commit (iptables-restore
        # --test accepts it), which would leave firewalld FAILED at its next start. A /0 that
        # is not rendered (a family not installed, an entry a later one replaces) is harmless,
        # as in kumactl.
        for ipv in self.ipvs:
            for v in self.vnet_rendered(ipv):
                if ipaddress.ip_network(v.cidr, strict=False).prefixlen == 0:
                    raise SettingsError(
                        f"--vnet: invalid CIDR definition for {show(v.to_text())}: a /0 network "
                        "matches every address, so traffic on the interface would never be "
                        "redirected (and the kernel refuses the rule); give the virtual "
                        "network's own prefix",
                        "vnet",
                    )

    def _finish(self) -> None:
        self._refuse_rendered_slash_zero()
        warnings: list[Warning_] = []
        if self.kuma_dp_uid is None:
            object.__setattr__(self, "kuma_dp_uid", resolve_kuma_dp_user(self.kuma_dp_user))
        if self.dns_nameservers is None:
            servers = read_nameservers(self.resolv_conf_path) if self.dns_enabled else ()
            object.__setattr__(self, "dns_nameservers", servers)
        for direction in ("inbound", "outbound"):
            if getattr(self, f"include_{direction}_ports") and getattr(
                self, f"exclude_{direction}_ports"
            ):
                warnings.append(
                    Warning_(
                        "setting-without-effect",
                        f"exclude_{direction}_ports has no effect because include_{direction}_ports "
                        "is set (as in Kuma)",
                        f"exclude_{direction}_ports",
                    )
                )
        ports = {
            "redirect_inbound_port": self.redirect_inbound_port,
            "redirect_outbound_port": self.redirect_outbound_port,
        }
        if self.dns_enabled:
            ports["redirect_dns_port"] = self.redirect_dns_port
        if len(set(ports.values())) < len(ports):
            warnings.append(
                Warning_("ports-not-distinct", f"the redirect ports are not distinct: {ports}")
            )
        if self.kuma_version == "2.7" and "ipv6" in self.ipvs:
            v6 = self.inbound_port("ipv6")
            if v6 != self.redirect_inbound_port:
                warnings.append(
                    Warning_(
                        "ipv6-inbound-port",
                        f"Kuma 2.7 redirects IPv6 inbound traffic to {v6} (--redirect-inbound-port-v6), "
                        f"IPv4 inbound traffic to {self.redirect_inbound_port}, as kumactl 2.7 does; "
                        "--redirect-inbound-port-v6 15010 makes them the same",
                        "redirect_inbound_port_v6",
                    )
                )
        if self.dns_enabled and not self.redirect_all_dns_traffic and self.kuma_version != "2.7":
            for ipv in self.ipvs:
                if not [n for n in self.dns_nameservers or () if family(n) == ipv]:
                    name = "IPv4" if ipv == "ipv4" else "IPv6"
                    warnings.append(
                        Warning_(
                            "no-nameserver",
                            f"no {name} DNS servers found in {self.resolv_conf_path}. "
                            f"DNS traffic capture for {name} will be disabled",
                            "redirect_dns",
                        )
                    )
        object.__setattr__(self, "_warnings", tuple(warnings))

    @property
    def warnings(self) -> tuple[Warning_, ...]:
        return getattr(self, "_warnings", ())

    @property
    def dns_enabled(self) -> bool:
        return self.redirect_dns or self.redirect_all_dns_traffic  # captureAll implies enabled

    @property
    def ipvs(self) -> tuple[str, ...]:
        if self.ip_family_mode == "ipv4" or (
            self.kuma_version == "2.7" and self.redirect_inbound_port_v6 == 0
        ):
            return ("ipv4",)
        return ("ipv4", "ipv6")

    def inbound_port(self, ipv: str) -> int:
        """Where inbound traffic of a family is redirected: kumactl 2.7 sends IPv6 to its own
        port (--redirect-inbound-port-v6, default 15006; its old default 15010 means the IPv4
        port); later releases use one port."""
        if ipv == "ipv6" and self.kuma_version == "2.7":
            v6 = self.redirect_inbound_port_v6
            return self.redirect_inbound_port if v6 == 15010 else v6
        return self.redirect_inbound_port

    @property
    def uid_exclusions(self) -> tuple[UidExclusion, ...]:
        """kumactl 2.7 appends its deprecated tcp and udp entries after the others."""
        return (
            self.exclude_outbound_ports_for_uids
            + self.exclude_outbound_tcp_ports_for_uids
            + self.exclude_outbound_udp_ports_for_uids
        )

    @property
    def uid(self) -> int:
        assert self.kuma_dp_uid is not None  # resolved in _finish
        return self.kuma_dp_uid

    @classmethod
    def load(
        cls,
        *,
        config_files: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        flags: Optional[Mapping[str, Any]] = None,
        stdin: Optional[TextIO] = None,
        **values: Any,
    ) -> KumaSettings:
        loaded = super().load(
            config_files=config_files, env=env, flags=flags, stdin=stdin, **values
        )
        return loaded._uid_as_kumactl_2_7_finds_it()

    def _uid_as_kumactl_2_7_finds_it(self) -> KumaSettings:
        """kumactl 2.7 (findUidGid) looks ``--kuma-dp-uid`` up first and, when no user has that
        UID, takes ``--kuma-dp-user``'s UID instead (refusing a user that does not exist); the
        UID as given only without a user. Done once, when settings are loaded: a record keeps
        the UID that was found."""
        if self.kuma_version != "2.7" or not self.kuma_dp_user or self.kuma_dp_uid is None:
            return self
        try:
            pwd.getpwuid(self.kuma_dp_uid)
        except KeyError:
            return self.replace(kuma_dp_uid=resolve_kuma_dp_user(self.kuma_dp_user))
        return self

    @classmethod
    def _check_flags(cls, flags: Mapping[str, RawValue], release: Optional[str]) -> None:
        """kumactl's checks of the command line, as the release does them."""

        def given_true(name: str) -> bool:
            item = flags.get(name)
            try:
                return item is not None and parse_bool(item.value)
            except Invalid:
                return False

        if given_true("redirect_dns") and given_true("redirect_all_dns_traffic"):
            raise SettingsError(
                "only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified",
                "redirect_dns",
            )
        # kumactl 2.7's own guard (it tests --exclude-outbound-ports, not the for-uids list)
        if (
            release == "2.7"
            and flags.get("exclude_outbound_ports")
            and (
                flags.get("exclude_outbound_tcp_ports_for_uids")
                or flags.get("exclude_outbound_udp_ports_for_uids")
            )
        ):
            raise SettingsError(
                "--exclude-outbound-ports-for-uids set you can't use --exclude-outbound-tcp-ports-for-uids "
                "and --exclude-outbound-udp-ports-for-uids anymore (kumactl 2.7's check, which tests "
                "--exclude-outbound-ports)",
                "exclude_outbound_ports",
            )
        retries, pause = flags.get("max_retries"), flags.get("sleep_between_retries")
        if release != "2.7" and retries is not None and str(retries.value).startswith("-"):
            raise SettingsError(
                f"{retries.source}: value {show(retries.value)} is not a valid unsigned integer "
                f"(kumactl {release} takes a uint)",
                "max_retries",
            )
        if pause is not None and isinstance(pause.value, str):
            text = pause.value
            if release == "2.7":
                if not _GO_DURATION.fullmatch(text):
                    raise SettingsError(
                        f"{pause.source}: value {show(text)} is not a Go duration (kumactl 2.7 takes "
                        "e.g. 2s, 500ms)",
                        "sleep_between_retries",
                    )
            elif not (
                re.fullmatch(r"-?[0-9]+", text) or (text[:1] == text[-1:] == '"' and len(text) >= 2)
            ):
                raise SettingsError(
                    f"{pause.source}: value {show(text)} is refused, as kumactl {release} refuses it: it "
                    "reads this flag as JSON, a number of nanoseconds (5) or a quoted duration ('\"2s\"')",
                    "sleep_between_retries",
                )


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
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise SettingsError(
            f"the specified UID or username ('{user}') does not refer to a valid user on the host",
            "kuma_dp_user",
        ) from None


def read_nameservers(path: str) -> tuple[str, ...]:
    """The nameservers of a resolv.conf, in order, each once (a repeated line adds nothing:
    kumactl writes its rules once per line, and a repeated rule never matches anything its
    first copy did not)."""
    try:
        data = read_regular(path, MAX_RESOLV_CONF)
    except OSError:
        raise SettingsError(f"unable to read file {path}", "resolv_conf_path") from None
    except NotRegular:
        raise SettingsError(
            f"unable to read file {path}: not a regular file", "resolv_conf_path"
        ) from None
    except TooLarge:
        raise SettingsError(
            f"unable to read file {path}: larger than {MAX_RESOLV_CONF} bytes", "resolv_conf_path"
        ) from None
    servers: list[str] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            if "%" in words[1]:
                continue  # a scoped "fe80::1%eth0": iptables cannot match the scope
            try:
                servers.append(nameserver_address(words[1]))
            except ValueError:
                continue  # kumactl 2.9+ turns it into an unrestricted IPv6 DNS redirect: skipped
    unique = tuple(dict.fromkeys(servers))
    if len(unique) > MAX_NAMESERVERS:
        raise SettingsError(
            f"{path} lists {len(unique)} nameservers; at most {MAX_NAMESERVERS} are supported "
            "(each adds a rule per family)",
            "resolv_conf_path",
        )
    return unique


#: resolv.conf is a few lines; glibc itself uses at most 3 nameservers (MAXNS).
MAX_RESOLV_CONF = 64 * 1024
MAX_NAMESERVERS = 32


# --------------------------------------------------------------------------- the profile


TEMPLATE = "kuma.rules.j2"
#: Kuma 2.7's older engine: no comments, other DNS rules; its own template (see the README).
TEMPLATES = {"2.7": "kuma-2.7.rules.j2"}
UNMARKED_RELEASES = frozenset({"2.7"})


def packaged_template(name: str) -> Path:
    """A template shipped with the package (a source checkout: the repository's templates/)."""
    here = Path(__file__).resolve().parent
    for directory in (here / "templates", here.parent / "templates"):
        if (directory / name).is_file():
            return directory / name
    raise SettingsError(f"rules template {name} is missing from the installation")


@dataclass(frozen=True)
class Profile:
    """A rule-set family: its settings, its templates and what marks its entries."""

    name: str
    owner: Owner
    template: str
    #: addresses the rules expect on lo, by family (added by install, removed by uninstall)
    loopback: Mapping[str, str]

    def renders_unmarked(self, settings: KumaSettings) -> bool:
        """Whether its template for these settings writes rules without the profile's marks
        (Kuma 2.7: no comments), which are then recognised by exact match."""
        return settings.kuma_version in UNMARKED_RELEASES

    def template_path(self, settings: KumaSettings) -> Path:
        return packaged_template(TEMPLATES.get(settings.kuma_version, self.template))


KUMA = Profile(
    name="kuma",
    owner=OWNER,
    template=TEMPLATE,
    loopback={"ipv6": IPV6_PASSTHROUGH},
)
