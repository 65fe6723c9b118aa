"""Shared fixtures. Sandbox fixtures: a real firewalld in throw-away namespaces (harness/)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from harness import Backend, Sandbox, SandboxError, SandboxFactory, YesNo, start_sandbox
from hypothesis import settings as hypothesis_settings

# CI (scripts/test, scripts/test-stacks): the same examples every run, so that a red run is
# reproducible and a green one not luck; and no per-example deadline on a loaded machine.
# Elsewhere hypothesis explores anew each run.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SANDBOX_FIXTURES = frozenset({"firewalld_sandbox", "make_sandbox"})
#: firewalld.conf of the suite's sandboxes: firewalld's stock configuration but RFC3964_IPv4=no,
#: which Kuma's IPv6 outbound redirect needs (with the stock yes, an IPv6 install refuses, exit
#: 12: tests/test_firewalld_conf.py). Tests about the stock configuration ask for it (stock=True).
SUITE_CONF = {"RFC3964_IPv4": "no"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "firewalld: needs a real firewalld in a sandbox")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SANDBOX_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.firewalld)


@pytest.fixture
def make_sandbox() -> Iterator[SandboxFactory]:
    """start_sandbox(backend, flush_all_on_reload, root, conf); closes what it made. conf
    goes on top of SUITE_CONF, or (stock=True) of firewalld's stock configuration."""
    made: list[Sandbox] = []

    def make(
        backend: Backend = "nftables",
        flush_all_on_reload: YesNo = "yes",
        root: Path | None = None,
        conf: Mapping[str, str] | None = None,
        *,
        stock: bool = False,
    ) -> Sandbox:
        settings = {**({} if stock else SUITE_CONF), **(conf or {})}
        try:
            sandbox = start_sandbox(backend, flush_all_on_reload, root, settings)
        except SandboxError as exc:
            problem = str(exc)
        else:
            made.append(sandbox)
            return sandbox
        # Fail, never skip: CI must not pass quietly without the real-firewalld tests.
        pytest.fail(problem, pytrace=False)

    yield make
    for sandbox in reversed(made):
        sandbox.close()


@pytest.fixture(params=["nftables", "iptables"], ids=["nftables", "iptables"])
def firewalld_sandbox(request: pytest.FixtureRequest, make_sandbox: SandboxFactory) -> Sandbox:
    """A RUNNING firewalld with the suite's config (SUITE_CONF), once per backend."""
    backend: Backend = request.param
    return make_sandbox(backend)
