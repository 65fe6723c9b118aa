"""A throw-away network world for differential traffic tests, driven over stdin/stdout.

Run as root under ``unshare --net --mount --fork`` (nothing it does reaches the host's own
network or firewall): the namespace it starts in is "host", where the rules under test are
loaded; it adds two more with veth links:

    peer  10.77.0.2 fd77::2 --eth0-- host 10.77.0.1 fd77::1 (default route via peer)
    cont  10.78.0.2 fd78::2 --ctr0-- host 10.78.0.1 fd78::1 (host forwards; "ctr0" is
                                      renamed to match the interface of a --vnet setting)

peer answers on every address (AnyIP: local routes for 0.0.0.0/0 and ::/0, its link's own
subnet looked up first), so an outbound probe can go to any "remote" address a setting
names. Every listener answers each TCP connection or UDP datagram with one JSON line: which
namespace and port it is, the local address, and for TCP the original destination
(SO_ORIGINAL_DST, null when not NATed).

Commands, one JSON object per line; each gets one JSON line back ({"ok": ...} or
{"error": "..."}):

    {"op": "load", "iptables": {"ipv4": TEXT, "ipv6": TEXT}}  flush, iptables-restore --noflush
    {"op": "load", "nft": TEXT, "flush": BOOL}                flush (unless false), nft -f -
    {"op": "vnet", "iface": NAME, "addrs": [ADDR, ...]}       rename ctr0's host end, add addrs
    {"op": "listen", "ns": NS, "proto": "tcp"|"udp", "ports": [P, ...], "uid": UID}
    {"op": "probe", "probes": [{"proto", "ns", "uid", "src", "dst", "port"}, ...]}
    {"op": "observe"}                 add a table recording each UDP packet's conntrack zone
    {"op": "zones"}                   what it recorded: [[zone, sport, dport], ...]
    {"op": "nft", "args": [...]}                              nft's stdout

A probe's outcome is the listener's JSON line, or "refused", "timeout", "unreachable" or
another errno name. Stdlib only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

CLONE_NEWNET = 0x40000000
SO_ORIGINAL_DST = 80
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
TCP_TIMEOUT = 1.0
UDP_TIMEOUT = 0.5
UDP_PORTS = (20000, 60000)  # each UDP probe its own source port: no stale conntrack entry

#: which conntrack zone each UDP packet's connection is in (after conntrack, -200): makes
#: Kuma's raw-table decisions (`-j CT --zone`, `ct zone set`) visible, whatever the rules are
OBSERVER = """
table inet observe {
\tset seen { typeof ct zone . udp sport . udp dport; size 65535; flags dynamic; }
\tchain pre {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tmeta l4proto udp update @seen { ct zone . udp sport . udp dport }
\t}
\tchain out {
\t\ttype filter hook output priority -150; policy accept;
\t\tmeta l4proto udp update @seen { ct zone . udp sport . udp dport }
\t}
}
"""

libc = ctypes.CDLL(None, use_errno=True)
_NS_FDS: dict[str, int] = {}


def sysctl(*settings: str, ns: str | None = None) -> None:
    """``sysctl -w KEY=VALUE ...`` without procps (the users' stacks run in minimal Debian
    roots that lack it): each value written to /proc/sys, whose net/ tree is that of the
    writer's network namespace (``ns``: written from inside that one)."""
    for setting in settings:
        key, value = setting.split("=", 1)
        path = "/proc/sys/" + key.replace(".", "/")
        if ns is None:
            with open(path, "w") as f:
                f.write(value + "\n")
        else:
            sh("ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}")


