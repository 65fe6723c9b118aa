"""Settings: kumactl's flags, config files and environment, and every validation error."""

from __future__ import annotations

import io
import json
import pwd
from pathlib import Path

import pytest

from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.settings import (
    DEFAULT_UID,
    FIELDS,
    Settings,
    UidExclusion,
    VnetNetwork,
    load_settings,
    read_nameservers,
)


def load(flags: dict[str, object] | None = None, **kw: object) -> Settings:
    return load_settings(flags=flags or {}, resolve=False, **kw)  # type: ignore[arg-type]


def error_of(**kw: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(resolve=kw.pop("resolve", False), **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    return message


def test_defaults_are_kumactls() -> None:
    s = load()
    assert s == Settings()
    assert (s.inbound_port, s.outbound_port, s.dns_port) == (15006, 15001, 15053)
    assert s.ip_family_mode == "dualstack" and s.ipvs == ("ipv4", "ipv6")
    assert s.redirect_inbound and s.redirect_outbound
    assert s.inbound_exclude_ports == ()  # Kuma no longer excludes 22 by default


def test_every_flag_maps_to_a_config_key_and_env_var() -> None:
    flags = {f.flag for f in FIELDS if f.flag}
    assert flags == {
        "--kuma-dp-user",
        "--ip-family-mode",
        "--redirect-inbound",
        "--redirect-inbound-port",
        "--redirect-outbound-port",
        "--exclude-inbound-ports",
        "--exclude-outbound-ports",
        "--exclude-inbound-ips",
        "--exclude-outbound-ips",
        "--exclude-outbound-ports-for-uids",
        "--redirect-dns",
        "--redirect-all-dns-traffic",
        "--redirect-dns-port",
        "--skip-dns-conntrack-zone-split",
        "--vnet",
        "--iptables-logs",
        "--drop-invalid-packets",
        "--redirect-inbound-insert-instead-of-append",
        "--redirect-outbound-insert-instead-of-append",
    }
    envs = {f.key: f.env for f in FIELDS}
    assert envs["kumaDPUser"] == "KUMA_TRANSPARENT_PROXY_KUMA_DP_USER"
    assert (
        envs["redirect.outbound.excludePortsForIPs"]
        == "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_IPS"
    )
    assert (
        envs["redirect.outbound.excludePortsForUIDs"]
        == "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_UIDS"
    )
    assert envs["redirect.inbound.insertRedirectInsteadOfAppend"] == (
        "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_INSERT_REDIRECT_INSTEAD_OF_APPEND"
    )


def test_flag_values(tmp_path: Path) -> None:
    s = load(
        {
            "--kuma-dp-user": "1234",
            "--ip-family-mode": "ipv4",
            "--redirect-inbound": False,
            "--redirect-inbound-port": "1001",
            "--redirect-outbound-port": "1002",
            "--exclude-inbound-ports": ["22,80", "443"],
            "--exclude-outbound-ports": ["8080"],
            "--exclude-inbound-ips": ["10.0.0.0/8,fd00::/8"],
            "--exclude-outbound-ips": ["192.0.2.1", "2001:db8::1"],
            "--exclude-outbound-ports-for-uids": ["tcp:53,3000-5000:106-108", "udp::7", "9"],
            "--redirect-all-dns-traffic": True,
            "--redirect-dns-port": "1053",
            "--skip-dns-conntrack-zone-split": True,
            "--vnet": ["docker0:172.17.0.0/16", "br+:fd00::/64"],
            "--iptables-logs": True,
            "--drop-invalid-packets": True,
            "--redirect-inbound-insert-instead-of-append": True,
            "--redirect-outbound-insert-instead-of-append": True,
        }
    )
    assert s.kuma_dp_uid == 1234 and s.ip_family_mode == "ipv4" and not s.redirect_inbound
    assert (s.inbound_port, s.outbound_port, s.dns_port) == (1001, 1002, 1053)
    assert s.inbound_exclude_ports == (22, 80, 443)
    assert s.inbound_exclude_ips == ("10.0.0.0/8", "fd00::/8")
    assert s.outbound_exclude_ips == ("192.0.2.1", "2001:db8::1")
    assert s.outbound_exclude_ports_for_uids == (
        UidExclusion(("tcp",), ("53", "3000:5000"), "106:108"),
        UidExclusion(("udp",), ("1:65535",), "7"),
        UidExclusion(("tcp", "udp"), ("1:65535",), "9"),
    )
    assert s.dns_capture_all and s.dns_enabled, "capture-all implies DNS redirection, as in Kuma"
    assert s.vnet == (VnetNetwork("docker0", "172.17.0.0/16"), VnetNetwork("br+", "fd00::/64"))
    assert s.log_enabled and s.drop_invalid_packets
    assert s.inbound_insert_instead_of_append and s.outbound_insert_instead_of_append


def test_precedence_defaults_files_env_flags(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(
        "redirect:\n  inbound:\n    port: 1111\n    excludePorts: [1, 2, 3]\n  outbound:\n    port: 2222\n"
    )
    second = tmp_path / "b.json"
    second.write_text(
        json.dumps({"redirect": {"inbound": {"excludePorts": [9]}, "dns": {"port": 3333}}})
    )
    env = {
        "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_PORT": "4444",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT": "5555",
        "KUMA_TRANSPARENT_PROXY_IP_FAMILY_MODE": "ipv4",
        "UNRELATED": "x",
    }
    s = load({"--redirect-dns-port": "6666"}, config_files=[str(first), str(second)], env=env)
    assert s.inbound_port == 1111, "from the first file"
    assert s.inbound_exclude_ports == (9,), "a later file's list replaces, not merges"
    assert s.outbound_port == 4444, "env beats files"
    assert s.dns_port == 6666, "flags beat env"
    assert s.ip_family_mode == "ipv4"


def test_config_comma_list_and_stdin(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("redirect: {inbound: {port: 1}}")
    b = tmp_path / "b.yaml"
    b.write_text("redirect: {inbound: {port: 2}}")
    assert load(config_files=[f"{a},{b}"]).inbound_port == 2
    stdin = io.StringIO('{"kumaDPUser": "42", "ipFamilyMode": "ipv4"}')
    s = load(config_files=["-"], stdin=stdin)
    assert s.kuma_dp_uid == 42 and s.ipvs == ("ipv4",)


def test_kumactl_only_keys_are_accepted_and_ignored(tmp_path: Path) -> None:
    f = tmp_path / "kuma.yaml"
    f.write_text(
        "kumaDPUser: '5678'\nwait: 5\nwaitInterval: 0\nverbose: true\ndryRun: false\n"
        "retry: {maxRetries: 4, sleepBetweenRetries: 2s}\nstoreFirewalld: true\n"
        "iptablesExecutables: {iptables: /usr/sbin/iptables}\n"
        "redirect: {dns: {enabled: false}, vnet: {networks: []}}\ncomments: {disabled: false}\n"
    )
    assert load(config_files=[str(f)]) == Settings(kuma_dp_user="5678")


def test_env_bools_and_lists() -> None:
    s = load(
        env={
            "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_ENABLED": "false",
            "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_EXCLUDE_PORTS": "1,2",
            "KUMA_TRANSPARENT_PROXY_REDIRECT_VNET_NETWORKS": "eth1:10.1.0.0/16",
            "KUMA_TRANSPARENT_PROXY_DROP_INVALID_PACKETS": "1",
        }
    )
    assert not s.redirect_inbound and s.outbound_exclude_ports == (1, 2)
    assert s.vnet == (VnetNetwork("eth1", "10.1.0.0/16"),) and s.drop_invalid_packets


# (flags, env, config text, expected error) — every message names the source and the value.
BAD = [
    (
        {"--redirect-inbound-port": "0"},
        "--redirect-inbound-port: value '0' is not a valid port (uint16 in the range [1, 65535])",
    ),
    (
        {"--redirect-outbound-port": "65536"},
        "--redirect-outbound-port: value '65536' is not a valid port",
    ),
    ({"--redirect-dns-port": "-1"}, "--redirect-dns-port: value '-1' is not a valid port"),
    ({"--redirect-inbound-port": "15006 -j ACCEPT"}, "value '15006 -j ACCEPT' is not a valid port"),
    ({"--redirect-inbound-port": "+80"}, "value '+80' is not a valid port"),
    ({"--redirect-inbound-port": "８０"}, "value '８０' is not a valid port"),
    (
        {"--exclude-inbound-ports": ["22,abc"]},
        "--exclude-inbound-ports: value 'abc' is not a valid port",
    ),
    (
        {"--exclude-outbound-ports": ["1-5"]},
        "--exclude-outbound-ports: value '1-5' is not a valid port",
    ),
    (
        {"--exclude-inbound-ips": ["10.0.0.0/33"]},
        "--exclude-inbound-ips: invalid IP address: '10.0.0.0/33'",
    ),
    (
        {"--exclude-outbound-ips": ["1.2.3.4 -j DROP"]},
        "--exclude-outbound-ips: invalid IP address: '1.2.3.4 -j DROP'",
    ),
    ({"--exclude-outbound-ips": ["-s"]}, "invalid IP address: '-s'"),
    ({"--exclude-outbound-ips": ["1.2.3.4\n-A"]}, "invalid IP address: '1.2.3.4\\n-A'"),
    ({"--exclude-outbound-ips": ['"1.2.3.4"']}, "invalid IP address: '\"1.2.3.4\"'"),
    (
        {"--exclude-outbound-ports-for-uids": ["a:b:c:d"]},
        "invalid format for excluding ports by UIDs: 'a:b:c:d'. Expected format: <protocol:>?<ports:>?<uids>",
    ),
    ({"--exclude-outbound-ports-for-uids": ["*"]}, "wildcard '*' is not allowed for UIDs"),
    (
        {"--exclude-outbound-ports-for-uids": ["sctp:80:1"]},
        "invalid or unsupported protocol: 'sctp'",
    ),
    ({"--exclude-outbound-ports-for-uids": ["a3000-5000:1"]}, "value 'a3000' is not a valid port"),
    (
        {"--exclude-outbound-ports-for-uids": ["5000-3000:1"]},
        "invalid port range '5000-3000': 5000 is greater than 3000",
    ),
    ({"--exclude-outbound-ports-for-uids": ["80:1-x"]}, "value 'x' is not a valid UID"),
    (
        {"--exclude-outbound-ports-for-uids": ["80:4294967295"]},
        "value '4294967295' is not a valid UID",
    ),
    (
        {"--exclude-outbound-ports-for-uids": ["80:1,2"]},
        "invalid UID entry: '1,2'. It should either be a single item or a range",
    ),
    (
        {"--exclude-outbound-ports-for-uids": ["1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16:1"]},
        "multiport match takes at most 15",
    ),
    ({"--vnet": ["docker0"]}, "--vnet: invalid virtual network definition: 'docker0'"),
    ({"--vnet": ["docker0:172.17.0.1"]}, "invalid CIDR definition for 'docker0:172.17.0.1'"),
    ({"--vnet": ["-j ACCEPT:10.0.0.0/8"]}, "invalid interface name '-j ACCEPT'"),
    (
        {"--vnet": ["averyveryverylongname:10.0.0.0/8"]},
        "invalid interface name 'averyveryverylongname'",
    ),
    (
        {"--ip-family-mode": "ipv6"},
        "--ip-family-mode: value 'ipv6' is not valid: must be one of 'dualstack' or 'ipv4'",
    ),
    (
        {"--kuma-dp-user": "kuma dp"},
        "--kuma-dp-user: value 'kuma dp' is not a valid UID or username",
    ),
    ({"--kuma-dp-user": "-5"}, "--kuma-dp-user: value '-5' is not a valid UID or username"),
    (
        {"--redirect-dns": True, "--redirect-all-dns-traffic": True},
        "only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified",
    ),
    (
        {"--exclude-inbound-ports": [",".join(str(p) for p in range(1, 300))]},
        "has 299 entries; at most 256 are allowed",
    ),
]


@pytest.mark.parametrize(("flags", "expected"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_flags(flags: dict[str, object], expected: str) -> None:
    assert expected in error_of(flags=flags)


def test_kuma_dp_user_name_must_exist() -> None:
    assert error_of(flags={"--kuma-dp-user": "no-such-user-xyz"}, resolve=True) == (
        "the specified UID or username ('no-such-user-xyz') does not refer to a valid user on the host"
    )


def test_kuma_dp_user_resolution() -> None:
    root = pwd.getpwuid(0).pw_name
    assert load_settings(flags={"--kuma-dp-user": root}).kuma_dp_uid == 0
    assert load_settings(flags={"--kuma-dp-user": "4000000000"}).kuma_dp_uid == 4000000000
    try:
        expected = pwd.getpwuid(DEFAULT_UID).pw_uid
    except KeyError:
        try:
            expected = pwd.getpwnam("kuma-dp").pw_uid
        except KeyError:
            expected = DEFAULT_UID
    assert load_settings().kuma_dp_uid == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "redirect:\n  inbound:\n    prot: 1\n",
            "a.yaml: unknown key 'redirect.inbound.prot'; known keys under 'redirect.inbound': enabled, excludePorts",
        ),
        ("redirecct: {}\n", "a.yaml: unknown key 'redirecct'"),
        (
            "redirect: {inbound: {port: 0}}\n",
            "a.yaml: redirect.inbound.port: value '0' is not a valid port",
        ),
        (
            "redirect: {inbound: {port: '1 -j X'}}\n",
            "a.yaml: redirect.inbound.port: value '1 -j X' is not a valid port",
        ),
        (
            "redirect: {inbound: {port: true}}\n",
            "a.yaml: redirect.inbound.port: value 'true' is not a valid port",
        ),
        ("ipFamilyMode: [ipv4]\n", "a.yaml: ipFamilyMode: value '[\"ipv4\"]' is not valid"),
        (
            "redirect: {inbound: {enabled: maybe}}\n",
            "a.yaml: redirect.inbound.enabled: value 'maybe' is not a valid boolean",
        ),
        ("redirect: [1\n", "parsing configuration from file 'a.yaml' failed at line 2"),
        (
            "- 1\n- 2\n",
            "parsing configuration from file 'a.yaml' failed: expected a mapping of settings, got list",
        ),
        ("comments: {disabled: true}\n", "a.yaml: comments.disabled: is not supported"),
        (
            "redirect: {inbound: {excludePortsForUIDs: ['1']}}\n",
            "a.yaml: redirect.inbound.excludePortsForUIDs: is not supported: Kuma turns it into a rule that returns all inbound traffic",
        ),
    ],
)
def test_bad_config_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.yaml").write_text(text)
    assert expected in error_of(config_files=["a.yaml"])


def test_missing_config_file() -> None:
    assert error_of(config_files=["/nonexistent/x.yaml"]) == (
        "unable to access configuration file '/nonexistent/x.yaml', please check if the file "
        "exists and has the correct permissions"
    )


def test_bad_env() -> None:
    assert error_of(env={"KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PORT": "x"}).startswith(
        "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PORT: value 'x' is not a valid port"
    )
    assert "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PROT: unknown variable" in error_of(
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PROT": "1"}
    )
    assert "chain names are fixed" in error_of(
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_CHAIN_NAME": "MINE"}
    )


def test_nameservers_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
        "nameserver 2001:db8::53\nnameserver 10.0.0.2\nnameserver bogus\n"
    )
    assert read_nameservers(str(conf)) == ("10.0.0.2", "2001:db8::53")
    s = load_settings(
        flags={"--redirect-dns": True, "--kuma-dp-user": "0"},
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(conf)},
    )
    assert s.dns_nameservers == ("10.0.0.2", "2001:db8::53") and s.warnings == ()


def test_no_nameserver_of_a_family_warns(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.0.0.2\n")
    f = tmp_path / "c.yaml"
    f.write_text(
        f"redirect: {{dns: {{enabled: true, resolvConfigPath: {conf}}}}}\nkumaDPUser: '0'\n"
    )
    s = load_settings(config_files=[str(f)])
    assert s.warnings == (
        f"no IPv6 DNS servers found in {conf}. DNS traffic capture for IPv6 will be disabled",
    )
    assert (
        error_of(
            flags={"--redirect-dns": True},
            env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": "/nonexistent"},
            resolve=True,
        )
        == "unable to read file /nonexistent"
    )


def test_json_round_trip() -> None:
    s = load(
        {
            "--exclude-outbound-ports-for-uids": ["tcp:53:1"],
            "--vnet": ["docker0:172.17.0.0/16"],
            "--exclude-inbound-ports": ["22"],
        }
    )
    assert Settings.from_json(json.loads(json.dumps(s.to_json()))) == s
