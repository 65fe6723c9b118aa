"""Helpers shared by the tests: running the CLI in a sandbox, other tools' entries, views of
firewalld's direct configuration, Kuma's golden files, settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest
from harness import Sandbox

from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.kuma import COMMENT_PREFIX, OWNER, KumaSettings

REPO = Path(__file__).resolve().parent.parent
KUMA_COMMENT = COMMENT_PREFIX.rstrip("/")
TP = [sys.executable, "-m", "tproxy_firewalld"]
#: every firewalld method that changes something
CHANGING_MEMBERS = {
    "addChain", "removeChain", "addRule", "removeRule", "removeRules", "addPassthrough",
    "removePassthrough", "passthrough", "update", "reload", "completeReload", "runtimeToPermanent",
}  # fmt: skip

# -- Kuma's golden files: read where they are (never copied into the project) -----------------

KUMA_GOLDENS_ENV = "TPFW_KUMA_GOLDENS"


def kuma_goldens() -> Path:
    """Kuma's golden files: $TPFW_KUMA_GOLDENS; unset, the reference material that sits beside
    this checkout in its development environment and CI. Tests that need them fail, with how
    to point them elsewhere."""
    path = Path(os.environ.get(KUMA_GOLDENS_ENV, REPO.parent / "shared" / "kuma"))
    if not (path / "releases").is_dir():
        pytest.fail(
            f"Kuma's golden files are not at {path}: set {KUMA_GOLDENS_ENV} to a directory with "
            "kumactl's dry-run goldens (app/kumactl/cmd/install/testdata/ of a Kuma checkout, "
            "laid out as releases/<X.Y>/ and rhel-9-default.*.golden)",
            pytrace=False,
        )
    return path


# -- image roots ------------------------------------------------------------------------------

#: firewalld.conf for the image roots of tests that are not about its settings: as the rules
#: need it (RFC3964_IPv4=no; firewalld's default yes makes an IPv6 install refuse, exit 12).
READY_CONF = "# a test image root's firewalld.conf\nDefaultZone=public\nRFC3964_IPv4=no\n"


def ready_root(root: Path, conf: str = READY_CONF) -> Path:
    """``root`` with an etc/firewalld/firewalld.conf (and nothing else added)."""
    (root / "etc/firewalld").mkdir(parents=True, exist_ok=True)
    (root / "etc/firewalld/firewalld.conf").write_text(conf)
    return root


# A stock firewalld.conf, as Debian 12's firewalld 1.3.3 ships it (shortened; comments kept).
STOCK_CONF = """\
# firewalld config file

# default zone
DefaultZone=public

# FlushAllOnReload
FlushAllOnReload=yes

# RFC3964_IPv4
# As per RFC 3964, filter IPv6 traffic with 6to4 destination addresses that
# correspond to IPv4 addresses that should not be routed over the public
# internet.
# Defaults to "yes".
RFC3964_IPv4=yes
"""


def stock_root(tmp_path: Path, conf: str = STOCK_CONF) -> Path:
    """An image root at tmp_path/root whose firewalld.conf is firewalld's stock one."""
    root = tmp_path / "root"
    (root / "etc/firewalld").mkdir(parents=True)
    (root / "etc/firewalld/firewalld.conf").write_text(conf)
    return root


# -- settings ---------------------------------------------------------------------------------


def load(flags: Optional[Mapping[str, Any]] = None, **kw: Any) -> KumaSettings:
    """Settings as the CLI would load them (flags by spelling), without the environment."""
    return KumaSettings.load(flags=flags or {}, **kw)


def ours_of(config: DirectConfig) -> DirectConfig:
    return config.ours(OWNER)


def foreign_of(config: DirectConfig) -> DirectConfig:
    return config.foreign(OWNER)


# -- the CLI and firewalld in a sandbox -------------------------------------------------------


