"""One base exception; each kind of failure carries its own exit code.

Only the CLI turns these into ``Error: ...`` lines. Anything that is not a
:class:`TproxyError` is a bug and is allowed to show a traceback.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Optional


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    #: diff only: desired and observed differ
    DIFFERENCES = 1
    #: bad settings: a flag, config file key or environment variable
    SETTINGS = 2
    #: direct.xml is unreadable or firewalld would reject it; nothing was written
    DIRECT_XML = 3
    #: iptables rejected the rendered rules (or the kernel lacks a module); nothing was changed
    RULES_REJECTED = 4
    #: firewalld is not reachable, hung, or not in a usable state
    FIREWALLD_UNAVAILABLE = 5
    #: firewalld refused a call (its error code is in the message)
    FIREWALLD_REJECTED = 6
    #: not root / not authorised by polkit
    NOT_PERMITTED = 7
    #: a step failed and what was already changed could not be fully undone
    PARTIALLY_APPLIED = 8
    #: another run holds the lock, or the system changed since the plan was made
    LOCKED = 9
    #: install refused because it would lock admins out (e.g. redirecting sshd's port)
    LOCKOUT = 10
    #: a file or directory of ours could not be read or written (permissions, read-only, full)
    IO_ERROR = 11
    #: install refused: a firewalld.conf setting would defeat the rules (RFC3964_IPv4,
    #: StrictForwardPorts) and changing it was not allowed (--configure-firewalld) or not possible
    FIREWALLD_CONF = 12
    #: install refused: firewalld would flush other tools' iptables chains and rules (its first
    #: direct entry on >= 2.0, or a reload) and that was not allowed (--allow-iptables-flush)
    IPTABLES_FLUSH = 13


class TproxyError(Exception):
    """An expected failure, with a one-line message that says what to do."""

    exit_code: ExitCode = ExitCode.SETTINGS

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SettingsError(TproxyError):
    """A bad setting. ``setting`` names it (the library's name, e.g. ``redirect_inbound_port``)
    when the error is about one setting, so that callers can point at their own spelling."""

    exit_code = ExitCode.SETTINGS

    def __init__(self, message: str, setting: Optional[str] = None) -> None:
        super().__init__(message)
        self.setting = setting


class DirectXmlError(TproxyError):
    exit_code = ExitCode.DIRECT_XML


class RulesRejected(TproxyError):
    exit_code = ExitCode.RULES_REJECTED


class FirewalldUnavailable(TproxyError):
    exit_code = ExitCode.FIREWALLD_UNAVAILABLE


class FirewalldRejected(TproxyError):
    exit_code = ExitCode.FIREWALLD_REJECTED

    def __init__(self, message: str, code: str = "UNKNOWN_ERROR") -> None:
        super().__init__(message)
        self.code = code


class NotPermitted(TproxyError):
    exit_code = ExitCode.NOT_PERMITTED


class PartiallyApplied(TproxyError):
    exit_code = ExitCode.PARTIALLY_APPLIED


class Locked(TproxyError):
    exit_code = ExitCode.LOCKED


class LockoutRefused(TproxyError):
    exit_code = ExitCode.LOCKOUT


class FirewalldConfRefused(TproxyError):
    """A firewalld.conf setting would defeat the rules about to be installed; nothing changed."""

    exit_code = ExitCode.FIREWALLD_CONF


class IptablesFlushRefused(TproxyError):
    """firewalld would flush other tools' iptables chains and rules; nothing changed."""

    exit_code = ExitCode.IPTABLES_FLUSH


class FileError(TproxyError):
    """An OSError on one of our files or directories, as one line naming the path."""

    exit_code = ExitCode.IO_ERROR


def os_error(path: object, exc: OSError, doing: str) -> TproxyError:
    """An OSError as one of our errors: permission problems of a user other than root are
    "not permitted"; root refused is a property of the file (immutable, read-only, a security
    policy), which running as root cannot change."""
    import errno
    import os

    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        if os.geteuid() != 0:
            return NotPermitted(f"cannot {doing} {path}: {reason}; run as root")
        if exc.errno == errno.EPERM:
            reason += " (immutable or append-only? see `lsattr`)"
    return FileError(f"cannot {doing} {path}: {reason}")
