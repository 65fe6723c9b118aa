"""Test traffic inside a firewalld sandbox: a TCP listener that tells each client where it
wanted to go, and a client that prints what the listener told it.

    traffic_agent.py listen --port P --family ipv4|ipv6 --name NAME [--until-stdin-eof]
    traffic_agent.py connect --addr ADDR --port P [--timeout SECONDS]

`listen` binds the wildcard address, prints `LISTENING <pid>` once it really listens, then
answers every connection with one JSON line and closes it:
    {"server": NAME, "orig_dst": "ip:port" | null, "peer": "ip:port", "local": "ip:port"}
IPv6 endpoints are written "[addr]:port". `orig_dst` is where the client sent the connection
before a REDIRECT/DNAT (SO_ORIGINAL_DST), or null when it was not NATed.

`connect` prints the listener's line and exits 0, or exits 3 when the connection failed
(refused, timed out, reset): any other exit status is a broken agent, not a verdict.

Stdlib only and no imports from the project: it runs under whatever python3 the uid can reach.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import sys
import threading
import time

# <linux/netfilter_ipv4.h> SO_ORIGINAL_DST and <linux/netfilter_ipv6/ip6_tables.h>
# IP6T_SO_ORIGINAL_DST; Python's socket module has neither.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28
CONNECT_FAILED = 3
# A listener nobody stops still ends: the sandbox dies with its PID 1 anyway, this bounds a
# listener started by hand.
DEFAULT_LISTEN_SECONDS = 900.0


def endpoint(addr: str, port: int) -> str:
    """ "ip:port", with IPv6 addresses in brackets so the port cannot be misread."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def original_dst(conn: socket.socket) -> str | None:
    """The pre-NAT destination conntrack recorded for this connection, or None.

    Conntrack, where it is active, answers for every connection, NATed or not; for one that was
    not NATed the answer is the socket's own local address, which is reported as None too.
    Where conntrack is not active (a namespace without any netfilter rule) getsockopt fails.
    """
    try:
        if conn.family == socket.AF_INET6:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6_SIZE)
            (port,) = struct.unpack_from("!H", raw, 2)
            addr = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE)
            (port,) = struct.unpack_from("!H", raw, 2)
            addr = socket.inet_ntop(socket.AF_INET, raw[4:8])
    except OSError:
        return None
    original = endpoint(addr, port)
    local_addr, local_port = conn.getsockname()[:2]
    return None if original == endpoint(local_addr, local_port) else original


def reply_for(conn: socket.socket, peer: tuple[str, int], name: str) -> dict[str, str | None]:
    local_addr, local_port = conn.getsockname()[:2]
    return {
        "server": name,
        "orig_dst": original_dst(conn),
        "peer": endpoint(peer[0], peer[1]),
        "local": endpoint(local_addr, local_port),
    }


def exit_on_stdin_eof() -> None:
    """The harness keeps our stdin open; EOF means it is done with us (or gone)."""
    sys.stdin.buffer.read()
    os._exit(0)


def listen(port: int, family: str, name: str, until_stdin_eof: bool, seconds: float) -> int:
    af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    with socket.socket(af, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if af == socket.AF_INET6:
            # An IPv4 and an IPv6 listener may then share a port number.
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        server.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", port))
        server.listen(64)
        server.settimeout(0.5)
        if until_stdin_eof:
            threading.Thread(target=exit_on_stdin_eof, daemon=True).start()
        print(f"LISTENING {os.getpid()}", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn, peer = server.accept()
            except (socket.timeout, TimeoutError):  # socket.timeout is TimeoutError only from 3.10
                continue
            with conn:
                conn.settimeout(5)
                line = json.dumps(reply_for(conn, peer, name)) + "\n"
                try:
                    conn.sendall(line.encode())
                except OSError as exc:
                    print(f"reply to {peer} failed: {exc}", file=sys.stderr, flush=True)
    return 0


def connect(addr: str, port: int, timeout: float) -> int:
    af = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    deadline = time.monotonic() + timeout
    received = b""
    try:
        with socket.socket(af, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect((addr, port))
            while b"\n" not in received:
                client.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = client.recv(4096)
                if not chunk:
                    break
                received += chunk
    except OSError as exc:  # refused, timed out, reset, unreachable
        print(f"connect {endpoint(addr, port)}: {exc!r}", file=sys.stderr)
        return CONNECT_FAILED
    if b"\n" not in received:
        print(f"connect {endpoint(addr, port)}: no reply line: {received!r}", file=sys.stderr)
        return CONNECT_FAILED
    sys.stdout.write(received.decode().splitlines()[0] + "\n")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listen_cmd = commands.add_parser("listen")
    listen_cmd.add_argument("--port", type=int, required=True)
    listen_cmd.add_argument("--family", choices=["ipv4", "ipv6"], default="ipv4")
    listen_cmd.add_argument("--name", required=True)
    listen_cmd.add_argument("--until-stdin-eof", action="store_true")
    listen_cmd.add_argument("--seconds", type=float, default=DEFAULT_LISTEN_SECONDS)
    connect_cmd = commands.add_parser("connect")
    connect_cmd.add_argument("--addr", required=True)
    connect_cmd.add_argument("--port", type=int, required=True)
    connect_cmd.add_argument("--timeout", type=float, default=5.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "listen":
        return listen(args.port, args.family, args.name, args.until_stdin_eof, args.seconds)
    return connect(args.addr, args.port, args.timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
