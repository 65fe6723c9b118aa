"""firewalld over D-Bus: a small synchronous client behind the :class:`Firewalld` protocol.

The event loop (dbus-next is asyncio) lives inside :class:`DbusFirewalld`; callers see plain
method calls, each bounded by a timeout, so a hung firewalld (SIGSTOP, a wedged iptables) ends
a run with one line instead of a hang. Calls go out as plain messages with explicit
signatures: no introspection round trips, and the exact D-Bus types firewalld documents
(``sssias`` for a rule; int32 priorities). Every firewalld error becomes one of our errors with
firewalld's code in the message.

Independent changes are pipelined: all messages of a batch are sent at once and the replies
collected after. firewalld handles its D-Bus calls one at a time, in the order they arrive, so
the order of a batch is kept; what is saved is one round trip per call.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

from tproxy_firewalld.applied import read_applied
from tproxy_firewalld.entries import Chain, DirectConfig, Op, Passthrough, Rule
from tproxy_firewalld.errors import (
    FirewalldRejected,
    FirewalldUnavailable,
    NotPermitted,
    SettingsError,
    TproxyError,
)
from tproxy_firewalld.presence import starting

if TYPE_CHECKING:
    import asyncio

BUS_NAME = "org.fedoraproject.FirewallD1"
PATH = "/org/fedoraproject/FirewallD1"
CONFIG_PATH = "/org/fedoraproject/FirewallD1/config"
IFACE = "org.fedoraproject.FirewallD1"
DIRECT = "org.fedoraproject.FirewallD1.direct"
CONFIG = "org.fedoraproject.FirewallD1.config"
CONFIG_DIRECT = "org.fedoraproject.FirewallD1.config.direct"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"

#: seconds a D-Bus call may take; TPROXY_FIREWALLD_TIMEOUT or --timeout override it
DEFAULT_TIMEOUT = 20.0

#: firewalld codes that mean "already in the state you asked for" (firewall-cmd treats
#: them as success too).
ALREADY = {"ALREADY_ENABLED", "NOT_ENABLED"}

#: What each firewalld error code means for an admin (FIREWALLD.md §2.5).
CODE_HINTS = {
    "COMMAND_FAILED": "iptables rejected the command",
    "INVALID_IPV": "the iptables/ip6tables binaries firewalld needs are missing or unusable",
    "RUNNING_BUT_FAILED": "firewalld is in FAILED state; fix its configuration "
    "(firewall-offline-cmd --check-config) and restart it",
    "NOT_RUNNING": "firewalld is not running",
    "NOT_AUTHORIZED": "not authorised; run as root",
    "ACCESS_DENIED": "firewalld lockdown is enabled and this caller is not whitelisted",
    "BUILTIN_CHAIN": "a built-in chain name was used as a chain",
    "INVALID_TYPE": "firewalld rejected the configuration structure",
}


@dataclass(frozen=True)
class DaemonInfo:
    state: str
    version: str
    backend: str
    flush_all_on_reload: str
    strict_forward_ports: Optional[str] = None
    rfc3964_ipv4: Optional[str] = None
    #: every firewalld.conf property firewalld reports (names as in firewalld.conf)
    config: dict[str, str] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "version": self.version,
            "backend": self.backend,
            "flush_all_on_reload": self.flush_all_on_reload,
            "strict_forward_ports": self.strict_forward_ports,
            "rfc3964_ipv4": self.rfc3964_ipv4,
        }


@dataclass(frozen=True)
class OpResult:
    #: firewalld made the change (False: it was already so, or it failed)
    done: bool
    error: Optional[TproxyError] = None
    #: no answer came (timeout, lost connection): the change may still happen
    unknown: bool = False


class Firewalld(Protocol):
    """What the rest of the library needs from firewalld (a fake implements it in tests)."""

    changes: list[str]
    daemon: Optional[DaemonInfo]

    def info(self) -> DaemonInfo: ...

    def runtime(self) -> DirectConfig: ...

    def permanent(self) -> DirectConfig: ...

    def change(self, ops: Sequence[Op]) -> list[OpResult]: ...

    def update_permanent(self, config: DirectConfig) -> None: ...

    def set_conf(self, name: str, value: str) -> None: ...

    def applied_conf(self) -> dict[str, str]: ...

    def check_config(self) -> None: ...

    def reload(self) -> None: ...

    def close(self) -> None: ...


def _error(exc_name: str, text: str, what: str) -> TproxyError:
    if exc_name.endswith("NotAuthorizedException") or exc_name.endswith("AccessDenied"):
        return NotPermitted(f"{what}: not authorised by firewalld ({text}); run as root")
    if exc_name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
    ):
        return FirewalldUnavailable(f"{what}: firewalld did not answer ({exc_name})")
    code, sep, rest = text.partition(":")
    if not sep or not code.isupper():
        code, rest = "UNKNOWN_ERROR", text
    hint = CODE_HINTS.get(code)
    detail = " ".join(rest.split())  # iptables' stderr comes through with newlines: one line
    message = f"{what}: firewalld says {code}: {detail}" + (f" ({hint})" if hint else "")
    return FirewalldRejected(message, code)


def timeout_from_env(default: float = DEFAULT_TIMEOUT) -> float:
    text = os.environ.get("TPROXY_FIREWALLD_TIMEOUT")
    if text is None:
        return default
    return parse_timeout(text, "TPROXY_FIREWALLD_TIMEOUT")


def parse_timeout(text: str, source: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise SettingsError(f"{source}: value {text!r} is not a number of seconds in (0, 3600]")
    return value


def _op_message(op: Op) -> tuple[str, str, list[Any]]:
    entry = op.entry
    if isinstance(entry, Chain):
        return f"{op.verb}Chain", "sss", [entry.ipv, entry.table, entry.chain]
    if isinstance(entry, Rule):
        body = [entry.ipv, entry.table, entry.chain, entry.priority, list(entry.args)]
        return f"{op.verb}Rule", "sssias", body
    assert isinstance(entry, Passthrough)
    return f"{op.verb}Passthrough", "sas", [entry.ipv, list(entry.args)]


class DbusFirewalld:
    """firewalld on the system bus (or ``address``); make one with :func:`connect`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: Any, timeout: float) -> None:
        self._loop = loop
        self._bus = bus
        self.timeout = timeout
        #: every call that changes something, in order (for reports and the tests)
        self.changes: list[str] = []
        #: what firewalld reported when we connected
        self.daemon: Optional[DaemonInfo] = None

    # ------------------------------------------------------------------ plumbing

    def _run(self, coro: Any, what: str) -> Any:
        import asyncio

        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except asyncio.TimeoutError:
            raise FirewalldUnavailable(
                f"firewalld did not answer within {self.timeout:g} s ({what}); it may be hung: "
                "check `systemctl status firewalld` (TPROXY_FIREWALLD_TIMEOUT sets the wait)"
            ) from None
        except TproxyError:
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise FirewalldUnavailable(
                f"lost the connection to the system bus ({what}): {detail}"
            ) from None

    async def _call(
        self,
        member: str,
        *,
        interface: str = DIRECT,
        path: str = PATH,
        signature: str = "",
        body: Optional[list[Any]] = None,
        destination: str = BUS_NAME,
        what: Optional[str] = None,
    ) -> list[Any]:
        from dbus_next.constants import MessageType
        from dbus_next.message import Message

        reply = await self._bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        if reply is None:
            raise FirewalldUnavailable(f"{what or member}: no reply from firewalld")
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise _error(reply.error_name or "", text, what or member)
        return list(reply.body)

    async def _gather(self, *coros: Any) -> list[Any]:
        import asyncio

        return list(await asyncio.gather(*coros))

    # ------------------------------------------------------------------ observe

    def name_has_owner(self) -> bool:
        (owned,) = self._run(
            self._call(
                "NameHasOwner", interface=DBUS, path="/org/freedesktop/DBus", signature="s",
                body=[BUS_NAME], destination=DBUS,
            ),
            "ask the bus whether firewalld runs",
        )  # fmt: skip
        return bool(owned)

    def info(self) -> DaemonInfo:
        main, config = self._run(
            self._gather(
                self._call("GetAll", interface=PROPERTIES, signature="s", body=[IFACE]),
                self._call(
                    "GetAll", interface=PROPERTIES, path=CONFIG_PATH, signature="s", body=[CONFIG]
                ),
            ),
            "read firewalld's state",
        )
        props = {k: v.value for k, v in main[0].items()}
        conf = {k: str(v.value) for k, v in config[0].items()}
        if "state" not in props:
            raise FirewalldUnavailable("firewalld did not report its state")
        return DaemonInfo(
            state=str(props["state"]),
            version=str(props.get("version", "?")),
            backend=conf.get("FirewallBackend", "?"),
            flush_all_on_reload=conf.get("FlushAllOnReload", "?"),
            strict_forward_ports=conf.get("StrictForwardPorts"),
            rfc3964_ipv4=conf.get("RFC3964_IPv4"),
            config=conf,
        )

    def runtime(self) -> DirectConfig:
        (chains,), (rules,), (passthroughs,) = self._run(
            self._gather(
                self._call("getAllChains"),
                self._call("getAllRules"),
                self._call("getAllPassthroughs"),
            ),
            "read the runtime direct configuration",
        )
        return DirectConfig.from_dbus(chains, rules, passthroughs)

    def permanent(self) -> DirectConfig:
        (settings,) = self._run(
            self._call("getSettings", interface=CONFIG_DIRECT, path=CONFIG_PATH),
            "read the permanent direct configuration",
        )
        return DirectConfig.from_dbus(*settings)

    # ------------------------------------------------------------------ change

    def change(self, ops: Sequence[Op]) -> list[OpResult]:
        """Carry out ``ops`` in order, pipelined; one result each. Never raises for a failed
        op: the caller decides what a failure means. A timeout or a lost connection leaves
        the ops without an answer ``unknown``."""
        import asyncio

        if not ops:
            return []
        results: list[Optional[OpResult]] = [None] * len(ops)

        async def one(i: int, op: Op) -> None:
            member, signature, body = _op_message(op)
            try:
                await self._call(member, signature=signature, body=body, what=op.describe())
            except FirewalldRejected as exc:
                results[i] = OpResult(False, None if exc.code in ALREADY else exc)
                return
            except TproxyError as exc:
                results[i] = OpResult(False, exc, unknown=True)
                return
            results[i] = OpResult(True)

        self.changes += [f"{_op_message(op)[0]} {op.entry.describe()}" for op in ops]
        error: Optional[TproxyError] = None
        try:
            self._run(self._gather(*(one(i, op) for i, op in enumerate(ops))), ops[0].describe())
        except FirewalldUnavailable as exc:
            error = exc
        except asyncio.CancelledError:  # pragma: no cover - only with a broken loop
            error = FirewalldUnavailable("the D-Bus calls were cancelled")
        return [
            r
            if r is not None
            else OpResult(False, error or FirewalldUnavailable("no answer"), unknown=True)
            for r in results
        ]

    def update_permanent(self, config: DirectConfig) -> None:
        self.changes.append("config.direct.update")
        self._run(
            self._call(
                "update",
                interface=CONFIG_DIRECT,
                path=CONFIG_PATH,
                signature="(a(sss)a(sssias)a(sas))",
                body=[config.to_dbus()],
                what="update the permanent direct configuration",
            ),
            "update the permanent direct configuration",
        )

    def set_conf(self, name: str, value: str) -> None:
        """One firewalld.conf setting, through firewalld: it validates the value and writes
        firewalld.conf (every version from 0.9); it applies it at its next reload or start."""
        from dbus_next.signature import Variant

        what = f"set {name}={value} in firewalld.conf"
        self.changes.append(f"config.Set {name}={value}")
        self._run(
            self._call(
                "Set",
                interface=PROPERTIES,
                path=CONFIG_PATH,
                signature="ssv",
                body=[CONFIG, name, Variant("s", value)],
                what=what,
            ),
            what,
        )

    def applied_conf(self) -> dict[str, str]:
        """The firewalld.conf settings that can defeat the rules, as in force: firewalld does
        not tell (its config properties are its memory, which Set changes at once; it applies
        them at its next reload), the kernel does. Those it does not show are left out."""
        info = self.daemon or self.info()
        return read_applied(info.backend, info.config)

    def check_config(self) -> None:
        """firewalld's check of its whole permanent configuration (as a reload would load it)."""
        what = "check firewalld's permanent configuration"
        self._run(self._call("checkPermanentConfig", interface=IFACE, what=what), what)

    def reload(self) -> None:
        """``firewall-cmd --reload``: firewalld re-reads firewalld.conf and its permanent
        configuration and applies them."""
        self.changes.append("reload")
        self._run(
            self._call("reload", interface=IFACE, what="reload firewalld"), "reload firewalld"
        )

    def close(self) -> None:
        import asyncio

        with contextlib.suppress(Exception):
            self._bus.disconnect()
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()


