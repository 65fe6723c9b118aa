"""A small typed client for firewalld's direct interface over D-Bus (dbus-next).

Calls go out as plain messages with explicit signatures: no introspection round trips, and
the exact D-Bus types firewalld documents (``sssias`` for a rule; int32 priorities). Every
firewalld error becomes one of our errors with firewalld's code in the message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.errors import DBusError
from dbus_next.message import Message

from tproxy_firewalld.entries import Chain, DirectConfig, Entry, Passthrough, Rule
from tproxy_firewalld.errors import FirewalldRejected, FirewalldUnavailable, NotPermitted

BUS_NAME = "org.fedoraproject.FirewallD1"
PATH = "/org/fedoraproject/FirewallD1"
CONFIG_PATH = "/org/fedoraproject/FirewallD1/config"
IFACE = "org.fedoraproject.FirewallD1"
DIRECT = "org.fedoraproject.FirewallD1.direct"
CONFIG = "org.fedoraproject.FirewallD1.config"
CONFIG_DIRECT = "org.fedoraproject.FirewallD1.config.direct"
PROPERTIES = "org.freedesktop.DBus.Properties"

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
    strict_forward_ports: str | None = None
    rfc3964_ipv4: str | None = None


def _error(exc_name: str, text: str, what: str) -> Exception:
    if exc_name.endswith("NotAuthorizedException") or exc_name.endswith("AccessDenied"):
        return NotPermitted(f"{what}: not authorised by firewalld ({text}); run as root")
    if exc_name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
    ):
        return FirewalldUnavailable(
            f"{what}: firewalld is not reachable on the system bus ({exc_name})"
        )
    code, sep, rest = text.partition(":")
    if not sep or not code.isupper():
        code, rest = "UNKNOWN_ERROR", text
    hint = CODE_HINTS.get(code)
    detail = " ".join(rest.split())  # iptables' stderr comes through with newlines: one line
    message = f"{what}: firewalld says {code}: {detail}" + (f" ({hint})" if hint else "")
    return FirewalldRejected(message, code)


@dataclass
class Firewalld:
    bus: MessageBus
    #: every call that changes something, in order (for reports and the tests)
    changes: list[str] = field(default_factory=list)

    @classmethod
    async def connect(cls, address: str | None = None) -> Firewalld:
        try:
            if address:
                bus = await MessageBus(bus_address=address).connect()
            else:
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, EOFError, ValueError) as exc:
            where = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "the system bus")
            raise FirewalldUnavailable(f"cannot connect to {where}: {exc}") from None
        return cls(bus)

    def disconnect(self) -> None:
        self.bus.disconnect()  # type: ignore[no-untyped-call]

    async def _call(
        self,
        member: str,
        *,
        interface: str = DIRECT,
        path: str = PATH,
        signature: str = "",
        body: list[Any] | None = None,
        what: str | None = None,
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination=BUS_NAME,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise _error(reply.error_name or "", text, what or member)
        return list(reply.body)

    async def _property(self, interface: str, name: str, path: str = PATH) -> Any:
        try:
            body = await self._call(
                "Get", interface=PROPERTIES, path=path, signature="ss", body=[interface, name]
            )
        except FirewalldRejected:
            return None
        return body[0].value

    # ------------------------------------------------------------------ observe

    async def info(self) -> DaemonInfo:
        state = await self._property(IFACE, "state")
        if state is None:
            raise FirewalldUnavailable("firewalld did not report its state")
        version = await self._property(IFACE, "version") or "?"
        backend = await self._property(CONFIG, "FirewallBackend", CONFIG_PATH) or "?"
        flush = await self._property(CONFIG, "FlushAllOnReload", CONFIG_PATH) or "?"
        strict = await self._property(CONFIG, "StrictForwardPorts", CONFIG_PATH)
        rfc3964 = await self._property(CONFIG, "RFC3964_IPv4", CONFIG_PATH)
        return DaemonInfo(
            str(state),
            str(version),
            str(backend),
            str(flush),
            strict and str(strict),
            rfc3964 and str(rfc3964),
        )

    async def runtime(self) -> DirectConfig:
        (chains,) = await self._call("getAllChains")
        (rules,) = await self._call("getAllRules")
        (passthroughs,) = await self._call("getAllPassthroughs")
        return DirectConfig.from_dbus(chains, rules, passthroughs)

    async def permanent(self) -> DirectConfig:
        (settings,) = await self._call("getSettings", interface=CONFIG_DIRECT, path=CONFIG_PATH)
        return DirectConfig.from_dbus(*settings)

    # ------------------------------------------------------------------ change

    async def add(self, entry: Entry) -> bool:
        """Add at runtime; False if firewalld already had it."""
        return await self._change("add", entry)

    async def remove(self, entry: Entry) -> bool:
        """Remove at runtime; False if firewalld did not have it."""
        return await self._change("remove", entry)

    async def _change(self, verb: str, entry: Entry) -> bool:
        body: list[Any]
        if isinstance(entry, Chain):
            member, signature, body = f"{verb}Chain", "sss", [entry.ipv, entry.table, entry.chain]
        elif isinstance(entry, Rule):
            member, signature = f"{verb}Rule", "sssias"
            body = [entry.ipv, entry.table, entry.chain, entry.priority, list(entry.args)]
        else:
            assert isinstance(entry, Passthrough)
            member, signature, body = f"{verb}Passthrough", "sas", [entry.ipv, list(entry.args)]
        self.changes.append(f"{member} {entry.describe()}")
        try:
            await self._call(
                member, signature=signature, body=body, what=f"{verb} {entry.describe()}"
            )
        except FirewalldRejected as exc:
            if exc.code in ALREADY:
                return False
            raise
        return True

    async def update_permanent(self, config: DirectConfig) -> None:
        self.changes.append("config.direct.update")
        await self._call(
            "update",
            interface=CONFIG_DIRECT,
            path=CONFIG_PATH,
            signature="(a(sss)a(sssias)a(sas))",
            body=[config.to_dbus()],
            what="update the permanent direct configuration",
        )

    async def reload(self) -> None:
        self.changes.append("reload")
        await self._call("reload", interface=IFACE, what="reload firewalld")


async def try_connect(address: str | None = None) -> tuple[Firewalld | None, str]:
    """Connect when firewalld runs; otherwise (None, why) — the caller goes offline."""
    try:
        fw = await Firewalld.connect(address)
    except FirewalldUnavailable as exc:
        return None, str(exc)
    try:
        info = await fw.info()
    except (FirewalldUnavailable, DBusError) as exc:
        fw.disconnect()
        return None, str(exc)
    if info.state == "FAILED":
        fw.disconnect()
        raise FirewalldUnavailable(
            "firewalld is in FAILED state (running a fail-safe configuration); find the cause "
            "with `firewall-cmd --check-config` or its log, fix it, then "
            "`systemctl restart firewalld` and run this again"
        )
    if info.state != "RUNNING":
        fw.disconnect()
        return None, f"firewalld state is {info.state}"
    return fw, ""
