"""Settings: kumactl's flags, config files and environment, and every validation error."""

from __future__ import annotations

import io
import json
import os
import pwd
from pathlib import Path

import pytest

from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import (
    DEFAULT_UID,
    UidExclusion,
    VnetNetwork,
    read_nameservers,
)
from tproxy_firewalld.kuma import KumaSettings as Settings

FIELDS = Settings.fields()


def load(flags: dict[str, object] | None = None, **kw: object) -> Settings:
    return Settings.load(flags=flags or {}, **kw)  # type: ignore[arg-type]


def error_of(**kw: object) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.load(**kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    return message


def test_defaults_are_kumactls() -> None:
    s = load()
    assert s == Settings()
    assert (s.redirect_inbound_port, s.redirect_outbound_port, s.redirect_dns_port) == (
        15006,
        15001,
        15053,
    )
    assert s.ip_family_mode == "dualstack" and s.ipvs == ("ipv4", "ipv6")
    assert s.redirect_inbound and s.redirect_outbound
    assert s.exclude_inbound_ports == ()  # Kuma no longer excludes 22 by default


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
        # issue 11: the release, and every other flag of kumactl 2.7 and 2.11-2.14
        "--kuma-version",
        "--kuma-dp-uid",
        "--redirect-inbound-port-v6",
        "--exclude-outbound-tcp-ports-for-uids",
        "--exclude-outbound-udp-ports-for-uids",
        "--redirect-dns-upstream-target-chain",
        "--disable-comments",
        "--dry-run",
        "--verbose",
        "--store-firewalld",
        "--wait",
        "--wait-interval",
        "--max-retries",
        "--sleep-between-retries",
        "--iptables-executables",
        "--ebpf-enabled",
        "--ebpf-programs-source-path",
        "--ebpf-instance-ip",
        "--ebpf-bpffs-path",
        "--ebpf-cgroup-path",
        "--ebpf-tc-attach-iface",
        "--configure-firewalld",  # tproxy-firewalld's own (firewalld.conf, with consent)
        "--allow-iptables-flush",  # tproxy-firewalld's own (consent to firewalld's flush)
    }
    # kumactl 2.7 has no config file: its own flags have no key
    assert {f.flag for f in FIELDS if f.flag and not f.key} == {
        "--kuma-dp-uid", "--redirect-inbound-port-v6", "--exclude-outbound-tcp-ports-for-uids",
        "--exclude-outbound-udp-ports-for-uids", "--redirect-dns-upstream-target-chain",
    }  # fmt: skip
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
    assert (s.redirect_inbound_port, s.redirect_outbound_port, s.redirect_dns_port) == (
        1001,
        1002,
        1053,
    )
    assert s.exclude_inbound_ports == (443,), "kumactl: a repeated port-list flag replaces"
    assert s.exclude_inbound_ips == ("10.0.0.0/8", "fd00::/8")
    assert s.exclude_outbound_ips == ("192.0.2.1", "2001:db8::1")
    assert s.exclude_outbound_ports_for_uids == (
        UidExclusion(("tcp",), ("53", "3000:5000"), "106:108"),
        UidExclusion(("udp",), ("1:65535",), "7"),
        UidExclusion(("tcp", "udp"), ("1:65535",), "9"),
    )
    assert s.redirect_all_dns_traffic and s.dns_enabled, (
        "capture-all implies DNS redirection, as in Kuma"
    )
    assert s.vnet == (VnetNetwork("docker0", "172.17.0.0/16"), VnetNetwork("br+", "fd00::/64"))
    assert s.iptables_logs and s.drop_invalid_packets
    assert (
        s.redirect_inbound_insert_instead_of_append and s.redirect_outbound_insert_instead_of_append
    )


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
    assert s.redirect_inbound_port == 1111, "from the first file"
    assert s.exclude_inbound_ports == (9,), "a later file's list replaces, not merges"
    assert s.redirect_outbound_port == 4444, "env beats files"
    assert s.redirect_dns_port == 6666, "flags beat env"
    assert s.ip_family_mode == "ipv4"


