"""Kuma's transparent proxy: its settings (as ``kumactl install transparent-proxy`` takes them)
and its rule-set profile (templates, ownership marks).

Every setting is declared once, below. Precedence, as in Kuma: defaults < ``--config`` files
(in order; lists replace) < ``KUMA_TRANSPARENT_PROXY_*`` environment < flags.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from tproxy_firewalld.entries import Owner
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.settings import (
    Invalid,
    RawValue,
    Settings,
    Warning_,
    anything,
    family,
    items,
    parse_bool,
    parse_ips,
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
            (",".join(self.protocols), ",".join(p.replace(":", "-") for p in self.ports), self.uids.replace(":", "-"))
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


def _uid_range(text: str) -> str:
    what = f"UID (an integer in the range [0, {MAX_UID}])"
    if text == "*":
        raise Invalid("wildcard '*' is not allowed for UIDs")
    if "," in text:
        raise Invalid(f"invalid UID entry: {show(text)}. It should either be a single item or a range")
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
    parts = text.split(":")
    if len(parts) > 3 or text == "":
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


def parse_uid_exclusions(raw: object) -> tuple[UidExclusion, ...]:
    # Each entry is itself comma-separated ("tcp:53,80:1000"), so entries are separated by
    # ";" (as Kuma's docs write them) or given as separate flags / list items.
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    entries: list[Any] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, UidExclusion):
            entries.append(value)
        else:
            entries += [part.strip() for part in str(value).split(";") if part.strip()]
    if len(entries) > 256:
        raise Invalid(f"has {len(entries)} entries; at most 256 are allowed")
    return tuple(parse_uid_exclusion(v) for v in entries)


_IFACE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,14}\+?|\+")


def parse_vnet(raw: object) -> VnetNetwork:
    if isinstance(raw, VnetNetwork):
        raw = raw.to_text()
    if not isinstance(raw, str):
        raise Invalid(f"invalid virtual network definition: {show(raw)} (expected <interface>:<CIDR>)")
    text = raw.strip()
    iface, sep, cidr = text.partition(":")
    if not sep:
        raise Invalid(f"invalid virtual network definition: {show(raw)} (expected <interface>:<CIDR>)")
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
        raise Invalid(f"invalid CIDR definition for {show(raw)}: {show(cidr)} is not a CIDR") from None
    if network.prefixlen == 0:
        # Kuma's rule redirects what is NOT for this network (`! -d CIDR`): a /0 leaves nothing
        # to redirect, and the kernel refuses `! -d 0.0.0.0/0` at commit (iptables-restore
        # --test accepts it), which would leave firewalld FAILED at its next start.
        raise Invalid(
            f"invalid CIDR definition for {show(raw)}: a /0 network matches every address, so "
            "traffic on the interface would never be redirected (and the kernel refuses "
            "the rule); give the virtual network's own prefix"
        )
    return VnetNetwork(iface=iface, cidr=cidr)


def parse_vnets(raw: object) -> tuple[VnetNetwork, ...]:
    return tuple(parse_vnet(item) for item in items(raw))


def parse_ip_family_mode(raw: object) -> str:
    if raw in ("dualstack", "ipv4"):
        return str(raw)
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
    if raw is None:
        return None
    return parse_uint(raw, 0, MAX_UID, f"UID (an integer in the range [0, {MAX_UID}])")


def parse_log_level(raw: object) -> int:
    return parse_uint(raw, 0, 7, "log level (an integer in the range [0, 7])")


def parse_nameservers(raw: object) -> Optional[tuple[str, ...]]:
    if raw is None:
        return None
    out = []
    for item in items(raw):
        try:
            out.append(str(ipaddress.ip_address(str(item))))
        except ValueError:
            raise Invalid(f"value {show(item)} is not a nameserver address") from None
    return tuple(out)


_INBOUND_UIDS_BUG = (
    "Kuma turns it into a rule that returns all inbound traffic, silently disabling inbound "
    "redirection; use --exclude-inbound-ports or --exclude-inbound-ips"
)
_COMMENTS = "tproxy-firewalld identifies its rules by Kuma's comments, so they cannot be turned off"
_FIXED_CHAIN = "the chain names are fixed (KUMA_MESH_{}) so that uninstall can find them"


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class KumaSettings(Settings):
    """The settings of ``kumactl install transparent-proxy``, validated and typed."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX
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
        key="redirect.inbound.port", flag="--redirect-inbound-port", metavar="PORT",
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
        key="redirect.inbound.includePorts", kind="list",
    )  # fmt: skip
    exclude_inbound_ips: tuple[str, ...] = kuma(
        (), parse_ips,
        "Source IPs/CIDRs whose inbound traffic is not redirected, each in its own family "
        "(comma list; repeated flags add up).",
        key="redirect.inbound.excludePortsForIPs", flag="--exclude-inbound-ips", metavar="IPS",
        kind="list", repeat="accumulate",
    )  # fmt: skip
    exclude_inbound_ports_for_uids: tuple[Any, ...] = kuma(
        (), refuse_nonempty(_INBOUND_UIDS_BUG), "Refused (Kuma's rule for it disables inbound redirection).",
        key="redirect.inbound.excludePortsForUIDs", kind="list",
    )  # fmt: skip
    redirect_inbound_insert_instead_of_append: bool = kuma(
        False, parse_bool, "Insert the PREROUTING jump above other rules instead of appending it.",
        key="redirect.inbound.insertRedirectInsteadOfAppend",
        flag="--redirect-inbound-insert-instead-of-append", kind="bool",
    )  # fmt: skip
    redirect_outbound: bool = kuma(
        True, parse_bool, "Redirect outbound TCP traffic to the proxy (config file only).",
        key="redirect.outbound.enabled", kind="bool",
    )  # fmt: skip
    redirect_outbound_port: int = kuma(
        15001, parse_port, "Port outbound traffic is redirected to.",
        key="redirect.outbound.port", flag="--redirect-outbound-port", metavar="PORT",
    )  # fmt: skip
    exclude_outbound_ports: tuple[int, ...] = kuma(
        (), parse_ports,
        "Outbound TCP ports not to redirect (comma list; a repeated flag replaces the list, as in kumactl).",
        key="redirect.outbound.excludePorts", flag="--exclude-outbound-ports", metavar="PORTS", kind="list",
    )  # fmt: skip
    include_outbound_ports: tuple[int, ...] = kuma(
        (), parse_ports,
        "Only these outbound TCP ports are redirected (config file only; excludePorts then has no effect).",
        key="redirect.outbound.includePorts", kind="list",
    )  # fmt: skip
    exclude_outbound_ips: tuple[str, ...] = kuma(
        (), parse_ips,
        "Destination IPs/CIDRs whose outbound traffic is not redirected, each in its own family "
        "(comma list; repeated flags add up).",
        key="redirect.outbound.excludePortsForIPs", flag="--exclude-outbound-ips", metavar="IPS",
        kind="list", repeat="accumulate",
    )  # fmt: skip
    exclude_outbound_ports_for_uids: tuple[UidExclusion, ...] = kuma(
        (), parse_uid_exclusions,
        "[tcp|udp:][ports:]uids, e.g. tcp:53,3000-5000:106-108: outbound traffic of these UIDs to "
        "these ports is not redirected (repeated flags add up; ';' separates entries).",
        key="redirect.outbound.excludePortsForUIDs", flag="--exclude-outbound-ports-for-uids",
        metavar="[PROTO:][PORTS:]UIDS", kind="list", repeat="accumulate",
    )  # fmt: skip
    redirect_outbound_insert_instead_of_append: bool = kuma(
        False, parse_bool, "Insert the OUTPUT jump above other rules instead of appending it.",
        key="redirect.outbound.insertRedirectInsteadOfAppend",
        flag="--redirect-outbound-insert-instead-of-append", kind="bool",
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
        key="redirect.dns.port", flag="--redirect-dns-port", metavar="PORT",
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
        key="log.enabled", flag="--iptables-logs", kind="bool",
    )  # fmt: skip
    log_level: int = kuma(
        7, parse_log_level, "Level of those log messages (config file only).", key="log.level",
    )  # fmt: skip
    drop_invalid_packets: bool = kuma(
        False, parse_bool, "Drop packets in conntrack state INVALID (mangle PREROUTING).",
        key="dropInvalidPackets", flag="--drop-invalid-packets", kind="bool",
    )  # fmt: skip
    disable_comments: bool = kuma(
        False, refuse_true(_COMMENTS), "Refused: the comments are how the rules are recognised.",
        key="comments.disabled", kind="bool",
    )  # fmt: skip
    # -- kumactl's operational settings: how it runs iptables. Accepted, without effect here.
    wait: Any = kuma(
        None, anything, "kumactl's xtables lock wait; no effect here.", key="wait", ignored=True,
    )  # fmt: skip
    wait_interval: Any = kuma(
        None, anything, "kumactl's xtables lock wait interval; no effect here.", key="waitInterval", ignored=True,
    )  # fmt: skip
    max_retries: Any = kuma(
        None, anything, "kumactl's restore retries; no effect here.", key="retry.maxRetries", ignored=True,
    )  # fmt: skip
    sleep_between_retries: Any = kuma(
        None, anything, "kumactl's pause between retries; no effect here.",
        key="retry.sleepBetweenRetries", ignored=True,
    )  # fmt: skip
    verbose: Any = kuma(None, anything, "kumactl's verbose output; no effect here.", key="verbose", ignored=True)
    dry_run: Any = kuma(
        None, anything, "kumactl's dry run (in a config file: no effect here; use --dry-run).",
        key="dryRun", ignored=True,
    )  # fmt: skip
    cni_mode: Any = kuma(None, anything, "kumactl's CNI mode; no effect here.", key="cniMode", ignored=True)
    iptables_executables: Any = kuma(
        None, anything, "kumactl's iptables binaries; firewalld runs its own. No effect here.",
        key="iptablesExecutables", ignored=True,
    )  # fmt: skip
    store_firewalld: Any = kuma(
        None, anything, "kumactl's firewalld storage: this tool is that; no effect here.",
        key="storeFirewalld", ignored=True,
    )  # fmt: skip
    # -- resolved from the host when not given, recorded with the settings
    kuma_dp_uid: Optional[int] = setting(
        None, parse_uid, "The kuma-dp user's UID, resolved from kuma_dp_user.", derived=True
    )
    dns_nameservers: Optional[tuple[str, ...]] = setting(
        None, parse_nameservers, "The nameservers read from resolv_conf_path.", derived=True
    )

    def _finish(self) -> None:
        warnings: list[Warning_] = []
        if self.kuma_dp_uid is None:
            object.__setattr__(self, "kuma_dp_uid", resolve_kuma_dp_user(self.kuma_dp_user))
        if self.dns_nameservers is None:
            servers = read_nameservers(self.resolv_conf_path) if self.dns_enabled else ()
            object.__setattr__(self, "dns_nameservers", servers)
        for direction in ("inbound", "outbound"):
            if getattr(self, f"include_{direction}_ports") and getattr(self, f"exclude_{direction}_ports"):
                warnings.append(
                    Warning_(
                        "setting-without-effect",
                        f"exclude_{direction}_ports has no effect because include_{direction}_ports "
                        "is set (as in Kuma)",
                        f"exclude_{direction}_ports",
                    )
                )
        ports = {"redirect_inbound_port": self.redirect_inbound_port, "redirect_outbound_port": self.redirect_outbound_port}
        if self.dns_enabled:
            ports["redirect_dns_port"] = self.redirect_dns_port
        if len(set(ports.values())) < len(ports):
            warnings.append(Warning_("ports-not-distinct", f"the redirect ports are not distinct: {ports}"))
        if self.dns_enabled and not self.redirect_all_dns_traffic:
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
        return ("ipv4", "ipv6") if self.ip_family_mode == "dualstack" else ("ipv4",)

    @property
    def uid(self) -> int:
        assert self.kuma_dp_uid is not None  # resolved in _finish
        return self.kuma_dp_uid

    @classmethod
    def _check_flags(cls, flags: Mapping[str, RawValue]) -> None:
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
    """The nameservers of a resolv.conf, in order, each once (a repeated line adds nothing)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SettingsError(f"unable to read file {path}: not a regular file", "resolv_conf_path")
            data = f.read(MAX_RESOLV_CONF + 1)
    except OSError:
        raise SettingsError(f"unable to read file {path}", "resolv_conf_path") from None
    if len(data) > MAX_RESOLV_CONF:
        raise SettingsError(f"unable to read file {path}: larger than {MAX_RESOLV_CONF} bytes", "resolv_conf_path")
    servers: list[str] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            if "%" in words[1]:
                continue  # a scoped "fe80::1%eth0": iptables cannot match the scope
            try:
                servers.append(str(ipaddress.ip_address(words[1])))
            except ValueError:
                continue
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


@dataclass(frozen=True)
class Profile:
    """A rule-set family: its settings, its templates and what marks its entries."""

    name: str
    settings_type: type[KumaSettings]
    owner: Owner
    template: str
    #: addresses the rules expect on lo, by family (added by install, removed by uninstall)
    loopback: Mapping[str, str]

    def template_path(self, settings: KumaSettings) -> Path:
        from tproxy_firewalld.ruleset import packaged_template

        return packaged_template(self.template)


KUMA = Profile(
    name="kuma",
    settings_type=KumaSettings,
    owner=OWNER,
    template=TEMPLATE,
    loopback={"ipv6": IPV6_PASSTHROUGH},
)
