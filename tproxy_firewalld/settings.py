"""Settings: one declaration per setting, and every way in goes through its parser.

A profile (see :mod:`tproxy_firewalld.kuma`) declares its settings as a frozen dataclass whose
fields are made with :func:`setting`: the type, default, parser, config-file key, environment
variable, CLI flag, metavar, help text and list semantics of a setting are written once, there.
From that one table come the CLI's options, the Ansible module's argument spec, the README's
settings list (checked by a test) and the loader below.

Values reach a :class:`Settings` only through the parsers: :meth:`Settings.load` (defaults <
config files < environment < flags / keyword values), the constructor itself (``__post_init__``
parses every field again; the parsers accept their own output) and :meth:`Settings.from_json`
(the state file). So a tampered state file or a careless caller cannot hand a template anything
unvalidated. Errors are one line naming where the value came from, the value and what is
allowed, and carry the setting's name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, TextIO, TypeVar

from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.readfile import NotRegular, TooLarge, read_regular

S = TypeVar("S", bound="Settings")

#: A bound on every list setting: far beyond any real configuration, small enough that the
#: rule set stays well inside firewalld's and iptables' limits.
MAX_LIST = 256
#: A bound on a config file (or stdin): Kuma's config is a few hundred bytes.
MAX_CONFIG_BYTES = 1024 * 1024
#: A bound on YAML aliases: a "billion laughs" document expands them exponentially.
MAX_YAML_ALIASES = 64


class Invalid(ValueError):
    """A value failed validation; the loader adds where the value came from."""


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Field:
    """One setting, declared once (see :func:`setting`)."""

    #: the setting's name: Settings attribute, library keyword, Ansible option, JSON key
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    #: "bool", "scalar" or "list"
    kind: str = "scalar"
    #: a repeated list flag: "replace" (each occurrence replaces the list, as kumactl's port
    #: lists) or "accumulate" (occurrences add up, as kumactl's IP lists); comma lists work
    #: in both
    repeat: str = "replace"
    #: the config-file key path (YAML/JSON), None if not settable from a file
    key: Optional[str] = None
    #: the environment variable, None if none
    env: Optional[str] = None
    #: the CLI flag, None for config-only settings
    flag: Optional[str] = None
    metavar: Optional[str] = None
    #: accepted for compatibility and validated, but without effect (e.g. kumactl's --wait)
    ignored: bool = False
    #: resolved from the host when not given (e.g. a uid looked up by user name); not a
    #: library/Ansible option, though a profile may give it a flag (kumactl's --kuma-dp-uid)
    derived: bool = False
    #: the rule-set releases that have this setting; None: all of them. Given for another
    #: release (by any source), it is refused with the releases that have it.
    releases: Optional[frozenset[str]] = None
    #: the YAML/JSON type a config file must give ("integer", "boolean"; None: any the parser
    #: takes). kumactl's config is typed: `port: "15006"` is refused there, so here too.
    file_type: Optional[str] = None

    @property
    def default_text(self) -> str:
        if self.kind == "bool":
            return "true" if self.default else "false"
        if isinstance(self.default, (tuple, list)):
            return ",".join(str(v) for v in self.default) or "none"
        return str(self.default) if self.default not in (None, "") else "none"


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,
    *,
    kind: str = "scalar",
    repeat: str = "replace",
    key: Optional[str] = None,
    env: Optional[str] = None,
    flag: Optional[str] = None,
    metavar: Optional[str] = None,
    ignored: bool = False,
    derived: bool = False,
    releases: Optional[Iterable[str]] = None,
    file_type: Optional[str] = None,
) -> Any:
    """A dataclass field carrying its :class:`Field` (completed with its name by the class)."""
    spec = {
        "parse": parse,
        "default": default,
        "help": help,
        "kind": kind,
        "repeat": repeat,
        "key": key,
        "env": env,
        "flag": flag,
        "metavar": metavar,
        "ignored": ignored,
        "derived": derived,
        "releases": frozenset(releases) if releases is not None else None,
        "file_type": file_type or ("boolean" if kind == "bool" else None),
    }
    return dataclasses.field(default=default, metadata={"setting": spec})


@dataclass(frozen=True)
class Warning_:
    """Something the admin should know (a setting without effect, a missing nameserver, ...)."""

    code: str
    message: str
    setting: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "setting": self.setting}


@dataclass(frozen=True)
class RawValue:
    value: Any
    #: where it came from, as it appears in errors: "--flag", "ENV_VAR", "file.yaml: a.b", "name"
    source: str


@dataclass(frozen=True)
class Settings:
    """Base class of a profile's settings. Subclasses declare fields with :func:`setting`."""

    #: ignored keys of the profile's config files (another tool's, accepted and dropped)
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()
    #: fixed environment variables: name -> the only value accepted
    FIXED_ENV: ClassVar[dict[str, tuple[str, str]]] = {}
    ENV_PREFIX: ClassVar[str] = ""
    #: the setting that selects the rule-set release (None: the profile has one rule set);
    #: settings declared with ``releases=`` exist only in those releases
    RELEASE_SETTING: ClassVar[Optional[str]] = None
    #: the releases, oldest first, and what they are releases of (for messages)
    RELEASES: ClassVar[tuple[str, ...]] = ()
    RELEASE_OF: ClassVar[str] = "release"

    def __post_init__(self) -> None:
        for f in self.fields():
            value = getattr(self, f.name)
            if (f.derived and value is None) or f.ignored:
                continue  # an ignored setting is validated where it is given, and not kept
            try:
                parsed = f.parse(value)
            except Invalid as exc:
                raise SettingsError(f"{f.name}: {exc}", f.name) from None
            object.__setattr__(self, f.name, parsed)
        release = self.release
        for f in self.fields():
            if (
                not self.has_setting(f, release)
                and not f.ignored
                and getattr(self, f.name) != f.default
            ):
                raise SettingsError(self._not_in_release(f, f.name, release), f.name)
        self._finish()

    @property
    def release(self) -> Optional[str]:
        """The rule-set release these settings are for (None: the profile has one)."""
        return getattr(self, self.RELEASE_SETTING) if self.RELEASE_SETTING else None

    @classmethod
    def has_setting(cls, f: Field, release: Optional[str]) -> bool:
        return f.releases is None or release is None or release in f.releases

    @classmethod
    def _not_in_release(cls, f: Field, source: str, release: Optional[str]) -> str:
        assert f.releases is not None
        have = ", ".join(r for r in cls.RELEASES if r in f.releases)
        chooser = cls.field(cls.RELEASE_SETTING).flag if cls.RELEASE_SETTING else None
        return (
            f"{source}: {cls.RELEASE_OF} {release} has no such setting (it exists in "
            f"{cls.RELEASE_OF} {have}); the release is chosen with {chooser or cls.RELEASE_SETTING}"
        )

    def _finish(self) -> None:
        """Cross-field rules and derived values (subclasses)."""

    # ---------------------------------------------------------------- the table

    @classmethod
    def fields(cls) -> tuple[Field, ...]:
        cached = cls.__dict__.get("_fields_cache")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        table = tuple(
            Field(name=f.name, **f.metadata["setting"])
            for f in dataclasses.fields(cls)
            if "setting" in f.metadata
        )
        type.__setattr__(cls, "_fields_cache", table)
        return table

    @classmethod
    def field(cls, name: str) -> Field:
        for f in cls.fields():
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def flag_fields(cls) -> tuple[Field, ...]:
        return tuple(f for f in cls.fields() if f.flag)

    @classmethod
    def option_fields(cls) -> tuple[Field, ...]:
        """The settings a caller gives by name (library keywords, Ansible options): all but
        the ignored and the derived ones."""
        return tuple(f for f in cls.fields() if not f.ignored and not f.derived)

    @classmethod
    def argument_spec(cls) -> dict[str, dict[str, str]]:
        """Ansible's argument spec of the settings: Ansible checks booleans and list shapes,
        the parsers everything else."""
        spec: dict[str, dict[str, str]] = {}
        for f in cls.option_fields():
            if f.kind == "bool":
                spec[f.name] = {"type": "bool"}
            elif f.kind == "list":
                spec[f.name] = {"type": "list", "elements": "raw"}
            else:
                spec[f.name] = {"type": "raw"}
        return spec

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(
        cls: type[S],
        *,
        config_files: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        flags: Optional[Mapping[str, Any]] = None,
        stdin: Optional[TextIO] = None,
        **values: Any,
    ) -> S:
        """Defaults < config files (in order; lists replace) < environment < flags and values.

        ``flags`` maps CLI flags to what was given: for a repeated flag, the list of its
        occurrences in order (the field's ``repeat`` decides what they mean). ``values`` are
        keyed by setting name (the library's and Ansible's way in). ``env`` defaults to none.
        """
        raw: dict[str, RawValue] = {}
        for spec in config_files:
            names = ["-"] if spec == "-" else [n for n in spec.split(",") if n]
            for name in names:
                raw.update(cls._read_config_file(name, stdin))
        raw.update(cls._read_env(env or {}))
        flag_layer = cls._read_flags(flags or {})
        raw.update(flag_layer)
        for name, value in values.items():
            try:
                f = cls.field(name)
            except KeyError:
                known = ", ".join(x.name for x in cls.fields() if not x.derived)
                raise SettingsError(f"{name}: unknown setting; known: {known}", name) from None
            if value is not None:
                raw[f.name] = RawValue(value, name)
        release = cls._release_of(raw)
        for name, item in raw.items():
            f = cls.field(name)
            if not cls.has_setting(f, release):
                raise SettingsError(cls._not_in_release(f, item.source, release), f.name)
        cls._check_flags(flag_layer, release)
        parsed: dict[str, Any] = {}
        for name, item in raw.items():
            f = cls.field(name)
            try:
                value = f.parse(item.value)
            except Invalid as exc:
                raise SettingsError(f"{item.source}: {exc}", f.name) from None
            if not f.ignored:
                parsed[name] = value
        return cls(**parsed)

    @classmethod
    def _release_of(cls, raw: Mapping[str, RawValue]) -> Optional[str]:
        if not cls.RELEASE_SETTING:
            return None
        f = cls.field(cls.RELEASE_SETTING)
        item = raw.get(f.name)
        if item is None:
            return str(f.default)
        try:
            return str(f.parse(item.value))
        except Invalid as exc:
            raise SettingsError(f"{item.source}: {exc}", f.name) from None

    @classmethod
    def _check_flags(cls, flags: Mapping[str, RawValue], release: Optional[str]) -> None:
        """Rules about flags given together on one command line, for the release (subclasses)."""

    @classmethod
    def _read_flags(cls, flags: Mapping[str, Any]) -> dict[str, RawValue]:
        by_flag = {f.flag: f for f in cls.fields() if f.flag}
        out: dict[str, RawValue] = {}
        for flag, given in flags.items():
            f = by_flag.get(flag)
            if f is None:
                raise SettingsError(f"{flag}: unknown flag")
            occurrences = list(given) if isinstance(given, (list, tuple)) else [given]
            occurrences = [v for v in occurrences if v is not None]
            if not occurrences:
                continue
            if f.kind == "list" and f.repeat == "accumulate":
                value: Any = occurrences
            else:
                value = occurrences[-1]  # a later occurrence replaces an earlier one
            out[f.name] = RawValue(value, flag)
        return out

    @classmethod
    def _read_env(cls, env: Mapping[str, str]) -> dict[str, RawValue]:
        by_env = {f.env: f for f in cls.fields() if f.env}
        out: dict[str, RawValue] = {}
        for name, value in env.items():
            if not cls.ENV_PREFIX or not name.startswith(cls.ENV_PREFIX):
                continue
            if name in cls.FIXED_ENV:
                allowed, why = cls.FIXED_ENV[name]
                if value != allowed:
                    raise SettingsError(f"{name}: value {show(value)} is not supported: {why}")
                continue
            f = by_env.get(name)
            if f is None:
                raise SettingsError(f"{name}: unknown variable; known: {', '.join(sorted(by_env))}")
            out[f.name] = RawValue(value, name)
        return out

    @classmethod
    def env_given(cls, env: Mapping[str, str]) -> bool:
        """Whether ``env`` holds a variable that sets something (an ignored one does not)."""
        by_env = {f.env: f for f in cls.fields() if f.env}
        return any(name in by_env and not by_env[name].ignored for name in env)

    @classmethod
    def _read_config_file(cls, name: str, stdin: Optional[TextIO]) -> dict[str, RawValue]:
        label = "<stdin>" if name == "-" else name
        text = _read_text(name, stdin)
        data = _load_yaml(text, label)
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise SettingsError(
                f"parsing configuration from file '{label}' failed: expected a mapping of "
                f"settings, got {type(data).__name__}"
            )
        return cls._flatten(data, label)

    @classmethod
    def _flatten(
        cls, data: Mapping[Any, Any], source: str, prefix: str = ""
    ) -> dict[str, RawValue]:
        by_key = {f.key: f for f in cls.fields() if f.key}
        out: dict[str, RawValue] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise SettingsError(
                    f"{source}: key {show(key)} under {show(prefix[:-1] or '/')} is not a string"
                )
            path = f"{prefix}{key}"
            known = by_key.get(path)
            if known is not None:
                _check_file_type(known, value, f"{source}: {path}")
                out[known.name] = RawValue(value, f"{source}: {path}")
            elif path in cls.IGNORED_KEYS:
                continue
            elif isinstance(value, Mapping) and cls._is_section(path):
                out.update(cls._flatten(value, source, path + "."))
            elif value is None and cls._is_section(path):
                continue  # an empty section ("dns:") is fine
            else:
                raise SettingsError(f"{source}: unknown key {show(path)}; {cls._known_keys(path)}")
        return out

    @classmethod
    def _is_section(cls, path: str) -> bool:
        keys = [f.key for f in cls.fields() if f.key] + list(cls.IGNORED_KEYS)
        return any(k.startswith(path + ".") for k in keys)

    @classmethod
    def _known_keys(cls, path: str) -> str:
        parent = path.rpartition(".")[0]
        keys = [f.key for f in cls.fields() if f.key and not f.ignored]
        siblings = sorted(
            k[len(parent) + 1 :].split(".")[0] if parent else k.split(".")[0]
            for k in keys
            if not parent or k.startswith(parent + ".")
        )
        where = f"under '{parent}'" if parent else "at the top level"
        return f"known keys {where}: {', '.join(dict.fromkeys(siblings))}"

    # ---------------------------------------------------------------- the state file

    def to_json(self) -> dict[str, Any]:
        """Every setting of the release by name, as canonical JSON values the parsers read back."""
        release = self.release
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in self.fields()
            if not f.ignored and self.has_setting(f, release)
        }

    @classmethod
    def from_json(cls: type[S], data: Any, source: str = "recorded settings") -> S:
        if not isinstance(data, Mapping):
            raise SettingsError(f"{source}: expected an object of settings")
        known = {f.name for f in cls.fields() if not f.ignored}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"{source}: unknown settings {unknown}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            try:
                values[name] = cls.field(name).parse(value)
            except Invalid as exc:
                raise SettingsError(f"{source}: {name}: {exc}", name) from None
        return cls(**values)

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)


