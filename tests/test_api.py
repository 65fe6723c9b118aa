"""The library's API as programs see it: one golden JSON document per command (each naming its
schema), the README's Python example run against a real firewalld, and errors as documents."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_firewalld import FOREIGN, world
from helpers import REPO, load, ready_root, run_in_sandbox

from tproxy_firewalld import api
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.health import status
from tproxy_firewalld.report import error_json

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def normalised(doc: Any, root: Path) -> Any:
    text = json.dumps(doc, indent=2, sort_keys=True).replace(str(root), "<root>")
    text = re.sub(r'"installed_at": "[^"]*"', '"installed_at": "<time>"', text)
    return json.loads(text)


def golden(name: str, doc: Any, root: Path) -> None:
    path = GOLDEN / f"{name}.json"
    value = normalised(doc, root)
    if UPDATE:
        path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    assert value == json.loads(path.read_text()), (
        f"{name}: rerun with UPDATE_GOLDEN=1 and review the diff"
    )


def test_golden_json_of_every_command(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    fake.conf["StrictForwardPorts"] = (
        "no"  # as firewalld >= 2.3 has it: the documents show the check
    )
    settings = load(
        {"--kuma-dp-user": "5678", "--ip-family-mode": "ipv4", "--exclude-inbound-ports": "22"}
    )
    client = fake.factory()
    golden(
        "install-dry-run",
        api.install(settings, target=target, client=client, dry_run=True).to_json(),
        tmp_path,
    )
    golden("install", api.install(settings, target=target, client=client).to_json(), tmp_path)
    golden("diff", api.diff(target=target, client=client).to_json(), tmp_path)
    golden("status", status(target=target, client=client).to_json(), tmp_path)
    golden("uninstall", api.uninstall(target=target, client=client).to_json(), tmp_path)
    with pytest.raises(SettingsError) as info:
        load({"--redirect-inbound-port": "0"})
    golden("error", error_json(info.value), tmp_path)
    for name in ("install-dry-run", "install", "diff", "status", "uninstall", "error"):
        kind = name.split("-")[0]
        schema = json.loads((GOLDEN / f"{name}.json").read_text())["schema"]
        assert schema == (
            f"tproxy-firewalld/{kind}/2" if kind != "error" else "tproxy-firewalld/error/1"
        )
    assert fake.permanent() == FOREIGN


def test_offline_json_and_cli_json_agree(tmp_path: Path) -> None:
    """The CLI prints exactly the library's document (an image root: offline)."""
    root = ready_root(tmp_path / "image")
    cli = subprocess.run(
        [sys.executable, "-m", "tproxy_firewalld", "install", "--root", str(root), "-o", "json", "--kuma-dp-user", "0", "--dry-run"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    from tproxy_firewalld.target import Target

    lib = api.install(
        load({"--kuma-dp-user": "0"}), target=Target.make(root), dry_run=True
    ).to_json()
    assert json.loads(cli.stdout) == lib and lib["mode"] == "offline"
    failed = subprocess.run(
        [sys.executable, "-m", "tproxy_firewalld", "install", "--root", str(root), "-o", "json", "--vnet", "x"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert failed.returncode == 2 and failed.stderr.startswith("Error: --vnet: ")
    error = json.loads(failed.stdout)["error"]
    assert (
        error["exit_code"] == 2 and error["setting"] == "vnet" and error["kind"] == "SettingsError"
    )


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_the_readme_library_example_runs_against_a_stock_firewalld(
    make_sandbox: Any, backend: str
) -> None:
    """As the README shows it, on this host's firewalld with its stock firewalld.conf
    (RFC3964_IPv4=yes): it installs, is in sync, and uninstalls, putting firewalld.conf back."""
    sb = make_sandbox(backend, stock=True)
    conf = (sb.etc_dir / "firewalld.conf").read_text()
    assert re.search(r"^RFC3964_IPv4=yes$", conf, re.M), "a stock firewalld.conf"
    out = run_in_sandbox(sb, readme_example())
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        "installed: True" in out.stdout
        and "in sync: True" in out.stdout
        and "removed: True" in out.stdout
    )
    assert "firewalld.conf: RFC3964_IPv4=no" in out.stdout
    assert "KUMA_MESH" not in sb.firewall_cmd("--direct", "--get-all-chains").stdout
    assert (sb.etc_dir / "firewalld.conf").read_text() == conf


def test_the_exported_functions_are_functions_whatever_was_imported_first() -> None:
    """A submodule named like an exported function would hide it once imported (the README's
    plan-then-apply example once failed with "'module' object is not callable")."""
    code = (
        "import tproxy_firewalld.api, tproxy_firewalld.health, tproxy_firewalld.planning, "
        "tproxy_firewalld.transaction, tproxy_firewalld.cli\n"
        "import tproxy_firewalld as t\n"
        "print(all(callable(getattr(t, n)) and not isinstance(getattr(t, n), type(t)) "
        "for n in ('plan', 'apply', 'install', 'uninstall', 'diff', 'status', 'render')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
