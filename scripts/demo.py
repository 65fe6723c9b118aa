"""The demo behind scripts/demo: install, diff, reload, traffic, uninstall in a sandbox."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import start_sandbox


def main() -> None:
    with start_sandbox("nftables", "yes") as sb:

        def show(*argv: str) -> None:
            print(f"$ {' '.join(argv)}")
            words = (
                [sys.executable, "-m", "tproxy_firewalld", *argv[1:]]
                if argv[0] == "tproxy-firewalld"
                else list(argv)
            )
            result = sb.run(*words, check=False)
            sys.stdout.write(result.stdout + result.stderr)
            if result.returncode:
                print(f"(exit {result.returncode})")
            print()

        print(
            f"# a private firewalld {sb.firewalld_version()} (backend {sb.backend}, its stock firewalld.conf) is running in its own namespaces\n"
        )
        show(
            "firewall-cmd",
            "--permanent",
            "--direct",
            "--add-rule",
            "ipv4",
            "filter",
            "INPUT",
            "0",
            "-p",
            "tcp",
            "--dport",
            "2022",
            "-j",
            "ACCEPT",
        )
        sb.reload()
        print(
            "# before 2.3, firewalld's stock RFC3964_IPv4=yes would reject every IPv6 connection redirected to the proxy:\n"
        )
        show("tproxy-firewalld", "install", "--exclude-inbound-ports", "22")
        show(
            "tproxy-firewalld", "install", "--exclude-inbound-ports", "22", "--configure-firewalld"
        )
        show(
            "tproxy-firewalld", "install", "--exclude-inbound-ports", "22", "--configure-firewalld"
        )
        show("tproxy-firewalld", "diff")
        show("sh", "-c", "iptables-save -t nat | grep -E '^(:KUMA|-A (PREROUTING|OUTPUT) )'")
        show("firewall-cmd", "--reload")
        show("tproxy-firewalld", "status")
        peer = sb.add_peer()
        with (
            sb.listen(15001, name="outbound-proxy"),
            sb.listen(15001, name="outbound-proxy", family="ipv6"),
            sb.listen(8080, name="remote", netns=peer.name),
            sb.listen(8080, name="remote", netns=peer.name, family="ipv6"),
        ):
            print(
                "# connections to the remote host land on the proxy, which reads the original destination:"
            )
            print(f"{sb.connect(peer.ipv4, 8080)}")
            print(f"{sb.connect(peer.ipv6, 8080)}\n")
            show("tproxy-firewalld", "uninstall")
            print(
                "# after uninstall (RFC3964_IPv4 is yes again) they reach the remote host directly:"
            )
            print(f"{sb.connect(peer.ipv4, 8080)}")
            print(f"{sb.connect(peer.ipv6, 8080)}\n")
        show("firewall-cmd", "--permanent", "--direct", "--get-all-rules")


if __name__ == "__main__":
    main()
