"""The RPM packaging (rpm/, issues 5 and 10): `make rpm TARGET=...` builds a package for Fedora,
RHEL 10, RHEL 9 and RHEL 8 (each with EPEL), and `make rpm-example` the example data-plane
package; rpm shows the promised requirements, files and scriptlets; the macros expand; rpmlint
finds no error; and the example data-plane package's real scriptlets, as `rpm -qp --scripts`
prints them, do their job against a real firewalld in the sandbox, running and stopped, and
across a simulated reboot.

Per target: every `rpm -qp --requires` is met by what that distribution ships
(tests/data/distros.toml, versions included); what it lacks is bundled and declared; and the
package's own files, extracted from the RPM, run under that target's Python stack (its Python
and only its distribution's libraries, build/stacks/ via rpm/build.py): --version, the import
of every library from where the package says (bundled ones from the package's _bundled/),
`render` and a live install/uninstall in the sandbox. The example's scriptlets are also built
and run with rpm 4.16 (RHEL 9's rpm line: Debian 11's, in an overlay over the cached bullseye
root, never changing that root).

The RPMs are not installed on this Debian machine, so the scriptlets find `tproxy-firewalld`
through a wrapper first on their PATH: it runs the RPM's own files (its /usr/bin/tproxy-firewalld
and site-packages, extracted from the payload) with the target's Python stack. So what runs is
the package as built, not this checkout. `systemctl` and `logger` are stubs on that PATH too:
they record their arguments, and the host's systemd and syslog are never touched. Every
scriptlet, and everything that touches a firewall, runs in the sandbox.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message
from harness import Sandbox, SandboxFactory
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
NAME = "tproxy-firewalld"
EXAMPLE = "kuma-dp-example"
UNIT = "tproxy-firewalld-ipv6-passthrough.service"
MACROS = "/usr/lib/rpm/macros.d/macros.tproxy-firewalld"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
KUMA_COMMENT = "kuma/mesh/transparent/proxy"
STATE_FILE = "/var/lib/tproxy-firewalld/installed.json"
# rpm runs scriptlets as `/bin/sh <file> <count>` with this PATH (lib/rpmscript.c).
RPM_SCRIPT_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
EXAMPLE_SETTINGS = "--kuma-dp-user 5678 --exclude-inbound-ports 22 --configure-firewalld"
TOOLS = ("make", "rpmbuild", "rpmspec", "rpm", "rpm2cpio", "cpio", "rpmlint", "man")
TARGET_FACTS = tomllib.loads((REPO / "rpm" / "targets.toml").read_text())
DISTROS = tomllib.loads((REPO / "tests" / "data" / "distros.toml").read_text())
# el9 last: pytest groups the tests by target (a session-scoped parameter), so with -x every
# other target has run before the one whose Python (3.9) the package code does not support
# yet (issue 10, item 1).
TARGETS = ("fedora", "el10", "el8", "el9")
assert sorted(TARGETS) == sorted(TARGET_FACTS)


# --------------------------------------------------------------------------- the build


@dataclass(frozen=True)
class Built:
    """One target's packages, built by `make rpm TARGET=...`."""

    target: str
    rpm: Path  # tproxy-firewalld, noarch
    srpm: Path
    root: Path  # the payload of `rpm`, extracted
    python: Path  # the target's Python stack (its distribution's libraries only)
    py_version: str  # X.Y of that Python: the package's site-packages
    example: Path | None = None  # kuma-dp-example (fedora's build only)

    @property
    def sitelib(self) -> str:
        return f"/usr/lib/python{self.py_version}/site-packages"

    @property
    def sitelib_dir(self) -> Path:
        return self.root / self.sitelib.lstrip("/")

    @property
    def distribution(self) -> dict[str, Any]:
        return DISTROS[TARGET_FACTS[self.target]["distribution"]]  # type: ignore[no-any-return]


