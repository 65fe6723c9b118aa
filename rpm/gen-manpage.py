#!/usr/bin/env python3
"""Write tproxy-firewalld(1) in roff to stdout, from the CLI's own help.

Every command, option and help text comes from the typer/click command tree of
``tproxy_firewalld.cli`` (what ``--help`` prints), the exit codes from ``ExitCode`` and the
comments above its members; only FILES, RPM MACROS and SEE ALSO are written here. Run it with
the package importable (the source tree on PYTHONPATH will do): the RPM build does, in %build.

SOURCE_DATE_EPOCH, when set (rpmbuild sets it from %changelog), dates the page, so that the
build is reproducible.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import typer
import typer.main

from tproxy_firewalld import __version__, errors
from tproxy_firewalld.cli import HELP, SETTINGS_PANEL, app

PROG = "tproxy-firewalld"

FILES = [
    ("/etc/firewalld/direct.xml", "firewalld's direct configuration, where the rules are kept."),
    (
        "/var/lib/tproxy-firewalld/installed.json",
        "The settings the last install applied (what diff and status compare against).",
    ),
    (
        "/usr/lib/systemd/system/tproxy-firewalld-ipv6-passthrough.service",
        "Puts ::6/128 back on lo at boot (Kuma's IPv6 passthrough address, which the kernel "
        "forgets). Enabled by %tproxy_firewalld_install; after a manual install: "
        "systemctl enable --now tproxy-firewalld-ipv6-passthrough.service.",
    ),
    (
        "/usr/lib/rpm/macros.d/macros.tproxy-firewalld",
        "RPM macros for the scriptlets of packages that install the rules (see RPM MACROS).",
    ),
]

RPM_MACROS = [
    (
        "%global tproxy_firewalld_args SETTINGS",
        "The settings for %tproxy_firewalld_install, in a form every rpm accepts (RHEL 8 and 9 "
        "too); e.g. --config /etc/kuma/tproxy.yaml for a config file that the package ships.",
    ),
    (
        "%tproxy_firewalld_install [SETTINGS]",
        "For %post: runs tproxy-firewalld install with %tproxy_firewalld_args and then SETTINGS "
        "(live when firewalld runs, else into direct.xml), then enables the unit above. On "
        "install and on upgrade. SETTINGS as arguments need rpm 4.17 or later.",
    ),
    (
        "%tproxy_firewalld_uninstall",
        "For %preun: on erase only ($1 == 0), runs tproxy-firewalld uninstall and disables the "
        "unit. Nothing happens on upgrade.",
    ),
]
RPM_MACROS_TAIL = (
    "Both are quiet on success, log one line to stderr and syslog on failure, and never fail "
    "the transaction."
)

SEE_ALSO = "firewall-cmd(1), firewalld(1), firewalld.direct(5), firewall-offline-cmd(1), ip(8)"


def roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens (as \\- so options copy and paste),
    non-ASCII characters (as \\[uXXXX]: groff reads bytes) and control characters at the start
    of a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    """A help text as paragraphs, each joined into one line (roff fills them)."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(text)) if p.strip()]


def option_words(names: str) -> str:
    """Option names in bold, metavars in italics: "-o, --output <text|json>"."""
    return " ".join(
        f"\\fB{roff(word)}\\fR"
        if word.startswith("-")
        else roff(word)
        if word in ("/", ",")
        else f"\\fI{roff(word)}\\fR"
        for word in names.split(" ")
    )


def option_items(params: Iterable[Any], ctx: Any) -> list[str]:
    out = []
    for param in params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out += [".TP", option_words(names), roff(" ".join(help_text.split())) or "\\&"]
    return out


def is_setting(param: Any) -> bool:
    return getattr(param, "rich_help_panel", None) == SETTINGS_PANEL


