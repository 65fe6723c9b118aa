"""The ``tproxy-firewalld`` command: parses flags, calls the library, prints, picks the exit code.

Every command that takes settings takes the same flags as ``kumactl install
transparent-proxy`` (plus ``--config`` and the ``KUMA_TRANSPARENT_PROXY_*`` environment).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from typer.core import TyperCommand

from tproxy_firewalld import __version__
from tproxy_firewalld.errors import ExitCode, SettingsError, TproxyError
from tproxy_firewalld.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DIRECT_XML = Path("/etc/firewalld/direct.xml")

HELP = """\
Keep Kuma's transparent-proxy redirect rules in firewalld: rendered exactly as
`kumactl install transparent-proxy` would install them, IPv4 and IPv6, stored in
firewalld's direct config so they survive reloads and reboots, and removable again.

Settings come from the same flags, --config files (YAML/JSON, later files win) and
KUMA_TRANSPARENT_PROXY_* environment variables as kumactl's, with kumactl's precedence:
defaults < files < environment < flags.
"""

app = typer.Typer(
    name="tproxy-firewalld",
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


class KumaFlagsCommand(TyperCommand):
    """Accepts kumactl's ``--flag=false`` spelling for boolean flags (Go's pflag allows it)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        booleans = {
            name: param
            for param in self.params
            if getattr(param, "is_flag", False)
            for name in param.opts
        }
        rewritten: list[str] = []
        for arg in args:
            name, sep, value = arg.partition("=")
            if sep and name in booleans:
                param = booleans[name]
                if value in ("1", "t", "T", "true", "TRUE", "True"):
                    rewritten.append(name)
                elif value in ("0", "f", "F", "false", "FALSE", "False"):
                    if not param.secondary_opts:
                        raise typer.BadParameter(
                            f"value '{value}' is not allowed (the flag can only be turned on)",
                            param_hint=name,
                        )
                    rewritten.append(param.secondary_opts[0])
                else:
                    raise typer.BadParameter(
                        f"value '{value}' is not a valid boolean (true or false)", param_hint=name
                    )
            else:
                rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


SETTINGS_PANEL = "Settings (as kumactl install transparent-proxy)"


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=SETTINGS_PANEL, show_default=False, **kw)


# (flag, python name, annotation) — every settings flag, once, shared by all commands.
_SETTINGS_PARAMS: list[tuple[str, str, Any]] = [
    ("--config", "config", Annotated[Optional[list[str]], _opt("--config", metavar="FILE", help="Config file (YAML or JSON, Kuma's shape); repeatable, comma lists allowed, '-' for stdin. Later files override earlier; lists replace.")]),
    ("--kuma-dp-user", "kuma_dp_user", Annotated[Optional[str], _opt("--kuma-dp-user", metavar="USER|UID", help="User name or numeric UID the proxy runs as (its traffic is not redirected). Default: UID 5678, else user kuma-dp. A numeric UID need not exist yet.")]),
    ("--ip-family-mode", "ip_family_mode", Annotated[Optional[str], _opt("--ip-family-mode", metavar="dualstack|ipv4", help="dualstack (IPv4 and IPv6 rules, default) or ipv4.")]),
    ("--redirect-inbound", "redirect_inbound", Annotated[Optional[bool], _opt("--redirect-inbound/--no-redirect-inbound", help="Redirect inbound TCP traffic (default true; --redirect-inbound=false turns it off).")]),
    ("--redirect-inbound-port", "redirect_inbound_port", Annotated[Optional[str], _opt("--redirect-inbound-port", metavar="PORT", help="Port inbound traffic is redirected to (default 15006).")]),
    ("--redirect-outbound-port", "redirect_outbound_port", Annotated[Optional[str], _opt("--redirect-outbound-port", metavar="PORT", help="Port outbound traffic is redirected to (default 15001).")]),
    ("--exclude-inbound-ports", "exclude_inbound_ports", Annotated[Optional[list[str]], _opt("--exclude-inbound-ports", metavar="PORTS", help="Inbound ports not to redirect (comma list; repeatable). Note: 22 is NOT excluded by default.")]),
    ("--exclude-outbound-ports", "exclude_outbound_ports", Annotated[Optional[list[str]], _opt("--exclude-outbound-ports", metavar="PORTS", help="Outbound TCP ports not to redirect (comma list; repeatable).")]),
    ("--exclude-inbound-ips", "exclude_inbound_ips", Annotated[Optional[list[str]], _opt("--exclude-inbound-ips", metavar="IPS", help="Source IPs/CIDRs whose inbound traffic is not redirected (comma list; repeatable; each applies to its own family).")]),
    ("--exclude-outbound-ips", "exclude_outbound_ips", Annotated[Optional[list[str]], _opt("--exclude-outbound-ips", metavar="IPS", help="Destination IPs/CIDRs whose outbound traffic is not redirected (comma list; repeatable).")]),
    ("--exclude-outbound-ports-for-uids", "exclude_outbound_ports_for_uids", Annotated[Optional[list[str]], _opt("--exclude-outbound-ports-for-uids", metavar="[PROTO:][PORTS:]UIDS", help="[tcp|udp:][ports:]uids, e.g. tcp:53,3000-5000:106-108 — outbound traffic of these UIDs to these ports is not redirected (repeatable).")]),
    ("--redirect-dns", "redirect_dns", Annotated[Optional[bool], _opt("--redirect-dns", help="Redirect DNS to the nameservers in resolv.conf to the kuma-dp DNS proxy.")]),
    ("--redirect-all-dns-traffic", "redirect_all_dns_traffic", Annotated[Optional[bool], _opt("--redirect-all-dns-traffic", help="Redirect all DNS traffic (UDP 53) to the kuma-dp DNS proxy.")]),
    ("--redirect-dns-port", "redirect_dns_port", Annotated[Optional[str], _opt("--redirect-dns-port", metavar="PORT", help="Port of the kuma-dp DNS proxy (default 15053).")]),
    ("--skip-dns-conntrack-zone-split", "skip_dns_conntrack_zone_split", Annotated[Optional[bool], _opt("--skip-dns-conntrack-zone-split", help="Do not add the raw-table conntrack zone rules for DNS.")]),
    ("--vnet", "vnet", Annotated[Optional[list[str]], _opt("--vnet", metavar="IFACE:CIDR", help="IFACE:CIDR of a virtual network (e.g. docker0:172.17.0.0/16) whose traffic is redirected too (repeatable).")]),
    ("--iptables-logs", "iptables_logs", Annotated[Optional[bool], _opt("--iptables-logs", help="Log matching packets with the kernel's LOG target (level 7).")]),
    ("--drop-invalid-packets", "drop_invalid_packets", Annotated[Optional[bool], _opt("--drop-invalid-packets", help="Drop packets in conntrack state INVALID (mangle PREROUTING).")]),
    ("--redirect-inbound-insert-instead-of-append", "redirect_inbound_insert_instead_of_append", Annotated[Optional[bool], _opt("--redirect-inbound-insert-instead-of-append", help="Insert the PREROUTING jump above other rules instead of appending it.")]),
    ("--redirect-outbound-insert-instead-of-append", "redirect_outbound_insert_instead_of_append", Annotated[Optional[bool], _opt("--redirect-outbound-insert-instead-of-append", help="Insert the OUTPUT jump above other rules instead of appending it.")]),
]


