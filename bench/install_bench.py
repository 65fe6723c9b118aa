"""Speed against a real firewalld (sandbox), side by side with `firewall-cmd --reload` in the same
run: prints figures, asserts nothing.

For each rule set (the default dual-stack set, and IPv4 with N = 0, 10, 100
--exclude-outbound-ips), the median wall time of R runs of:
  * tproxy-firewalld install from nothing (process start included)
  * the same install again (in sync: reads only)
  * tproxy-firewalld uninstall
  * firewall-cmd --reload with the same rules in direct.xml (what the ratios are against)
Every command runs inside the sandbox the same way (nsenter), so their overheads are alike.

Run: python3 bench/install_bench.py [R]      (R defaults to 7)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Sandbox, start_sandbox

from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.entries import DirectConfig
from tproxy_firewalld.kuma import KumaSettings
from tproxy_firewalld.ruleset import build_ruleset

TP = [sys.executable, "-m", "tproxy_firewalld"]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases() -> list[tuple[str, list[str]]]:
    out = [("default (dual-stack)", ["--kuma-dp-user", "5678"])]
    for n in (0, 10, 100):
        ips = [f"10.{i // 250}.{i % 250}.0/24" for i in range(n)]
        args = ["--kuma-dp-user", "5678", "--ip-family-mode", "ipv4"]
        if ips:
            args += ["--exclude-outbound-ips", ",".join(ips)]
        out.append((f"ipv4, N={n}", args))
    return out


def settings_of(args: list[str]) -> KumaSettings:
    flags: dict[str, list[str]] = {}
    for flag, value in zip(args[::2], args[1::2]):
        flags.setdefault(flag, []).append(value)
    return KumaSettings.load(flags=flags)


def measure(sb: Sandbox, args: list[str], runs: int) -> dict[str, float]:
    """Each round: a fresh install, the same again, an uninstall, and the reload of the same
    rules written to direct.xml, one after the other, so that every figure and the reload it
    is compared with see the same machine."""
    ours = build_ruleset(settings_of(args))
    data = render_direct_xml(ours)
    empty = render_direct_xml(DirectConfig())
    fresh, again, removal, reload_ = [], [], [], []
    for _ in range(runs):
        fresh.append(timed(lambda: sb.run(*TP, "install", *args)))
        again.append(timed(lambda: sb.run(*TP, "install", *args)))
        removal.append(timed(lambda: sb.run(*TP, "uninstall")))
        sb.direct_xml.write_bytes(data)
        reload_.append(timed(lambda: sb.firewall_cmd("--reload")))
        sb.direct_xml.write_bytes(empty)
        sb.firewall_cmd("--reload")
    return {
        "rules": float(len(ours.rules)),
        "install (fresh)": statistics.median(fresh),
        "install (in sync)": statistics.median(again),
        "uninstall": statistics.median(removal),
        "firewall-cmd --reload": statistics.median(reload_),
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    # An installed package is byte-compiled (pip, the RPM); a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 (as here) would compile every module on every run.
    import compileall

    import tproxy_firewalld

    compileall.compile_dir(str(Path(tproxy_firewalld.__file__).parent), quiet=1)
    print(
        f"median of {runs} runs; ratios against firewall-cmd --reload of the same rules, same run"
    )
    # RFC3964_IPv4=no: the rules' IPv6 part needs it; the stock yes would make install refuse
    with start_sandbox("nftables", "yes", conf={"RFC3964_IPv4": "no"}) as sb:
        sb.run(*TP, "install", "--kuma-dp-user", "5678")  # warm: byte code, template cache
        sb.run(*TP, "uninstall")
        for title, args in cases():
            m = measure(sb, args, runs)
            base = m["firewall-cmd --reload"]
            print(f"\n{title}: {int(m['rules'])} rules")
            for name in (
                "install (fresh)",
                "install (in sync)",
                "uninstall",
                "firewall-cmd --reload",
            ):
                print(f"  {name:24s} {m[name]:7.3f} s   {m[name] / base:5.2f} x reload")


if __name__ == "__main__":
    main()
