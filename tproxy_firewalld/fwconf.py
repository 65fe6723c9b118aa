r"""firewalld.conf settings that defeat Kuma's redirects: what they are, how firewalld reads
them, and how they are changed (only with the admin's consent, ``--configure-firewalld``).

- ``RFC3964_IPv4`` (in every version; firewalld's default ``yes``): firewalld rejects IPv6
  packets to ``::/96`` (IPv4-compatible addresses), and ``::1`` is one of them. Its filter
  OUTPUT still sees a connection REDIRECTed to ``::1`` in nat OUTPUT as leaving by its first
  interface, so before 2.3 every IPv6 outbound connection sent to the proxy is rejected (seen
  in the sandbox, both backends, 0.9.3 and 1.3.3). From 2.3.0 (commit 2bcab5a7, the one that
  brought StrictForwardPorts) firewalld's filter OUTPUT accepts DNATed connections (nftables:
  ``ct status dnat accept``, iptables: ``--ctstate ...,DNAT -j ACCEPT``) before the RFC 3964
  reject, unless StrictForwardPorts=yes, which defeats the rules on its own: the setting no
  longer matters (seen in the sandbox, both backends, 2.3.1 and 2.5.2).
- ``StrictForwardPorts`` (firewalld >= 2.3; default ``no``): ``yes`` rejects every connection
  conntrack marks as DNATed unless a forward port allows it. REDIRECT is DNAT: inbound and
  outbound connections to the proxy are rejected alike.

How firewalld handles them (its source, 0.9.3 / 1.3.3 / 2.3.1 / 2.5.2, and the sandbox):
the properties of ``org.fedoraproject.FirewallD1.config`` report firewalld.conf as firewalld
holds it in memory, and ``org.freedesktop.DBus.Properties.Set`` on them (every version here;
``StrictForwardPorts`` from 2.3, where it exists) validates the value, writes firewalld.conf and
changes nothing else: firewalld applies firewalld.conf only when it starts or reloads. So a
live change is Set, then a reload. Offline the file is edited the way firewalld reads it: the
first definition of a key counts, ``#`` and ``;`` start comments, an empty value means the
default, no/false (any case) off and any other value on (:func:`is_on`). Lines end as Python's text
files end them for firewalld's reader (``\n``, ``\r\n``, ``\r``; not ``\f``, ``\v``, ``\x85``,
U+2028 ..., which ``str.splitlines`` would also split on), each stripped of whitespace; the
bytes are kept as they are (non-UTF-8 ones included: surrogateescape), so an edit changes the
one line it sets and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.errors import FileError, SettingsError, os_error
from tproxy_firewalld.readfile import NotRegular, TooLarge, read_regular

CONF_FILE = "firewalld.conf"
#: firewalld.conf is a few kilobytes; anything far larger is not one
MAX_CONF = 1024 * 1024
#: the value the redirects need, for every setting here
WANTED = "no"
_BOOLEANS = ("yes", "no", "true", "false")


@dataclass(frozen=True)
class Knob:
    """One firewalld.conf setting that can defeat the rules."""

    name: str
    #: firewalld's built-in value when firewalld.conf does not set it
    default: str
    #: the first firewalld version that has it
    since: tuple[int, ...]
    #: what it does to the redirects when on, for messages
    breaks: str
    #: only IPv6 rules are affected (else: any rules)
    ipv6_only: bool
    #: the first firewalld version where it no longer defeats the rules (None: none)
    until: Optional[tuple[int, ...]] = None

    def affects(self, desired: DirectConfig) -> bool:
        if self.ipv6_only:
            return any(e.ipv == "ipv6" for e in desired.entries())
        return not desired.is_empty()

    def defeats(self, version: Optional[tuple[int, ...]]) -> bool:
        """On, it still defeats the rules on this firewalld version (whether this firewalld has
        the setting at all is the view's: :meth:`ConfView.has`); an unknown version (None) is
        taken to be one where it does (the safe side: refuse rather than break)."""
        return version is None or self.until is None or version < self.until


RFC3964 = Knob(
    "RFC3964_IPv4",
    "yes",
    (0,),
    "firewalld before 2.3 rejects IPv6 packets to ::/96, which includes ::1, so every IPv6 "
    "outbound connection REDIRECTed to the proxy fails",
    ipv6_only=True,
    until=(2, 3),
)
STRICT_FORWARD_PORTS = Knob(
    "StrictForwardPorts",
    "no",
    (2, 3),
    "firewalld rejects connections DNATed without a forward port, REDIRECTs included, so "
    "inbound and outbound connections to the proxy fail",
    ipv6_only=False,
)
KNOBS = (RFC3964, STRICT_FORWARD_PORTS)
BY_NAME = {k.name: k for k in KNOBS}


def is_on(value: Optional[str], default: str) -> bool:
    """How firewalld reads these two settings: nothing (or an empty value) is the default,
    no/false (any case) off, anything else on. (firewall/core/fw.py, 0.9 to 2.5: ``if
    value.lower() in ["no", "false"]: off, else: on``; for RFC3964_IPv4 its reader first turns
    a value other than yes/no/true/false into the default, yes, which is on all the same; a
    StrictForwardPorts of "on" or "1" is on.)"""
    text = (value or "").strip().lower()
    if not text:
        return default == "yes"
    return text not in ("no", "false")


def is_boolean(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() in _BOOLEANS


# --------------------------------------------------------------------------- what is there


@dataclass(frozen=True)
class ConfView:
    """The settings here as firewalld has them (live: its properties) or as firewalld.conf
    says (offline); settings not set read as firewalld's default."""

    #: "firewalld" (its D-Bus properties) or "file"
    source: str
    #: firewalld.conf: the one firewalld reads (live), the one edited (offline)
    path: Path
    #: name -> value, for the settings this firewalld has
    values: Mapping[str, str]
    #: offline: the file is missing (firewalld then runs on its defaults) or unreadable
    missing: bool = False
    error: Optional[str] = None
    #: the version of the firewalld that has (live) or will read (offline) these settings;
    #: None when unknown
    version: Optional[tuple[int, ...]] = None

    def has(self, name: str) -> bool:
        return name in self.values

    def value(self, name: str) -> str:
        return self.values[name]

    def on(self, name: str) -> bool:
        return is_on(self.values.get(name), BY_NAME[name].default)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "values": dict(self.values),
            "missing": self.missing,
            "error": self.error,
        }