def test_config_comma_list_and_stdin(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("redirect: {inbound: {port: 1}}")
    b = tmp_path / "b.yaml"
    b.write_text("redirect: {inbound: {port: 2}}")
    assert load(config_files=[f"{a},{b}"]).redirect_inbound_port == 2
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
    assert not s.redirect_inbound and s.exclude_outbound_ports == (1, 2)
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
    # issue 13.7: `! -d X/0` passes iptables-restore --test but the kernel refuses it at commit
    ({"--vnet": ["docker0:172.17.0.0/0"]}, "'docker0:172.17.0.0/0': a /0 network"),
    ({"--vnet": ["docker0:0.0.0.0/0"]}, "'docker0:0.0.0.0/0': a /0 network"),
    ({"--vnet": ["br0:fd00::/0"]}, "'br0:fd00::/0': a /0 network"),
    ({"--vnet": ["br0:::/0"]}, "'br0:::/0': a /0 network"),
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
    assert error_of(flags={"--kuma-dp-user": "no-such-user-xyz"}) == (
        "the specified UID or username ('no-such-user-xyz') does not refer to a valid user on the host"
    )


def test_kuma_dp_user_resolution() -> None:
    root = pwd.getpwuid(0).pw_name
    assert Settings.load(flags={"--kuma-dp-user": root}).kuma_dp_uid == 0
    assert Settings.load(flags={"--kuma-dp-user": "4000000000"}).kuma_dp_uid == 4000000000
    try:
        expected = pwd.getpwuid(DEFAULT_UID).pw_uid
    except KeyError:
        try:
            expected = pwd.getpwnam("kuma-dp").pw_uid
        except KeyError:
            expected = DEFAULT_UID
    assert Settings.load().kuma_dp_uid == expected


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
            # a string: kumactl's Go JSON decoding hands it to the port parser with its quotes
            "redirect: {inbound: {port: '1 -j X'}}\n",
            "a.yaml: redirect.inbound.port: value '\"1 -j X\"' is not a valid port",
        ),
        (
            "redirect: {inbound: {port: '15006'}}\n",
            "a.yaml: redirect.inbound.port: value '\"15006\"' is not a valid port (uint16 in the range "
            "[1, 65535]); a config file takes a number here, as kumactl's does",
        ),
        (
            "redirect: {dns: {enabled: 'true'}}\n",
            "a.yaml: redirect.dns.enabled: value '\"true\"' is not a valid boolean",
        ),
        ("log: {level: '7'}\n", "a.yaml: log.level: value '\"7\"' is not a valid log level"),
        (
            "redirect: {inbound: {port: true}}\n",
            "a.yaml: redirect.inbound.port: value 'true' is not a valid port",
        ),
        ("ipFamilyMode: [ipv4]\n", "a.yaml: ipFamilyMode: value '[\"ipv4\"]' is not valid"),
        (
            "redirect: {inbound: {enabled: maybe}}\n",
            "a.yaml: redirect.inbound.enabled: value '\"maybe\"' is not a valid boolean",
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
    s = Settings.load(
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
    s = Settings.load(config_files=[str(f)])
    assert [w.message for w in s.warnings] == [
        f"no IPv6 DNS servers found in {conf}. DNS traffic capture for IPv6 will be disabled",
    ]
    assert (
        error_of(
            flags={"--redirect-dns": True},
            env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": "/nonexistent"},
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


# -- one declaration, every way in through the parsers (issue 12) ----------------------------


def test_the_constructor_validates_every_field() -> None:
    with pytest.raises(SettingsError) as info:
        Settings(redirect_inbound_port="1 -j ACCEPT")  # type: ignore[arg-type]
    assert info.value.setting == "redirect_inbound_port"
    assert str(info.value) == (
        "redirect_inbound_port: value '1 -j ACCEPT' is not a valid port (uint16 in the range [1, 65535])"
    )
    with pytest.raises(SettingsError, match="invalid IP address"):
        Settings(exclude_outbound_ips=("10.0.0.1 -j ACCEPT",))
    with pytest.raises(SettingsError, match="kuma_dp_uid: value '-1'"):
        Settings(kuma_dp_uid="-1")  # type: ignore[arg-type]
    # the parsers accept their own output: a valid Settings rebuilds to an equal one
    s = Settings(exclude_inbound_ports=[22], vnet=["docker0:172.17.0.0/16"])  # type: ignore[arg-type]
    assert s.exclude_inbound_ports == (22,) and s.replace() == s


@pytest.mark.parametrize(
    ("tampered", "message"),
    [
        (
            {"redirect_outbound_port": "15001 -j ACCEPT"},
            "redirect_outbound_port: value '15001 -j ACCEPT'",
        ),
        ({"exclude_outbound_ports_for_uids": ["tcp:1:1 -j X"]}, "exclude_outbound_ports_for_uids"),
        ({"vnet": ["eth0:10.0.0.0/8 -j ACCEPT"]}, "invalid CIDR definition"),
        ({"dns_nameservers": ["10.0.0.1 -j X"]}, "is not a nameserver address"),
        ({"no_such_setting": 1}, "unknown settings ['no_such_setting']"),
    ],
)
def test_a_tampered_state_file_never_reaches_the_template(
    tampered: dict[str, object], message: str
) -> None:
    data = {**load().to_json(), **tampered}
    with pytest.raises(SettingsError) as info:
        Settings.from_json(data, "installed.json: settings")
    assert message in str(info.value) and str(info.value).startswith("installed.json: settings: ")


def test_library_values_are_keyed_by_setting_name_and_errors_name_it(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 10.0.0.2\n")
    s = Settings.load(
        exclude_inbound_ports=[22],
        redirect_dns=True,
        resolv_conf_path=str(tmp_path / "resolv.conf"),
    )
    assert s.exclude_inbound_ports == (22,) and s.redirect_dns
    with pytest.raises(SettingsError) as info:
        Settings.load(redirect_inbound_port="abc")
    assert info.value.setting == "redirect_inbound_port"
    assert str(info.value).startswith("redirect_inbound_port: value 'abc' is not a valid port")
    with pytest.raises(
        SettingsError, match=r"^no_such: unknown setting; known: kuma_version, kuma_dp_user, "
    ):
        Settings.load(no_such=1)


def test_every_field_has_help_and_each_flag_key_and_env_is_unique() -> None:
    flags = [f.flag for f in FIELDS if f.flag]
    keys = [f.key for f in FIELDS if f.key]
    envs = [f.env for f in FIELDS if f.env]
    assert (
        len(flags) == len(set(flags))
        and len(keys) == len(set(keys))
        and len(envs) == len(set(envs))
    )
    assert all(f.help.strip() for f in FIELDS)
    assert all(
        f.kind in ("bool", "scalar", "list") and f.repeat in ("replace", "accumulate")
        for f in FIELDS
    )


def test_repeated_flags_replace_port_lists_and_accumulate_ip_lists() -> None:
    s = load(
        {"--exclude-inbound-ports": ["1000", "2000"], "--exclude-outbound-ports": ["3000", ""]}
    )
    assert s.exclude_inbound_ports == (2000,) and s.exclude_outbound_ports == ()
    s = load(
        {
            "--exclude-outbound-ips": ["10.0.0.1", "10.0.0.2,10.0.0.3"],
            "--vnet": ["a:10.1.0.0/16", "b:10.2.0.0/16"],
        }
    )
    assert s.exclude_outbound_ips == ("10.0.0.1", "10.0.0.2", "10.0.0.3") and len(s.vnet) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "redirect: {inbound: {port: 1}}\nredirect: {outbound: {port: 2}}\n",
            "duplicate key 'redirect'",
        ),
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"b{i}: &b{i} [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" for i in range(12)),
            "more than 64 aliases",
        ),
        ("[" * 5000 + "]" * 5000, "failed"),
    ],
)
def test_hostile_yaml_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert message in error_of(config_files=[str(f)])


def test_config_and_resolv_conf_reads_are_bounded(tmp_path: Path) -> None:
    assert "is not a regular file" in error_of(config_files=["/dev/zero"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "is not a regular file" in error_of(config_files=[str(fifo)])
    big = tmp_path / "big.yaml"
    big.write_text("#" * (2 * 1024 * 1024))
    assert "larger than" in error_of(config_files=[str(big)])
    assert "unable to read file /dev/zero" in error_of(
        flags={"--redirect-dns": True}, resolv_conf_path="/dev/zero"
    )
    many = tmp_path / "resolv.conf"
    many.write_text("".join(f"nameserver 10.0.{i // 256}.{i % 256}\n" for i in range(2000)))
    assert "lists 2000 nameservers; at most 32" in error_of(
        flags={"--redirect-dns": True}, resolv_conf_path=str(many)
    )