def sh(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def ns_fd(ns: str) -> int:
    if ns not in _NS_FDS:
        path = "/proc/self/ns/net" if ns == "host" else f"/run/netns/{ns}"
        _NS_FDS[ns] = os.open(path, os.O_RDONLY)
    return _NS_FDS[ns]


@contextlib.contextmanager
def in_ns(ns: str, uid: int | None = None) -> Iterator[None]:
    """This thread in namespace ns (and file-system uid, which owner matches read from a
    socket's file), for making sockets: a socket stays in the namespace it was made in."""
    ns_fd("host")
    if ns != "host" and libc.setns(ns_fd(ns), CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")
    if uid is not None:
        libc.setfsuid(uid)
    try:
        yield
    finally:
        if uid is not None:
            libc.setfsuid(0)
        if ns != "host":
            libc.setns(ns_fd("host"), CLONE_NEWNET)


def setup() -> None:
    sh("mount", "--make-rprivate", "/")
    os.makedirs("/run/netns", exist_ok=True)
    sh("mount", "-t", "tmpfs", "tmpfs", "/run/netns")
    for ns in ("peer", "cont"):
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "-6", "addr", "add", "::6/128", "dev", "lo")  # as kumactl does
    # ctr0 is renamed (down, up) for --vnet: its IPv6 addresses must survive that
    sysctl("net.ipv6.conf.all.keep_addr_on_down=1")
    links = {"peer": ("eth0", "77"), "cont": ("ctr0", "78")}
    for ns, (name, net) in links.items():
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", "x" + name)
        sh("ip", "link", "set", "x" + name, "netns", ns)
        inside = ("ip", "-n", ns)
        sh(*inside, "link", "set", "x" + name, "name", "eth0")
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "link", "set", "eth0", "up")
        sh(*inside, "addr", "add", f"10.{net}.0.2/24", "dev", "eth0")
        sh(*inside, "-6", "addr", "add", f"fd{net}::2/64", "dev", "eth0", "nodad")
        sh("ip", "link", "set", name, "up")
        sh("ip", "addr", "add", f"10.{net}.0.1/24", "dev", name)
        sh("ip", "-6", "addr", "add", f"fd{net}::1/64", "dev", name, "nodad")
    sh("ip", "route", "add", "default", "via", "10.77.0.2")
    sh("ip", "-6", "route", "add", "default", "via", "fd77::2")
    sh("ip", "-n", "cont", "route", "add", "default", "via", "10.78.0.1")
    sh("ip", "-n", "cont", "-6", "route", "add", "default", "via", "fd78::1")
    sysctl("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    # peer: every address is its own, except the host's side of its link
    for v, everything, host in (("-4", "0.0.0.0/0", "10.77.0.1"), ("-6", "::/0", "fd77::1")):
        peer = ("ip", "-n", "peer", v)
        sh(*peer, "rule", "add", "pref", "50", "to", host, "lookup", "main")
        sh(*peer, "rule", "add", "pref", "100", "lookup", "local")
        sh(*peer, "rule", "del", "pref", "0")
        sh(*peer, "route", "add", "local", everything, "dev", "lo")
    # and it may send from any address (an excluded inbound source)
    sysctl("net.ipv6.ip_nonlocal_bind=1", "net.ipv4.ip_nonlocal_bind=1", ns="peer")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- listeners ------------------------------------------------------------------------------


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def original_dst(conn: socket.socket) -> str | None:
    try:
        if conn.family == socket.AF_INET6:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            addr = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            addr = socket.inet_ntop(socket.AF_INET, raw[4:8])
        (port,) = struct.unpack_from("!H", raw, 2)
    except OSError:
        return None
    original = endpoint(addr, port)
    local = conn.getsockname()
    return None if original == endpoint(local[0], local[1]) else original


class Listeners:
    """Every listener answered by one thread; new ones are handed to it through a queue
    (a selector is not to be changed while another thread waits in it)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.pending: list[tuple[socket.socket, tuple[str, str, int]]] = []
        self.retired: list[socket.socket] = []
        self.lock = threading.Lock()
        self.have: dict[tuple[str, str, int, int], tuple[int | None, socket.socket]] = {}
        threading.Thread(target=self.serve, daemon=True).start()

    def add(self, ns: str, proto: str, ports: list[int], uid: int | None = None) -> None:
        """Listeners on ports (both families); uid: the owner of the listener's socket (a
        DNS proxy must answer as the kuma-dp user for Kuma's conntrack zones to fit)."""
        for port in ports:
            for af in (socket.AF_INET, socket.AF_INET6):
                key = (ns, proto, int(af), port)
                if key in self.have:
                    if self.have[key][0] == uid:
                        continue
                    with self.lock:
                        self.retired.append(self.have.pop(key)[1])
                    self.wait_registered()
                kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
                with in_ns(ns, uid):
                    s = socket.socket(af, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if af == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if proto == "udp":
                        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                elif proto == "udp":
                    s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
                s.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", port))
                if proto == "tcp":
                    s.listen(128)
                s.setblocking(False)
                with self.lock:
                    self.pending.append((s, (ns, proto, port)))
                self.have[key] = (uid, s)

    def serve(self) -> None:
        while True:
            # under the lock: wait_registered() returns only once every retired socket is
            # closed (its port free to bind again: a TCP listener re-made for another uid hit
            # EADDRINUSE when the close came after) and every new one is served
            with self.lock:
                for s in self.retired:
                    self.selector.unregister(s)
                    s.close()
                self.retired = []
                for s, data in self.pending:
                    self.selector.register(s, selectors.EVENT_READ, data)
                self.pending = []
            for key, _ in self.selector.select(timeout=0.02):
                ns, proto, port = key.data
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if proto == "tcp":
                        self.answer_tcp(sock, ns, port)
                    else:
                        self.answer_udp(sock, ns, port)
                except OSError:
                    pass

    def wait_registered(self) -> None:
        while True:
            with self.lock:
                if not self.pending and not self.retired:
                    return
            threading.Event().wait(0.01)

    def answer_tcp(self, server: socket.socket, ns: str, port: int) -> None:
        conn, _peer = server.accept()
        with conn:
            local = conn.getsockname()
            line = {"ns": ns, "port": port, "local": local[0], "orig_dst": original_dst(conn)}
            conn.setblocking(True)
            conn.settimeout(1)
            conn.sendall(json.dumps(line).encode() + b"\n")

    def answer_udp(self, server: socket.socket, ns: str, port: int) -> None:
        _data, ancillary, _flags, peer = server.recvmsg(512, 256)
        local = ""
        for level, kind, value in ancillary:
            if level == socket.SOL_IP and kind == IP_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET, value[8:12])
            elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET6, value[:16])
        line = json.dumps({"ns": ns, "port": port, "local": local}).encode()
        info = [(level, kind, value) for level, kind, value in ancillary]
        server.sendmsg([line], info, 0, peer)


