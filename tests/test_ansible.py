"""The Ansible collection (ansible/): built with ansible-galaxy, run with ansible-playbook.

Every playbook runs INSIDE a firewalld sandbox (`Sandbox.run`), against localhost with
`connection: local` and this interpreter as `ansible_python_interpreter`, so the module
imports the library under test and talks to the sandbox's firewalld only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from harness import Sandbox, SandboxFactory
from helpers import (
    CHANGING_MEMBERS,
    KUMA_COMMENT,
    STOCK_CONF,
    add_foreign,
    direct_lines,
    file_config,
    foreign,
    ours,
    ready_root,
    stock_root,
)

from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import OWNER, KumaSettings
from tproxy_firewalld.ruleset import build_ruleset

REPO = Path(__file__).resolve().parent.parent
COLLECTION_SRC = REPO / "ansible"
MODULE_SRC = COLLECTION_SRC / "plugins" / "modules" / "tproxy_firewalld.py"
MODULE = "tproxy.firewalld.tproxy_firewalld"
BIN = Path(sys.executable).parent

# A notification callback that writes every task result as one JSON line, so the tests read
# what the module returned while the default callback prints what an admin sees.
RESULTS_CALLBACK = '''
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: tpfw_results
type: notification
short_description: task results as JSON lines (tests only)
description: [Appends each task result to the file named by TPFW_RESULTS.]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "tpfw_results"
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, status, result):
        data = result.result if hasattr(type(result), "result") else result._result
        task = result.task if hasattr(type(result), "task") else result._task
        line = {"task": task.get_name(), "status": status, "result": dict(data)}
        with open(os.environ["TPFW_RESULTS"], "a", encoding="utf-8") as out:
            out.write(json.dumps(line, default=str) + "\\n")

    def v2_runner_on_ok(self, result):
        self._write("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._write("failed", result)

    def v2_runner_on_unreachable(self, result):
        self._write("unreachable", result)
'''


# --------------------------------------------------------------------------- the collection


@dataclass(frozen=True)
class Ansible:
    """A built and installed collection plus an ansible.cfg that uses it."""

    home: Path
    tarball: Path
    config: Path


@pytest.fixture(scope="session")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    home = tmp_path_factory.mktemp("ansible")
    home.chmod(0o755)
    built = home / "built"
    galaxy = str(BIN / "ansible-galaxy")
    env = {**os.environ, "ANSIBLE_HOME": str(home / "home"), "ANSIBLE_NOCOLOR": "1"}
    subprocess.run(
        [galaxy, "collection", "build", str(COLLECTION_SRC), "--output-path", str(built)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    (tarball,) = built.glob("tproxy-firewalld-*.tar.gz")
    subprocess.run(
        [galaxy, "collection", "install", "--offline", "-p", str(home / "collections"), str(tarball)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    callbacks = home / "callbacks"
    callbacks.mkdir()
    (callbacks / "tpfw_results.py").write_text(RESULTS_CALLBACK)
    (home / "inventory").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    config = home / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        f"inventory = {home / 'inventory'}\n"
        f"collections_path = {home / 'collections'}\n"
        f"callback_plugins = {callbacks}\n"
        "callbacks_enabled = tpfw_results\n"
        f"home = {home / 'home'}\n"
        f"local_tmp = {home / 'tmp'}\n"
        "retry_files_enabled = false\n"
        "nocolor = true\n"
        "interpreter_python = auto_silent\n"
    )
    return Ansible(home, tarball, config)


@dataclass
class Run:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        """The module's result (the play's one task)."""
        (only,) = self.results
        return only["result"]  # type: ignore[no-any-return]

    @property
    def changed(self) -> bool:
        return bool(self.result["changed"])

    @property
    def failed(self) -> bool:
        return self.rc != 0 or self.results[0]["status"] == "failed"


_runs = 0


def playbook(sb: Sandbox, ansible: Ansible, args: dict[str, Any], *flags: str) -> Run:
    """One play with one task of our module, run by ansible-playbook inside the sandbox."""
    global _runs
    _runs += 1
    play = [
        {
            "name": "tproxy-firewalld",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [{"name": "Kuma transparent proxy rules", MODULE: args}],
        }
    ]
    path = ansible.home / f"play-{_runs}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    results = ansible.home / f"results-{_runs}.jsonl"
    argv = [str(BIN / "ansible-playbook"), str(path), *flags]
    env = {
        "ANSIBLE_CONFIG": str(ansible.config),
        "TPFW_RESULTS": str(results),
        "ANSIBLE_NOCOLOR": "1",
    }
    started = time.monotonic()
    proc = sb.run(*argv, check=False, env=env, timeout=180)
    seconds = time.monotonic() - started
    lines = results.read_text().splitlines() if results.exists() else []
    run = Run(
        argv, proc.returncode, proc.stdout, proc.stderr, seconds, [json.loads(x) for x in lines]
    )
    if not run.results:
        raise AssertionError(
            f"ansible-playbook ran no task (exit {run.rc}):\n{run.stdout}\n{run.stderr}"
        )
    return run


def ok(run: Run) -> Run:
    assert not run.failed, f"exit {run.rc}\n{run.stdout}\n{run.stderr}"
    return run


# --------------------------------------------------------------------------- firewalld helpers
# (as in test_live.py)


def snapshot(sb: Sandbox) -> tuple[list[str], list[str], bytes, bool]:
    """Runtime, permanent, direct.xml and whether an install was recorded."""
    recorded = (
        sb.run("test", "-e", "/var/lib/tproxy-firewalld/installed.json", check=False).returncode
        == 0
    )
    xml = sb.direct_xml.read_bytes() if sb.direct_xml.exists() else b""
    return direct_lines(sb), direct_lines(sb, permanent=True), xml, recorded


@dataclass
class Call:
    member: str
    strings: list[str]


@contextmanager
def watch_bus(sb: Sandbox) -> Iterator[list[Call]]:
    """The firewalld methods called on the sandbox's system bus while the block runs, with
    their string arguments. Like test_live.watch_bus, but an ansible-playbook run takes a few
    seconds, so the monitor is ended by pid (inside the sandbox) rather than by a timeout."""
    pidfile = sb.workdir / "dbus-monitor.pid"
    pidfile.unlink(missing_ok=True)
    script = (
        f"echo $$ > {pidfile}; exec timeout 300 dbus-monitor --system --monitor "
        "\"type='method_call',destination='org.fedoraproject.FirewallD1'\""
    )
    proc = subprocess.Popen(
        [*sb._nsenter(), "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "dbus-monitor did not start"
        time.sleep(0.05)
    time.sleep(1.0)  # let dbus-monitor register its match before the block's calls
    calls: list[Call] = []
    try:
        yield calls
    finally:
        time.sleep(0.3)
        sb.run("kill", pidfile.read_text().strip(), check=False)
        out, _ = proc.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("method call"):
                member = next(p.split("=", 1)[1] for p in line.split() if p.startswith("member="))
                calls.append(Call(member, []))
            elif calls and (m := re.match(r'\s+string "(.*)"$', line)):
                calls[-1].strings.append(m.group(1))


def members(calls: list[Call]) -> set[str]:
    return {c.member for c in calls}


# --------------------------------------------------------------------------- the module, no sandbox


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tpfw_ansible_module", MODULE_SRC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_message(values: dict[str, Any]) -> str:
    """What the library says about these settings, given by name (as the module gives them)."""
    with pytest.raises(SettingsError) as caught:
        KumaSettings.load(**values)
    return caught.value.message


def test_every_setting_is_an_option_of_the_same_name() -> None:
    mod = load_module()
    spec = mod.argument_spec(KumaSettings)
    assert set(spec) == set(mod.MODULE_OPTIONS) | {f.name for f in KumaSettings.option_fields()}
    for f in KumaSettings.flag_fields():
        assert f.flag is not None and f.flag[2:].replace("-", "_") == f.name, "named as the flag"
    assert spec["exclude_outbound_ports_for_uids"] == {"type": "list", "elements": "raw"}
    assert spec["redirect_dns"] == {"type": "bool"}


def test_documentation_matches_the_argument_spec() -> None:
    mod = load_module()
    doc = yaml.safe_load(mod.DOCUMENTATION)
    spec = mod.argument_spec(KumaSettings)
    assert set(doc["options"]) == set(spec)
    for name, arg in spec.items():
        documented = doc["options"][name]
        for key in ("type", "elements", "default", "choices", "required"):
            assert documented.get(key) == arg.get(key), (name, key)
        assert documented["description"], name
    for f in KumaSettings.option_fields():  # kumactl's operational flags are not options
        if f.flag:
            assert f"C({f.flag})" in " ".join(doc["options"][f.name]["description"]), f.name
    assert yaml.safe_load(mod.EXAMPLES)
    returned = yaml.safe_load(mod.RETURN)
    assert {
        "mode",
        "summary",
        "steps",
        "runtime",
        "permanent",
        "file",
        "warnings",
        "settings",
    } <= set(returned)


def test_messages_name_the_option() -> None:
    """The module passes settings by name, so the library's messages name the option: nothing
    is rewritten."""
    message = library_message({"redirect_inbound_port": "abc"})
    assert (
        message
        == "redirect_inbound_port: value 'abc' is not a valid port (uint16 in the range [1, 65535])"
    )


def test_the_readme_playbook_uses_real_options() -> None:
    mod = load_module()
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Ansible\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    (play,) = yaml.safe_load(block)
    (task,) = play["tasks"]
    assert set(task[MODULE]) <= set(mod.argument_spec(KumaSettings))
    for example in yaml.safe_load(mod.EXAMPLES):
        args = next(v for k, v in example.items() if k == MODULE)
        assert set(args) <= set(mod.argument_spec(KumaSettings)), example["name"]


def test_collection_builds(ansible_env: Ansible) -> None:
    names = subprocess.run(
        ["tar", "tzf", str(ansible_env.tarball)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {
        "MANIFEST.json",
        "FILES.json",
        "README.md",
        "meta/runtime.yml",
        "plugins/modules/tproxy_firewalld.py",
    } <= set(names)
    manifest = subprocess.run(
        ["tar", "xzfO", str(ansible_env.tarball), "MANIFEST.json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(manifest)["collection_info"]
    assert (info["namespace"], info["name"]) == ("tproxy", "firewalld")
    doc = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", MODULE], capture_output=True, text=True, check=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ansible_env.config)},
    )  # fmt: skip
    options = json.loads(doc.stdout)[MODULE]["doc"]["options"]
    assert "exclude_outbound_ports_for_uids" in options and "state" in options


# --------------------------------------------------------------------------- against firewalld


def test_present_is_live_and_permanent_and_a_second_run_changes_nothing(
    firewalld_sandbox: Sandbox, ansible_env: Ansible
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before_runtime, before_permanent = direct_lines(sb), direct_lines(sb, permanent=True)

    first = ok(playbook(sb, ansible_env, {"state": "present", "exclude_inbound_ports": [22]}))
    assert first.changed and first.result["mode"] == "live"
    assert (
        first.result["summary"]
        == "runtime: +8 chains +24 rules; permanent: updated (+8 chains +24 rules); lo: +::6/128; "
        "record: written"
    )
    assert "changed=1" in first.stdout and "failed=0" in first.stdout
    runtime, permanent = direct_lines(sb), direct_lines(sb, permanent=True)
    assert foreign(runtime) == before_runtime and foreign(permanent) == before_permanent
    assert len(ours(runtime)) == 32 and ours(runtime) == ours(permanent)
    assert len(file_config(sb).ours(OWNER).entries()) == 32
    nat = sb.iptables_save("ipv4", "nat") + sb.iptables_save("ipv6", "nat")
    assert nat.count("-j REDIRECT --to-ports 15001") == 2 and nat.count("--dport 22 ") == 2
    assert first.result["settings"]["exclude_inbound_ports"] == [22]

    with watch_bus(sb) as calls:
        second = ok(playbook(sb, ansible_env, {"state": "present", "exclude_inbound_ports": [22]}))
    assert not second.changed and second.result["summary"] == "nothing to do"
    assert "changed=0" in second.stdout
    assert "getAllRules" in members(calls), "the watcher saw the read calls"
    assert not CHANGING_MEMBERS & members(calls), [c.member for c in calls]
    assert direct_lines(sb) == runtime and direct_lines(sb, permanent=True) == permanent


def test_check_mode_on_a_clean_host_reports_and_changes_nothing(
    firewalld_sandbox: Sandbox, ansible_env: Ansible
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before = snapshot(sb)
    with watch_bus(sb) as calls:
        run = ok(playbook(sb, ansible_env, {"state": "present"}, "--check"))
    assert run.changed and "changed=1" in run.stdout
    assert (
        run.result["summary"]
        == "runtime: +8 chains +22 rules; permanent: updated (+8 chains +22 rules); lo: +::6/128; "
        "record: written"
    )
    steps = {step["step"]: step for step in run.result["steps"]}
    added = steps["runtime"]["add"]
    assert len(added) == 30 and added[0]["kind"] == "chain"
    assert added[-1] == {
        "kind": "rule", "ipv": "ipv6", "table": "nat", "chain": "PREROUTING", "priority": 1,
        "args": ["-m", "comment", "--comment", f"{KUMA_COMMENT}/redirect inbound TCP traffic to our custom chain for processing", "-p", "tcp", "-j", "KUMA_MESH_INBOUND"],
    }, "the jumps from built-in chains come last"  # fmt: skip
    assert steps["permanent"]["add"] == added and "file" not in steps
    assert run.result["runtime"]["before"] == [] and len(run.result["runtime"]["after"]) == 30
    assert snapshot(sb) == before
    assert not CHANGING_MEMBERS & members(calls), [c.member for c in calls]

    absent = ok(playbook(sb, ansible_env, {"state": "absent"}, "--check"))
    assert not absent.changed and snapshot(sb) == before


def diff_of(run: Run) -> list[dict[str, str]]:
    return run.result["diff"]  # type: ignore[no-any-return]


def test_diff_mode_shows_the_entries_added_and_removed(
    firewalld_sandbox: Sandbox, ansible_env: Ansible
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    desired = sorted(e.describe() for e in build_ruleset(KumaSettings()).entries())

    check = ok(playbook(sb, ansible_env, {"state": "present"}, "--check", "--diff"))
    pairs = diff_of(check)
    assert [p["before_header"] for p in pairs] == [
        "runtime (tproxy-firewalld entries)",
        "permanent (tproxy-firewalld entries)",
    ]
    for pair in pairs:
        assert pair["before"] == "" and sorted(pair["after"].splitlines()) == desired
    out = check.stdout
    assert (
        "--- before: runtime (tproxy-firewalld entries)" in out
        and "+++ after: permanent (tproxy-firewalld entries)" in out
    )
    assert (
        "+chain ipv4 nat KUMA_MESH_INBOUND\n" in out
        and "+chain ipv6 nat KUMA_MESH_OUTBOUND_REDIRECT\n" in out
    )
    assert (
        f"+rule ipv4 nat OUTPUT 1 -m comment --comment '{KUMA_COMMENT}/redirect outbound TCP traffic"
        in out
    )
    assert "FOREIGN" not in out and "8888" not in out, "only our entries are shown"

    ok(playbook(sb, ansible_env, {"state": "present"}))
    same = ok(playbook(sb, ansible_env, {"state": "present"}, "--diff"))
    assert not same.changed and all(p["before"] == p["after"] for p in diff_of(same))
    assert "--- before" not in same.stdout

    port = ok(
        playbook(
            sb,
            ansible_env,
            {"state": "present", "redirect_outbound_port": 15999},
            "--check",
            "--diff",
        )
    )
    out = port.stdout
    for ipv in ("ipv4", "ipv6"):
        assert (
            f"-rule {ipv} nat KUMA_MESH_OUTBOUND_REDIRECT 0 -m comment --comment "
            f"'{KUMA_COMMENT}/redirect TCP traffic to envoy (port 15001)' -p tcp -j REDIRECT --to-ports 15001\n"
        ) in out
        assert (
            f"+rule {ipv} nat KUMA_MESH_OUTBOUND_REDIRECT 0 -m comment --comment '{KUMA_COMMENT}/redirect TCP traffic to envoy (port 15999)'"
            in out
        )
    changed_lines = [
        line for line in out.splitlines() if re.match(r"[-+](chain|rule|passthrough) ", line)
    ]
    assert len(changed_lines) == 2 * 4, "4 lines per configuration, runtime and permanent"

    absent = ok(playbook(sb, ansible_env, {"state": "absent"}, "--check", "--diff"))
    for pair in diff_of(absent):
        assert sorted(pair["before"].splitlines()) == desired and pair["after"] == ""
    assert "-chain ipv4 nat KUMA_MESH_INBOUND\n" in absent.stdout


def test_a_changed_setting_touches_only_the_differing_entries(
    firewalld_sandbox: Sandbox, ansible_env: Ansible
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    ok(playbook(sb, ansible_env, {"state": "present"}))
    before_runtime = direct_lines(sb)

    with watch_bus(sb) as calls:
        run = ok(playbook(sb, ansible_env, {"state": "present", "redirect_outbound_port": "15999"}))
    assert run.changed
    assert (
        run.result["summary"]
        == "runtime: +2 rules -2 rules; permanent: updated (+2 rules -2 rules); record: written"
    )
    changing = [c for c in calls if c.member in CHANGING_MEMBERS]
    assert sorted(c.member for c in changing) == [
        "addRule",
        "addRule",
        "removeRule",
        "removeRule",
        "update",
    ]
    for call in changing:
        if call.member == "addRule":
            assert call.strings[2] == "KUMA_MESH_OUTBOUND_REDIRECT" and "15999" in call.strings
        elif call.member == "removeRule":
            assert call.strings[2] == "KUMA_MESH_OUTBOUND_REDIRECT" and "15001" in call.strings

    after_runtime = direct_lines(sb)
    gone = sorted(set(before_runtime) - set(after_runtime))
    new = sorted(set(after_runtime) - set(before_runtime))
    assert len(gone) == len(new) == 2
    assert all("--to-ports 15001" in line for line in gone) and all(
        "--to-ports 15999" in line for line in new
    )
    assert ours(direct_lines(sb, permanent=True)) == ours(after_runtime)
    assert not ok(
        playbook(sb, ansible_env, {"state": "present", "redirect_outbound_port": 15999})
    ).changed


def test_absent_removes_ours_and_keeps_foreign(
    firewalld_sandbox: Sandbox, ansible_env: Ansible
) -> None:
    sb = firewalld_sandbox
    add_foreign(sb)
    before_runtime, before_permanent = direct_lines(sb), direct_lines(sb, permanent=True)
    ok(
        playbook(
            sb,
            ansible_env,
            {"state": "present", "redirect_all_dns_traffic": True, "iptables_logs": True},
        )
    )

    run = ok(playbook(sb, ansible_env, {"state": "absent"}))
    assert run.changed and run.result["summary"].startswith("runtime: -8 chains")
    assert run.result["summary"].endswith("; lo: -::6/128; record: removed")
    assert direct_lines(sb) == before_runtime
    assert direct_lines(sb, permanent=True) == before_permanent
    assert file_config(sb).ours(OWNER).is_empty()
    assert {e.describe() for e in file_config(sb).foreign(OWNER).entries()} >= {
        "chain ipv4 filter FOREIGN"
    }
    for ipv in ("ipv4", "ipv6"):
        saved = "".join(sb.iptables_save(ipv, t) for t in ("raw", "nat", "mangle"))
        assert "KUMA" not in saved and KUMA_COMMENT not in saved

    with watch_bus(sb) as calls:
        again = ok(playbook(sb, ansible_env, {"state": "absent"}))
    assert not again.changed and again.result["summary"] == "nothing to do"
    assert not CHANGING_MEMBERS & members(calls), [c.member for c in calls]


BAD_VALUES: list[dict[str, Any]] = [
    {"redirect_inbound_port": "abc"},
    {"redirect_dns_port": 70000},
    {"exclude_outbound_ips": ["10.0.0.1", "10.0.0.300"]},
    {"exclude_outbound_ports_for_uids": ["sctp:53:1000"]},
    {"ip_family_mode": "ipv6"},
    {"vnet": ["docker0"]},
    {"redirect_dns": "maybe"},  # Ansible's own type check comes first
]


def run_in_process(args: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """The module's main(), in this process, with these task arguments: its JSON result."""
    import contextlib
    import io

    from ansible.module_utils.testing import patch_module_args

    mod = load_module()
    out = io.StringIO()
    extra = {"_ansible_check_mode": check_mode}
    with (
        patch_module_args({**args, **extra}),
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit),
    ):
        mod.main()
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


