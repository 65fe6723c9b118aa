"""Settings -> Kuma's rule set -> firewalld direct entries.

The jinja2 template renders, per IP family, exactly the ``iptables-restore`` input kumactl
writes (``-N``, ``-A CHAIN``, ``-I CHAIN n``), so it can be compared line for line with
Kuma's own golden files. That text is then turned into direct entries: each chain's final
rule order is worked out the way ``iptables-restore --noflush`` builds it, and priorities
are assigned to fix that order in firewalld, which leaves equal priorities unordered:

* our own chains (``KUMA_MESH_*``): 0, 1, 2, ...
* built-in chains: Kuma's inserts (``-I``) land above whatever the chain already holds and
  its appends (``-A``) below it; so inserted rules get negative priorities (-n .. -1) and
  appended rules positive ones (1 .. m), leaving priority 0 — the usual priority of other
  tools' direct rules — between the two, as in Kuma.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

from tproxy_firewalld.entries import (
    CHAIN_PREFIX,
    COMMENT_PREFIX,
    MAX_CHAIN_NAME,
    Chain,
    DirectConfig,
    Rule,
)
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.settings import Settings, VnetNetwork

TEMPLATE = "kuma.rules.j2"
LOOPBACK_IFACE = "lo"
#: Kuma truncates comments to this many characters (iptables allows 255 plus NUL).
MAX_COMMENT = 254

FAMILY = {
    "ipv4": {"passthrough": "127.0.0.6/32", "localhost": "127.0.0.1/32", "name": "IPv4"},
    "ipv6": {"passthrough": "::6/128", "localhost": "::1/128", "name": "IPv6"},
}


def _loader_for(template: str) -> tuple[str, str]:
    """(directory, name): Kuma's template by name, or a custom template file by path."""
    path = Path(template)
    if path.is_absolute() or path.parent != Path("."):
        return str(path.resolve().parent), path.name
    return str(_templates_dir()), template


def _templates_dir() -> Path:
    # Installed: shipped inside the package. Source checkout: the repository's templates/.
    packaged = Path(str(resources.files("tproxy_firewalld"))) / "templates"
    if (packaged / TEMPLATE).is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment(directory: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # the output is iptables-restore text, not markup
    )
    env.filters["goquote"] = go_quote
    return env


def go_quote(text: str) -> str:
    """Go's ``%q`` for the plain ASCII text of Kuma's comments."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def comment(text: str) -> str:
    # Kuma cuts the joined "prefix/text" to 254 bytes before quoting it.
    return f"{COMMENT_PREFIX}/{text}".encode()[:MAX_COMMENT].decode(errors="ignore")


@dataclass(frozen=True)
class FamilyContext:
    """Everything the template sees for one family: validated, typed, family-filtered."""

    ipv: str
    s: Settings
    uid: int
    lo: str
    passthrough: str
    localhost: str
    inbound_exclude_ips: tuple[str, ...]
    outbound_exclude_ips: tuple[str, ...]
    nameservers: tuple[str, ...]
    vnet: tuple[VnetNetwork, ...]
    dns_redirect: bool
    conntrack_zone_split: bool
    loopback_nameservers: tuple[str, ...] = field(default=())


def _family(address: str) -> str:
    return "ipv6" if ipaddress.ip_network(address, strict=False).version == 6 else "ipv4"


def family_context(settings: Settings, ipv: str) -> FamilyContext:
    nameservers = tuple(n for n in settings.dns_nameservers if _family(n) == ipv)
    dns_redirect = settings.dns_enabled and (settings.dns_capture_all or bool(nameservers))
    return FamilyContext(
        ipv=ipv,
        s=settings,
        uid=settings.kuma_dp_uid,
        lo=LOOPBACK_IFACE,
        passthrough=FAMILY[ipv]["passthrough"],
        localhost=FAMILY[ipv]["localhost"],
        inbound_exclude_ips=tuple(a for a in settings.inbound_exclude_ips if _family(a) == ipv),
        outbound_exclude_ips=tuple(a for a in settings.outbound_exclude_ips if _family(a) == ipv),
        nameservers=() if settings.dns_capture_all else nameservers,
        # Kuma keeps the networks in a map (a repeated interface keeps its last CIDR) and
        # walks it in byte-wise sorted order.
        vnet=tuple(
            sorted(
                {v.iface: v for v in settings.vnet if v.ipv == ipv}.values(),
                key=lambda v: v.iface.encode(),
            )
        ),
        dns_redirect=dns_redirect,
        conntrack_zone_split=dns_redirect and not settings.dns_skip_conntrack_zone_split,
        loopback_nameservers=tuple(n for n in nameservers if ipaddress.ip_address(n).is_loopback)
        if not settings.dns_capture_all
        else (),
    )


def render_restore(settings: Settings, ipv: str, template: str = TEMPLATE) -> str:
    """Kuma's ``iptables-restore`` input for one family (as ``kumactl --dry-run`` prints it)."""
    directory, name = _loader_for(template)
    env = _environment(directory)
    ctx = family_context(settings, ipv)
    try:
        text = env.get_template(name).render(ctx=ctx, comment=comment, **ctx.__dict__)
    except jinja2.TemplateError as exc:
        raise SettingsError(f"rules template {template}: {exc}") from None
    # blank lines only separate blocks in the template
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


