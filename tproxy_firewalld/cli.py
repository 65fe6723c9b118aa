"""The ``tproxy-firewalld`` command: parses, calls the library (:mod:`api`), renders, exits.

Every command that takes settings takes the same flags as ``kumactl install
transparent-proxy`` (plus ``--config`` and the ``KUMA_TRANSPARENT_PROXY_*`` environment); the
options come from the settings' one declaration (:class:`kuma.KumaSettings`), so they cannot
drift from the library, the Ansible module or the README.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import typer.core

from tproxy_firewalld import __version__
from tproxy_firewalld.errors import ExitCode, SettingsError, TproxyError
from tproxy_firewalld.kuma import KumaSettings
from tproxy_firewalld.settings import Field

SETTINGS_PANEL = "Settings (as kumactl install transparent-proxy)"

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

SETTINGS_KEY = "tproxy_firewalld.settings_flags"


def setting_help(f: Field) -> str:
    default = "" if f.kind == "list" and not f.default else f" (default: {f.default_text})"
    return f.help + default


_OPTIONS: list[Any] = []


def _settings_options() -> list[Any]:
    """The options of every settings flag, from the one declaration of each setting. Every
    option takes values (a boolean's bare ``--flag`` is rewritten to ``--flag=true`` by
    :meth:`SettingsCommand.parse_args`) and may repeat; the setting decides what a repeat
    means."""
    if _OPTIONS:
        return _OPTIONS
    option = typer.core.TyperOption
    _OPTIONS.append(
        option(
            param_decls=["--config"],
            multiple=True,
            metavar="FILE",
            help="Config file (YAML or JSON, Kuma's shape); repeatable, comma lists allowed, '-' "
            "for stdin. Later files override earlier; lists replace.",
            rich_help_panel=SETTINGS_PANEL,
        )
    )
    _OPTIONS.append(
        option(
            param_decls=["--config-file"],
            multiple=True,
            metavar="FILE",
            help="kumactl 2.11-2.14's deprecated config file flag: as there, only the last one "
            "counts, and it is read before the --config files (which override it).",
            rich_help_panel=SETTINGS_PANEL,
        )
    )
    for f in KumaSettings.flag_fields():
        assert f.flag is not None
        metavar = "[=true|false]" if f.kind == "bool" else f.metavar or "VALUE"
        _OPTIONS.append(
            option(
                param_decls=[f.flag],
                multiple=True,
                metavar=metavar,
                help=setting_help(f),
                rich_help_panel=SETTINGS_PANEL,
            )
        )
    return _OPTIONS


_BOOL_FLAGS = frozenset(f.flag for f in KumaSettings.flag_fields() if f.kind == "bool")
#: what Go's strconv.ParseBool takes
_BOOL_WORDS = frozenset(
    {"1", "t", "T", "true", "TRUE", "True", "0", "f", "F", "false", "FALSE", "False"}
)


#: click's UsageError, which click raises for a command line it cannot parse: the base of
#: typer.BadParameter (typer < 0.2x uses click, later typer its own copy of it)
_CLICK_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


class UsageError(SettingsError):
    """A command line click cannot parse (unknown option, stray argument, bad value)."""


def _output_json(args: Sequence[str]) -> bool:
    """Whether a command line asks for ``--output json`` (the last --output/-o counts)."""
    wanted, i = False, 0
    while i < len(args) and args[i] != "--":
        arg = args[i]
        if arg in ("-o", "--output") and i + 1 < len(args):
            wanted, i = args[i + 1] == "json", i + 2
            continue
        if arg.startswith("--output="):
            wanted = arg.partition("=")[2] == "json"
        elif arg.startswith("-o") and not arg.startswith("--"):
            wanted = arg[2:].lstrip("=") == "json"
        i += 1
    return wanted


def _usage_error_json(args: Sequence[str], message: str) -> None:
    """With --output json, a usage error is an error document on stdout too (the line on
    stderr stays), like every other error."""
    if _output_json(args):
        from tproxy_firewalld.report import error_json

        _print_json(error_json(UsageError(message)))


class JsonUsageCommand(typer.core.TyperCommand):
    """A command whose usage errors give the error document with --output json."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)  # click's parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except _CLICK_USAGE_ERROR as exc:
            _usage_error_json(given, getattr(exc, "format_message", exc.__str__)())
            raise