def run(*argv: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """A host command that touches no firewall (rpm queries, rpmlint, make)."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(map(str, argv))} exited {result.returncode}\n"
            f"--- stdout:\n{result.stdout[-5000:]}--- stderr:\n{result.stderr[-5000:]}"
        )
    return result  # type: ignore[no-any-return]


_builds: dict[str, Built | str] = {}


def build_target(target: str, factory: pytest.TempPathFactory) -> Built:
    """`make rpm TARGET=target` once per session (a failure too: every test of the target
    fails with it), into a temporary dist/ and build dir; the payload extracted."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:  # fail, never skip: CI must build the RPMs (scripts/setup installs these)
        pytest.fail(f"missing commands: {', '.join(missing)}", pytrace=False)
    if target not in _builds:
        top = factory.mktemp(f"rpm-{target}")
        dist = top / "dist"
        result = run(
            "make", "-C", REPO, "rpm", f"TARGET={target}", f"DISTDIR={dist}",
            f"RPM_BUILDDIR={top / 'build'}", f"HOSTPY={sys.executable}", timeout=900,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            _builds[target] = (
                f"make rpm TARGET={target} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        else:
            [rpm] = (dist / target).glob("*.noarch.rpm")
            [srpm] = (dist / target).glob("*.src.rpm")
            root = top / "root"
            root.mkdir()
            run("sh", "-c", f"rpm2cpio {shlex.quote(str(rpm))} | cpio -idm --quiet", cwd=root)
            python = Path(
                run(sys.executable, REPO / "rpm" / "build.py", "stack", target).stdout.strip()
            )
            py_version = run(
                python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"
            ).stdout.strip()
            _builds[target] = Built(target, rpm, srpm, root, python, py_version)
    built = _builds[target]
    if isinstance(built, str):
        pytest.fail(built, pytrace=False)
    return built


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The Fedora target's packages and the example package (`make rpm-example`)."""
    fedora = build_target("fedora", tmp_path_factory)
    dist = tmp_path_factory.mktemp("rpm-example")
    run(
        "make", "-C", REPO, "rpm-example", f"DISTDIR={dist}",
        f"RPM_BUILDDIR={dist / 'build'}", timeout=300,
    )  # fmt: skip
    [example] = dist.glob(f"{EXAMPLE}-*.noarch.rpm")
    return Built(**{**fedora.__dict__, "example": example})


@pytest.fixture(scope="session", params=TARGETS)
def target_built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_target(request.param, tmp_path_factory)


def example_rpm(built: Built) -> Path:
    assert built.example is not None
    return built.example


def query(rpm: Path, *args: str) -> str:
    return run("rpm", "-qp", *args, rpm).stdout


SCRIPT_HEADER = re.compile(r"^(\w+) (?:scriptlet \(using (\S+)\)|program: (\S+))[:]?$", re.M)


def scriptlets(rpm: Path) -> dict[str, str]:
    """`rpm -qp --scripts` split into {"postinstall": body, ...} (bodies as printed)."""
    text = query(rpm, "--scripts")
    found: dict[str, str] = {}
    headers = list(SCRIPT_HEADER.finditer(text))
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        assert (header.group(2) or header.group(3)) == "/bin/sh", header.group(0)
        end = following.start() if following else len(text)
        found[header.group(1)] = text[header.end() + 1 : end]
    return found


def test_rpms_build(built: Built) -> None:
    for path, name in ((built.rpm, NAME), (built.srpm, NAME), (example_rpm(built), EXAMPLE)):
        assert path.is_file(), path
        assert query(path, "--qf", "%{NAME}") == name
    assert query(built.rpm, "--qf", "%{VERSION} %{RELEASE} %{ARCH}") == f"{VERSION} 1.fc42 noarch"
    assert query(example_rpm(built), "--qf", "%{ARCH}") == "noarch"
    assert sorted(query(built.srpm, "--qf", "[%{SOURCE}\n]").split()) == [
        f"macros.{NAME}",
        f"{NAME}-{VERSION}.tar.gz",
    ]


def test_requires_as_promised(built: Built) -> None:
    requires = query(built.rpm, "--requires").splitlines()
    names = {line.split()[0] for line in requires}
    for name in (
        "python3-lxml", "python3-dbus-next", "python3-typer", "python3-jinja2", "python3-pyyaml",
        "firewalld", "iproute",
    ):  # fmt: skip
        assert name in names, requires
    assert "python3-typer >= 0.15.4" in requires  # what Fedora 42 ships
    # rpm's Python dependency generator ran (on Debian it needs python3-packaging), as on
    # Fedora: pyproject.toml's range
    assert "(python3.13dist(typer) < 0.29 with python3.13dist(typer) >= 0.10)" in requires
    assert query(built.rpm, "--recommends").split() == ["iptables-nft"]
    # The example needs tproxy-firewalld in place when its %post and %preun run.
    deps = query(
        example_rpm(built), "--qf", "[%{REQUIRENAME} %{REQUIREFLAGS:deptype}\n]"
    ).splitlines()
    assert f"{NAME} post" in deps and f"{NAME} preun" in deps, deps
    assert "rpm_macro(tproxy_firewalld_install)" in query(built.rpm, "--provides").split()


def test_files_as_promised(built: Built) -> None:
    listed = set(query(built.rpm, "--list").split())
    expected = {
        f"/usr/bin/{NAME}",
        f"{built.sitelib}/tproxy_firewalld/cli.py",
        f"{built.sitelib}/tproxy_firewalld/__pycache__/cli.cpython-313.pyc",
        f"{built.sitelib}/tproxy_firewalld/templates/kuma.rules.j2",
        f"{built.sitelib}/tproxy_firewalld-{VERSION}.dist-info/METADATA",
        MACROS,
        f"/usr/lib/systemd/system/{UNIT}",
        f"/usr/share/man/man1/{NAME}.1.gz",
        f"/usr/share/bash-completion/completions/{NAME}",
        f"/usr/share/zsh/site-functions/_{NAME}",
        f"/usr/share/fish/vendor_completions.d/{NAME}.fish",
        f"/usr/share/doc/{NAME}/README.md",
        "/var/lib/tproxy-firewalld",
    }
    assert expected <= listed, sorted(expected - listed)
    allowed = (
        "/usr/bin/",
        f"{built.sitelib}/",
        "/usr/lib/rpm/",
        "/usr/lib/systemd/",
        "/usr/share/",
        "/var/lib/tproxy-firewalld",
    )
    assert [f for f in listed if not f.startswith(allowed)] == []
    modes = {}
    for line in query(built.rpm, "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]").splitlines():
        perms, name = line.split(" ", 1)
        modes[name] = perms
    assert modes[f"/usr/bin/{NAME}"] == "-rwxr-xr-x"
    # Fedora's %pyproject_install shebang, no trace of the build machine.
    script = (built.root / f"usr/bin/{NAME}").read_text()
    assert script.splitlines()[0] == "#!/usr/bin/python3 -sP"
    assert (
        built.sitelib_dir / f"tproxy_firewalld-{VERSION}.dist-info/INSTALLER"
    ).read_text().strip() == "rpm"
    assert (built.root / MACROS.lstrip("/")).read_text() == (
        REPO / "rpm" / f"macros.{NAME}"
    ).read_text()
    doc = f"/usr/share/doc/{EXAMPLE}"
    assert query(example_rpm(built), "--list").split() == [doc, f"{doc}/README.{EXAMPLE}"]
    # What the scriptlet tests run is this payload, not the checkout: PYTHONPATH comes before
    # the editable install's path. (cwd "/": `-c` puts the working directory first, a script
    # its own directory, here usr/bin.)
    env = {**os.environ, "PYTHONPATH": str(built.sitelib_dir)}
    where = run(
        built.python, "-c", "import tproxy_firewalld; print(tproxy_firewalld.__file__)",
        env=env, cwd="/",
    )  # fmt: skip
    assert where.stdout.startswith(f"{built.root}/"), where.stdout
    assert packaged_cli(built, "--version").stdout == f"tproxy-firewalld {VERSION}\n"


def test_scriptlets_as_promised(built: Built) -> None:
    own = scriptlets(built.rpm)
    assert set(own) == {"postinstall", "preuninstall", "postuninstall"}
    assert f"systemd-update-helper install-system-units {UNIT}" in own["postinstall"]
    assert f"systemd-update-helper remove-system-units {UNIT}" in own["preuninstall"]
    assert 'if [ "$1" = 0 ]; then' in own["preuninstall"]
    assert "tproxy-firewalld uninstall" in own["preuninstall"]

    example = scriptlets(example_rpm(built))
    assert set(example) == {"postinstall", "preuninstall"}
    post, preun = example["postinstall"], example["preuninstall"]
    assert f"set -- {EXAMPLE_SETTINGS}" in post
    assert 'tproxy-firewalld install "$@"' in post
    assert f"systemctl --quiet --no-reload enable {UNIT}" in post
    assert preun.lstrip().startswith('if [ "$1" = 0 ]; then')
    assert "tproxy-firewalld uninstall" in preun and f"--no-reload disable {UNIT}" in preun
    for body in (*own.values(), post, preun):
        assert not re.search(r"%[{a-z_]", body.replace("'%s\\n'", "")), body  # all expanded
    # Plain POSIX sh (Fedora's /bin/sh is bash, but the code must not depend on it).
    for body in (post, preun, own["preuninstall"]):
        for shell in ("dash", "bash"):
            run(shell, "-n", "-c", body)


def packaged_cli(built: Built, *args: str) -> subprocess.CompletedProcess[str]:
    """The RPM's tproxy-firewalld on the host, under the target's Python stack: for --help and
    --version only, which touch nothing."""
    env = {**os.environ, "PYTHONPATH": str(built.sitelib_dir)}
    return run(built.python, built.root / f"usr/bin/{NAME}", *args, env=env)


def lines(text: str) -> list[str]:
    """Each line, its runs of blanks as one space (an empty %{**} leaves two)."""
    return [" ".join(line.split()) for line in text.splitlines()]


def eval_macro(
    macros_file: Path, expression: str, name: str = EXAMPLE, args: str | None = None
) -> str:
    """rpm --eval with the macros file, %name and (if given) %tproxy_firewalld_args."""
    defines = ["--define", f"tproxy_firewalld_args {args}"] if args is not None else []
    return run(
        "rpm", "--load", macros_file, "--define", f"name {name}", *defines, "--eval", expression
    ).stdout


def test_macros_expand(built: Built) -> None:
    installed = built.root / MACROS.lstrip("/")
    # (-): kumactl's options go through as they are, no getopt ("Unknown option" otherwise).
    out = eval_macro(
        installed, "%tproxy_firewalld_install --redirect-dns --config /etc/kuma/tp.yaml -x"
    )
    assert "set -- --redirect-dns --config /etc/kuma/tp.yaml -x" in lines(out)
    assert 'echo "tproxy-firewalld: kuma-dp-example: $*" >&2' in lines(out)
    assert "set --" in lines(eval_macro(installed, "%tproxy_firewalld_install"))
    # %tproxy_firewalld_args, the form for every rpm; arguments (rpm >= 4.17) come after it.
    out = eval_macro(installed, "%tproxy_firewalld_install", args="--config /etc/kuma/tp.yaml")
    assert "set -- --config /etc/kuma/tp.yaml" in lines(out)
    out = eval_macro(installed, "%tproxy_firewalld_install --redirect-dns", args="--config /c")
    assert "set -- --config /c --redirect-dns" in lines(out)
    out = eval_macro(installed, "%tproxy_firewalld_uninstall")
    assert out.lstrip().startswith('if [ "$1" = 0 ]; then') and "tproxy-firewalld uninstall" in out
    # The example's scriptlets are exactly these expansions (its spec sets the %global).
    example = scriptlets(example_rpm(built))
    assert (
        eval_macro(installed, "%tproxy_firewalld_install", args=EXAMPLE_SETTINGS).strip()
        == example["postinstall"].strip()
    )
    assert (
        eval_macro(installed, "%tproxy_firewalld_uninstall").strip()
        == example["preuninstall"].strip()
    )


def test_man_page(built: Built) -> None:
    page = built.root / f"usr/share/man/man1/{NAME}.1.gz"
    text = gzip.decompress(page.read_bytes()).decode()
    # What rpmlint's manual-page-warning check runs; groff's warnings go to stderr.
    result = run("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", page)
    assert result.stderr == ""
    rendered = run("man", "-l", page, env={**os.environ, "MANWIDTH": "200"}).stdout
    rendered = re.sub(r".\x08", "", rendered)
    source = text.replace("\\-", "-")
    for command in ("render", "install", "uninstall", "diff", "status"):
        assert f".SS {command}" in text
        # every option `--help` shows is documented
        help_text = packaged_cli(built, command, "--help").stdout
        for option in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", help_text)):
            assert option in source, (command, option)
    for section in (
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "SETTINGS",
        "EXIT STATUS",
        "FILES",
        "RPM MACROS",
    ):
        assert f"\n{section}\n" in rendered, section
    assert UNIT in rendered and "%tproxy_firewalld_install" in rendered


def test_shell_completion(built: Built, tmp_path: Path) -> None:
    bin_dir = make_tools(built, tmp_path)
    bash = built.root / f"usr/share/bash-completion/completions/{NAME}"
    script = f"""
        source {shlex.quote(str(bash))}
        COMP_WORDS=({NAME} ins); COMP_CWORD=1
        _tproxy_firewalld_completion {NAME}
        echo "${{COMPREPLY[@]}}"
        COMP_WORDS=({NAME} install --exclude-in); COMP_CWORD=2
        _tproxy_firewalld_completion {NAME}
        echo "${{COMPREPLY[@]}}"
    """
    # Completion only parses the command line; nothing here touches a firewall.
    out = run(
        "bash", "-c", script, env={"PATH": f"{bin_dir}:{RPM_SCRIPT_PATH}", "HOME": str(tmp_path)}
    ).stdout
    assert out.splitlines() == ["install", "--exclude-inbound-ports --exclude-inbound-ips"], out
    zsh = (built.root / f"usr/share/zsh/site-functions/_{NAME}").read_text()
    assert zsh.startswith(f"#compdef {NAME}\n")
    fish = (built.root / f"usr/share/fish/vendor_completions.d/{NAME}.fish").read_text()
    assert fish.startswith(f"complete --command {NAME} ")


def test_rpmlint_reports_no_errors(built: Built) -> None:
    rpms = [built.rpm, built.srpm, example_rpm(built)]
    result = run("rpmlint", "-c", REPO / "rpm" / "rpmlint.toml", *rpms, check=False)
    assert " 0 errors," in result.stdout and result.returncode == 0, result.stdout
    # rpm/rpmlint.toml filters only what Fedora's rpmlint configuration filters: with
    # rpmlint's upstream defaults, those are the only errors.
    raw = run("rpmlint", *rpms, check=False).stdout
    codes = {m.group(1) for m in re.finditer(r": E: (\S+)", raw)}
    assert codes <= {"no-signature", "no-packager-tag", "no-group-tag"}, raw


# --------------------------------------------------------------------------- in the sandbox


SYSTEMCTL_STUB = '''#!{python}
"""systemctl, as far as the macros use it. Records each call; `start`/`stop` of the unit run
its ExecStart=/ExecStop= lines from the unit file the RPM installs, as systemd would for a
oneshot with RemainAfterExit (start only when inactive, stop only when active)."""
import pathlib, shlex, subprocess, sys
log, unit_file, active = pathlib.Path({log!r}), pathlib.Path({unit_file!r}), pathlib.Path({active!r})
with log.open("a") as out:
    out.write(" ".join(sys.argv[1:]) + "\\n")
words = [arg for arg in sys.argv[1:] if not arg.startswith("-")]

def execute(key):
    for line in unit_file.read_text().splitlines():
        if line.startswith(key + "="):
            command = line.split("=", 1)[1]
            status = subprocess.run(shlex.split(command.lstrip("-@:+!"))).returncode
            if status and not command.startswith("-"):
                sys.exit(1)

if words[:1] == ["is-active"]:
    # a query (the tool asks whether firewalld is starting before it works offline)
    state = "active" if words[1:] == [{unit!r}] and active.exists() else "inactive"
    print(state)
    sys.exit(0 if state == "active" else 3)
elif words == ["start", {unit!r}] and not active.exists():
    execute("ExecStart")
    active.touch()
elif words == ["stop", {unit!r}] and active.exists():
    active.unlink()
    execute("ExecStop")
'''


def packaged_command(built: Built) -> list[str]:
    """The RPM's /usr/bin/tproxy-firewalld as its shebang runs it, the target's Python stack
    standing in for the distribution's /usr/bin/python3 (or python3.12): its options too (-s;
    -P where the target's Python has it)."""
    script = built.root / f"usr/bin/{NAME}"
    interpreter, *options = script.read_text().splitlines()[0].removeprefix("#!").split()
    assert interpreter in ("/usr/bin/python3", f"/usr/bin/python{built.py_version}"), interpreter
    return [str(built.python), *options, str(script)]


def make_tools(built: Built, where: Path) -> Path:
    """bin/: the tproxy-firewalld wrapper and the systemctl / logger stubs (logs in where/)."""
    bin_dir = where / "bin"
    bin_dir.mkdir(exist_ok=True)
    sitelib = built.sitelib_dir
    tools = {
        NAME: f"""#!/bin/sh
# The RPM's own tproxy-firewalld (payload extracted to {built.root}), run by the target's
# Python stack with the options of the script's own shebang.
PYTHONPATH={shlex.quote(str(sitelib))} exec {shlex.join(packaged_command(built))} "$@"
""",
        "systemctl": SYSTEMCTL_STUB.format(
            python=sys.executable,
            log=str(where / "systemctl.log"),
            active=str(where / "unit-active"),
            unit_file=str(built.root / f"usr/lib/systemd/system/{UNIT}"),
            unit=UNIT,
        ),
        "logger": f'#!/bin/sh\necho "$*" >> {shlex.quote(str(where / "logger.log"))}\n',
    }
    for name, text in tools.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir


@dataclass
class Scene:
    """A sandbox, the tools on the scriptlets' PATH, and what the stubs recorded."""

    sb: Sandbox
    built: Built
    where: Path
    bin_dir: Path
    scripts: int = 0

    def boot_with_systemd(self) -> None:
        """Make the sandbox look booted with systemd to the macros: /run/systemd/system (the
        sandbox's /run is its own tmpfs), so they start and stop the unit (the stub)."""
        self.sb.run("mkdir", "-p", "/run/systemd/system")

    def scriptlet(
        self, body: str, arg: int, *, path: str | None = None, shell: tuple[str, ...] = ("/bin/sh",)
    ) -> subprocess.CompletedProcess[str]:
        """Run body as rpm does, `/bin/sh FILE ARG` with rpm's PATH (the tools first), in the
        sandbox. Only PATH, HOME and LANG in the environment."""
        self.scripts += 1
        file = self.sb.workdir / f"scriptlet-{self.scripts}.sh"
        file.write_text(body)
        env_path = path if path is not None else f"{self.bin_dir}:{RPM_SCRIPT_PATH}"
        return self.sb.run(
            "env", "-i", f"PATH={env_path}", "HOME=/root", "LANG=C.UTF-8", *shell, file, arg,
            check=False, timeout=180,
        )  # fmt: skip

    def quietly(self, body: str, arg: int) -> None:
        result = self.scriptlet(body, arg)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sb.run(self.bin_dir / NAME, *args, check=False, timeout=120)

    def unit_calls(self) -> list[str]:
        """What the scriptlets had systemctl do (its is-active queries change nothing)."""
        return [c for c in self.stub_log("systemctl") if not c.startswith("is-active ")]

    def stub_log(self, name: str) -> list[str]:
        path = self.where / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def scene(built: Built, make_sandbox: SandboxFactory, tmp_path: Path) -> Scene:
    return Scene(make_sandbox("nftables"), built, tmp_path, make_tools(built, tmp_path))


FIREWALLD = "org.fedoraproject.FirewallD1"
RUNTIME = ("/org/fedoraproject/FirewallD1", f"{FIREWALLD}.direct")
PERMANENT = ("/org/fedoraproject/FirewallD1/config", f"{FIREWALLD}.config.direct")


Call = tuple[tuple[str, str], str, str, list[Any]]  # (where, member, signature, body)


def firewalld_calls(sb: Sandbox, calls: list[Call]) -> list[Any]:
    """Calls to the sandbox's firewalld over its own system bus, from here (what firewall-cmd
    does, without a Python start-up and an introspection per call) -> the reply bodies."""

    async def go() -> list[Any]:
        bus = await MessageBus(bus_address=sb.bus_address, bus_type=BusType.SYSTEM).connect()
        try:
            replies = []
            for (path, interface), member, signature, body in calls:
                message = Message(
                    destination=FIREWALLD, path=path, interface=interface, member=member,
                    signature=signature, body=body,
                )  # fmt: skip
                reply = await bus.call(message)
                assert reply is not None, member
                assert reply.message_type == MessageType.METHOD_RETURN, (member, body, reply.body)
                replies.append(reply.body)
            return replies
        finally:
            bus.disconnect()  # type: ignore[no-untyped-call]

    return asyncio.run(go())


def add_foreign(sb: Sandbox) -> None:
    """Other tools' entries, permanent and runtime-only, in tables and chains we use too."""
    calls: list[Call] = []
    for where in (PERMANENT, RUNTIME):
        calls += [
            (where, "addChain", "sss", ["ipv4", "filter", "FOREIGN"]),
            (where, "addRule", "sssias", ["ipv4", "filter", "FOREIGN", 0, ["-j", "RETURN"]]),
            (where, "addRule", "sssias", ["ipv4", "nat", "OUTPUT", 0, shlex.split("-p udp --dport 5353 -j RETURN")]),
            (where, "addPassthrough", "sas", ["ipv4", shlex.split("-t filter -A INPUT -p tcp --dport 8888 -j ACCEPT")]),
        ]  # fmt: skip
    # runtime only (gone after a restart)
    calls += [(RUNTIME, "addRule", "sssias", ["ipv4", "filter", "INPUT", 5, shlex.split("-p tcp --dport 9999 -j ACCEPT")])]  # fmt: skip
    firewalld_calls(sb, calls)


def direct_lines(sb: Sandbox, *, permanent: bool = False) -> list[str]:
    """Every direct entry firewalld holds (runtime, or its permanent config), as firewall-cmd
    --direct --get-all-chains / --get-all-rules / --get-all-passthroughs print them."""
    where = PERMANENT if permanent else RUNTIME
    chains, rules, passthroughs = firewalld_calls(
        sb,
        [
            (where, member, "", [])
            for member in ("getAllChains", "getAllRules", "getAllPassthroughs")
        ],
    )
    return sorted(
        [" ".join(chain) for chain in chains[0]]
        + [
            f"{ipv} {table} {chain} {priority} {shlex.join(args)}"
            for ipv, table, chain, priority, args in rules[0]
        ]
        + [f"{ipv} {shlex.join(args)}" for ipv, args in passthroughs[0]]
    )


def is_ours(line: str) -> bool:
    return "KUMA_MESH" in line or KUMA_COMMENT in line


def ours(lines: list[str]) -> list[str]:
    return [line for line in lines if is_ours(line)]


def foreign(lines: list[str]) -> list[str]:
    return [line for line in lines if not is_ours(line)]


def kernel_text(sb: Sandbox) -> str:
    return sb.iptables_save("ipv4") + sb.iptables_save("ipv6")


def has_passthrough_address(sb: Sandbox) -> bool:
    return "inet6 ::6/128 " in sb.run("ip", "-6", "addr", "show", "dev", "lo").stdout


def has_state(sb: Sandbox) -> bool:
    return sb.run("test", "-e", STATE_FILE, check=False).returncode == 0


@contextmanager
def firewalld_stopped(sb: Sandbox) -> Iterator[None]:
    sb.stop_firewalld()
    try:
        yield
    finally:
        assert sb.start_firewalld() == "running"


def assert_installed(scene: Scene) -> None:
    """Ours live (runtime and kernel) and persistent (firewalld's permanent config and
    direct.xml), all as the example's settings say."""
    sb = scene.sb
    diff = scene.cli("diff")
    assert diff.returncode == 0, diff  # desired (recorded) = runtime = permanent = direct.xml
    runtime, permanent = ours(direct_lines(sb)), ours(direct_lines(sb, permanent=True))
    assert runtime and runtime == permanent
    assert "ipv4 nat KUMA_MESH_INBOUND" in runtime and "ipv6 nat KUMA_MESH_OUTBOUND" in runtime
    kernel = kernel_text(sb)
    assert re.search(r"-A KUMA_MESH_INBOUND .*--dport 22 .*-j RETURN", kernel), kernel
    assert re.search(r"-A KUMA_MESH_OUTBOUND .*--uid-owner 5678 .*-j RETURN", kernel), kernel
    assert "KUMA_MESH_INBOUND" in sb.direct_xml.read_text()


def assert_nothing_of_ours(scene: Scene) -> None:
    sb = scene.sb
    assert ours(direct_lines(sb)) == [] and ours(direct_lines(sb, permanent=True)) == []
    assert "KUMA_MESH" not in kernel_text(sb) and KUMA_COMMENT not in kernel_text(sb)
    assert "KUMA" not in sb.direct_xml.read_text() and KUMA_COMMENT not in sb.direct_xml.read_text()
    assert not has_state(sb)
    assert not has_passthrough_address(sb)


ENABLED = [f"--quiet --no-reload enable {UNIT}"]
STARTED = [*ENABLED, f"--quiet start {UNIT}"]
STOPPED = [f"--quiet --no-reload disable {UNIT}", f"--quiet stop {UNIT}"]


@pytest.mark.parametrize("firewalld", ["running", "stopped"])
def test_example_scriptlets_install_and_erase(scene: Scene, firewalld: str) -> None:
    """On a host booted with systemd, firewalld running or stopped at %post and at erase."""
    sb, example = scene.sb, scriptlets(example_rpm(scene.built))
    scene.boot_with_systemd()
    add_foreign(sb)
    foreign_runtime, foreign_permanent = (
        foreign(direct_lines(sb)),
        foreign(direct_lines(sb, permanent=True)),
    )
    stopped = firewalld == "stopped"

    # %post, first install ($1 == 1): quiet; rules live and persistent; the unit enabled and
    # started (::6 on lo; when firewalld runs, the CLI has added it already).
    if stopped:
        with firewalld_stopped(sb):
            scene.quietly(example["postinstall"], 1)
            assert "KUMA_MESH_INBOUND" in sb.direct_xml.read_text()  # the file only, for now
        foreign_runtime = foreign_permanent  # runtime-only entries died with firewalld
    else:
        scene.quietly(example["postinstall"], 1)
    assert_installed(scene)
    assert has_passthrough_address(sb)
    assert scene.unit_calls() == STARTED
    # with firewalld stopped, the tool asked systemd whether it was starting before it wrote
    # direct.xml (issue 17.5); with firewalld running it had no need to
    asked = "is-active firewalld.service" in scene.stub_log("systemctl")
    assert asked == stopped
    assert foreign(direct_lines(sb)) == foreign_runtime
    assert foreign(direct_lines(sb, permanent=True)) == foreign_permanent

    # %post again (upgrade, $1 == 2): quiet, and nothing changes.
    xml = sb.direct_xml.read_bytes()
    runtime = direct_lines(sb)
    scene.quietly(example["postinstall"], 2)
    assert sb.direct_xml.read_bytes() == xml and direct_lines(sb) == runtime

    # %preun on upgrade ($1 == 1): nothing is removed, the unit stays.
    scene.quietly(example["preuninstall"], 1)
    assert sb.direct_xml.read_bytes() == xml and direct_lines(sb) == runtime
    assert has_state(sb) and has_passthrough_address(sb)
    assert scene.unit_calls() == STARTED * 2

    # %preun on erase ($1 == 0): nothing of ours left anywhere; everyone else's intact.
    if stopped:
        with firewalld_stopped(sb):
            scene.quietly(example["preuninstall"], 0)
            assert "KUMA" not in sb.direct_xml.read_text()
    else:
        scene.quietly(example["preuninstall"], 0)
    assert_nothing_of_ours(scene)
    assert scene.unit_calls()[-2:] == STOPPED
    assert foreign(direct_lines(sb)) == foreign_runtime
    assert foreign(direct_lines(sb, permanent=True)) == foreign_permanent
    assert scene.stub_log("logger") == []


def test_example_scriptlets_in_an_image_build(scene: Scene) -> None:
    """No systemd running and firewalld not running (kickstart %post, image builds, containers):
    %post writes direct.xml and enables the unit, without starting anything; erase before any
    boot cleans the file."""
    sb, example = scene.sb, scriptlets(example_rpm(scene.built))
    add_foreign(sb)
    with firewalld_stopped(sb):
        foreign_file = sb.direct_xml.read_text()
        scene.quietly(example["postinstall"], 1)
        assert "KUMA_MESH_INBOUND" in sb.direct_xml.read_text()
        assert has_state(sb) and not has_passthrough_address(sb)
        assert scene.unit_calls() == ENABLED
        scene.quietly(example["preuninstall"], 0)
        assert scene.unit_calls() == [*ENABLED, STOPPED[0]]
        assert sb.direct_xml.read_text() == foreign_file
    assert_nothing_of_ours(scene)
    assert foreign(direct_lines(sb)) == foreign(direct_lines(sb, permanent=True)) != []


@pytest.mark.parametrize("firewalld", ["running", "stopped"])
def test_own_preun_on_erase_removes_everything(scene: Scene, firewalld: str) -> None:
    """Erasing tproxy-firewalld itself leaves no redirect behind (runtime and file); its
    upgrade keeps them."""
    sb = scene.sb
    scene.boot_with_systemd()
    add_foreign(sb)
    foreign_permanent = foreign(direct_lines(sb, permanent=True))
    scene.quietly(scriptlets(example_rpm(scene.built))["postinstall"], 1)
    assert_installed(scene)
    own = scriptlets(scene.built.rpm)
    scene.quietly(own["preuninstall"], 1)
    assert_installed(scene)
    assert has_passthrough_address(sb)
    if firewalld == "stopped":
        with firewalld_stopped(sb):
            scene.quietly(own["preuninstall"], 0)
    else:
        scene.quietly(own["preuninstall"], 0)
    assert_nothing_of_ours(scene)
    assert scene.unit_calls()[-2:] == STOPPED
    assert foreign(direct_lines(sb, permanent=True)) == foreign_permanent != []


def exec_start(built: Built) -> list[str]:
    """The unit's ExecStart= command line, from the unit file the RPM installs."""
    unit = (built.root / f"usr/lib/systemd/system/{UNIT}").read_text()
    lines = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].lstrip("-@:+!"))


def test_reboot_brings_rules_and_passthrough_address_back(scene: Scene) -> None:
    """Simulated reboot: firewalld stops, the kernel forgets ::6 on lo; at boot the unit runs
    its ExecStart and firewalld starts from /etc."""
    sb = scene.sb
    scene.quietly(scriptlets(example_rpm(scene.built))["postinstall"], 1)
    assert_installed(scene)
    sb.stop_firewalld()
    sb.run("ip", "-6", "addr", "del", "::6/128", "dev", "lo")
    assert not has_passthrough_address(sb)
    sb.run(*exec_start(scene.built))
    assert sb.start_firewalld() == "running"
    assert_installed(scene)
    assert has_passthrough_address(sb)


def test_reboot_in_a_fresh_namespace(scene: Scene, make_sandbox: SandboxFactory) -> None:
    """The same across a real boundary: a new network namespace (fresh lo, empty tables) and a
    new firewalld on the same /etc/firewalld and /var/lib/tproxy-firewalld contents."""
    old = scene.sb
    scene.quietly(scriptlets(example_rpm(scene.built))["postinstall"], 1)
    direct_xml, state = old.direct_xml.read_text(), old.run("cat", STATE_FILE).stdout
    old.close()

    new = make_sandbox("nftables")
    scene.sb = new
    assert not has_passthrough_address(new)
    new.stop_firewalld()
    new.direct_xml.write_text(direct_xml)
    new.run("sh", "-c", f"cat > {STATE_FILE}", input=state)
    new.run(*exec_start(scene.built))
    assert new.start_firewalld() == "running"
    assert_installed(scene)
    assert has_passthrough_address(new)


def test_failures_are_logged_and_never_fail_the_transaction(scene: Scene) -> None:
    sb = scene.sb
    macros = scene.built.root / MACROS.lstrip("/")
    add_foreign(sb)
    before = direct_lines(sb), sb.direct_xml.read_bytes()

    # Bad settings: exit 0 (also under `sh -e`), one clear line on stderr and in syslog,
    # nothing installed, the unit left alone.
    post = eval_macro(macros, "%tproxy_firewalld_install --redirect-inbound-port 99999")
    for shell in (("/bin/sh",), ("/bin/sh", "-e")):
        result = scene.scriptlet(post, 1, shell=shell)
        assert result.returncode == 0 and result.stdout == "", result
        [line] = result.stderr.splitlines()
        assert line.startswith(
            f"{NAME}: {EXAMPLE}: '{NAME} install --redirect-inbound-port 99999' failed (exit 2), "
            "Kuma's redirect rules were NOT installed: Error: "
        ), line
        assert (
            scene.stub_log("logger")[-1]
            == f"-t {NAME} -p user.err -- {line.removeprefix(f'{NAME}: ')}"
        )
    assert (direct_lines(sb), sb.direct_xml.read_bytes()) == before and not has_state(sb)
    assert scene.stub_log("systemctl") == []

    # tproxy-firewalld missing (a package without Requires(post)): said, not fatal. (The
    # stubs stay first on PATH: the real logger would write to the host's /dev/log.)
    stubs_only = scene.where / "stubs-only"
    stubs_only.mkdir()
    for stub in ("systemctl", "logger"):
        (stubs_only / stub).symlink_to(scene.bin_dir / stub)
    result = scene.scriptlet(post, 1, path=f"{stubs_only}:{RPM_SCRIPT_PATH}")
    assert result.returncode == 0 and result.stdout == ""
    assert (
        result.stderr
        == f"{NAME}: {EXAMPLE}: tproxy-firewalld is not installed; Kuma's redirect rules were NOT installed\n"
    )

    # An uninstall that fails (direct.xml edited by hand into something unusable): logged, not fatal.
    scene.quietly(scriptlets(example_rpm(scene.built))["postinstall"], 1)
    with firewalld_stopped(sb):
        good = sb.direct_xml.read_text()
        sb.direct_xml.write_text(
            good.replace("<direct>", '<!DOCTYPE direct SYSTEM "x">\n<direct>', 1)
        )
        result = scene.scriptlet(scriptlets(example_rpm(scene.built))["preuninstall"], 0)
        assert result.returncode == 0 and result.stdout == "", result
        [line] = result.stderr.splitlines()
        assert line.startswith(f"{NAME}: {EXAMPLE}: '{NAME} uninstall' failed (exit 3), "), line
        assert scene.stub_log("logger")[-1].endswith(line.removeprefix(f"{NAME}: "))
        sb.direct_xml.write_text(good)


def test_the_macro_passes_the_consent_to_change_firewalld_conf_through(
    built: Built, make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """On firewalld's stock configuration (RFC3964_IPv4=yes): the example's %post, whose
    %tproxy_firewalld_args carries --configure-firewalld, sets RFC3964_IPv4=no and installs;
    its erase puts yes back. The same %post without it refuses (exit 12, logged, never fatal)
    and installs nothing."""
    scene = Scene(
        make_sandbox("nftables", stock=True), built, tmp_path, make_tools(built, tmp_path)
    )
    sb = scene.sb
    conf = sb.etc_dir / "firewalld.conf"
    stock = conf.read_text()
    assert "\nRFC3964_IPv4=yes\n" in stock
    macros = built.root / MACROS.lstrip("/")
    without = eval_macro(
        macros, "%tproxy_firewalld_install", args="--kuma-dp-user 5678 --exclude-inbound-ports 22"
    )
    result = scene.scriptlet(without, 1)
    assert result.returncode == 0 and result.stdout == "", result
    [line] = result.stderr.splitlines()
    assert (
        "failed (exit 12), Kuma's redirect rules were NOT installed: Error: firewalld has RFC3964_IPv4=yes: "
        in line
    )
    assert "--configure-firewalld" in line and scene.stub_log("logger")[-1].endswith(
        line.removeprefix(f"{NAME}: ")
    )
    assert conf.read_text() == stock and ours(direct_lines(sb)) == [] and not has_state(sb)
    assert not sb.direct_xml.exists()

    example = scriptlets(example_rpm(built))
    assert "--configure-firewalld" in example["postinstall"]
    scene.quietly(example["postinstall"], 1)
    assert_installed(scene)
    assert "\nRFC3964_IPv4=no\n" in conf.read_text()
    scene.quietly(example["preuninstall"], 0)
    assert_nothing_of_ours(scene)
    assert "\nRFC3964_IPv4=yes\n" in conf.read_text()


# --------------------------------------------------------------------------- rpm 4.16


ROOTS = Path(os.environ.get("TPFW_ROOTS_DIR") or "/var/cache/tproxy-firewalld/roots")


@dataclass(frozen=True)
class OldRpm:
    """Debian 11's rpm (4.16.1, RHEL 9's line) in an overlay over the cached bullseye root:
    the root itself is never written (the overlay's upper layer is build/rpm-4.16/)."""

    lower: Path
    upper: Path
    work: Path

    def run(self, *argv: str, mnt: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """argv in the root, in a mount namespace of its own (nothing stays mounted), with mnt
        at /mnt and a fresh /tmp and /var/tmp (so nothing lands in the upper layer)."""
        merged = self.work.parent / "merged"
        merged.mkdir(exist_ok=True)
        script = (
            'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" && '
            'mount --bind "$5" "$4/mnt" && mount -t tmpfs tmpfs "$4/tmp" && '
            'mount -t tmpfs tmpfs "$4/var/tmp" && mount --rbind /dev "$4/dev" && '
            'root=$4 && shift 5 && exec chroot "$root" env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin '
            'HOME=/root LC_ALL=C "$@"'
        )
        return run(
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            self.lower, self.upper, self.work, merged, mnt, *argv, check=check, timeout=300,
        )  # fmt: skip


@pytest.fixture(scope="session")
def old_rpm() -> OldRpm:
    """rpm 4.16 from Debian 11, installed once into an overlay over the bullseye root that
    scripts/build-roots made, and cached in build/rpm-4.16/ (keyed by that root's build)."""
    lower = ROOTS / "bullseye"
    marker = ROOTS / "bullseye.json"
    if not (lower / "usr/sbin/policy-rc.d").exists() or not marker.exists():
        pytest.fail(
            f"no Debian 11 root at {lower}: run scripts/build-roots bullseye", pytrace=False
        )
    key = re.sub(r"\W", "", json.loads(marker.read_text())["built_at"])
    top = REPO / "build" / "rpm-4.16" / key
    upper, work = top / "upper", top / "work"
    if not (top / "ready").exists():
        shutil.rmtree(top, ignore_errors=True)
        upper.mkdir(parents=True)
        work.mkdir()
        merged = top / "merged"
        merged.mkdir()
        # Download with the network; install (maintainer scripts) without: as scripts/build-roots.
        apt = "apt-get -q -y -o Acquire::Check-Valid-Until=false --no-install-recommends"
        script = f"""
            set -e
            mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged}
            export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
            chroot {merged} {apt} update
            chroot {merged} {apt} install --download-only rpm
            unshare --net --pid --fork sh -c "mount -t proc proc {merged}/proc && \\
                chroot {merged} {apt} --no-download install rpm && umount {merged}/proc"
            chroot {merged} apt-get clean
            rm -rf {merged}/var/lib/apt/lists/*
        """
        run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, timeout=600)
        (top / "ready").touch()
    return OldRpm(lower, upper, work)


def test_macros_file_loads_with_rpm_4_16(old_rpm: OldRpm, built: Built, tmp_path: Path) -> None:
    """rpm 4.16 reads the whole macros file, (-) declaration and all: the macros after it are
    defined, %tproxy_firewalld_install expands without arguments (settings from the %global),
    and only arguments fail, at build time ("Unknown option"), never in a transaction."""
    shutil.copy2(built.root / MACROS.lstrip("/"), tmp_path / "macros")
    assert old_rpm.run("rpm", "--version", mnt=tmp_path).stdout == "RPM version 4.16.1.2\n"

    def old_eval(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return old_rpm.run(
            "rpm", "--load", "/mnt/macros", "--define", f"name {EXAMPLE}", *args,
            mnt=tmp_path, check=check,
        )  # fmt: skip

    out = old_eval("--eval", "%tproxy_firewalld_uninstall").stdout
    assert out.lstrip().startswith('if [ "$1" = 0 ]; then') and "tproxy-firewalld uninstall" in out
    out = old_eval(
        "--define", "tproxy_firewalld_args --config /etc/kuma/tp.yaml",
        "--eval", "%tproxy_firewalld_install",
    ).stdout  # fmt: skip
    assert "set -- --config /etc/kuma/tp.yaml" in lines(out)
    # Identical to the host rpm's expansion.
    assert out == eval_macro(
        built.root / MACROS.lstrip("/"), "%tproxy_firewalld_install",
        args="--config /etc/kuma/tp.yaml",
    )  # fmt: skip
    refused = old_eval("--eval", "%tproxy_firewalld_install --redirect-dns", check=False)
    assert refused.returncode != 0
    assert "Unknown option - in tproxy_firewalld_install(-)" in refused.stderr


def test_example_built_with_rpm_4_16_installs_and_erases(
    old_rpm: OldRpm, built: Built, make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The example package built by rpm 4.16 (RHEL 9's rpm line) with the installed macros
    file: its scriptlets are those the host's rpm makes, and they install and remove the rules
    in the sandbox."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    shutil.copy2(built.root / MACROS.lstrip("/"), mnt / "macros")
    shutil.copy2(REPO / "rpm" / "examples" / f"{EXAMPLE}.spec", mnt / f"{EXAMPLE}.spec")
    old_rpm.run(
        "rpmbuild", "--nodeps", "--define", "_topdir /mnt/top", "--load", "/mnt/macros",
        "-bb", f"/mnt/{EXAMPLE}.spec", mnt=mnt,
    )  # fmt: skip
    [package] = (mnt / "top" / "RPMS" / "noarch").glob(f"{EXAMPLE}-*.rpm")
    old = scriptlets(package)
    assert old == scriptlets(example_rpm(built))
    assert f"set -- {EXAMPLE_SETTINGS}" in lines(old["postinstall"])
    # rpm 4.16 itself reads them back the same
    printed = old_rpm.run(
        "rpm", "-qp", "--scripts", f"/mnt/top/RPMS/noarch/{package.name}", mnt=mnt
    )
    assert printed.stdout == query(package, "--scripts")

    scene = Scene(make_sandbox("nftables"), built, tmp_path, make_tools(built, tmp_path))
    scene.boot_with_systemd()
    scene.quietly(old["postinstall"], 1)
    assert_installed(scene)
    assert scene.unit_calls() == STARTED
    scene.quietly(old["preuninstall"], 0)
    assert_nothing_of_ours(scene)
    assert scene.unit_calls()[-2:] == STOPPED


# --------------------------------------------------------------------------- every target


def normalized(name: str) -> str:
    """A Python distribution's name as rpm's pythondistdeps writes it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Provider:
    package: str
    version: str | None


def distribution_provides(dist: dict[str, Any]) -> dict[str, list[Provider]]:
    """Every rpm provide of the distribution's packages in distros.toml: the package itself, its
    listed provides, and for a Python library what Fedora's dependency generator gives it:
    pythonX.Ydist(NAME) = VERSION, and python3dist(NAME) on the platform Python."""
    provides: dict[str, list[Provider]] = {}

    def add(name: str, package: str, version: str | None) -> None:
        provides.setdefault(name, []).append(Provider(package, version))

    for package, facts in dist["packages"].items():
        version = facts.get("version")
        add(package, package, version)
        for provide in facts.get("provides", []):
            name, _, value = provide.partition(" = ")
            add(name, package, value or None)
        if "pypi" in facts:
            python = facts.get("python", dist["python"])
            add(f"python{python}dist({normalized(facts['pypi'])})", package, version)
            if python == dist["python"] and package.startswith("python3-"):
                add(f"python3dist({normalized(facts['pypi'])})", package, version)
    return provides


SIMPLE_DEP = re.compile(r"^(?P<name>\S+)(?: (?P<op><=|>=|<|>|=) (?P<version>\S+))?$")
OPS = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "=": lambda a, b: a == b,
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
}  # fmt: skip


def providers_of(dep: str, provides: dict[str, list[Provider]]) -> set[str]:
    """The packages that meet one simple dependency `NAME [OP VERSION]`."""
    m = SIMPLE_DEP.match(dep)
    assert m, dep
    found = set()
    for provider in provides.get(m.group("name"), []):
        if m.group("op") is None or (
            provider.version is not None
            and OPS[m.group("op")](Version(provider.version), Version(m.group("version")))
        ):
            found.add(provider.package)
    return found


def met(requirement: str, dist: dict[str, Any]) -> bool:
    """Whether the distribution meets one line of `rpm -qp --requires`."""
    if requirement.startswith("rpmlib("):
        feature = requirement.split("(", 1)[1].split(")", 1)[0]
        return feature in dist["rpmlib"]
    provides = distribution_provides(dist)
    rich = re.fullmatch(r"\((.+) with (.+)\)", requirement)
    if rich:  # one package must meet both
        return bool(providers_of(rich.group(1), provides) & providers_of(rich.group(2), provides))
    return bool(providers_of(requirement, provides))


def bundled_provides(rpm: Path) -> dict[str, str]:
    found = {}
    for line in query(rpm, "--provides").splitlines():
        m = re.fullmatch(r"bundled\(python3dist\((\S+)\)\) = (\S+)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


# typer-slim is the same code as typer, importable as `typer`
DIST_MODULE = {"typer-slim": "typer", "pyyaml": "yaml", "dbus-next": "dbus_next"}


def test_target_requires_met_by_its_distribution(target_built: Built) -> None:
    """Every requirement of the target's RPM, generated ones and rpmlib() features included,
    is met by what that distribution ships, at the versions it ships."""
    requires = query(target_built.rpm, "--requires").splitlines()
    dist = target_built.distribution
    unmet = [r for r in requires if not met(r, dist)]
    assert unmet == [], f"{dist['name']} does not ship {unmet}"
    # The spec's own floors are the distribution's own versions, not older, not newer.
    for requirement in requires:
        m = SIMPLE_DEP.match(requirement)
        if m and m.group("op") == ">=" and m.group("name") in dist["packages"]:
            assert m.group("version") == dist["packages"][m.group("name")]["version"], requirement
    # The Python the package is built for is the distribution's (RHEL 8: its python3.12).
    assert f"python(abi) = {target_built.py_version}" in requires
    assert target_built.py_version == TARGET_FACTS[target_built.target]["python"]


def test_target_bundles_what_its_distribution_lacks(target_built: Built) -> None:
    """What the distribution ships is required, never bundled; what it lacks is bundled from
    the SRPM's own Sources into tproxy_firewalld/_bundled/, and declared."""
    built, dist = target_built, target_built.distribution
    bundled = bundled_provides(built.rpm)
    shipped = {
        normalized(facts["pypi"])
        for facts in dist["packages"].values()
        if "pypi" in facts and facts.get("python", dist["python"]) == built.py_version
    }
    as_shipped = {DIST_MODULE.get(name, name) for name in shipped}
    assert [n for n in bundled if DIST_MODULE.get(n, n) in as_shipped] == []
    # Every dependency in pyproject.toml: required from the distribution, or bundled.
    requires = query(built.rpm, "--requires")
    for dependency in PYPROJECT["project"]["dependencies"]:
        name = normalized(re.split(r"[<>=!~ ;\[]", dependency, maxsplit=1)[0])
        in_bundle = name in {DIST_MODULE.get(b, b) for b in bundled} | set(bundled)
        required = f"python{built.py_version}dist({name})" in requires
        assert in_bundle != required, (name, bundled, requires)
    # The files: one dist-info per bundled library, at the declared version, and nothing else.
    bundle_dir = built.sitelib_dir / "tproxy_firewalld" / "_bundled"
    found = {}
    for distinfo in bundle_dir.glob("*.dist-info") if bundled else []:
        metadata = (distinfo / "METADATA").read_text()
        meta_name = re.search(r"^Name: (\S+)$", metadata, re.M).group(1)  # type: ignore[union-attr]
        found[normalized(meta_name)] = re.search(r"^Version: (\S+)$", metadata, re.M).group(1)  # type: ignore[union-attr]
        assert (distinfo / "INSTALLER").read_text() == "rpm\n"
        assert not (distinfo / "RECORD").exists()
    assert found == bundled
    assert bundle_dir.is_dir() == bool(bundled)
    # Pure Python only (noarch), byte-compiled for the target's Python.
    if bundled:
        assert [p for p in bundle_dir.rglob("*") if p.suffix in (".so", ".c")] == []
        tag = built.py_version.replace(".", "")
        assert list(bundle_dir.rglob(f"__pycache__/*.cpython-{tag}.pyc"))
    # The SRPM is self-contained: each bundled library's file is one of its Sources.
    sources = query(built.srpm, "--qf", "[%{SOURCE}\n]").split()
    pypi_files = sorted(f for f in sources if f.endswith((".whl", ".tar.gz")) and NAME not in f)
    assert len(pypi_files) == len(bundled)
    for name, version in bundled.items():
        assert [f for f in pypi_files if normalized(f.split("-")[0]) == name and f"-{version}" in f]
    # Licences: the bundled libraries' ones join the package's.
    licence = query(built.rpm, "--qf", "%{LICENSE}")
    assert licence.startswith("Apache-2.0") and (bundled == {}) == (licence == "Apache-2.0")


def test_target_runs_under_its_python_stack(target_built: Built) -> None:
    """The RPM's files under the target's Python and its distribution's libraries only: it
    starts, and every library comes from where it should (bundled ones from the package's
    _bundled/, at the END of sys.path; the distribution's from the stack)."""
    built = target_built
    stack = json.loads((built.python.parent.parent / "stack.json").read_text())
    # The stack holds no bundled library: what the RPM bundles must come from the RPM.
    installed = {normalized(n) for n in stack["installed"]}
    assert not {DIST_MODULE.get(n, n) for n in bundled_provides(built.rpm)} & {
        DIST_MODULE.get(n, n) for n in installed
    }
    env = {**os.environ, "PYTHONPATH": str(built.sitelib_dir)}
    version = run(*packaged_command(built), "--version", env=env, cwd="/")
    assert version.stdout == f"tproxy-firewalld {VERSION}\n"
    assert "install" in run(*packaged_command(built), "--help", env=env, cwd="/").stdout
    modules = ["tproxy_firewalld.cli", "dbus_next", "typer", "click", "jinja2", "markupsafe"]
    modules += ["lxml", "yaml"]
    where = run(
        built.python, "-s", "-c",
        "import importlib, json, sys\n"
        f"found = {{m: importlib.import_module(m).__file__ for m in {modules!r}}}\n"
        "print(json.dumps({'found': found, 'path': sys.path}))",
        env=env, cwd="/",
    )  # fmt: skip
    report = json.loads(where.stdout)
    bundle_dir = str(built.sitelib_dir / "tproxy_firewalld" / "_bundled")
    assert report["path"][-1] == bundle_dir or not Path(bundle_dir).exists()
    bundled_modules = {DIST_MODULE.get(n, n) for n in bundled_provides(built.rpm)}
    for module, path in report["found"].items():
        top = module.split(".")[0]
        if top == "tproxy_firewalld":
            assert path.startswith(f"{built.sitelib_dir}/"), (module, path)
        elif top in bundled_modules:
            assert path.startswith(f"{bundle_dir}/"), (module, path)
        else:  # the distribution's, from the stack
            assert path.startswith(f"{built.python.parent.parent}/"), (module, path)


def tool_wrapper(built: Built, where: Path) -> Path:
    wrapper = where / NAME
    wrapper.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH={shlex.quote(str(built.sitelib_dir))} exec {shlex.join(packaged_command(built))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_target_renders_installs_and_uninstalls_live(
    target_built: Built, make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The RPM's files under the target's Python stack against a real firewalld: `render` of a
    config file (PyYAML's import) gives exactly the rule set's golden file; install puts the
    rules live and in direct.xml; uninstall leaves nothing of ours."""
    built, sb = target_built, make_sandbox("nftables")
    cli = tool_wrapper(built, tmp_path)
    cases = REPO / "tests" / "cases"
    case = yaml.safe_load((cases / "include-ports.yaml").read_text())
    (tmp_path / "c.yaml").write_text(case["config"])
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    env = {  # as tests/test_ruleset.py renders the cases
        "KUMA_TRANSPARENT_PROXY_KUMA_DP_USER": "5678",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(tmp_path / "resolv.conf"),
    }
    rendered = sb.run(
        cli, "render", "--direct-xml", tmp_path / "missing.xml",
        *case.get("args", []), "--config", tmp_path / "c.yaml", env=env,
    )  # fmt: skip
    assert rendered.stdout == (cases / "include-ports.xml").read_text()
    # install, again (no change), uninstall
    install = (cli, "install", *EXAMPLE_SETTINGS.split())
    sb.run(*install)
    xml = sb.direct_xml.read_bytes()
    assert sb.run(cli, "diff", check=False).returncode == 0
    runtime = ours(direct_lines(sb))
    assert runtime and runtime == ours(direct_lines(sb, permanent=True))
    assert re.search(r"-A KUMA_MESH_OUTBOUND .*--uid-owner 5678 .*-j RETURN", kernel_text(sb))
    assert "KUMA_MESH_INBOUND" in xml.decode()
    sb.run(*install)
    assert sb.direct_xml.read_bytes() == xml and ours(direct_lines(sb)) == runtime
    sb.run(cli, "uninstall")
    assert ours(direct_lines(sb)) == [] and ours(direct_lines(sb, permanent=True)) == []
    assert "KUMA_MESH" not in kernel_text(sb) and "KUMA" not in sb.direct_xml.read_text()
    assert not has_state(sb)


def test_target_rpmlint_reports_no_errors(target_built: Built) -> None:
    """rpmlint with Fedora's settings: no error for any target's packages (the bundled
    libraries' licences are Fedora-valid SPDX names, rpm/rpmlint.toml)."""
    rpms = [target_built.rpm, target_built.srpm]
    result = run("rpmlint", "-c", REPO / "rpm" / "rpmlint.toml", *rpms, check=False)
    assert " 0 errors," in result.stdout and result.returncode == 0, result.stdout
    assert "invalid-license" not in result.stdout, result.stdout