def tpfw(
    sb: Sandbox, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = sb.run(*TP, *args, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"tproxy-firewalld {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def add_foreign(sb: Sandbox) -> None:
    """Other tools' entries: a permanent chain, rules and a passthrough, and a runtime-only rule."""
    fc = sb.firewall_cmd
    fc("--permanent", "--direct", "--add-chain", "ipv4", "filter", "FOREIGN")
    fc("--permanent", "--direct", "--add-rule", "ipv4", "filter", "FOREIGN", "0", "-j", "RETURN")
    fc("--permanent", "--direct", "--add-rule", "ipv6", "nat", "OUTPUT", "0",
       "-p", "udp", "--dport", "5353", "-j", "RETURN")  # fmt: skip
    fc("--permanent", "--direct", "--add-passthrough", "ipv4",
       "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "8888", "-j", "ACCEPT")  # fmt: skip
    sb.reload()
    # runtime only: lives until the next reload (with FlushAllOnReload=yes)
    fc(
        "--direct",
        "--add-rule",
        "ipv4",
        "filter",
        "INPUT",
        "5",
        "-p",
        "tcp",
        "--dport",
        "9999",
        "-j",
        "ACCEPT",
    )


def direct_lines(sb: Sandbox, *, permanent: bool = False) -> list[str]:
    scope = ["--permanent"] if permanent else []
    out = []
    for what in ("--get-all-chains", "--get-all-rules", "--get-all-passthroughs"):
        out += sb.firewall_cmd(*scope, "--direct", what).stdout.splitlines()
    return sorted(out)


def is_our_line(line: str) -> bool:
    return "KUMA_MESH_" in line or COMMENT_PREFIX in line


def foreign(lines: list[str]) -> list[str]:
    return [line for line in lines if not is_our_line(line)]


def ours(lines: list[str]) -> list[str]:
    return [line for line in lines if is_our_line(line)]


def file_config(sb: Sandbox) -> DirectConfig:
    return (
        parse_direct_xml(sb.direct_xml.read_bytes()) if sb.direct_xml.exists() else DirectConfig()
    )


@contextmanager
def watch_bus(sb: Sandbox) -> Iterator[list[str]]:
    """The firewalld methods called on the sandbox's system bus while the block runs."""
    argv = [
        # nsenter forwards no signal, so the monitor ends by its own timeout: long enough for
        # the block (one tproxy-firewalld run, about a second).
        *sb._nsenter(), "timeout", "6", "dbus-monitor", "--system", "--monitor",
        "type='method_call',destination='org.fedoraproject.FirewallD1'",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.5)  # let dbus-monitor register its match before the block's calls
    members: list[str] = []
    try:
        yield members
    finally:
        out, _ = proc.communicate(timeout=20)
        members += [
            part.split("=", 1)[1]
            for line in out.splitlines()
            if line.startswith("method call")
            for part in line.split()
            if part.startswith("member=")
        ]


def run_in_sandbox(
    sb: Sandbox, script: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A Python script run inside the sandbox with this interpreter (the library under test)."""
    return sb.run(sys.executable, "-c", script, check=False, timeout=timeout)


#: Applies the default rule set plus one rule firewalld rejects (a jump to a chain that does not
#: exist), straight through apply_plan, past the kernel pre-check: firewalld fails midway.
MIDWAY_REJECTED = """
from tproxy_firewalld.transaction import apply_plan
from tproxy_firewalld.entries import DirectConfig, Rule
from tproxy_firewalld.errors import TproxyError
from tproxy_firewalld.kuma import OWNER, KumaSettings
from tproxy_firewalld.observe import session
from tproxy_firewalld.planning import make_plan
from tproxy_firewalld.record import Record
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.target import Target
settings = KumaSettings(kuma_dp_user="5678")
good = build_ruleset(settings)
bad = Rule("ipv4", "nat", "OUTPUT", 7, ("-m", "comment", "--comment", "kuma/mesh/transparent/proxy/z", "-j", "KUMA_MESH_MISSING"))
desired = DirectConfig(good.chains, good.rules + (bad,))
with session(Target()) as (observed, fw):
    plan = make_plan("install", desired, observed, OWNER, Record(settings), (("lo", "::6/128"),))
    try:
        apply_plan(plan, fw)
    except TproxyError as exc:
        print(type(exc).__name__, int(exc.exit_code), exc)
    else:
        print("applied")
"""


def cli_runner() -> Any:
    """typer's CliRunner with stderr kept apart from stdout: click < 8.2 mixes them unless
    told not to (and click 8.2 removed the parameter, keeping them apart always)."""
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()