def with_settings(func: F) -> F:
    """Add every settings flag to a command; the command receives ``settings_flags``."""
    sig = inspect.signature(func)
    own = [p for p in sig.parameters.values() if p.name != "settings_flags"]
    extra = [
        inspect.Parameter(py, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
        for _flag, py, ann in _SETTINGS_PARAMS
    ]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        flags = {flag: kwargs.pop(py) for flag, py, _ann in _SETTINGS_PARAMS}
        return func(settings_flags=flags, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


def settings_given(flags: dict[str, Any]) -> bool:
    return any(v not in (None, []) for v in flags.values()) or any(
        k.startswith("KUMA_TRANSPARENT_PROXY_") for k in os.environ
    )


def settings_from(flags: dict[str, Any]) -> Settings:
    config_files = flags.pop("--config", None) or []
    settings = load_settings(
        config_files=config_files, env=os.environ, flags=flags, stdin=sys.stdin
    )
    for warning in settings.warnings:
        typer.echo(f"Warning: {warning}", err=True)
    return settings


def fail(exc: TproxyError) -> typer.Exit:
    typer.echo(f"Error: {exc.message}", err=True)
    return typer.Exit(int(exc.exit_code))


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tproxy-firewalld {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Kuma's transparent-proxy rules as a persistent, removable part of firewalld."""


@app.command(cls=KumaFlagsCommand)
@with_settings
def render(
    direct_xml: Annotated[
        Path,
        typer.Option("--direct-xml", metavar="PATH", help="The direct.xml to merge into (a missing file counts as empty).", show_default=True),
    ] = DEFAULT_DIRECT_XML,
    settings_flags: dict[str, Any] | None = None,
) -> None:
    """Print the complete merged direct.xml: everyone else's entries kept, ours rendered.

    Reads PATH (default /etc/firewalld/direct.xml), replaces tproxy-firewalld's entries
    (chains KUMA_MESH_*, rules carrying Kuma's comment) with the rule set for the given
    settings, checks every rule with iptables-restore --test, and writes the result to
    stdout. Nothing on the system is changed.
    """
    from tproxy_firewalld.directxml import read_direct_xml, render_direct_xml
    from tproxy_firewalld.iptables import check_rules
    from tproxy_firewalld.ruleset import build_ruleset

    try:
        settings = settings_from(dict(settings_flags or {}))
        existing = read_direct_xml(direct_xml)
        ours = build_ruleset(settings)
        result = check_rules(ours)
        for note in result.skipped:
            typer.echo(f"Warning: {note}", err=True)
        output = render_direct_xml(existing.merged_with(ours))
    except TproxyError as exc:
        raise fail(exc) from None
    sys.stdout.buffer.write(output)
    sys.stdout.flush()


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # pragma: no cover - commands catch their own
        raise SystemExit(fail(exc).exit_code) from None


__all__ = ["ExitCode", "app", "main"]
