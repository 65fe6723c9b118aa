"""Random VALID Kuma settings, for tests that need rule sets rather than refusals.

tests/test_fuzz.py draws hostile values for one option at a time (nearly all of them refused);
a traffic test needs whole settings that load. This draws every option test_fuzz.py fuzzes
(the same flags and config keys), each from values that carry meaning for traffic (ports and
addresses the probes can reach, UIDs the probes can take), in any combination, and for every
release; settings kumactl of that release refuses are rejected, not repaired.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import KUMA_RELEASES
from tproxy_firewalld.kuma import KumaSettings as Settings

NAMESERVERS = ("192.0.2.53", "127.0.0.53", "2001:db8::53")
VNETS = ("docker0:172.17.0.0/16", "br+:172.18.0.0/16", "br+:fd00:18::/64", "veth1:fd00:19::/64")
UID_EXCLUSIONS = ("tcp:8083:1001", "udp:53:1002", "8084,9000-9010:1003-1004", "1005", "tcp:*:1006")
KUMA_DP_UIDS = ("5678", "4321")
INBOUND_IPS = ("198.51.100.0/24", "198.51.100.7", "2001:db8:100::/48", "2001:db8:100::7")
OUTBOUND_IPS = ("203.0.113.0/24", "203.0.113.9/32", "2001:db8:200::/48", "2001:db8:200::9")


def _subset(items: tuple[str, ...], max_size: int = 3) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(items), max_size=max_size, unique=True)


#: a draw: (release, CLI flags, library values, nameservers of resolv.conf)
draws = st.tuples(
    st.sampled_from(KUMA_RELEASES),
    st.fixed_dictionaries(
        {"--kuma-dp-user": st.sampled_from(KUMA_DP_UIDS)},
        optional={
            "--ip-family-mode": st.sampled_from(["dualstack", "ipv4"]),
            "--redirect-inbound-port": st.sampled_from(["15006", "16006"]),
            "--redirect-outbound-port": st.sampled_from(["15001", "16001"]),
            "--redirect-dns-port": st.sampled_from(["15053", "16053"]),
            "--redirect-inbound": st.booleans(),
            "--exclude-inbound-ports": _subset(("22", "8081", "2222")),
            "--exclude-outbound-ports": _subset(("25", "8082")),
            "--exclude-inbound-ips": _subset(INBOUND_IPS),
            "--exclude-outbound-ips": _subset(OUTBOUND_IPS),
            "--exclude-outbound-ports-for-uids": _subset(UID_EXCLUSIONS),
            "--vnet": _subset(VNETS, 2),
            "--redirect-dns": st.booleans(),
            "--redirect-all-dns-traffic": st.booleans(),
            "--skip-dns-conntrack-zone-split": st.booleans(),
            "--iptables-logs": st.booleans(),
            "--drop-invalid-packets": st.booleans(),
            "--redirect-inbound-insert-instead-of-append": st.booleans(),
            "--redirect-outbound-insert-instead-of-append": st.booleans(),
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "include_inbound_ports": st.lists(st.sampled_from([8080, 8081]), unique=True),
            "include_outbound_ports": st.lists(st.sampled_from([8080, 8082]), unique=True),
            "redirect_outbound": st.booleans(),
        },
    ),
    _subset(NAMESERVERS),
)


def load_draw(draw: tuple[str, dict[str, Any], dict[str, Any], list[str]], tmp: Path) -> Settings:
    """The drawn settings, loaded the way the CLI loads them; SettingsError when the release
    refuses them."""
    release, flags, values, nameservers = draw
    if flags.get("--redirect-dns") and flags.get("--redirect-all-dns-traffic"):
        raise SettingsError("kumactl refuses both DNS flags", "redirect_dns")
    resolv = tmp / "resolv.conf"
    resolv.write_text("".join(f"nameserver {n}\n" for n in nameservers))
    given = {k: v for k, v in flags.items() if v not in (False, [])}
    if flags.get("--redirect-inbound") is False:
        given["--redirect-inbound"] = False
    return Settings.load(
        flags={"--kuma-version": release, **given},
        resolv_conf_path=str(resolv),
        **{k: v for k, v in values.items() if v != []},
    )
