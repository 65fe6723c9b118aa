"""The ``tproxy-firewalld`` command: parses flags, calls the library, prints, picks the exit code.

Every command that takes settings takes the same flags as ``kumactl install
transparent-proxy`` (plus ``--config`` and the ``KUMA_TRANSPARENT_PROXY_*`` environment).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

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

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
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
    (
        "--config",
        "config",
        Annotated[
            list[str] | None,
            _opt(
                "--config",
                metavar="FILE",
                help="Config file (YAML or JSON, Kuma's shape); repeatable, comma lists allowed, '-' for stdin. Later files override earlier; lists replace.",
            ),
        ],
    ),
    (
        "--kuma-dp-user",
        "kuma_dp_user",
        Annotated[
            str | None,
            _opt(
                "--kuma-dp-user",
                metavar="USER|UID",
                help="User name or numeric UID the proxy runs as (its traffic is not redirected). Default: UID 5678, else user kuma-dp. A numeric UID need not exist yet.",
            ),
        ],
    ),
    (
        "--ip-family-mode",
        "ip_family_mode",
        Annotated[
            str | None,
            _opt(
                "--ip-family-mode",
                metavar="dualstack|ipv4",
                help="dualstack (IPv4 and IPv6 rules, default) or ipv4.",
            ),
        ],
    ),
    (
        "--redirect-inbound",
        "redirect_inbound",
        Annotated[
            bool | None,
            _opt(
                "--redirect-inbound/--no-redirect-inbound",
                help="Redirect inbound TCP traffic (default true; --redirect-inbound=false turns it off).",
            ),
        ],
    ),
    (
        "--redirect-inbound-port",
        "redirect_inbound_port",
        Annotated[
            str | None,
            _opt(
                "--redirect-inbound-port",
                metavar="PORT",
                help="Port inbound traffic is redirected to (default 15006).",
            ),
        ],
    ),
    (
        "--redirect-outbound-port",
        "redirect_outbound_port",
        Annotated[
            str | None,
            _opt(
                "--redirect-outbound-port",
                metavar="PORT",
                help="Port outbound traffic is redirected to (default 15001).",
            ),
        ],
    ),
    (
        "--exclude-inbound-ports",
        "exclude_inbound_ports",
        Annotated[
            list[str] | None,
            _opt(
                "--exclude-inbound-ports",
                metavar="PORTS",
                help="Inbound ports not to redirect (comma list; repeatable). Note: 22 is NOT excluded by default.",
            ),
        ],
    ),
    (
        "--exclude-outbound-ports",
        "exclude_outbound_ports",
        Annotated[
            list[str] | None,
            _opt(
                "--exclude-outbound-ports",
                metavar="PORTS",
                help="Outbound TCP ports not to redirect (comma list; repeatable).",
            ),
        ],
    ),
    (
        "--exclude-inbound-ips",
        "exclude_inbound_ips",
        Annotated[
            list[str] | None,
            _opt(
                "--exclude-inbound-ips",
                metavar="IPS",
                help="Source IPs/CIDRs whose inbound traffic is not redirected (comma list; repeatable; each applies to its own family).",
            ),
        ],
    ),
    (
        "--exclude-outbound-ips",
        "exclude_outbound_ips",
        Annotated[
            list[str] | None,
            _opt(
                "--exclude-outbound-ips",
                metavar="IPS",
                help="Destination IPs/CIDRs whose outbound traffic is not redirected (comma list; repeatable).",
            ),
        ],
    ),
    (
        "--exclude-outbound-ports-for-uids",
        "exclude_outbound_ports_for_uids",
        Annotated[
            list[str] | None,
            _opt(
                "--exclude-outbound-ports-for-uids",
                metavar="[PROTO:][PORTS:]UIDS",
                help="[tcp|udp:][ports:]uids, e.g. tcp:53,3000-5000:106-108 — outbound traffic of these UIDs to these ports is not redirected (repeatable).",
            ),
        ],
    ),
    (
        "--redirect-dns",
        "redirect_dns",
        Annotated[
            bool | None,
            _opt(
                "--redirect-dns",
                help="Redirect DNS to the nameservers in resolv.conf to the kuma-dp DNS proxy.",
            ),
        ],
    ),
    (
        "--redirect-all-dns-traffic",
        "redirect_all_dns_traffic",
        Annotated[
            bool | None,
            _opt(
                "--redirect-all-dns-traffic",
                help="Redirect all DNS traffic (UDP 53) to the kuma-dp DNS proxy.",
            ),
        ],
    ),
    (
        "--redirect-dns-port",
        "redirect_dns_port",
        Annotated[
            str | None,
            _opt(
                "--redirect-dns-port",
                metavar="PORT",
                help="Port of the kuma-dp DNS proxy (default 15053).",
            ),
        ],
    ),
    (
        "--skip-dns-conntrack-zone-split",
        "skip_dns_conntrack_zone_split",
        Annotated[
            bool | None,
            _opt(
                "--skip-dns-conntrack-zone-split",
                help="Do not add the raw-table conntrack zone rules for DNS.",
            ),
        ],
    ),
    (
        "--vnet",
        "vnet",
        Annotated[
            list[str] | None,
            _opt(
                "--vnet",
                metavar="IFACE:CIDR",
                help="IFACE:CIDR of a virtual network (e.g. docker0:172.17.0.0/16) whose traffic is redirected too (repeatable).",
            ),
        ],
    ),
    (
        "--iptables-logs",
        "iptables_logs",
        Annotated[
            bool | None,
            _opt(
                "--iptables-logs",
                help="Log matching packets with the kernel's LOG target (level 7).",
            ),
        ],
    ),
    (
        "--drop-invalid-packets",
        "drop_invalid_packets",
        Annotated[
            bool | None,
            _opt(
                "--drop-invalid-packets",
                help="Drop packets in conntrack state INVALID (mangle PREROUTING).",
            ),
        ],
    ),
    (
        "--redirect-inbound-insert-instead-of-append",
        "redirect_inbound_insert_instead_of_append",
        Annotated[
            bool | None,
            _opt(
                "--redirect-inbound-insert-instead-of-append",
                help="Insert the PREROUTING jump above other rules instead of appending it.",
            ),
        ],
    ),
    (
        "--redirect-outbound-insert-instead-of-append",
        "redirect_outbound_insert_instead_of_append",
        Annotated[
            bool | None,
            _opt(
                "--redirect-outbound-insert-instead-of-append",
                help="Insert the OUTPUT jump above other rules instead of appending it.",
            ),
        ],
    ),
]


def with_settings(func: F) -> F:
    """Add every settings flag to a command; the command receives ``settings_flags``."""
    sig = inspect.signature(func)
    # The module's annotations are strings (from __future__ import annotations); typer
    # reads the signature we build, so resolve them here or the options lose their help.
    hints = typing.get_type_hints(func, include_extras=True)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in sig.parameters.values()
        if p.name != "settings_flags"
    ]
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
        bool | None,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = None,
) -> None:
    """Kuma's transparent-proxy rules as a persistent, removable part of firewalld."""


