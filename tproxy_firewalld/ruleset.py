"""Settings -> a profile's rule set -> firewalld direct entries.

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

import contextlib
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tproxy_firewalld import __version__
from tproxy_firewalld.entries import MAX_CHAIN_NAME, Chain, DirectConfig, Rule, posix_split
from tproxy_firewalld.errors import SettingsError, TproxyError
from tproxy_firewalld.files import atomic_write, private_dir
from tproxy_firewalld.kuma import KUMA, KumaSettings, Profile, VnetNetwork
from tproxy_firewalld.readfile import Refused, read_regular
from tproxy_firewalld.settings import family

if TYPE_CHECKING:
    import jinja2

LOOPBACK_IFACE = "lo"
#: Kuma truncates comments to this many characters (iptables allows 255 plus NUL).
MAX_COMMENT = 254
#: Compiled templates are kept here (root only), so a run does not compile them again.
CACHE_DIR = Path("/var/cache/tproxy-firewalld")
BYTECODE_CACHE = CACHE_DIR / "templates"
#: The last rendering of the profile's own template: settings that were rendered before (an
#: install run again, diff, status) skip jinja2 altogether (its import is a third of a run).
RENDER_CACHE = CACHE_DIR / "rendered.json"
RENDER_CACHE_ENTRIES = 8
RENDER_CACHE_MAX = 4 * 1024 * 1024

FAMILY = {
    "ipv4": {"passthrough": "127.0.0.6/32", "localhost": "127.0.0.1/32", "name": "IPv4"},
    "ipv6": {"passthrough": "::6/128", "localhost": "::1/128", "name": "IPv6"},
}


def _cache_dir(path: Path) -> bool:
    """Whether ``path`` is (now) a directory only root can write, and we are root: caches
    live only there, since what they hold is trusted like the templates themselves. Called
    only on a cache miss."""
    if os.geteuid() != 0:
        return False
    try:
        return private_dir(path)
    except OSError:
        return False


def _bytecode_cache() -> Optional[Any]:
    """jinja2's bytecode cache in a directory only root can write, if we are root. A cache
    that cannot be read or written (read-only, full, ...) is as good as none: never an error."""
    import jinja2

    class QuietBytecodeCache(jinja2.FileSystemBytecodeCache):
        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            with contextlib.suppress(OSError, ValueError, EOFError):
                super().load_bytecode(bucket)

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    if not _cache_dir(BYTECODE_CACHE):
        return None
    return QuietBytecodeCache(str(BYTECODE_CACHE))


def _cache_key(settings: KumaSettings, profile: Profile, template: Path) -> Optional[str]:
    try:
        source = template.read_bytes()
    except OSError:
        return None
    blob = json.dumps(
        [__version__, profile.name, str(template), settings.to_json()], sort_keys=True
    )
    return hashlib.sha256(blob.encode() + b"\0" + source).hexdigest()


def _read_render_cache() -> dict[str, dict[str, str]]:
    """The cache file's renderings by key; empty when absent, unreadable or not root's own."""
    try:
        doc = json.loads(
            read_regular(RENDER_CACHE, RENDER_CACHE_MAX, follow=False, root_owned=True)
        )
    except (OSError, Refused, ValueError):
        return {}
    entries = doc.get("renderings") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return {}
    out: dict[str, dict[str, str]] = {}
    for entry in entries:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), str)
            and isinstance(entry.get("text"), dict)
        ):
            out[entry["key"]] = {str(k): str(v) for k, v in entry["text"].items()}
    return out


def _cached_render(key: str) -> Optional[dict[str, str]]:
    return _read_render_cache().get(key)


def _remember_render(key: str, text: dict[str, str]) -> None:
    """Keep the last few renderings (an install, its diff and status, a changed setting)."""

    if not _cache_dir(CACHE_DIR):
        return
    kept = [{"key": k, "text": t} for k, t in _read_render_cache().items() if k != key]
    doc = {"renderings": [{"key": key, "text": text}, *kept][:RENDER_CACHE_ENTRIES]}
    with contextlib.suppress(TproxyError, OSError):  # a cache: never a reason to fail
        atomic_write(RENDER_CACHE, json.dumps(doc).encode(), backup=False, mode=0o600)


@cache
def _environment(directory: str) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # the output is iptables-restore text, not markup
        bytecode_cache=_bytecode_cache(),
    )
    env.filters["goquote"] = go_quote
    return env


def go_quote(text: str) -> str:
    """Go's ``%q`` for the plain ASCII text of Kuma's comments."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def comment(text: str, prefix: str) -> str:
    # Kuma cuts the joined "prefix/text" to 254 bytes before quoting it.
    return f"{prefix}{text}".encode()[:MAX_COMMENT].decode(errors="ignore")