class SettingsCommand(JsonUsageCommand):
    """A command that takes the settings flags; they reach it through ``ctx.meta``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_settings_options())

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # kumactl's booleans (Go's pflag): `--flag` means true, `--flag=false` false.
        rewritten: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                rewritten += args[i:]
                break
            if arg in _BOOL_FLAGS and i + 1 < len(args) and args[i + 1] in _BOOL_WORDS:
                # pflag takes `--flag false` as --flag (true) and kumactl ignores the stray
                # word: refused rather than reproduced
                word = args[i + 1]
                message = (
                    f"{arg} {word}: kumactl reads this as {arg} (true) and ignores "
                    f"'{word}'; write {arg}={word}"
                )
                _usage_error_json(args, message)
                typer.echo(f"Error: {message}", err=True)
                raise typer.Exit(int(ExitCode.SETTINGS))
            rewritten.append(f"{arg}=true" if arg in _BOOL_FLAGS else arg)
        return super().parse_args(ctx, rewritten)

    def invoke(self, ctx: Any) -> Any:
        names = {p.name for p in _settings_options()}
        ctx.meta[SETTINGS_KEY] = {name: ctx.params.pop(name, ()) for name in names}
        return super().invoke(ctx)


def _flags(ctx: typer.Context) -> dict[str, Any]:
    given = ctx.meta.get(SETTINGS_KEY, {})
    by_name = {
        f.flag.lstrip("-").replace("-", "_"): f.flag for f in KumaSettings.flag_fields() if f.flag
    }
    return {
        by_name[name]: list(values) for name, values in given.items() if name in by_name and values
    }


def _config_files(ctx: typer.Context) -> list[str]:
    """kumactl 2.11-2.14's order: the --config-file path (a plain string flag there, so the last
    one given), then the --config values; later files override earlier ones."""
    given = ctx.meta.get(SETTINGS_KEY, {})
    return list(given.get("config_file", ()))[-1:] + list(given.get("config", ()))


def _dry_run(ctx: typer.Context) -> bool:
    """kumactl's --dry-run (a settings flag, so `--dry-run=false` works as in kumactl)."""
    from tproxy_firewalld.settings import parse_bool

    given = _flags(ctx).get("--dry-run") or []
    try:
        return bool(given) and parse_bool(given[-1])
    except ValueError:
        return False  # KumaSettings.load refuses it with the reason


def settings_given(ctx: typer.Context) -> bool:
    """Whether a setting was given (kumactl's operational flags, which set nothing, do not count)."""
    ignored = {f.flag for f in KumaSettings.flag_fields() if f.ignored}
    flags = [flag for flag in _flags(ctx) if flag not in ignored]
    return bool(flags or _config_files(ctx) or KumaSettings.env_given(os.environ))


def load(ctx: typer.Context, output: Optional[Output] = None) -> KumaSettings:
    settings = KumaSettings.load(
        config_files=_config_files(ctx), env=os.environ, flags=_flags(ctx), stdin=sys.stdin
    )
    if output is not Output.json:
        for warning in settings.warnings:
            typer.echo(f"Warning: {warning.message}", err=True)
    return settings


class Output(str, Enum):
    text = "text"
    json = "json"


def run(output: Optional[Output], fn: Callable[[], Any], *, min_code: int = 0) -> Any:
    """Call the library; an expected failure is one line (and an error document with
    --output json), never a traceback."""
    try:
        return fn()
    except TproxyError as exc:
        code = max(int(exc.exit_code), min_code)
        if output is Output.json:
            from tproxy_firewalld.report import error_json

            typer.echo(json.dumps(error_json(exc), indent=2))
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(code) from None


def _target(root: Optional[Path], offline: bool, timeout: Optional[float]) -> Any:
    from tproxy_firewalld.target import Target

    return Target.make(root, offline=offline, timeout=timeout)


def _print_json(doc: dict[str, Any]) -> None:
    typer.echo(json.dumps(doc, indent=2))


def _print_lines(lines: Sequence[str], err: bool = False) -> None:
    for line in lines:
        typer.echo(line, err=err)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tproxy-firewalld {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Optional[bool] = typer.Option(
        None,
        "--version",
        callback=version_callback,
        is_eager=True,
        help="Show the version and exit.",
    ),
) -> None:
    """Kuma's transparent-proxy rules as a persistent, removable part of firewalld."""


