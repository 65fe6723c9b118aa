"""Shared fixtures. Sandbox fixtures: a real firewalld in throw-away namespaces (harness/)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from harness import Backend, Sandbox, SandboxError, SandboxFactory, YesNo, start_sandbox

SANDBOX_FIXTURES = frozenset({"firewalld_sandbox", "make_sandbox"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "firewalld: needs a real firewalld in a sandbox")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SANDBOX_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.firewalld)


@pytest.fixture
def make_sandbox() -> Iterator[SandboxFactory]:
    """start_sandbox(backend, flush_all_on_reload, root, conf); closes what it made."""
    made: list[Sandbox] = []

    def make(
        backend: Backend = "nftables",
        flush_all_on_reload: YesNo = "yes",
        root: Path | None = None,
        conf: Mapping[str, str] | None = None,
    ) -> Sandbox:
        try:
            sandbox = start_sandbox(backend, flush_all_on_reload, root, conf)
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
    """A RUNNING firewalld with the default config, once per backend."""
    backend: Backend = request.param
    return make_sandbox(backend)