@dataclass(frozen=True)
class FamilyContext:
    """Everything the template sees for one family: validated, typed, family-filtered."""

    ipv: str
    #: the Kuma release (its rule set differs, see the templates)
    release: str
    s: KumaSettings
    uid: int
    lo: str
    passthrough: str
    localhost: str
    #: where this family's inbound traffic goes (Kuma 2.7: IPv6 has its own port)
    inbound_port: int
    uid_exclusions: tuple[Any, ...]
    inbound_exclude_ips: tuple[str, ...]
    outbound_exclude_ips: tuple[str, ...]
    nameservers: tuple[str, ...]
    vnet: tuple[VnetNetwork, ...]
    dns_redirect: bool
    conntrack_zone_split: bool
    loopback_nameservers: tuple[str, ...] = field(default=())
    #: whether --vnet was given at all (Kuma 2.7 inserts into PREROUTING then, any family)
    vnet_given: bool = False


def family_context(settings: KumaSettings, ipv: str) -> FamilyContext:
    servers = tuple(n for n in settings.dns_nameservers or () if family(n) == ipv)
    capture_all = settings.redirect_all_dns_traffic
    if settings.kuma_version == "2.7":
        # 2.7 decides DNS once for both families (2.9+: per family, off without its nameservers)
        dns_redirect = settings.dns_enabled
    else:
        dns_redirect = settings.dns_enabled and (capture_all or bool(servers))
    return FamilyContext(
        ipv=ipv,
        release=settings.kuma_version,
        s=settings,
        uid=settings.uid,
        lo=LOOPBACK_IFACE,
        passthrough=FAMILY[ipv]["passthrough"],
        localhost=FAMILY[ipv]["localhost"],
        inbound_port=settings.inbound_port(ipv),
        uid_exclusions=settings.uid_exclusions,
        inbound_exclude_ips=tuple(a for a in settings.exclude_inbound_ips if family(a) == ipv),
        outbound_exclude_ips=tuple(a for a in settings.exclude_outbound_ips if family(a) == ipv),
        nameservers=() if capture_all else servers,
        vnet=settings.vnet_rendered(ipv),
        dns_redirect=dns_redirect,
        conntrack_zone_split=dns_redirect and not settings.skip_dns_conntrack_zone_split,
        loopback_nameservers=()
        if capture_all
        else tuple(n for n in servers if ipaddress.ip_address(n).is_loopback),
        vnet_given=bool(settings.vnet),
    )


def render_restore(
    settings: KumaSettings,
    ipv: str,
    *,
    profile: Optional[Profile] = None,
    template: Optional[Path] = None,
) -> str:
    """The profile's ``iptables-restore`` input for one family (as ``kumactl --dry-run`` prints
    it), from its own template or ``template``."""
    import jinja2

    profile = profile or KUMA
    template = template or profile.template_path(settings)
    comment_prefix = profile.owner.comment_prefix
    env = _environment(str(template.parent))
    ctx = family_context(settings, ipv)
    try:
        text = env.get_template(template.name).render(
            ctx=ctx, comment=lambda text: comment(text, comment_prefix), **ctx.__dict__
        )
    except jinja2.TemplateNotFound:
        raise SettingsError(f"rules template {template}: not found", "rules_template") from None
    except (jinja2.TemplateError, OSError) as exc:
        raise SettingsError(f"rules template {template}: {exc}", "rules_template") from None
    # blank lines only separate blocks in the template
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


@dataclass
class _ChainOrder:
    inserted: list[tuple[str, ...]] = field(default_factory=list)
    appended: list[tuple[str, ...]] = field(default_factory=list)


class RestoreFormatError(ValueError):
    pass