@app.command(cls=KumaFlagsCommand)
@with_settings
def render(
    direct_xml: Annotated[
        Path,
        typer.Option(
            "--direct-xml",
            metavar="PATH",
            help="The direct.xml to merge into (a missing file counts as empty).",
            show_default=True,
        ),
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


OUTPUT_HELP = "text (for people) or json (versioned, for programs)."


class Output(StrEnum):
    text = "text"
    json = "json"


RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        metavar="DIR",
        help="Work on the image root DIR (DIR/etc/firewalld/direct.xml); implies --offline.",
    ),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Do not talk to firewalld; write direct.xml (applied at firewalld's next start).",
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help=OUTPUT_HELP)]


def _paths(root: Path | None) -> Any:
    from tproxy_firewalld.operations import Paths

    return Paths(root) if root is not None else Paths()


def _print_diff(title: str, d: Any, indent: str = "  ") -> None:
    typer.echo(f"{title}: {d.summary()}")
    for e in d.add:
        typer.echo(f"{indent}+ {e.describe()}")
    for e in d.remove:
        typer.echo(f"{indent}- {e.describe()}")


def _print_result(result: Any, output: Output) -> None:
    if output is Output.json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    for note in result.notes:
        typer.echo(note, err=True)
    prefix = "would change: " if result.dry_run and result.changed else ""
    if result.dry_run:
        for title, d in (
            ("runtime", result.runtime),
            ("permanent", result.permanent),
            ("direct.xml", result.file),
        ):
            if d is not None:
                _print_diff(title, d)
    typer.echo(f"{result.action}: {prefix}{result.summary()}")


TemplateOpt = Annotated[
    str | None,
    typer.Option(
        "--rules-template",
        metavar="FILE",
        help="Render from this jinja2 template instead of Kuma's (advanced). Its rules are checked "
        "like Kuma's and must carry Kuma's chain or comment prefix.",
    ),
]


@app.command(cls=KumaFlagsCommand)
@with_settings
def install(
    dry_run: DryRunOpt = False,
    offline: OfflineOpt = False,
    root: RootOpt = None,
    output: OutputOpt = Output.text,
    allow_ssh_redirect: Annotated[
        bool,
        typer.Option(
            "--allow-ssh-redirect",
            help="Install even though inbound redirection captures the port sshd listens on.",
        ),
    ] = False,
    rules_template: TemplateOpt = None,
    settings_flags: dict[str, Any] | None = None,
) -> None:
    """Install the rules: live in firewalld (runtime and permanent, no reload) or in direct.xml.

    With firewalld running, only the differences are applied over D-Bus: chains and their
    rules first, the jumps from built-in chains last; then one permanent update that keeps
    every other entry. A second identical install changes nothing. Without firewalld (or
    with --offline / --root) direct.xml is written and firewalld applies it at its next
    start. The settings are recorded in /var/lib/tproxy-firewalld/installed.json.

    Exit codes: 0 done or nothing to do; 2 bad settings; 3 direct.xml unusable; 4 rules
    rejected by iptables; 5 firewalld unavailable/FAILED; 6 firewalld refused; 7 not
    permitted; 8 partially applied; 9 locked; 10 refused: inbound redirection would capture
    the port sshd listens on (exclude it, or --allow-ssh-redirect).
    """
    from tproxy_firewalld.operations import install as do_install

    try:
        settings = settings_from(dict(settings_flags or {}))
        result = asyncio.run(
            do_install(
                settings,
                paths=_paths(root),
                offline=offline or root is not None,
                dry_run=dry_run,
                template=rules_template,
                allow_ssh_redirect=allow_ssh_redirect,
            )
        )
    except TproxyError as exc:
        raise fail(exc) from None
    _print_result(result, output)


