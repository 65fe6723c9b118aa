"""Parity with kumactl found against each release's own Go code (issue 17 item 11): the order
of kumactl 2.11-2.14's config files, and kumactl 2.7's lookup of --kuma-dp-uid."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest
from helpers import cli_runner

from tproxy_firewalld.cli import app
from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import KumaSettings

runner = cli_runner()


def inbound_ports(tmp_path: Path, *args: str) -> set[str]:
    """The ports the rendered rules redirect inbound TCP to."""
    result = runner.invoke(app, ["render", "--direct-xml", str(tmp_path / "none.xml"), *args])
    assert result.exit_code == 0, result.stderr
    config = parse_direct_xml(result.stdout.encode())
    return {
        r.args[r.args.index("--to-ports") + 1]
        for r in config.rules
        if r.chain == "KUMA_MESH_INBOUND_REDIRECT" and "--to-ports" in r.args
    }


def port_file(tmp_path: Path, name: str, port: int) -> str:
    path = tmp_path / name
    path.write_text(f"redirect:\n  inbound:\n    port: {port}\n")
    return str(path)


@pytest.mark.parametrize("release", ["2.11", "2.14"])
def test_config_file_is_read_before_the_config_files(tmp_path: Path, release: str) -> None:
    """kumactl: Load(stdin, slices.Concat([]string{configFile}, configValues)...), so a
    --config value overrides the --config-file one, wherever each stands on the line."""
    a, b = port_file(tmp_path, "a.yaml", 1111), port_file(tmp_path, "b.yaml", 2222)
    common = ("--kuma-version", release, "--kuma-dp-user", "0")
    assert inbound_ports(tmp_path, *common, "--config-file", a, "--config", b) == {"2222"}
    assert inbound_ports(tmp_path, *common, "--config", b, "--config-file", a) == {"2222"}


def test_only_the_last_config_file_counts(tmp_path: Path) -> None:
    """--config-file is a plain string flag in kumactl: a later one replaces an earlier one."""
    a, b = port_file(tmp_path, "a.yaml", 1111), port_file(tmp_path, "b.yaml", 2222)
    common = ("--kuma-dp-user", "0")
    assert inbound_ports(tmp_path, *common, "--config-file", b, "--config-file", a) == {"1111"}
    missing = str(tmp_path / "missing.yaml")
    assert inbound_ports(tmp_path, *common, "--config-file", missing, "--config-file", a) == {
        "1111"
    }


def unused_uid() -> int:
    uid = 4321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def test_kuma_2_7_takes_the_users_uid_when_no_user_has_the_uid_given() -> None:
    """kumactl 2.7's findUidGid: os_user.LookupId(uid) first; failing that, Lookup(user)."""
    nobody = pwd.getpwnam("nobody").pw_uid
    uid = str(unused_uid())

    def loaded(release: str, *user: str) -> KumaSettings:
        flags = {"--kuma-version": release, "--kuma-dp-uid": uid}
        if user:
            flags["--kuma-dp-user"] = user[0]
        return KumaSettings.load(flags=flags)

    assert loaded("2.7", "nobody").uid == nobody
    assert loaded("2.7").uid == int(uid), "without a user, the UID as given"
    assert loaded("2.14", "nobody").uid == int(uid), "2.11+: --kuma-dp-uid wins (README)"
    existing = KumaSettings.load(
        flags={"--kuma-version": "2.7", "--kuma-dp-uid": "0", "--kuma-dp-user": "nobody"}
    )
    assert existing.uid == 0, "a UID a user has is used as given"
    with pytest.raises(SettingsError, match="does not refer to a valid user on the host"):
        loaded("2.7", "no-such-user-here")