@pytest.mark.parametrize("args", BAD_VALUES, ids=[next(iter(a)) for a in BAD_VALUES])
def test_a_bad_option_value_fails_with_the_librarys_one_line_message(
    args: dict[str, Any], tmp_path: Path
) -> None:
    """In-process: a bad value fails before anything is observed or changed (an image root
    that must stay untouched proves it)."""
    root = tmp_path / "image"
    result = run_in_process({"state": "present", "root": str(root), **args})
    assert result["failed"], result
    if "redirect_dns" in args:
        assert "redirect_dns" in result["msg"] and "bool" in result["msg"]
    else:
        expected = library_message(args)
        assert result["msg"] == expected and "\n" not in expected
        assert expected.startswith(f"{next(iter(args))}: "), "the option is named"
        assert result["error"] == "SettingsError" and result["exit_code"] == 2
        assert result["setting"] == next(iter(args))
    assert "exception" not in result, "no traceback, even for -vvv"
    assert not root.exists()


def test_a_bad_option_value_in_a_real_playbook(
    make_sandbox: SandboxFactory, ansible_env: Ansible
) -> None:
    sb = make_sandbox("nftables")
    before = snapshot(sb)
    run = playbook(sb, ansible_env, {"state": "present", "redirect_inbound_port": "abc"})
    expected = library_message({"redirect_inbound_port": "abc"})
    assert run.failed and run.rc == 2 and run.result["msg"] == expected
    assert expected in run.stdout, "the admin sees the message"
    assert "Traceback" not in run.stdout + run.stderr
    assert snapshot(sb) == before


