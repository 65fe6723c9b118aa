"""The firewalld versions the integration tests run against: the host's (Debian 12, 1.3.3) and
those of the Debian roots scripts/build-roots makes (bullseye 0.9.3, trixie 2.3.1, forky 2.5.2).

Which versions: TPFW_FIREWALLD_ROOTS, a comma-separated list of suites (roots in
TPFW_ROOTS_DIR, default /var/cache/tproxy-firewalld/roots) or root paths; "none" for the host
only. Unset: the host plus every complete root found there. A root that is asked for but
missing or broken fails its tests, never skips them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Backend, YesNo

DEFAULT_ROOTS_DIR = Path("/var/cache/tproxy-firewalld/roots")
ROOT_SUITES = ("bullseye", "trixie", "forky")  # what scripts/build-roots builds
BACKENDS: tuple[Backend, ...] = ("nftables", "iptables")
FLUSH: tuple[YesNo, ...] = ("yes", "no")


# -- the versions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    suite: str  # Debian suite: bookworm is the host
    root: Path | None  # None: the host's firewalld
    package: str  # Debian package version of firewalld, e.g. "0.9.3-2"
    problem: str = ""  # why the root cannot be used: its tests fail with this

    @property
    def upstream(self) -> str:
        match = re.match(r"\d+\.\d+\.\d+", self.package)
        return match.group(0) if match else "?"

    @property
    def number(self) -> tuple[int, ...]:
        return (
            tuple(int(part) for part in self.upstream.split(".")) if self.upstream != "?" else (0,)
        )

    @property
    def id(self) -> str:
        return f"{self.suite}-{self.upstream}"

    # What differs between versions (firewalld release notes and source), as the tests expect it.
    def flushes_iptables_without_direct_config(self, backend: Backend) -> bool:
        """Before 2.0 every start and reload flushes all iptables tables; from 2.0 the nftables
        backend does so only once direct config exists. The iptables backend always does."""
        return self.number < (2, 0) or backend == "iptables"

    @property
    def has_strict_forward_ports(self) -> bool:
        return self.number >= (2, 3)

    @property
    def rereads_direct_xml(self) -> bool:
        """Up to 2.4 the watcher loads a changed direct.xml by itself; 2.5 only warns."""
        return self.number < (2, 5)


def roots_dir() -> Path:
    return Path(os.environ.get("TPFW_ROOTS_DIR") or DEFAULT_ROOTS_DIR)


def host_version() -> Version:
    codename = "host"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip('"') or codename
    except OSError:
        pass
    try:
        package = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "firewalld"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        return Version(codename, None, "", f"the host's firewalld package: {exc}")
    return Version(codename, None, package)


def root_version(name: str) -> Version:
    path = Path(name) if "/" in name else roots_dir() / name
    marker = path.parent / f"{path.name}.json"
    if not (path / "usr/sbin/firewalld").exists():
        return Version(path.name, path, "", f"no firewalld root at {path}; run scripts/build-roots")
    try:
        package = str(json.loads(marker.read_text())["firewalld"])
    except (OSError, ValueError, KeyError):
        return Version(path.name, path, "", f"{marker} missing or unreadable: an incomplete root")
    return Version(path.name, path, package)


def discover() -> list[Version]:
    wanted = os.environ.get("TPFW_FIREWALLD_ROOTS")
    if wanted is None:
        names = [s for s in ROOT_SUITES if (roots_dir() / f"{s}.json").exists()]
    else:
        names = [w for w in re.split(r"[,\s]+", wanted) if w and w != "none"]
    versions = [host_version(), *(root_version(name) for name in names)]
    return sorted(versions, key=lambda v: v.number)


VERSIONS = discover()


def params(*, backends: tuple[Backend, ...] = BACKENDS, flush: tuple[YesNo, ...] = ("yes",),
           only: Any = None) -> list[Any]:  # fmt: skip
    """pytest params (version, backend, flush) for every version (that `only` accepts)."""
    return [
        pytest.param(v, b, f, id=f"{v.id}-{b}" + (f"-flush{f}" if len(flush) > 1 else ""))
        for v in VERSIONS
        if only is None or only(v)
        for b in backends
        for f in flush
    ]


def version_of(suite: str) -> Version:
    """The discovered version of one Debian suite (\"bookworm\" is the host); fails the test
    when that version is not there or its root is broken."""
    for v in VERSIONS:
        if v.suite == suite:
            if v.problem:
                pytest.fail(v.problem, pytrace=False)
            return v
    pytest.fail(f"firewalld of {suite} not found: run scripts/build-roots", pytrace=False)
