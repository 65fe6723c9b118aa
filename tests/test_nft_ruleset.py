"""The nftables table's text: what traffic cannot show (tests/test_nft_differential.py shows
the rest). Pure: no kernel, no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load

from tproxy_firewalld.entries import Rule
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import KUMA_RELEASES
from tproxy_firewalld.kuma import KumaSettings as Settings
from tproxy_firewalld.nft_ruleset import (
    MAX_COMMENT,
    NftError,
    build_nft_table,
    install_text,
    translate,
    uninstall_text,
)

MANY = {
    "--kuma-dp-user": "4321",
    "--exclude-inbound-ips": ["198.51.100.0/24"],
    "--exclude-outbound-ips": ["2001:db8:200::/48"],
    "--exclude-outbound-ports-for-uids": ["tcp:53,3000-5000,4000-6000:106-108"],
    "--redirect-dns": True,
    "--vnet": ["br+:172.18.0.0/16"],
    "--iptables-logs": True,
    "--drop-invalid-packets": True,
}


def settings(tmp_path: Path, flags: dict[str, object]) -> Settings:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    return load({"--kuma-dp-user": "5678", **flags}, resolv_conf_path=str(resolv))


def rules_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "comment" in line]


def test_a_negated_owner_match_also_takes_packets_without_a_socket(tmp_path: Path) -> None:
    """xt_owner's `! --uid-owner` matches a packet with no (file-backed) socket, nft's
    `skuid !=` never does: the table must not use it (traffic probes all have sockets, so
    only the text can show this)."""
    text = build_nft_table(settings(tmp_path, {})).text()
    assert "skuid !=" not in text
    lines = rules_of(text)
    at = lines.index(
        'oifname "lo" meta l4proto tcp meta skuid 5678 goto KUMA_MESH_OUTBOUND_tail_1 comment '
        '"kuma: return outbound TCP traffic destined for loopback interface, owned by any UID '
        'other than 5678 (kuma-dp user)"'
    )
    assert lines[at + 1].startswith('oifname "lo" meta l4proto tcp return comment')
    assert (
        lines[at + 2] == 'goto KUMA_MESH_OUTBOUND_tail_1 comment "the rest of KUMA_MESH_OUTBOUND"'
    )
    assert "chain KUMA_MESH_OUTBOUND_tail_1 {" in text


@pytest.mark.parametrize("release", KUMA_RELEASES)
def test_every_rule_says_which_of_kumas_rules_it_is_within_nfts_limit(
    tmp_path: Path, release: str
) -> None:
    flags = {"--kuma-version": release, "--redirect-dns": True}
    if release != "2.7":
        flags = {**MANY, **flags}
    for line in rules_of(build_nft_table(settings(tmp_path, flags)).text()):
        comment = line.split(' comment "', 1)[1]
        assert comment.endswith('"') and '"' not in comment[:-1], line
        assert len(comment) - 1 <= MAX_COMMENT, line
        assert comment.startswith(("kuma: ", "kuma 2.7: -", "the rest of ")), line


def test_priorities_follow_where_kuma_puts_its_rules(tmp_path: Path) -> None:
    defaults = build_nft_table(settings(tmp_path, {})).text()
    assert "hook prerouting priority -95;" in defaults and "hook output priority -95;" in defaults
    many = build_nft_table(settings(tmp_path, MANY)).text()
    for hook in (
        "type nat hook prerouting priority -105;",  # --vnet inserts
        "type nat hook output priority -105;",  # exclusions and DNS insert
        "type filter hook prerouting priority -295;",  # raw, before conntrack
        "type filter hook output priority -295;",
        "type filter hook prerouting priority -145;",  # mangle
    ):
        assert hook in many


def test_multiport_becomes_one_set_of_disjoint_ranges(tmp_path: Path) -> None:
    text = build_nft_table(settings(tmp_path, MANY)).text()
    assert "tcp dport { 53, 3000-6000 } meta skuid 106-108 return" in text


def test_a_rule_only_one_family_has_is_held_to_it(tmp_path: Path) -> None:
    text = build_nft_table(settings(tmp_path, {"--ip-family-mode": "ipv4"})).text()
    for line in rules_of(text):
        if not line.startswith("goto "):
            assert (
                line.startswith("meta nfproto ipv4 ")
                or " ip saddr " in f" {line}"
                or (" ip daddr " in f" {line}")
            ), line


def test_an_unknown_iptables_form_is_refused_not_guessed() -> None:
    rule = Rule(
        "ipv4", "nat", "OUTPUT", 1, ("-m", "set", "--match-set", "x", "dst", "-j", "RETURN")
    )
    with pytest.raises(NftError) as caught:
        translate(rule, "kuma/mesh/transparent/proxy/")
    assert isinstance(caught.value, SettingsError)
    assert "\n" not in str(caught.value) and "-m set" in str(caught.value)


def test_install_and_uninstall_are_each_one_replace_of_our_table_only(tmp_path: Path) -> None:
    table = build_nft_table(settings(tmp_path, {}))
    text = install_text(table)
    assert text.startswith(
        "table inet tproxy_firewalld_kuma {}\ndelete table inet tproxy_firewalld_kuma\n"
        "table inet tproxy_firewalld_kuma {\n"
    )
    assert "flush" not in text and "ruleset" not in text
    assert uninstall_text() == (
        "table inet tproxy_firewalld_kuma {}\ndelete table inet tproxy_firewalld_kuma\n"
    )


def test_the_module_imports_neither_jinja2_nor_lxml_nor_dbus() -> None:
    code = (
        "import sys, tproxy_firewalld.nft_ruleset; "
        "print([m for m in ('jinja2', 'lxml', 'dbus_next', 'rich', 'typer') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