def test_library_errors_and_a_missing_library_fail_cleanly(
    make_sandbox: SandboxFactory, ansible_env: Ansible, tmp_path: Path
) -> None:
    sb = make_sandbox("nftables")
    # a config file that is not there: the library's message
    run = playbook(sb, ansible_env, {"config": [str(tmp_path / "missing.yaml")]})
    assert run.failed and run.result["msg"] == (
        f"unable to access configuration file '{tmp_path / 'missing.yaml'}', please check if the file "
        "exists and has the correct permissions"
    )
    # firewalld refuses our update (direct.xml hand-edited and not loaded): DirectXmlError
    ok(playbook(sb, ansible_env, {}))
    sb.direct_xml.write_bytes(
        sb.direct_xml.read_bytes().replace(
            b"</direct>", b'<chain ipv="ipv4" table="filter" chain="HAND"/></direct>'
        )
    )
    run = playbook(sb, ansible_env, {"redirect_outbound_port": 15999})
    assert run.failed and run.result["error"] == "DirectXmlError" and run.result["exit_code"] == 3
    assert "edited by hand and not loaded" in run.result["msg"] and "Traceback" not in run.stdout

    # an interpreter without the library: Ansible's missing-library message, no traceback shown
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    run = playbook(
        sb, ansible_env, {}, "-e", f"ansible_python_interpreter={venv / 'bin' / 'python'}"
    )
    assert (
        run.failed
        and "Failed to import the required Python library (tproxy-firewalld)" in run.result["msg"]
    )
    assert "Traceback" not in run.stdout