def parse_restore(text: str, ipv: str, own_chain_prefix: str) -> DirectConfig:
    """Restore text -> direct entries in firewalld's order, with fixing priorities."""
    chains: list[Chain] = []
    order: dict[tuple[str, str], _ChainOrder] = {}
    table: Optional[str] = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            tokens = list(posix_split(line))
        except ValueError as exc:
            raise RestoreFormatError(f"line {number}: {exc}") from None
        head = tokens[0]
        if head.startswith("*"):
            table = head[1:].strip() or (tokens[1] if len(tokens) > 1 else "")
            continue
        if head == "COMMIT":
            table = None
            continue
        if table is None:
            raise RestoreFormatError(f"line {number}: rule outside a table: {line!r}")
        if (head in ("-N", "-A") and len(tokens) < 2) or (head == "-I" and len(tokens) < 3):
            raise RestoreFormatError(f"line {number}: {head} without a chain: {line!r}")
        if head == "-N":
            name = tokens[1]
            if len(name) > MAX_CHAIN_NAME:
                raise RestoreFormatError(f"line {number}: chain name {name!r} is too long")
            chains.append(Chain(ipv, table, name))
            order.setdefault((table, name), _ChainOrder())
        elif head == "-A":
            if len(tokens) < 3:
                raise RestoreFormatError(f"line {number}: a rule without arguments: {line!r}")
            order.setdefault((table, tokens[1]), _ChainOrder()).appended.append(tuple(tokens[2:]))
        elif head == "-I":
            if not tokens[2].isdigit() or len(tokens) < 4:
                raise RestoreFormatError(f"line {number}: expected -I CHAIN N ARGS: {line!r}")
            position = int(tokens[2])
            slot = order.setdefault((table, tokens[1]), _ChainOrder())
            if not 1 <= position <= len(slot.inserted) + 1:
                raise RestoreFormatError(f"line {number}: insert position {position} out of range")
            slot.inserted.insert(position - 1, tuple(tokens[3:]))
        else:
            raise RestoreFormatError(f"line {number}: unsupported command {head!r}")

    rules: list[Rule] = []
    for (tbl, chain_name), slot in order.items():
        if chain_name.startswith(own_chain_prefix):
            ordered = slot.inserted + slot.appended
            rules += [Rule(ipv, tbl, chain_name, i, args) for i, args in enumerate(ordered)]
        else:
            n = len(slot.inserted)
            rules += [Rule(ipv, tbl, chain_name, i - n, a) for i, a in enumerate(slot.inserted)]
            rules += [Rule(ipv, tbl, chain_name, i + 1, a) for i, a in enumerate(slot.appended)]
    return DirectConfig(chains=tuple(chains), rules=tuple(rules))


def build_ruleset(
    settings: KumaSettings, profile: Optional[Profile] = None, template: Optional[str] = None
) -> DirectConfig:
    """Our entries for both families (dual-stack) or IPv4 only, in firewalld's order.

    ``template`` is a custom template file (a path, relative to the working directory); its
    entries must all carry the profile's marks, or uninstall could not find them again.
    """
    profile = profile or KUMA
    if template is not None:
        return _build(settings, profile, template)
    # a run asks for the same rendering more than once (the plan, the recognition of what is
    # ours): the settings are a frozen value, the packaged template fixed for the process
    key = (settings, profile.name)
    if key not in _BUILT:
        if len(_BUILT) >= 32:
            _BUILT.clear()
        _BUILT[key] = _build(settings, profile, None)
    return _BUILT[key]


_BUILT: dict[tuple[KumaSettings, str], DirectConfig] = {}


def _build(settings: KumaSettings, profile: Profile, template: Optional[str]) -> DirectConfig:
    path = Path(template).absolute() if template else profile.template_path(settings)
    key = _cache_key(settings, profile, path) if template is None else None
    texts = (_cached_render(key) if key else None) or {}
    fresh = not texts
    chains: list[Chain] = []
    rules: list[Rule] = []
    for ipv in settings.ipvs:
        if ipv not in texts:
            texts[ipv] = render_restore(settings, ipv, profile=profile, template=path)
        text = texts[ipv]
        try:
            part = parse_restore(text, ipv, profile.owner.chain_prefix)
        except ValueError as exc:
            raise SettingsError(
                f"rules template {template or path.name}: {exc}", "rules_template"
            ) from None
        chains += part.chains
        rules += part.rules
    config = DirectConfig(chains=tuple(chains), rules=tuple(rules))
    if key and fresh:
        _remember_render(key, texts)
    # A release without comments (Kuma 2.7) has rules outside our chains that carry no mark:
    # they are recognised by exact match with what its template renders for the recorded
    # settings (kuma.recognise). A custom template has no such guarantee: it must mark them.
    if template or not profile.renders_unmarked(settings):
        unrecognised = config.foreign(profile.owner)
    else:
        unrecognised = DirectConfig()
    if not unrecognised.is_empty():
        example = sorted(unrecognised.entries(), key=str)[0].describe()
        raise SettingsError(
            f"the rules template produced entries tproxy-firewalld would not recognise as its own "
            f"(every chain must start with {profile.owner.chain_prefix}, every rule carry the "
            f"comment prefix {profile.owner.comment_prefix}), e.g. {example}",
            "rules_template",
        )
    return config


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