def _check_file_type(f: Field, value: Any, source: str) -> None:
    """kumactl's config is typed (Go's JSON decoding): a port is a number, a switch a boolean.
    A quoted ``port: "15006"`` reaches kumactl's parser with its quotes and is refused; so is
    it here, with kumactl's message."""
    if f.file_type == "integer":
        wrong = not isinstance(value, int) or isinstance(value, bool)
        what = "a number"
    elif f.file_type == "boolean":
        wrong = not isinstance(value, bool)
        what = "an unquoted true or false"
    else:
        return
    if not wrong:
        return
    try:
        f.parse(json.dumps(value) if isinstance(value, str) else value)
    except Invalid as exc:
        problem = str(exc)
    else:  # e.g. 1 for a boolean: Go's JSON decoding refuses a number there
        problem = f"value {show(value)} is not {what}"
    raise SettingsError(
        f"{source}: {problem}; a config file takes {what} here, as kumactl's does", f.name
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    to_text = getattr(value, "to_text", None)
    if to_text is not None:
        return to_text()
    return value


def _read_text(name: str, stdin: Optional[TextIO]) -> str:
    import sys

    label = "<stdin>" if name == "-" else name
    too_large = SettingsError(
        f"configuration file '{label}' is larger than {MAX_CONFIG_BYTES} bytes; refused"
    )
    if name == "-":
        text = (stdin or sys.stdin).read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise too_large
        return text
    try:
        data = read_regular(name, MAX_CONFIG_BYTES)
    except OSError:
        raise SettingsError(
            f"unable to access configuration file '{name}', please check if the file exists "
            "and has the correct permissions"
        ) from None
    except NotRegular:
        raise SettingsError(f"configuration file '{name}' is not a regular file") from None
    except TooLarge:
        raise too_large from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"configuration file '{name}' is not UTF-8 text") from None