def test_offline_root_writes_the_image_direct_xml(
    make_sandbox: SandboxFactory, ansible_env: Ansible, tmp_path: Path
) -> None:
    sb = make_sandbox("nftables")
    root = ready_root(tmp_path / "image")
    before = snapshot(sb)
    check = ok(playbook(sb, ansible_env, {"root": str(root)}, "--check", "--diff"))
    assert check.changed and check.result["mode"] == "offline" and check.result["runtime"] is None
    assert len(check.result["file"]["after"]) == 30 and check.result["file"]["before"] == []
    assert [p["before_header"] for p in diff_of(check)] == ["direct.xml (tproxy-firewalld entries)"]
    assert not (root / "etc" / "firewalld" / "direct.xml").exists()
    with watch_bus(sb) as calls:
        run = ok(playbook(sb, ansible_env, {"root": str(root)}))
    assert (
        run.changed and run.result["summary"] == "direct.xml: +8 chains +22 rules; record: written"
    )
    assert (
        len(
            parse_direct_xml((root / "etc/firewalld/direct.xml").read_bytes()).ours(OWNER).entries()
        )
        == 30
    )
    assert (root / "var/lib/tproxy-firewalld/installed.json").exists()
    assert not calls, "no call to firewalld at all"
    assert snapshot(sb) == before, "the running firewalld is not touched"
    assert not ok(playbook(sb, ansible_env, {"root": str(root)})).changed
    assert ok(playbook(sb, ansible_env, {"root": str(root), "state": "absent"})).changed
    assert parse_direct_xml((root / "etc/firewalld/direct.xml").read_bytes()).ours(OWNER).is_empty()


