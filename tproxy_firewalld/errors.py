"""One base exception; each kind of failure carries its own exit code.

Only the CLI turns these into ``Error: ...`` lines. Anything that is not a
:class:`TproxyError` is a bug and is allowed to show a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    #: diff only: desired and observed differ
    DIFFERENCES = 1
    #: bad settings: a flag, config file key or environment variable
    SETTINGS = 2
    #: direct.xml is unreadable or firewalld would reject it; nothing was written
    DIRECT_XML = 3
    #: iptables-restore --test rejected the rendered rules; nothing was changed
    RULES_REJECTED = 4
    #: firewalld is not reachable or not in a usable state
    FIREWALLD_UNAVAILABLE = 5
    #: firewalld refused a call (its error code is in the message)
    FIREWALLD_REJECTED = 6
    #: not root / not authorised by polkit
    NOT_PERMITTED = 7
    #: a runtime step failed and could not be fully undone
    PARTIALLY_APPLIED = 8
    #: another run holds the lock on direct.xml
    LOCKED = 9
    #: install refused because it would lock admins out (e.g. redirecting sshd's port)
    LOCKOUT = 10


class TproxyError(Exception):
    """An expected failure, with a one-line message that says what to do."""

    exit_code: ExitCode = ExitCode.SETTINGS

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SettingsError(TproxyError):
    exit_code = ExitCode.SETTINGS


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
