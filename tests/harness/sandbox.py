"""A throw-away firewalld in its own network, mount and pid namespaces, driven from the host.

The test process stays in the host's namespaces. `start_sandbox()` spawns

    unshare --net --mount --pid --fork --kill-child --mount-proc bash sandbox_init.sh ...

whose script (PID 1 of the new pid namespace) starts a private system D-Bus and firewalld and
then waits on its stdin, a pipe only this process writes to. Closing that pipe, or dying, ends
PID 1 and with it every process of the sandbox. Commands go in with `nsenter`.

Nothing here touches the host's firewall: firewall-cmd, iptables-save and the traffic agent
only ever run inside the sandbox's namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Optional, Protocol, Union, cast

from .traffic_agent import CONNECT_FAILED

Backend = Literal["nftables", "iptables"]
YesNo = Literal["yes", "no"]
Family = Literal["ipv4", "ipv6"]
# Evaluated at import: typing.Union, not `X | Y`, so the harness loads on Python 3.9.
Arg = Union[str, int, "os.PathLike[str]"]
Reply = dict[str, Optional[str]]

BACKENDS: tuple[Backend, ...] = ("nftables", "iptables")
YES_NO: tuple[YesNo, ...] = ("yes", "no")

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "sandbox_init.sh"
AGENT_SCRIPT = HERE / "traffic_agent.py"
REQUIRED_TOOLS = (
    "unshare", "nsenter", "setpriv", "timeout", "ip", "dbus-daemon",
    "firewalld", "firewall-cmd", "iptables-save", "ip6tables-save",
)  # fmt: skip
# CI's environment may lack the sbin directories where firewalld, ip and iptables live.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Debian's python3: reachable by any uid, unlike a pyenv python under /root (mode 0700).
SYSTEM_PYTHON = "/usr/bin/python3"

READY_TIMEOUT = 90.0  # RUNNING takes about 0.5 s here; the init itself gives up after 60 s
INIT_REPLY_TIMEOUT = 30.0  # "stop" may take 15 s before the init falls back to SIGKILL
STATE_TIMEOUT = 60.0
LISTEN_TIMEOUT = 15.0
EXIT_TIMEOUT = 15.0
# Grace on top of a command's own `timeout` inside the sandbox before the host side gives up.
HOST_TIMEOUT_GRACE = 15.0

SANDBOX_IPV4, PEER_IPV4 = "192.0.2.1", "192.0.2.2"  # RFC 5737 documentation range
SANDBOX_IPV6, PEER_IPV6 = "2001:db8::1", "2001:db8::2"  # RFC 3849 documentation range
PEER_NAME = re.compile(r"[a-z][a-z0-9-]{0,11}")  # "to-" + name must fit IFNAMSIZ (15)
# firewalld.conf settings are edited with sed inside the sandbox: keep them plain.
CONF_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
CONF_VALUE = re.compile(r"[A-Za-z0-9_.,:+-]*")


class SandboxError(RuntimeError):
    """The sandbox could not be started or driven (not a failure of the code under test)."""


class SandboxFactory(Protocol):
    """What the `make_sandbox` fixture hands out: start_sandbox, closed at teardown (the
    fixture's conf defaults and stock: tests/conftest.py)."""

    def __call__(
        self,
        backend: Backend = "nftables",
        flush_all_on_reload: YesNo = "yes",
        root: Path | None = None,
        conf: Mapping[str, str] | None = None,
        *,
        stock: bool = False,
    ) -> Sandbox: ...


@dataclass(frozen=True)
class Peer:
    """A remote host for test traffic: a network namespace inside the sandbox, one veth away."""

    name: str  # the network namespace: pass it as netns= to run(), listen() and connect()
    link: str  # the sandbox's end of the veth pair
    ipv4: str = PEER_IPV4
    ipv6: str = PEER_IPV6
    local_ipv4: str = SANDBOX_IPV4
    local_ipv6: str = SANDBOX_IPV6

    def address(self, family: Family) -> str:
        return self.ipv6 if family == "ipv6" else self.ipv4


@dataclass
class Listener:
    """A running `traffic_agent.py listen`; `pid` is its pid inside the sandbox."""

    name: str
    port: int
    family: Family
    netns: str | None
    uid: int | None
    pid: int
    process: subprocess.Popen[str]


class _Lines:
    """A child's stdout as lines that can be awaited with a timeout (a bare pipe read cannot)."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        # The stream is ours alone: closed here at EOF, never under a reading thread's feet.
        with stream:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next line starting with prefix; an ERROR line, EOF or the timeout raise."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # later calls fail at once too
                raise SandboxError(f"output ended while waiting for {prefix!r}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line
            if line.startswith("ERROR"):
                raise SandboxError(line)
        raise SandboxError(f"no {prefix!r} line within {timeout:g} s")


class Sandbox:
    """A running sandbox. Make one with start_sandbox(); close() it (or use `with`)."""

    def __init__(
        self,
        workdir: Path,
        backend: Backend,
        flush_all_on_reload: YesNo,
        root: Path | None,
        conf: Mapping[str, str],
    ) -> None:
        self.backend: Backend = backend
        self.flush_all_on_reload: YesNo = flush_all_on_reload
        self.root = root
        self.conf = dict(conf)  # further firewalld.conf settings
        self.workdir = workdir  # unique per sandbox; every command line of ours contains it
        self.etc_dir = workdir / "etc"  # bound over /etc/firewalld inside
        self.direct_xml = self.etc_dir / "direct.xml"
        self.log_path = workdir / "firewalld.log"
        self.pid = 0  # host pid of the sandbox's PID 1, known once it is READY
        self.firewalld_pid: int | None = None  # pid inside the sandbox; None while stopped
        self.peer: Peer | None = None
        self._agent = workdir / "traffic_agent.py"
        self._init_stderr = workdir / "init.stderr"
        self._pid_ns = ""
        self._process: subprocess.Popen[str] | None = None
        self._lines: _Lines | None = None
        self._listeners: list[Listener] = []
        self._listeners_started = 0
        self._closed = False

    # -- life cycle --------------------------------------------------------------------------

    def _boot(self) -> None:
        self.etc_dir.mkdir()
        shutil.copy2(AGENT_SCRIPT, self._agent)
        self._agent.chmod(0o644)  # listeners may run as another uid
        command = [
            "unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc",
            # PDEATHSIG for PID 1: should unshare itself be killed, the namespace still dies.
            "--kill-child",
            "bash", str(INIT_SCRIPT),
            "--backend", self.backend,
            "--flush-all-on-reload", self.flush_all_on_reload,
            "--etc-dir", str(self.etc_dir),
            "--log-file", str(self.log_path),
            *(word for key, value in self.conf.items() for word in ("--conf", f"{key}={value}")),
            *(["--root", str(self.root)] if self.root is not None else []),
        ]  # fmt: skip
        with self._init_stderr.open("w") as stderr:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                text=True, cwd="/", env=_environment(None),
            )  # fmt: skip
        self._lines = _Lines(cast(IO[str], self._process.stdout))
        try:
            ready = self._lines.expect("READY", READY_TIMEOUT)
            self.pid = _only_child(self._process.pid)
            self._pid_ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        except (SandboxError, OSError) as exc:
            message = f"firewalld sandbox did not start: {exc}\n{self.diagnostics()}"
            raise SandboxError(message) from exc
        self.firewalld_pid = int(ready.split()[1])

    def close(self) -> None:
        """End the sandbox: EOF on PID 1's stdin, then wait; kill unshare if that hangs."""
        if self._closed:
            return
        self._closed = True
        if self._process is not None:
            _close_quietly(self._process.stdin)
            _wait_or_kill(self._process, EXIT_TIMEOUT)
        for listener in self._listeners:
            _close_quietly(listener.process.stdin)
            _wait_or_kill(listener.process, EXIT_TIMEOUT)
        self._listeners.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def image_root(self) -> Path:
        """What an offline `tproxy-firewalld --root DIR` run inside the sandbox is given to work
        on this firewalld's files: the chroot's root (its etc/firewalld is etc_dir there), or
        "/" for the host's firewalld (/etc/firewalld is etc_dir inside the sandbox)."""
        return self.root if self.root is not None else Path("/")

    def firewalld_version(self) -> str:
        """The running daemon's version as it reports it over D-Bus, e.g. "0.9.3"."""
        return self.firewall_cmd("--version").stdout.strip()

    @property
    def bus_address(self) -> str:
        """The sandbox's system bus, reachable from the host through PID 1's root."""
        return f"unix:path=/proc/{self.pid}/root/run/dbus/system_bus_socket"

    def host_pids(self) -> list[int]:
        """Host pids of every process in the sandbox's pid namespace.

        Only while open: once the namespace is gone the kernel may give its inode number,
        by which it is recognised here, to the next namespace anybody creates.
        """
        self._require_open()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") == self._pid_ns:
                    pids.append(int(entry.name))
            except OSError:  # exited meanwhile
                continue
        return sorted(pids)

    def diagnostics(self) -> str:
        """What PID 1 said and the tail of firewalld's log, for error messages."""
        said = "\n".join(self._lines.seen) if self._lines else ""
        return (
            f"--- sandbox init stdout:\n{said}\n"
            f"--- sandbox init stderr:\n{_tail(self._init_stderr)}\n"
            f"--- firewalld log ({self.log_path}):\n{_tail(self.log_path)}"
        )

    # -- commands ----------------------------------------------------------------------------

    def _nsenter(self) -> list[str]:
        # --pid: setns() into a pid namespace only moves the caller's children, so nsenter
        # forks and the command becomes a member: the sandbox's /proc shows it, in-sandbox
        # pids (firewalld_pid, Listener.pid) mean the same to it, and it dies with PID 1.
        # Killing nsenter does not kill that child (util-linux 2.38 forwards no signal),
        # hence the `timeout` run inside in run().
        # --root/--wd: paths resolve from the sandbox's root and PID 1's cwd ("/"), never
        # from wherever the test process stands.
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", "--pid", "--root", "--wd"]

    def run(
        self,
        *argv: Arg,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        uid: int | None = None,
        netns: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the sandbox (as uid, in the named netns), killed after timeout s.

        env adds to (or overrides) this process's environment. With check, a non-zero exit
        raises AssertionError naming the command, exit code, stdout and stderr; a timeout
        inside the sandbox shows as exit code 124.
        """
        self._require_open()
        words = [os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg) for arg in argv]
        inside = ["timeout", "--kill-after=5", f"{timeout:g}", *_wrap(words, uid, netns)]
        try:
            result = subprocess.run(
                [*self._nsenter(), *inside],
                input=input, stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True, text=True, env=_environment(env),
                timeout=timeout + HOST_TIMEOUT_GRACE,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            described = _describe_command(words, uid, netns)
            raise AssertionError(f"{described} hung past {timeout:g} s") from exc
        if check and result.returncode != 0:
            raise AssertionError(_describe_failure(words, uid, netns, result))
        return result

    def firewall_cmd(self, *args: Arg, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("firewall-cmd", *args, check=check)

    def iptables_save(self, ipv: Family = "ipv4", table: str | None = None) -> str:
        """iptables-save / ip6tables-save output without '#' lines and chain counters."""
        tool = "ip6tables-save" if ipv == "ipv6" else "iptables-save"
        output = self.run(tool, *(["-t", table] if table else [])).stdout
        lines = [
            re.sub(r" \[\d+:\d+\]$", "", line)
            for line in output.splitlines()
            if not line.startswith("#")
        ]
        return "".join(line + "\n" for line in lines)

    def state(self) -> str:
        """`firewall-cmd --state`: "running", else e.g. "not running (exit 252)"."""
        result = self.firewall_cmd("--state", check=False)
        text = result.stdout.strip() or result.stderr.strip()
        return text if result.returncode == 0 else f"{text} (exit {result.returncode})"

    def reload(self) -> subprocess.CompletedProcess[str]:
        return self.firewall_cmd("--reload")

    # -- firewalld life cycle (done by PID 1, whose child firewalld is) ----------------------

    def _tell_init(self, command: str, answer: str) -> str:
        self._require_open()
        assert self._process is not None and self._process.stdin is not None and self._lines
        try:
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
            return self._lines.expect(answer, INIT_REPLY_TIMEOUT)
        except (OSError, SandboxError) as exc:
            raise SandboxError(f"sandbox init, {command!r}: {exc}\n{self.diagnostics()}") from exc

    def stop_firewalld(self) -> int | None:
        """SIGTERM firewalld (by pid) and wait; its exit status, or None if none was running."""
        status = self._tell_init("stop", "STOPPED").split()[1]
        self.firewalld_pid = None
        return None if status == "none" else int(status)

    def start_firewalld(self, wait: bool = True) -> str:
        """Start firewalld again with the same config; with wait, until RUNNING or FAILED.

        Returns state(): "running", "failed (exit 251)", "not running (exit 252)", ...
        """
        self.firewalld_pid = int(self._tell_init("start", "STARTED").split()[1])
        return self._wait_settled() if wait else self.state()

    def restart_firewalld(self) -> str:
        self.stop_firewalld()
        return self.start_firewalld()

    def _wait_settled(self) -> str:
        deadline = time.monotonic() + STATE_TIMEOUT
        while True:
            state = self.state()
            settled = state == "running" or state.startswith("failed")
            if settled or not self._firewalld_alive() or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def _firewalld_alive(self) -> bool:
        # /proc/<PID 1>/root leads into the sandbox's mounts, where /proc is its own procfs.
        stat_file = Path(f"/proc/{self.pid}/root/proc/{self.firewalld_pid}/stat")
        try:
            return stat_file.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    # -- network -----------------------------------------------------------------------------

    def add_peer(self, name: str = "peer") -> Peer:
        """A network namespace inside the sandbox, joined to it by a veth pair:
        sandbox 192.0.2.1/24 + 2001:db8::1/64, peer 192.0.2.2/24 + 2001:db8::2/64."""
        if self.peer is not None:
            raise SandboxError(f"this sandbox already has its one peer, {self.peer.name}")
        if not PEER_NAME.fullmatch(name):
            raise ValueError(f"peer name {name!r} must match {PEER_NAME.pattern}")
        peer = Peer(name=name, link=f"to-{name}")
        # nodad: IPv6 addresses are otherwise "tentative" for a second or two (duplicate
        # address detection), and connections from or to them fail meanwhile.
        script = f"""
            ip netns add {name}
            ip link add {peer.link} type veth peer name eth0 netns {name}
            ip addr add {peer.local_ipv4}/24 dev {peer.link}
            ip -6 addr add {peer.local_ipv6}/64 dev {peer.link} nodad
            ip link set {peer.link} up
            ip -n {name} link set lo up
            ip -n {name} addr add {peer.ipv4}/24 dev eth0
            ip -n {name} -6 addr add {peer.ipv6}/64 dev eth0 nodad
            ip -n {name} link set eth0 up
        """
        self.run("sh", "-ec", script)
        self.peer = peer
        return peer

    # -- traffic -----------------------------------------------------------------------------

    def _agent_argv(self, uid: int | None) -> list[str]:
        # -I: no user site dir, no PYTHON* variables: the agent needs only the stdlib.
        return [_python_for(uid), "-I", str(self._agent)]

    @contextmanager
    def listen(
        self,
        port: int,
        *,
        family: Family = "ipv4",
        name: str,
        netns: str | None = None,
        uid: int | None = None,
    ) -> Iterator[Listener]:
        """A TCP listener on the wildcard address, answering each connection with one JSON
        line (see traffic_agent.py); it is listening when the `with` body starts."""
        listener = self._start_listener(port, family, name, netns, uid)
        try:
            yield listener
        finally:
            self._stop_listener(listener)

    def _start_listener(
        self, port: int, family: Family, name: str, netns: str | None, uid: int | None
    ) -> Listener:
        self._require_open()
        argv = [
            *self._agent_argv(uid), "listen", "--port", str(port), "--family", family,
            "--name", name, "--until-stdin-eof",
        ]  # fmt: skip
        self._listeners_started += 1
        stderr_path = self.workdir / f"listener-{self._listeners_started}.stderr"
        with stderr_path.open("w") as stderr:
            # stdin stays open: the agent exits at its EOF (killing nsenter would not reach it).
            process = subprocess.Popen(
                [*self._nsenter(), *_wrap(argv, uid, netns)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, text=True, env=_environment(None),
            )  # fmt: skip
        try:
            ready = _Lines(cast(IO[str], process.stdout)).expect("LISTENING", LISTEN_TIMEOUT)
        except SandboxError as exc:
            _close_quietly(process.stdin)
            _wait_or_kill(process, EXIT_TIMEOUT)
            described = _describe_command(argv, uid, netns)
            raise SandboxError(f"{described} did not listen: {exc}\n{_tail(stderr_path)}") from exc
        listener = Listener(name, port, family, netns, uid, int(ready.split()[1]), process)
        self._listeners.append(listener)
        return listener

    def _stop_listener(self, listener: Listener) -> None:
        if listener not in self._listeners:  # close() already reaped it
            return
        self._listeners.remove(listener)
        _close_quietly(listener.process.stdin)
        try:
            listener.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.run("kill", "-KILL", listener.pid, check=False)
            _wait_or_kill(listener.process, EXIT_TIMEOUT)

    def connect(
        self,
        addr: str,
        port: int,
        *,
        uid: int | None = None,
        netns: str | None = None,
        timeout: float = 5.0,
    ) -> Reply | None:
        """Connect from inside the sandbox (or netns) to addr:port; the listener's JSON reply,
        or None when the connection failed (refused, timed out, reset)."""
        argv = [
            *self._agent_argv(uid), "connect", "--addr", addr, "--port", str(port),
            "--timeout", f"{timeout:g}",
        ]  # fmt: skip
        result = self.run(*argv, check=False, uid=uid, netns=netns, timeout=timeout + 10)
        if result.returncode == CONNECT_FAILED:
            return None
        if result.returncode != 0:
            raise AssertionError(_describe_failure(argv, uid, netns, result))
        return cast(Reply, json.loads(result.stdout))

    def _require_open(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")


def start_sandbox(
    backend: Backend = "nftables",
    flush_all_on_reload: YesNo = "yes",
    root: Path | None = None,
    conf: Mapping[str, str] | None = None,
) -> Sandbox:
    """Start firewalld (RUNNING) in fresh network, mount and pid namespaces.

    root: a debootstrapped Debian root (scripts/build-roots) whose firewalld to run instead of
    the host's, chrooted inside the same namespaces; everything else (firewall-cmd, iptables-save,
    the traffic agent, run()) stays the host's, talking to it over the shared /run.
    conf: further firewalld.conf settings, e.g. {"RFC3964_IPv4": "no"}.
    Raises SandboxError, with firewalld's log, if that cannot be done.
    """
    _check_settings(backend, flush_all_on_reload, conf or {})
    _preflight(root)
    workdir = Path(tempfile.mkdtemp(prefix="tpfw-sandbox-"))
    workdir.chmod(0o755)  # listeners and clients may run as another uid
    resolved_root = root.resolve() if root is not None else None
    sandbox = Sandbox(workdir, backend, flush_all_on_reload, resolved_root, conf or {})
    try:
        sandbox._boot()
    except BaseException:
        sandbox.close()
        raise
    return sandbox


# -- helpers ---------------------------------------------------------------------------------


def _check_settings(backend: str, flush_all_on_reload: str, conf: Mapping[str, str]) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if flush_all_on_reload not in YES_NO:
        raise ValueError(
            f"flush_all_on_reload must be one of {YES_NO}, not {flush_all_on_reload!r}"
        )
    for key, value in conf.items():
        if not CONF_KEY.fullmatch(key) or not CONF_VALUE.fullmatch(value):
            raise ValueError(f"firewalld.conf setting {key}={value!r} is not plain enough")


def _preflight(root: Path | None) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append(f"it must run as root (namespaces, mounts), not euid {os.geteuid()}")
    path = _environment(None)["PATH"]
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        problems.append(f"missing commands: {', '.join(missing)}")
    if root is not None and not (root / "usr/sbin/firewalld").exists():
        problems.append(f"{root} has no usr/sbin/firewalld")
    if problems:
        raise SandboxError("cannot start a firewalld sandbox: " + "; ".join(problems))


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    dirs = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join([*filter(None, dirs), *(d for d in SYSTEM_PATH if d not in dirs)])
    env.update(extra or {})
    return env


def _wrap(argv: list[str], uid: int | None, netns: str | None) -> list[str]:
    """argv, run in the sandbox's named netns and/or as uid (and its gid, no groups)."""
    in_netns = [] if netns is None else ["ip", "netns", "exec", netns]
    if uid is None:
        return [*in_netns, *argv]
    return [*in_netns, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def _python_for(uid: int | None) -> str:
    """This interpreter, unless uid cannot reach it (pyenv lives under /root, mode 0700 here):
    then Debian's python3, which runs the stdlib-only agent as well."""
    if uid in (None, 0) or _world_executable(sys.executable):
        return sys.executable
    if _world_executable(SYSTEM_PYTHON):
        return SYSTEM_PYTHON
    raise SandboxError(f"no python3 that uid {uid} may run: {sys.executable}, {SYSTEM_PYTHON}")


def _world_executable(path: str) -> bool:
    """Whether any uid may run path: o+x on the file and on every directory on both the
    given and the resolved way there."""
    given, resolved = Path(path).absolute(), Path(path).resolve()
    try:
        checks = [resolved, *given.parents, *resolved.parents]
        return resolved.is_file() and all(os.stat(p).st_mode & stat.S_IXOTH for p in checks)
    except OSError:
        return False


def _only_child(pid: int) -> int:
    """The one child of `unshare --fork`, i.e. PID 1 of the new pid namespace, by host pid."""
    children = [
        int(child)
        for children_file in Path(f"/proc/{pid}/task").glob("*/children")
        for child in children_file.read_text().split()
    ]
    if len(children) != 1:
        raise SandboxError(f"unshare (pid {pid}) has children {children}, expected one")
    return children[0]


def _describe_command(argv: list[str], uid: int | None, netns: str | None) -> str:
    as_uid = f" as uid {uid}" if uid is not None else ""
    in_netns = f" in netns {netns}" if netns is not None else ""
    return f"`{shlex.join(argv)}` (in the sandbox{as_uid}{in_netns})"


def _describe_failure(
    argv: list[str], uid: int | None, netns: str | None, result: subprocess.CompletedProcess[str]
) -> str:
    return (
        f"{_describe_command(argv, uid, netns)} exited {result.returncode}\n"
        f"--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}"
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def _close_quietly(stream: IO[str] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):  # a broken pipe on flush: the reader is gone
            stream.close()


def _wait_or_kill(process: subprocess.Popen[str], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