def fake_sshd(sb: Sandbox, directory: Path, port: int = 22) -> None:
    """A process named sshd listening on port inside the sandbox (until the sandbox ends)."""
    link = directory / "sshd"
    link.symlink_to(sys.executable)  # the kernel names the process after the path exec'd
    code = (
        "import socket, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('0.0.0.0', {port})); s.listen(); time.sleep(3600)"
    )
    sb.run("sh", "-c", f'{link} -c "{code}" >/dev/null 2>&1 </dev/null &')
    deadline = time.monotonic() + 15
    while f":{port:04X} 00000000:0000 0A" not in sb.run("cat", "/proc/net/tcp").stdout:
        assert time.monotonic() < deadline, "the fake sshd did not listen"
        time.sleep(0.1)


def test_the_ssh_lockout_guard_and_allow_ssh_redirect(
    make_sandbox: SandboxFactory, ansible_env: Ansible, tmp_path: Path
) -> None:
    sb = make_sandbox("nftables")
    before = snapshot(sb)
    fake_sshd(sb, tmp_path)
    for flags in (["--check"], []):
        run = playbook(sb, ansible_env, {"state": "present"}, *flags)
        assert (
            run.failed and run.result["error"] == "LockoutRefused" and run.result["exit_code"] == 10
        )
        msg = run.result["msg"]
        assert msg.startswith(
            "inbound redirection would capture port 22 (sshd), where SSH listens"
        ), msg
        assert "exclude_inbound_ports" in msg and "allow_ssh_redirect" in msg
        assert snapshot(sb) == before, "refused before anything changed"
    excluded = ok(playbook(sb, ansible_env, {"state": "present", "exclude_inbound_ports": [22]}))
    assert excluded.changed
    allowed = ok(playbook(sb, ansible_env, {"state": "present", "allow_ssh_redirect": True}))
    assert allowed.changed and "--dport 22 " not in sb.iptables_save("ipv4", "nat")
    removed = {step["step"]: step for step in allowed.result["steps"]}["runtime"]["remove"]
    assert [
        r["args"][r["args"].index("--dport") + 1] for r in removed if "--dport" in r["args"]
    ] == ["22", "22"]