def synopsis_of(name: str, command: Any, ctx: Any) -> str:
    words = [f"\\fB{roff(PROG)} {roff(name)}\\fR"]
    params = command.get_params(ctx)
    if any(is_setting(p) for p in params):
        words.append("[\\fISETTINGS\\fR]")
    for param in params:
        record = param.get_help_record(ctx)
        if is_setting(param) or param.name == "help" or record is None:
            continue
        words.append(f"[{option_words(record[0])}]")
    return " ".join(words)


def exit_codes() -> list[tuple[int, str]]:
    """(code, meaning) from ExitCode: the `#:` comments above each member."""
    codes, comment = [], []
    for line in inspect.getsource(errors.ExitCode).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            comment.append(stripped[2:].strip())
        elif m := re.fullmatch(r"([A-Z_]+)\s*=\s*(\d+)", stripped):
            meaning = " ".join(comment) or m.group(1).replace("_", " ").lower()
            codes.append((int(m.group(2)), meaning))
            comment = []
    return codes


def manpage() -> str:
    group: Any = typer.main.get_command(app)  # a group: its commands are the subcommands
    ctx = typer.Context(group, info_name=PROG)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    summary = paragraphs(group.callback.__doc__ or "")[0] if group.callback else ""
    commands = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    subctx = {name: typer.Context(cmd, info_name=name, parent=ctx) for name, cmd in commands if cmd}

    out = [
        f'.TH {roff(PROG.upper())} 1 "{date}" "{roff(PROG)} {roff(__version__)}" "User Commands"',
        ".SH NAME",
        f"{roff(PROG)} \\- {roff(summary)}",
        ".SH SYNOPSIS",
    ]
    for name, cmd in commands:
        assert cmd is not None
        out += [".PP", synopsis_of(name, cmd, subctx[name])]
    out += [".PP", f"\\fB{roff(PROG)}\\fR [\\fB\\-\\-version\\fR] [\\fB\\-\\-help\\fR]"]
    out += [".SH DESCRIPTION"]
    for para in paragraphs(HELP):
        out += [".PP", roff(para)]
    out += [".SH COMMANDS"]
    for name, cmd in commands:
        assert cmd is not None and cmd.help is not None
        out += [f".SS {roff(name)}"]
        for para in paragraphs(cmd.help):
            out += [".PP", roff(para)]
        own = [p for p in cmd.get_params(subctx[name]) if not is_setting(p)]
        if any(is_setting(p) for p in cmd.get_params(subctx[name])):
            out += [".PP", "Takes the \\fISETTINGS\\fR options (see \\fBSETTINGS\\fR)."]
        out += option_items(own, subctx[name])
    settings_from = next(
        (name for name, cmd in commands if cmd and any(is_setting(p) for p in cmd.params)), None
    )
    if settings_from is not None:
        cmd = dict(commands)[settings_from]
        assert cmd is not None
        out += [".SH SETTINGS", ".PP", roff(SETTINGS_PANEL) + "."]
        out += option_items([p for p in cmd.params if is_setting(p)], subctx[settings_from])
    out += [".SH GLOBAL OPTIONS"]
    out += option_items(group.get_params(ctx), ctx)
    out += [".SH EXIT STATUS"]
    for code, meaning in exit_codes():
        out += [".TP", f"\\fB{code}\\fR", roff(meaning if code else "Done, or nothing to do.")]
    out += [".SH ENVIRONMENT", ".TP", "\\fBKUMA_TRANSPARENT_PROXY_*\\fR"]
    out += [
        roff("Settings, as kumactl reads them; they override config files, flags override them.")
    ]
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", f"\\fI{roff(path)}\\fR", roff(what)]
    out += [".SH RPM MACROS"]
    for macro, what in RPM_MACROS:
        out += [".TP", f"\\fB{roff(macro)}\\fR", roff(what)]
    out += [".PP", roff(RPM_MACROS_TAIL)]
    out += [".SH SEE ALSO", roff(SEE_ALSO)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage())