@dataclass
class _ChainOrder:
    inserted: list[tuple[str, ...]] = field(default_factory=list)
    appended: list[tuple[str, ...]] = field(default_factory=list)


class RestoreFormatError(ValueError):
    pass


def parse_restore(text: str, ipv: str) -> DirectConfig:
    """Kuma's restore text -> direct entries in firewalld's order, with fixing priorities."""
    chains: list[Chain] = []
    order: dict[tuple[str, str], _ChainOrder] = {}
    table: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        tokens = shlex.split(line)
        head = tokens[0]
        if head.startswith("*"):
            table = head[1:].strip() or (tokens[1] if len(tokens) > 1 else "")
            continue
        if head == "COMMIT":
            table = None
            continue
        if table is None:
            raise RestoreFormatError(f"line {number}: rule outside a table: {line!r}")
        if head == "-N":
            name = tokens[1]
            if len(name) > MAX_CHAIN_NAME:
                raise RestoreFormatError(f"line {number}: chain name {name!r} is too long")
            chains.append(Chain(ipv, table, name))
            order.setdefault((table, name), _ChainOrder())
        elif head == "-A":
            order.setdefault((table, tokens[1]), _ChainOrder()).appended.append(tuple(tokens[2:]))
        elif head == "-I":
            position = int(tokens[2])
            slot = order.setdefault((table, tokens[1]), _ChainOrder())
            if not 1 <= position <= len(slot.inserted) + 1:
                raise RestoreFormatError(f"line {number}: insert position {position} out of range")
            slot.inserted.insert(position - 1, tuple(tokens[3:]))
        else:
            raise RestoreFormatError(f"line {number}: unsupported command {head!r}")

    rules: list[Rule] = []
    for (tbl, chain_name), slot in order.items():
        if chain_name.startswith(CHAIN_PREFIX):
            ordered = slot.inserted + slot.appended
            rules += [Rule(ipv, tbl, chain_name, i, args) for i, args in enumerate(ordered)]
        else:
            n = len(slot.inserted)
            rules += [Rule(ipv, tbl, chain_name, i - n, a) for i, a in enumerate(slot.inserted)]
            rules += [Rule(ipv, tbl, chain_name, i + 1, a) for i, a in enumerate(slot.appended)]
    return DirectConfig(chains=tuple(chains), rules=tuple(rules))


def build_ruleset(settings: Settings, template: str = TEMPLATE) -> DirectConfig:
    """Our entries for both families (dual-stack) or IPv4 only, in firewalld's order."""
    chains: list[Chain] = []
    rules: list[Rule] = []
    for ipv in settings.ipvs:
        try:
            part = parse_restore(render_restore(settings, ipv, template), ipv)
        except (RestoreFormatError, ValueError) as exc:
            raise SettingsError(f"rules template {template}: {exc}") from None
        chains += part.chains
        rules += part.rules
    return DirectConfig(chains=tuple(chains), rules=tuple(rules))


def restore_input(config: DirectConfig, ipv: str) -> str:
    """An ``iptables-restore --noflush`` input holding exactly ``config``'s entries of ``ipv``.

    Used to let the real iptables parser check every rule before anything is changed, and
    by the tests to load the expected rules into a bare network namespace.
    """
    out: list[str] = []
    tables = dict.fromkeys(
        [c.table for c in config.chains if c.ipv == ipv]
        + [r.table for r in config.rules if r.ipv == ipv]
    )
    for table in tables:
        out.append(f"*{table}")
        for c in config.chains:
            if c.ipv == ipv and c.table == table:
                out.append(f":{c.chain} - [0:0]")
        for r in sorted(
            (r for r in config.rules if r.ipv == ipv and r.table == table),
            key=lambda r: (r.chain, r.priority),
        ):
            out.append(" ".join(["-A", r.chain, *(_restore_quote(a) for a in r.args)]))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _restore_quote(arg: str) -> str:
    # iptables-restore splits on whitespace and understands double quotes only.
    if arg and not any(c.isspace() or c in "\"'\\" for c in arg):
        return arg
    return go_quote(arg)
