"""Test harness: a real firewalld in throw-away namespaces, and traffic to probe it with."""

from .sandbox import (
    Backend,
    Family,
    Listener,
    Peer,
    Reply,
    Sandbox,
    SandboxError,
    SandboxFactory,
    YesNo,
    start_sandbox,
)
from .traffic_agent import endpoint

__all__ = [
    "Backend",
    "Family",
    "Listener",
    "Peer",
    "Reply",
    "Sandbox",
    "SandboxError",
    "SandboxFactory",
    "YesNo",
    "endpoint",
    "start_sandbox",
]