def _timeout(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    from tproxy_firewalld.firewalld import parse_timeout

    return parse_timeout(value, "--timeout")


DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan; change nothing.")
OFFLINE = typer.Option(
    False,
    "--offline",
    help="Do not talk to firewalld; write direct.xml (applied at firewalld's next start).",
)
ROOT = typer.Option(
    None,
    "--root",
    metavar="DIR",
    help="Work on the image root DIR (DIR/etc/firewalld/direct.xml, symlinks resolved inside DIR); "
    "implies --offline. A DIR that is / (also a bind mount of it) is the live system.",
)
OUTPUT = typer.Option(
    Output.text, "--output", "-o", help="text (for people) or json (versioned, for programs)."
)
TIMEOUT = typer.Option(
    None,
    "--timeout",
    metavar="SECONDS",
    help="How long one D-Bus call to firewalld may take (default 20, or TPROXY_FIREWALLD_TIMEOUT).",
)
REMOVE_SUSPECTED = typer.Option(
    False,
    "--remove-suspected",
    help="Also remove the entries that only might be Kuma's (status lists them with the reason: "
    "e.g. a DNS REDIRECT to 15053 for another UID than the recorded, given or default one).",
)
TEMPLATE = typer.Option(
    None,
    "--rules-template",
    metavar="FILE",
    help="Render from this jinja2 template file instead of Kuma's (advanced). Its rules are checked "
    "like Kuma's and must carry Kuma's chain or comment prefix.",
)


@app.command(cls=SettingsCommand)
def render(
    ctx: typer.Context,
    direct_xml: Path = typer.Option(
        Path("/etc/firewalld/direct.xml"),
        "--direct-xml",
        metavar="PATH",
        help="The direct.xml to merge into (a missing file counts as empty).",
        show_default=True,
    ),
    rules_template: Optional[str] = TEMPLATE,
) -> None:
    """Print the complete merged direct.xml: everyone else's entries kept, ours rendered.

    Reads PATH (default /etc/firewalld/direct.xml), replaces tproxy-firewalld's entries
    (chains KUMA_MESH_*, rules carrying Kuma's comment) with the rule set for the given
    settings, checks every rule in a throw-away network namespace, and writes the result
    to stdout. Nothing on the system is changed.
    """
    from tproxy_firewalld import api

    def go() -> Any:
        return api.render(load(ctx), direct_xml, rules_template=rules_template)

    output, warnings = run(None, go)
    _print_lines([f"Warning: {w.message}" for w in warnings if w.code == "not-checked"], err=True)
    sys.stdout.buffer.write(output)
    sys.stdout.flush()


@app.command(cls=SettingsCommand)
def install(
    ctx: typer.Context,
    offline: bool = OFFLINE,
    root: Optional[Path] = ROOT,
    output: Output = OUTPUT,
    allow_ssh_redirect: bool = typer.Option(
        False,
        "--allow-ssh-redirect",
        help="Install even though inbound redirection captures a port an SSH daemon listens on.",
    ),
    rules_template: Optional[str] = TEMPLATE,
    timeout: Optional[str] = TIMEOUT,
    remove_suspected: bool = REMOVE_SUSPECTED,
) -> None:
    """Install the rules: live in firewalld (runtime and permanent, no reload) or in direct.xml.

    With firewalld running, only the differences are applied over D-Bus: chains and their
    rules first, the jumps from built-in chains last; then one permanent update that keeps
    every other entry. A second identical install changes nothing. Without firewalld (or
    with --offline / --root) direct.xml is written and firewalld applies it at its next
    start. The settings are recorded in /var/lib/tproxy-firewalld/installed.json.

    A firewalld.conf setting that would defeat the rules (RFC3964_IPv4=yes with IPv6 rules on
    firewalld < 2.3, StrictForwardPorts=yes) makes install refuse, changing nothing, unless
    --configure-firewalld lets it set that setting to no: live through firewalld's API,
    followed by a reload (reported); offline in firewalld.conf. The old value is recorded
    (before the change) and uninstall puts it back. A run killed before its reload is
    finished by the next one. A live change refuses (12) while firewalld.conf holds an edit
    firewalld has not loaded (its Set would write the loaded values back over it).

    When the plan makes firewalld flush every iptables table (firewalld >= 2.0 does when the
    first direct entry is added; every version on the reload above) while other tools keep
    chains or rules there, install refuses, naming them, unless --allow-iptables-flush.

    Exit codes: 0 done or nothing to do; 2 bad settings; 3 direct.xml unusable; 4 rules
    rejected by iptables or the kernel; 5 firewalld unavailable, hung or FAILED; 6 firewalld
    refused; 7 not permitted; 8 partially applied; 9 locked; 10 refused: inbound redirection
    would capture an SSH port (exclude it, or --allow-ssh-redirect); 11 a file error; 12 refused:
    a firewalld.conf setting would defeat the rules (RFC3964_IPv4=yes with IPv6 rules on
    firewalld < 2.3, StrictForwardPorts=yes): --ip-family-mode ipv4, or --configure-firewalld to let install
    change it (and reload firewalld; uninstall puts it back); 13 refused: firewalld would flush
    other tools' iptables chains and rules (Docker's, ...), at its first direct entry (>= 2.0)
    or the reload --configure-firewalld makes: --allow-iptables-flush lets it.
    """
    from tproxy_firewalld import api

    def go() -> Any:
        return api.install(
            load(ctx, output),
            target=_target(root, offline, _timeout(timeout)),
            dry_run=_dry_run(ctx),
            rules_template=rules_template,
            allow_ssh_redirect=allow_ssh_redirect,
            remove_suspected=remove_suspected,
        )

    _print_result(run(output, go), output)


@app.command(cls=JsonUsageCommand)
def uninstall(
    dry_run: bool = DRY_RUN,
    offline: bool = OFFLINE,
    root: Optional[Path] = ROOT,
    output: Output = OUTPUT,
    timeout: Optional[str] = TIMEOUT,
    remove_suspected: bool = REMOVE_SUSPECTED,
) -> None:
    """Remove exactly our entries — runtime, permanent and direct.xml — and nothing else.

    Also removes what `kumactl install transparent-proxy --store-firewalld` of any release
    left (its KUMA_MESH_ chains and marked rules, and its unmarked entries where each is
    exactly what a kumactl release wrote for the recorded or default settings: old chain
    names, uncommented DNS rules), the ::6/128 address install put on lo, and the record.
    Entries that only might be Kuma's are listed, and removed with --remove-suspected.
    Puts back the firewalld.conf settings install changed (--configure-firewalld) unless
    somebody changed them since (then it says so), reloading firewalld. Nothing installed is
    success ("nothing to do").
    """
    from tproxy_firewalld import api

    def go() -> Any:
        return api.uninstall(
            target=_target(root, offline, _timeout(timeout)),
            dry_run=dry_run,
            remove_suspected=remove_suspected,
        )

    _print_result(run(output, go), output)


def _print_result(result: Any, output: Output) -> None:
    if output is Output.json:
        _print_json(result.to_json())
        return
    _print_lines(
        [f"Warning: {w.message}" for w in result.warnings if w.code != "setting-without-effect"],
        err=True,
    )
    _print_lines(result.text())
    if result.dry_run:
        from tproxy_firewalld.report import suspect_lines

        _print_lines(suspect_lines(result.suspected, result.suspected_removed))


@app.command(cls=SettingsCommand)
def diff(
    ctx: typer.Context,
    offline: bool = OFFLINE,
    root: Optional[Path] = ROOT,
    output: Output = OUTPUT,
    rules_template: Optional[str] = TEMPLATE,
    timeout: Optional[str] = TIMEOUT,
) -> None:
    """Three-way diff of our entries: desired vs permanent (firewalld and direct.xml) vs runtime.

    Desired is the settings given, or — with none — those the last install recorded.
    Entries are compared as firewalld identifies them (ipv, table, chain, priority, args
    tokens). Also says when direct.xml and firewalld's permanent config disagree (a hand
    edit firewalld has not loaded), and when firewalld has not applied a firewalld.conf
    setting yet (reload pending). Exit 0 in sync, 1 differences, 2 or more trouble.
    """
    from tproxy_firewalld import api

    def go() -> Any:
        settings = load(ctx, output) if settings_given(ctx) else None
        return api.diff(
            settings,
            target=_target(root, offline, _timeout(timeout)),
            rules_template=rules_template,
        )

    report = run(output, go, min_code=2)
    if output is Output.json:
        _print_json(report.to_json())
    else:
        _print_lines(report.text())
    raise typer.Exit(0 if report.in_sync else 1)


@app.command(cls=JsonUsageCommand)
def status(
    root: Optional[Path] = ROOT,
    output: Output = OUTPUT,
    timeout: Optional[str] = TIMEOUT,
) -> None:
    """firewalld's state, version, backend and FlushAllOnReload; where our rules are; drift
    against the record; warnings (settings of firewalld that break the redirects, other
    tools' iptables chains and rules a reload would flush, nameservers that moved, missing kernel
    modules)."""
    from tproxy_firewalld.health import status as get_status

    st = run(output, lambda: get_status(target=_target(root, False, _timeout(timeout))))
    if output is Output.json:
        _print_json(st.to_json())
    else:
        _print_lines(st.text())


def main() -> None:
    app()


__all__ = ["ExitCode", "app", "main"]