# -- probes ---------------------------------------------------------------------------------

_udp_port = [UDP_PORTS[0]]


def next_udp_port() -> int:
    port = _udp_port[0]
    _udp_port[0] = port + 1 if port + 1 < UDP_PORTS[1] else UDP_PORTS[0]
    return port


def failure(exc: OSError) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if exc.errno == errno.ECONNREFUSED:
        return "refused"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return errno.errorcode.get(exc.errno or 0, repr(exc))


def probe(p: dict[str, Any]) -> Any:
    af = socket.AF_INET6 if ipaddress.ip_address(p["dst"]).version == 6 else socket.AF_INET
    tcp = p["proto"] == "tcp"
    with in_ns(p["ns"], p.get("uid")):
        s = socket.socket(af, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with s:
        try:
            if not tcp:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            src_port = 0 if tcp else next_udp_port()
            if p.get("src") or src_port:
                s.bind((p.get("src") or ("::" if af == socket.AF_INET6 else "0.0.0.0"), src_port))
            s.settimeout(TCP_TIMEOUT if tcp else UDP_TIMEOUT)
            s.connect((p["dst"], p["port"]))
            if tcp:
                received = b""
                while b"\n" not in received:
                    chunk = s.recv(4096)
                    if not chunk:
                        return "closed"
                    received += chunk
                return json.loads(received.decode().splitlines()[0])
            s.send(b"probe")
            return json.loads(s.recv(512).decode())
        except OSError as exc:
            return failure(exc)


def warm_up(seconds: float = 5.0) -> None:
    """Until the container reaches the host over both families again (a link just brought
    up may still be resolving neighbours): any answer, even a refusal, will do."""
    deadline = time.monotonic() + seconds
    for dst in ("10.78.0.1", "fd78::1"):
        while time.monotonic() < deadline:
            outcome = probe({"proto": "tcp", "ns": "cont", "dst": dst, "port": 9})
            if outcome != "timeout" and outcome != "unreachable":
                break


def main() -> int:
    setup()
    listeners = Listeners()
    print(json.dumps({"ok": "ready"}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "load":
                if cmd.get("flush", True):
                    sh("nft", "flush", "ruleset")
                if "iptables" in cmd:
                    for ipv, text in cmd["iptables"].items():
                        restore = "iptables-restore" if ipv == "ipv4" else "ip6tables-restore"
                        sh(restore, "--noflush", input=text)
                else:
                    sh("nft", "-f", "-", input=cmd["nft"])
                result: Any = "loaded"
            elif op == "vnet":
                current = cmd.get("current", "ctr0")
                if cmd["iface"] != current:
                    sh("ip", "link", "set", current, "down")
                    sh("ip", "link", "set", current, "name", cmd["iface"])
                    sh("ip", "link", "set", cmd["iface"], "up")
                for addr in cmd.get("addrs", []):
                    extra = ["nodad"] if ":" in addr else []
                    with contextlib.suppress(RuntimeError):  # already there
                        sh("ip", "addr", "add", addr, "dev", cmd["iface"], *extra)
                warm_up()
                result = "renamed"
            elif op == "listen":
                listeners.add(cmd["ns"], cmd["proto"], cmd["ports"], cmd.get("uid"))
                listeners.wait_registered()
                result = "listening"
            elif op == "probe":
                result = [probe(p) for p in cmd["probes"]]
            elif op == "observe":
                sh("nft", "-f", "-", input=OBSERVER)
                result = "observing"
            elif op == "zones":
                listed = json.loads(sh("nft", "-j", "list", "set", "inet", "observe", "seen"))
                sets = [x["set"] for x in listed["nftables"] if "set" in x]
                result = sorted(e["concat"] for e in sets[0].get("elem", []))
            elif op == "nft":
                result = sh("nft", *cmd["args"])
            else:
                raise ValueError(f"unknown op {op!r}")
            print(json.dumps({"ok": result}), flush=True)
        except Exception as exc:  # every failure goes back as one line
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