def live_view(path: Path, properties: Mapping[str, str], version: str = "") -> ConfView:
    """From firewalld's config properties: a setting it does not report, it does not have
    (StrictForwardPorts before 2.3). ``version``: firewalld's own (its ``version`` property)."""
    values = {k.name: properties[k.name] for k in KNOBS if k.name in properties}
    return ConfView("firewalld", path, values, version=parse_version(version))


def parse_version(text: str) -> Optional[tuple[int, ...]]:
    """firewalld's version as numbers: 2.3.1 -> (2, 3, 1), 2.5.0a1 -> (2, 5, 0); None when it
    does not start with a number (a firewalld that did not say)."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(x) for x in match.group(0).split(".")) if match else None


def file_view(path: Path, version: Optional[tuple[int, ...]]) -> ConfView:
    """From firewalld.conf itself (firewalld not running). ``version``: the firewalld that will
    read it, when known; else every setting counts (a line firewalld ignores changes nothing)."""
    known = [k for k in KNOBS if version is None or version >= k.since]
    defaults = {k.name: k.default for k in known}
    try:
        text = read_conf(path)
    except FileError as exc:
        return ConfView("file", path, defaults, error=exc.message, version=version)
    if text is None:
        return ConfView("file", path, defaults, missing=True, version=version)
    parsed = parse_conf(text)
    values = {k.name: parsed.get(k.name) or k.default for k in known}
    return ConfView("file", path, values, version=version)


def read_conf(path: Path) -> Optional[str]:
    """firewalld.conf's text, None if there is none; FileError if it cannot be used. Bytes
    that are not UTF-8 come as surrogates (:func:`encode_conf` gives them back unchanged)."""
    try:
        data = read_regular(path, MAX_CONF)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileError(str(os_error(path, exc, "read"))) from None
    except NotRegular:
        raise FileError(f"{path}: is not a regular file") from None
    except TooLarge:
        raise FileError(f"{path}: larger than {MAX_CONF} bytes; not a firewalld.conf") from None
    return data.decode("utf-8", errors="surrogateescape")


def encode_conf(text: str) -> bytes:
    """The bytes of :func:`read_conf`'s text (or an edit of it), non-UTF-8 ones as they were."""
    return text.encode("utf-8", errors="surrogateescape")


#: a line as Python's text files (universal newlines) give it to firewalld's reader
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def conf_lines(text: str) -> list[str]:
    r"""The lines of firewalld.conf as firewalld reads them (``for line in open(path)``): each
    ends at ``\n``, ``\r\n`` or ``\r`` only (``str.splitlines`` would also split at ``\f``,
    ``\v``, ``\x1c``-``\x1e``, ``\x85``, U+2028/9); endings kept, so the lines join back into
    ``text``."""
    return _LINE.findall(text)