@app.command()
def uninstall(
    dry_run: DryRunOpt = False,
    offline: OfflineOpt = False,
    root: RootOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Remove exactly our entries — runtime, permanent and direct.xml — and nothing else.

    Also removes what `kumactl install transparent-proxy --store-firewalld` left in
    direct.xml (KUMA_MESH chains, rules carrying Kuma's comment, whatever ipv or priority).
    Nothing installed is success ("nothing to do").
    """
    from tproxy_firewalld.operations import uninstall as do_uninstall

    try:
        result = asyncio.run(
            do_uninstall(paths=_paths(root), offline=offline or root is not None, dry_run=dry_run)
        )
    except TproxyError as exc:
        raise fail(exc) from None
    _print_result(result, output)


@app.command(cls=KumaFlagsCommand)
@with_settings
def diff(
    offline: OfflineOpt = False,
    root: RootOpt = None,
    output: OutputOpt = Output.text,
    settings_flags: dict[str, Any] | None = None,
) -> None:
    """Three-way diff of our entries: desired vs permanent (firewalld and direct.xml) vs runtime.

    Desired is the settings given, or — with none — those the last install recorded.
    Entries are compared as firewalld identifies them (ipv, table, chain, priority, args
    tokens). Also says when direct.xml and firewalld's permanent config disagree (a hand
    edit firewalld has not loaded). Exit 0 in sync, 1 differences, 2 or more trouble.
    """
    from tproxy_firewalld.operations import diff as do_diff

    try:
        flags = dict(settings_flags or {})
        settings = settings_from(flags) if settings_given(flags) else None
        report = asyncio.run(
            do_diff(settings, paths=_paths(root), offline=offline or root is not None)
        )
    except TproxyError as exc:
        code = max(int(exc.exit_code), 2)
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(code) from None
    if output is Output.json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.in_sync else 1)


def _print_report(report: Any) -> None:
    typer.echo(f"desired: {report.desired_from}")
    if report.runtime is not None:
        _print_diff("runtime", report.runtime)
        _print_diff("permanent (firewalld)", report.permanent)
    else:
        typer.echo("runtime: firewalld is not running")
    _print_diff("permanent (direct.xml)", report.file)
    if report.file_only or report.firewalld_only:
        typer.echo(
            "direct.xml and firewalld's permanent configuration disagree (edited by hand and not "
            "loaded; `firewall-cmd --reload` loads the file):"
        )
        for e in report.file_only:
            typer.echo(f"  only in direct.xml: {e.describe()}")
        for e in report.firewalld_only:
            typer.echo(f"  only in firewalld:  {e.describe()}")
    typer.echo("in sync" if report.in_sync else "differences found")


@app.command()
def status(root: RootOpt = None, output: OutputOpt = Output.text) -> None:
    """firewalld's state, version, backend and FlushAllOnReload; where our rules are; warnings."""
    from tproxy_firewalld.operations import status as do_status

    try:
        st = asyncio.run(do_status(paths=_paths(root)))
    except TproxyError as exc:
        raise fail(exc) from None
    if output is Output.json:
        typer.echo(json.dumps(st.to_json(), indent=2))
        return
    fw = st.firewalld
    if fw is None:
        typer.echo(f"firewalld: not available ({st.unavailable_reason})")
    else:
        typer.echo(
            f"firewalld: {fw.state}, version {fw.version}, backend {fw.backend}, "
            f"FlushAllOnReload={fw.flush_all_on_reload}"
            + (f", StrictForwardPorts={fw.strict_forward_ports}" if fw.strict_forward_ports else "")
        )
    for where, n in st.installed.items():
        typer.echo(f"{where}: {n} of our entries" if n else f"{where}: not installed")
    if st.drift is not None:
        typer.echo(
            "drift: none" if st.drift.in_sync else "drift: yes (see `tproxy-firewalld diff`)"
        )
    for w in st.warnings:
        typer.echo(f"warning: {w}")


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # pragma: no cover - commands catch their own
        raise SystemExit(fail(exc).exit_code) from None


__all__ = ["ExitCode", "app", "main"]
