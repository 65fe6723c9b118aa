"""Install speed against a real firewalld (sandbox): prints figures, asserts nothing.

Median wall time of N runs each, for the default dual-stack Kuma set (8 chains, 22 rules):
  * tproxy-firewalld install from nothing (process start included)
  * the same install again (in sync: reads only)
  * tproxy-firewalld uninstall
  * firewall-cmd per entry, runtime + permanent (what a shell script would do)
  * direct.xml written + firewall-cmd --reload
Run: python3 bench/install_bench.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import start_sandbox  # noqa: E402

from tproxy_firewalld.directxml import render_direct_xml  # noqa: E402
from tproxy_firewalld.entries import Chain, join_args  # noqa: E402
from tproxy_firewalld.ruleset import build_ruleset  # noqa: E402
from tproxy_firewalld.settings import load_settings  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ours = build_ruleset(load_settings(flags={"--kuma-dp-user": "5678"}))
    tp = [sys.executable, "-m", "tproxy_firewalld"]
    fresh, again, removal, per_entry, reload_ = [], [], [], [], []
    with start_sandbox("nftables", "yes") as sb:
        # D-Bus calls made, from the tool's own JSON report
        for _ in range(n):
            fresh.append(timed(lambda: sb.run(*tp, "install")))
            again.append(timed(lambda: sb.run(*tp, "install")))
            removal.append(timed(lambda: sb.run(*tp, "uninstall")))
        script = []
        for e in (*ours.chains, *ours.rules):
            if isinstance(e, Chain):
                spec = f"--add-chain {e.ipv} {e.table} {e.chain}"
            else:
                spec = f"--add-rule {e.ipv} {e.table} {e.chain} {e.priority} {join_args(e.args)}"
            script.append(f"firewall-cmd --direct {spec} >/dev/null")
            script.append(f"firewall-cmd --permanent --direct {spec} >/dev/null")
        for _ in range(min(n, 2)):
            per_entry.append(timed(lambda: sb.run("sh", "-ec", "\n".join(script), timeout=300)))
            sb.run(*tp, "uninstall")
        data = render_direct_xml(ours)
        for _ in range(n):
            def write_and_reload() -> None:
                sb.direct_xml.write_bytes(data)
                sb.firewall_cmd("--reload")
            reload_.append(timed(write_and_reload))
            sb.direct_xml.write_bytes(render_direct_xml(type(ours)()))
            sb.firewall_cmd("--reload")
    med = {k: statistics.median(v) for k, v in {
        "install (fresh)": fresh, "install (in sync)": again, "uninstall": removal,
        "firewall-cmd per entry (60 calls)": per_entry, "direct.xml + firewall-cmd --reload": reload_,
    }.items()}
    base = med["direct.xml + firewall-cmd --reload"]
    print(f"default dual-stack set: {len(ours.chains)} chains, {len(ours.rules)} rules; median of {n}")
    for name, value in med.items():
        print(f"  {name:38s} {value:7.3f} s   {value / base:5.2f} x reload")


if __name__ == "__main__":
    main()