def _load_yaml(text: str, label: str) -> Any:
    import yaml  # only when a config file is given: it is one of the slowest imports of a run

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader, with duplicate keys refused (as Kuma's strict YAML does) and
        aliases bounded (a few aliases nested make an exponentially large document)."""

        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_YAML_ALIASES:
                    raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # an unhashable key: the base class says so
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {show(key)}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc) or "not valid YAML or JSON"
        raise SettingsError(
            f"parsing configuration from file '{label}' failed{at}: {problem}"
        ) from None
    except RecursionError:
        raise SettingsError(
            f"parsing configuration from file '{label}' failed: nested too deeply"
        ) from None


# --------------------------------------------------------------------------- value parsers


def show(value: object) -> str:
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
    raise Invalid(f"value {show(raw)} is not a valid boolean (true or false)")


def parse_uint(raw: object, low: int, high: int, what: str) -> int:
    if isinstance(raw, bool):
        raise Invalid(f"value {show(raw)} is not a valid {what}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        # Only plain ASCII digits: int() would also take " 5", "+5", "1_000" and other
        # scripts' digits, none of which iptables understands.
        if not re.fullmatch(r"[0-9]{1,10}", raw):
            raise Invalid(f"value {show(raw)} is not a valid {what}")
        value = int(raw)
    else:
        raise Invalid(f"value {show(raw)} is not a valid {what}")
    if not low <= value <= high:
        raise Invalid(f"value {show(raw)} is not a valid {what}")
    return value


def parse_port(raw: object) -> int:
    return parse_uint(raw, 1, 65535, "port (uint16 in the range [1, 65535])")


def items(raw: object) -> list[Any]:
    """A list setting from any source: a YAML list, repeated flags, or comma-separated text."""
    if raw is None:
        return []
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    out: list[Any] = []
    for value in values:
        if isinstance(value, str):
            out.extend(part.strip() for part in value.split(",") if part.strip() != "")
        else:
            out.append(value)
    if len(out) > MAX_LIST:
        raise Invalid(f"has {len(out)} entries; at most {MAX_LIST} are allowed")
    return out


def parse_ports(raw: object) -> tuple[int, ...]:
    # Kuma keeps duplicates (and so renders a rule per entry); so do we.
    return tuple(parse_port(item) for item in items(raw))


def family(address: str) -> str:
    """ "ipv4" or "ipv6" for an address or network (already validated)."""
    return "ipv6" if ipaddress.ip_network(address, strict=False).version == 6 else "ipv4"


def parse_ip(raw: object, *, need_prefix: bool = False) -> str:
    text = raw.strip() if isinstance(raw, str) else str(raw)
    try:
        if (need_prefix and "/" not in text) or "%" in text or not isinstance(raw, str):
            raise ValueError
        # strict=False: Kuma passes "172.32.16.8/16" through and iptables normalises it.
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(
            f"invalid IP address: {show(raw)}. Expected format: <ip> or <ip>/<cidr> "
            "(e.g., 10.0.0.1, 172.16.0.0/16, fe80::1, fe80::/10)"
        ) from None
    return text


def parse_path(raw: object) -> str:
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise Invalid(f"value {show(raw)} is not a valid path")
    return raw


def refuse_true(reason: str) -> Callable[[object], bool]:
    """A boolean that may only be false (or not given)."""

    def parse(raw: object) -> bool:
        if parse_bool(raw):
            raise Invalid(f"is not supported: {reason}")
        return False

    return parse


def refuse_nonempty(reason: str) -> Callable[[object], tuple[Any, ...]]:
    def parse(raw: object) -> tuple[Any, ...]:
        if items(raw):
            raise Invalid(f"is not supported: {reason}")
        return ()

    return parse