def _unretrieved_is_handled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A lost bus leaves dbus-next's pending calls holding an EOFError or BrokenPipeError that
    nobody retrieves; asyncio would print each with a traceback when it is collected. The
    failure has already become one of our errors (one line): only other problems are logged."""
    if str(context.get("message", "")).endswith("exception was never retrieved"):
        return
    loop.default_exception_handler(context)


def _wait_for_name(fw: DbusFirewalld, deadline: float, timeout: float) -> bool:
    """Whether firewalld's name has an owner, waiting (until ``deadline``) while firewalld is
    starting or stopping; raises FirewalldUnavailable when it is still so at the deadline."""
    while not fw.name_has_owner():
        why = starting()
        if why is None:
            return False
        if time.monotonic() >= deadline:
            raise FirewalldUnavailable(
                f"firewalld is starting or stopping ({why}) but has not taken its D-Bus name "
                f"within {timeout:g} s; run this again when `firewall-cmd --state` says running"
            )
        time.sleep(0.2)
    return True


def connect(
    address: Optional[str] = None, timeout: Optional[float] = None
) -> tuple[Optional[DbusFirewalld], str]:
    """firewalld, if it runs; else ``(None, why)`` — only when it positively does not.

    Offline (``None``) only when the system bus itself is not there, or firewalld's name has
    no owner on it and firewalld is not starting either (no process, its unit not active: see
    :mod:`presence`; while it is, the name is waited for). Anything else that goes wrong (no answer, a lost connection, a state other
    than RUNNING after the wait) raises FirewalldUnavailable: writing direct.xml behind a
    live firewalld would be overwritten from its memory, or ignored (firewalld >= 2.3.3).
    Asking whether the name has an owner never starts firewalld by D-Bus activation.
    """
    import asyncio

    timeout = timeout if timeout is not None else timeout_from_env()
    address = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_unretrieved_is_handled)

    async def open_bus() -> Any:
        from dbus_next.aio.message_bus import MessageBus

        return await MessageBus(bus_address=address).connect()

    try:
        bus = loop.run_until_complete(asyncio.wait_for(open_bus(), timeout))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        loop.close()
        return (
            None,
            f"the system bus is not running ({address}: {exc.strerror}), so firewalld is not",
        )
    except asyncio.TimeoutError:
        loop.close()
        raise FirewalldUnavailable(
            f"the system bus ({address}) did not answer within {timeout:g} s"
        ) from None
    except PermissionError as exc:
        loop.close()
        raise NotPermitted(
            f"cannot connect to the system bus ({address}): {exc.strerror}"
        ) from None
    except Exception as exc:
        loop.close()
        raise FirewalldUnavailable(
            f"cannot connect to the system bus ({address}): {type(exc).__name__}: {exc}"
        ) from None
    fw = DbusFirewalld(loop, bus, timeout)
    try:
        deadline = time.monotonic() + timeout
        if not _wait_for_name(fw, deadline, timeout):
            fw.close()
            return None, "firewalld is not running (its D-Bus name has no owner, no process)"
        info = fw.info()
        while info.state == "INIT" and time.monotonic() < deadline:
            time.sleep(0.2)  # starting up (e.g. at boot): wait for RUNNING
            info = fw.info()
    except BaseException:
        fw.close()
        raise
    if info.state == "FAILED":
        fw.close()
        raise FirewalldUnavailable(
            "firewalld is in FAILED state (running a fail-safe configuration); find the cause "
            "with `firewall-cmd --check-config` or its log, fix it, then "
            "`systemctl restart firewalld` and run this again"
        )
    if info.state != "RUNNING":
        fw.close()
        raise FirewalldUnavailable(
            f"firewalld's state is {info.state} (not RUNNING after {timeout:g} s); "
            "run this again when it is RUNNING"
        )
    fw.daemon = info
    return fw, ""