# --------------------------------------------------------------------------- the closing transcript


def test_transcript_first_second_check_diff_absent(
    make_sandbox: SandboxFactory, ansible_env: Ansible
) -> None:
    """The issue's closing note: what an admin sees, with timings. Written to
    $TPFW_ANSIBLE_TRANSCRIPT when set."""
    sb = make_sandbox("nftables")
    add_foreign(sb)
    steps = [
        (
            "check mode on a clean host",
            {"state": "present", "exclude_inbound_ports": [22]},
            ["--check", "--diff"],
            True,
        ),
        ("first run", {"state": "present", "exclude_inbound_ports": [22]}, [], True),
        ("second run", {"state": "present", "exclude_inbound_ports": [22]}, [], False),
        (
            "diff: a changed setting",
            {"state": "present", "exclude_inbound_ports": [22], "redirect_outbound_port": 15002},
            ["--diff"],
            True,
        ),
        ("absent", {"state": "absent"}, ["--diff"], True),
        ("absent again", {"state": "absent"}, [], False),
    ]
    parts = []
    for title, args, flags, changed in steps:
        run = ok(playbook(sb, ansible_env, args, *flags))
        assert run.changed is changed, title
        task = yaml.safe_dump(
            [{"tproxy.firewalld.tproxy_firewalld": args}], sort_keys=False
        ).strip()
        parts.append(
            f"### {title} ({run.seconds:.1f} s)\n\n$ ansible-playbook play.yml {' '.join(flags)}\n"
            f"# task:\n{task}\n{run.stdout.strip()}\n"
        )
    transcript = "\n".join(parts)
    assert "FOREIGN" not in transcript
    target = os.environ.get("TPFW_ANSIBLE_TRANSCRIPT")
    if target:
        Path(target).write_text(transcript)
    print(transcript)


def test_the_ansible_module_passes_the_consent_through(tmp_path: Path) -> None:
    """The module (in-process, an image root with firewalld's stock firewalld.conf): without
    configure_firewalld the task fails with the library's refusal; with it the setting is
    changed, and `state: absent` puts it back."""
    root = stock_root(tmp_path)
    conf = root / "etc/firewalld/firewalld.conf"
    refused = run_in_process({"state": "present", "root": str(root)})
    assert (
        refused["failed"]
        and refused["exit_code"] == 12
        and refused["error"] == "FirewalldConfRefused"
    )
    assert (
        refused["msg"].startswith("firewalld has RFC3964_IPv4=yes: ") and "exception" not in refused
    )
    checked = run_in_process(
        {"state": "present", "root": str(root), "configure_firewalld": True}, check_mode=True
    )
    assert checked["changed"] and conf.read_text() == STOCK_CONF
    assert "firewalld.conf: RFC3964_IPv4=no" in checked["summary"]
    done = run_in_process({"state": "present", "root": str(root), "configure_firewalld": True})
    assert done["changed"] and "RFC3964_IPv4=no" in conf.read_text()
    gone = run_in_process({"state": "absent", "root": str(root)})
    assert gone["changed"] and conf.read_text() == STOCK_CONF