def parse_conf(text: str) -> dict[str, str]:
    """KEY=VALUE pairs as firewalld's reader takes them: the first definition of a key wins,
    a line that is not exactly one KEY=VALUE, or has an empty value, is skipped."""
    out: dict[str, str] = {}
    for line in conf_lines(text):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        pair = [part.strip() for part in line.split("=")]
        if len(pair) != 2 or not pair[1] or pair[0] in out:
            continue
        out[pair[0]] = pair[1]
    return out


def set_in_conf(text: str, name: str, value: str) -> str:
    """firewalld.conf's text with ``name`` set to ``value``: the line firewalld reads is
    replaced in place (everything else, comments included, stays as it is), or a line is
    appended."""
    assert is_boolean(value) and re.fullmatch(r"[A-Za-z0-9_]+", name)
    lines = conf_lines(text)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        pair = [part.strip() for part in stripped.split("=")]
        if len(pair) == 2 and pair[0] == name and pair[1]:
            ending = line[len(line.rstrip("\r\n")) :] or "\n"
            lines[i] = f"{name}={value}{ending}"
            return "".join(lines)
    if text and not text.endswith(("\n", "\r")):
        text += "\n"
    return f"{text}{name}={value}\n"


_VERSION = re.compile(r"""^VERSION\s*=\s*['"](\d+(?:\.\d+)*)['"]""", re.M)


def version_in(path: Path) -> Optional[tuple[int, ...]]:
    """The version firewalld's ``firewall/config/__init__.py`` at ``path`` declares; None when
    there is no such regular file (never follows a symlink there, never waits on a FIFO)."""
    try:
        data = read_regular(path, 256 * 1024, follow=False)
    except (OSError, NotRegular, TooLarge):
        return None
    match = _VERSION.search(data.decode("utf-8", errors="replace"))
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


# --------------------------------------------------------------------------- against the rules


@dataclass(frozen=True)
class ConfCheck:
    """One setting the desired rules need, against what firewalld has: part of the desired
    state (shown by diff, status, install's JSON)."""

    name: str
    value: str
    wanted: str
    breaks: str

    @property
    def ok(self) -> bool:
        knob = BY_NAME[self.name]
        return is_on(self.value, knob.default) == is_on(self.wanted, knob.default)

    def describe(self) -> str:
        if self.ok:
            return f"{self.name}={self.value} (the rules need {self.wanted})"
        return f"{self.name}={self.value}: {self.breaks}; the rules need {self.name}={self.wanted}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "wanted": self.wanted, "in_sync": self.ok}


def checks(desired: DirectConfig, view: Optional[ConfView]) -> tuple[ConfCheck, ...]:
    """The settings ``desired`` needs that this firewalld has, each against its value: those
    that can defeat the rules on this firewalld's version (``view.version``; unknown: all)."""
    if view is None or view.error is not None:
        return ()
    return tuple(
        ConfCheck(k.name, view.value(k.name), WANTED, k.breaks + _unknown(k, view))
        for k in KNOBS
        if view.has(k.name) and k.affects(desired) and k.defeats(view.version)
    )


def _unknown(knob: Knob, view: ConfView) -> str:
    """Why a setting that only older firewalld versions need is checked anyway."""
    if view.version is not None or knob.until is None:
        return ""
    whose = "the running firewalld's" if view.source == "firewalld" else "the image's firewalld's"
    until = ".".join(map(str, knob.until))
    return f" ({whose} version is unknown, so it is taken to be older than {until})"


@dataclass(frozen=True)
class ConfChange:
    """A setting install changed (recorded, so that uninstall can put ``before`` back)."""

    name: str
    before: str
    after: str

    @classmethod
    def of(cls, name: str, before: str, after: str) -> ConfChange:
        """``before`` as firewalld reads it: a value it does not understand is its default."""
        if not is_boolean(before):
            before = "yes" if is_on(before, BY_NAME[name].default) else "no"
        return cls(name, before.strip(), after)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "before": self.before, "after": self.after}

    @classmethod
    def from_json(cls, doc: Any, source: str) -> ConfChange:
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("name"), str)
            or doc["name"] not in BY_NAME
            or not is_boolean(doc.get("before"))
            or not is_boolean(doc.get("after"))
        ):
            raise SettingsError(
                f"{source}: firewalld_conf entries must be {{name: one of {sorted(BY_NAME)}, "
                "before and after: yes/no/true/false}"
            )
        return cls(doc["name"], doc["before"].strip(), doc["after"].strip())

    def still_ours(self, view: Optional[ConfView]) -> bool:
        """Nobody changed the setting since install did: it still means what install set."""
        if view is None or view.error is not None or view.missing or not view.has(self.name):
            return False
        return view.on(self.name) == is_on(self.after, BY_NAME[self.name].default)
