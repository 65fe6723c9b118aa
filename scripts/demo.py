"""The demo behind scripts/demo: install, diff, reload, traffic, uninstall in a sandbox."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import start_sandbox  # noqa: E402


def main() -> None:
    with start_sandbox("nftables", "yes") as sb:
        def show(*argv: str) -> None:
            print(f"$ {' '.join(argv)}")
            words = [sys.executable, "-m", "tproxy_firewalld", *argv[1:]] if argv[0] == "tproxy-firewalld" else list(argv)
            result = sb.run(*words, check=False)
            sys.stdout.write(result.stdout + result.stderr)
            if result.returncode:
                print(f"(exit {result.returncode})")
            print()

        print(f"# a private firewalld (backend {sb.backend}) is running in its own namespaces\n")
        show("firewall-cmd", "--permanent", "--direct", "--add-rule", "ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "2022", "-j", "ACCEPT")
        sb.reload()
        show("tproxy-firewalld", "install", "--exclude-inbound-ports", "22")
        show("tproxy-firewalld", "install", "--exclude-inbound-ports", "22")
        show("tproxy-firewalld", "diff")
        show("sh", "-c", "iptables-save -t nat | grep -E '^(:KUMA|-A (PREROUTING|OUTPUT) )'")
        show("firewall-cmd", "--reload")
        show("tproxy-firewalld", "status")
        peer = sb.add_peer()
        with sb.listen(15001, name="outbound-proxy"), sb.listen(8080, name="remote", netns=peer.name):
            print(f"# a connection to {peer.ipv4}:8080 lands on the proxy, which reads the original destination:")
            print(f"{sb.connect(peer.ipv4, 8080)}\n")
            show("tproxy-firewalld", "uninstall")
            print("# after uninstall it reaches the remote host again:")
            print(f"{sb.connect(peer.ipv4, 8080)}\n")
        show("firewall-cmd", "--permanent", "--direct", "--get-all-rules")


if __name__ == "__main__":
    main()
