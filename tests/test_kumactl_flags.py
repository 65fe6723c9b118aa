"""kumactl's command lines, as each maintained release takes them (issue 11, parity breaks):
a pasted `kumactl install transparent-proxy` line works after `tproxy-firewalld install`, or
fails with a reason, never with "No such option"."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from helpers import cli_runner, ready_root

from tproxy_firewalld.cli import app
from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import KumaSettings, read_nameservers
from tproxy_firewalld.ruleset import build_ruleset, render_restore

runner = cli_runner()

# Every flag of `kumactl install transparent-proxy` of the release (v2.14.3 and v2.7.29
# install_transparent_proxy.go), with a value kumactl takes.
LINE_2_14 = (
    "--dry-run --verbose --ip-family-mode dualstack --redirect-outbound-port 15001 "
    "--redirect-inbound=true --redirect-inbound-port 15006 --exclude-inbound-ports 22 "
    "--exclude-outbound-ports 25 --kuma-dp-user 5678 --kuma-dp-uid 5678 --redirect-dns "
    "--redirect-dns-port 15053 --store-firewalld --skip-dns-conntrack-zone-split=false "
    "--drop-invalid-packets --ebpf-enabled=false --ebpf-programs-source-path /tmp/kuma-ebpf "
    "--ebpf-instance-ip 10.0.0.1 --ebpf-bpffs-path /run/kuma/bpf --ebpf-cgroup-path /sys/fs/cgroup "
    "--ebpf-tc-attach-iface eth0 --exclude-outbound-ports-for-uids tcp:53:106 --vnet docker0:172.17.0.0/16 "
    "--wait 5 --wait-interval 0 --max-retries 4 --sleep-between-retries '\"2s\"' --iptables-logs "
    "--disable-comments=false --exclude-inbound-ips 10.1.0.0/16 --exclude-outbound-ips 10.2.0.0/16 "
    "--redirect-inbound-insert-instead-of-append --redirect-outbound-insert-instead-of-append "
    "--iptables-executables iptables:/usr/sbin/iptables,iptables-save:/usr/sbin/iptables-save"
)
LINE_2_7 = (
    "--kuma-version 2.7 --dry-run --verbose --ip-family-mode dualstack --redirect-outbound-port 15001 "
    "--redirect-inbound=true --redirect-inbound-port 15006 --redirect-inbound-port-v6 15006 "
    "--exclude-inbound-ports 22 --kuma-dp-user 5678 --kuma-dp-uid 5678 --redirect-dns "
    "--redirect-dns-port 15053 --redirect-dns-upstream-target-chain RETURN --store-firewalld "
    "--skip-dns-conntrack-zone-split=false --ebpf-enabled=false --ebpf-programs-source-path /tmp/kuma-ebpf "
    "--ebpf-instance-ip 10.0.0.1 --ebpf-bpffs-path /sys/fs/bpf --ebpf-cgroup-path /sys/fs/cgroup "
    "--ebpf-tc-attach-iface eth0 --exclude-outbound-tcp-ports-for-uids 53:106 "
    "--exclude-outbound-udp-ports-for-uids 53:107 --exclude-outbound-ports-for-uids 108 "
    "--vnet docker0:172.17.0.0/16 --wait 5 --wait-interval 0 --max-retries -1 --sleep-between-retries 2s"
)


def install_dry_run(tmp_path: Path, line: str) -> tuple[int, str, str]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    args = ["install", "--root", str(ready_root(tmp_path / "img")), *shlex.split(line)]
    env = {"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)}
    result = runner.invoke(app, args, env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("line", [LINE_2_14, LINE_2_7], ids=["2.14", "2.7"])
def test_a_pasted_kumactl_command_line_with_every_flag_works(tmp_path: Path, line: str) -> None:
    code, out, err = install_dry_run(tmp_path, line)
    assert code == 0, err
    assert "install: would change: direct.xml:" in out, out  # kumactl's --dry-run is ours
    assert not (tmp_path / "img/etc/firewalld/direct.xml").exists()


@pytest.mark.parametrize("release", ["2.11", "2.12", "2.13"])
def test_the_2_14_line_works_for_2_11_to_2_13(tmp_path: Path, release: str) -> None:
    code, _, err = install_dry_run(tmp_path, f"--kuma-version {release} {LINE_2_14}")
    assert code == 0, err


def test_kumactls_dry_run_spelling_is_ours_on_install(tmp_path: Path) -> None:
    code, out, _ = install_dry_run(tmp_path, "--kuma-dp-user 0 --dry-run=false")
    assert code == 0 and "install: direct.xml:" in out and "would change" not in out
    assert (tmp_path / "img/etc/firewalld/direct.xml").exists()
    # elsewhere it changes nothing it would not change anyway: render still renders
    render = runner.invoke(
        app,
        [
            "render",
            "--direct-xml",
            str(tmp_path / "x.xml"),
            "--kuma-dp-user",
            "0",
            "--dry-run",
            "--verbose",
        ],
    )
    assert render.exit_code == 0 and "<direct>" in render.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # another release's flag, named with the releases that have it
        (
            "--kuma-version 2.7 --iptables-logs",
            "--iptables-logs: Kuma 2.7 has no such setting (it exists in Kuma 2.11, 2.12, 2.13, 2.14)",
        ),
        (
            "--kuma-version 2.7 --exclude-outbound-ips 10.0.0.1",
            "--exclude-outbound-ips: Kuma 2.7 has no such setting",
        ),
        (
            "--kuma-version 2.7 --disable-comments=false",
            "--disable-comments: Kuma 2.7 has no such setting",
        ),
        (
            "--kuma-version 2.7 --iptables-executables iptables:/x",
            "--iptables-executables: Kuma 2.7 has no such",
        ),
        (
            "--redirect-inbound-port-v6 15006",
            "--redirect-inbound-port-v6: Kuma 2.14 has no such setting (it exists in Kuma 2.7)",
        ),
        (
            "--kuma-version 2.13 --exclude-outbound-tcp-ports-for-uids 53:1",
            "Kuma 2.13 has no such setting (it exists in Kuma 2.7)",
        ),
        (
            "--kuma-version 2.12 --redirect-dns-upstream-target-chain RETURN",
            "Kuma 2.12 has no such setting",
        ),
        (
            "--kuma-version 2.10",
            "--kuma-version: value '2.10' is not a supported Kuma release: one of 2.7, 2.11, 2.12, 2.13, 2.14",
        ),
        # kumactl's own refusals of its operational flags
        (
            "--disable-comments",
            "--disable-comments: is not supported: the comments are how tproxy-firewalld",
        ),
        (
            "--ebpf-enabled",
            "--ebpf-enabled: is not supported: eBPF mode installs no iptables rules",
        ),
        ("--wait x", "--wait: value 'x' is not a valid unsigned integer"),
        ("--wait -1", "--wait: value '-1' is not a valid unsigned integer"),
        ("--wait-interval 1.5", "--wait-interval: value '1.5' is not a valid unsigned integer"),
        (
            "--max-retries -1",
            "--max-retries: value '-1' is not a valid unsigned integer (kumactl 2.14 takes a uint)",
        ),
        (
            "--sleep-between-retries 2s",
            "--sleep-between-retries: value '2s' is refused, as kumactl 2.14 refuses it",
        ),
        (
            "--kuma-version 2.7 --sleep-between-retries 5",
            "value '5' is not a Go duration (kumactl 2.7 takes e.g. 2s",
        ),
        ("--verbose=maybe", "--verbose: value 'maybe' is not a valid boolean"),
        (
            "--iptables-executables iptables",
            "invalid format in 'iptables': expected '<name>:<path>'",
        ),
        (
            "--iptables-executables iptable:/usr/sbin/iptables",
            "unsupported executable name 'iptable'",
        ),
        # pflag's `--flag false` is --flag (true): refused, not reproduced
        (
            "--redirect-inbound false",
            "--redirect-inbound false: kumactl reads this as --redirect-inbound (true) and ignores 'false'; write --redirect-inbound=false",
        ),
        ("--dry-run true", "--dry-run true: kumactl reads this as --dry-run (true)"),
        # kumactl's refusals of values
        (
            "--exclude-outbound-ips ''",
            "--exclude-outbound-ips: invalid exclusion rule: the rule cannot be empty",
        ),
        (
            "--exclude-inbound-ips 10.0.0.1 --exclude-inbound-ips ''",
            "--exclude-inbound-ips: invalid exclusion rule: the rule cannot be empty",
        ),
        (
            "--exclude-outbound-ports-for-uids ''",
            "an empty UID is refused: kumactl 2.9+ turns it into a RETURN without an owner match",
        ),
        ("--exclude-outbound-ports-for-uids tcp:80:", "an empty UID is refused"),
        (
            "--ip-family-mode IPv4",
            "--ip-family-mode: value 'IPv4' is refused: kumactl accepts it but compares case-sensitively, so it means dualstack there",
        ),
        ("--ip-family-mode ipv6", "must be one of 'dualstack' or 'ipv4'"),
        (
            "--exclude-outbound-ips ::ffff:10.1.2.0/120",
            "'::ffff:10.1.2.0/120' is refused: kumactl counts an IPv4-mapped address as IPv4 and writes it verbatim into its IPv4 rules, where iptables refuses the prefix (invalid mask), so kumactl's install fails; write it as IPv4 (10.1.2.0/24)",
        ),
        (
            "--vnet br0:::ffff:10.0.0.0/104",
            "'br0:::ffff:10.0.0.0/104' is refused: kumactl counts an IPv4-mapped network as IPv4",
        ),
        (
            "--kuma-version 2.7 --exclude-outbound-ports 1 --exclude-outbound-udp-ports-for-uids 53:1",
            "you can't use --exclude-outbound-tcp-ports-for-uids and --exclude-outbound-udp-ports-for-uids anymore",
        ),
    ],
)
def test_what_kumactl_refuses_is_refused_with_a_reason(
    tmp_path: Path, line: str, message: str
) -> None:
    code, out, err = install_dry_run(tmp_path, "--kuma-dp-user 0 " + line)
    assert code == 2, (out, err)
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "No such option" not in err


def test_repeated_flags_and_the_help_that_says_which_add_up() -> None:
    help_text = " ".join(
        runner.invoke(app, ["install", "--help"], terminal_width=300).stdout.split()
    )
    for f in KumaSettings.flag_fields():
        if f.kind != "list":
            continue
        said = (
            "a repeated flag replaces the list"
            if f.repeat == "replace"
            else "repeated flags add up"
        )
        assert f"{f.flag} " in help_text and said in f.help, f.flag
    s = KumaSettings.load(
        flags={
            "--kuma-version": "2.7",
            "--exclude-inbound-ports": ["1000", "2000"],
            "--exclude-outbound-tcp-ports-for-uids": ["1:2", "3:4"],
            "--exclude-outbound-udp-ports-for-uids": ["5:6"],
            "--exclude-outbound-ports-for-uids": ["7"],
        }
    )
    assert s.exclude_inbound_ports == (2000,)
    # kumactl 2.7 puts the deprecated tcp, then udp entries after the others
    assert [x.to_text() for x in s.uid_exclusions] == [
        "tcp,udp:1-65535:7",
        "tcp:1:2",
        "tcp:3:4",
        "udp:5:6",
    ]


def test_ipv4_mapped_exclusions_become_ipv4_rules_as_in_kumactl() -> None:
    """kumactl counts ::ffff:10.1.2.3 as IPv4 and writes it verbatim into its IPv4 rules;
    iptables reads that as -d 10.1.2.3/32 (seen with iptables 1.8.9, nft and legacy; the kernel
    test proves the two rule sets equal). Here it is written as IPv4 straight away."""
    for family_mode in ("dualstack", "ipv4"):
        s = KumaSettings.load(
            flags={
                "--kuma-dp-user": "0",
                "--ip-family-mode": family_mode,
                "--exclude-outbound-ips": ["::ffff:10.1.2.3,2001:db8::1"],
                "--exclude-inbound-ips": ["::ffff:10.9.9.9"],
            }
        )
        assert s.exclude_outbound_ips == ("10.1.2.3", "2001:db8::1")
        v4 = render_restore(s, "ipv4")
        assert " -d 10.1.2.3 -j RETURN" in v4 and " -s 10.9.9.9 -j RETURN" in v4
        if family_mode == "dualstack":
            v6 = render_restore(s, "ipv6")
            assert "10.1.2.3" not in v6 and "ffff" not in v6 and "-d 2001:db8::1 -j RETURN" in v6


def test_ip_family_mode_in_kumactls_cases() -> None:
    assert KumaSettings.load(flags={"--ip-family-mode": "DualStack"}).ipvs == ("ipv4", "ipv6")
    assert KumaSettings.load(flags={"--ip-family-mode": ""}).ip_family_mode == "dualstack"
    assert KumaSettings.load(flags={"--ip-family-mode": "ipv4"}).ipvs == ("ipv4",)
    with pytest.raises(SettingsError, match="means dualstack there"):
        KumaSettings.load(flags={"--ip-family-mode": "IPV4"})


def test_nameservers_duplicates_once_mapped_as_ipv4_and_capped(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "nameserver 10.0.0.2\nnameserver 10.0.0.2\nnameserver ::ffff:10.0.0.9\n"
        "nameserver fe80::1%eth0\nnameserver dns.example\n"
    )
    # kumactl: a rule set per line (duplicates too), ::ffff:10.0.0.9 as 10.0.0.9 in IPv4,
    # unparsable entries as unrestricted IPv6 redirects. Here: each once, mapped as IPv4, the
    # unparsable skipped (README, "Where it differs").
    assert read_nameservers(str(conf)) == ("10.0.0.2", "10.0.0.9")
    s = KumaSettings.load(
        flags={"--redirect-dns": True, "--kuma-dp-user": "0"}, resolv_conf_path=str(conf)
    )
    rules = [
        r
        for r in build_ruleset(s).rules
        if "REDIRECT" in r.args and "udp" in r.args and r.chain == "OUTPUT"
    ]
    assert sorted((r.ipv, r.args[r.args.index("-d") + 1]) for r in rules) == [
        ("ipv4", "10.0.0.2"),
        ("ipv4", "10.0.0.9"),
    ]
    many = tmp_path / "many.conf"
    many.write_text(
        "nameserver 10.0.0.1\n" * 2000 + "".join(f"nameserver 10.1.0.{i}\n" for i in range(40))
    )
    with pytest.raises(SettingsError, match="lists 41 nameservers; at most 32"):
        read_nameservers(str(many))


def test_kuma_version_from_flag_config_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("kumaVersion: '2.12'\n")
    assert KumaSettings.load(config_files=[str(conf)]).kuma_version == "2.12"
    env = {"KUMA_TRANSPARENT_PROXY_KUMA_VERSION": "2.11"}
    assert KumaSettings.load(config_files=[str(conf)], env=env).kuma_version == "2.11"
    assert KumaSettings.load(env=env, flags={"--kuma-version": "2.7"}).kuma_version == "2.7"
    assert KumaSettings.load().kuma_version == "2.14"
    conf.write_text("kumaVersion: 2.10\n")
    with pytest.raises(
        SettingsError, match=re.escape("give it as a string: YAML reads 2.10 as the number 2.1")
    ):
        KumaSettings.load(config_files=[str(conf)])
    # a 2.9+ setting from a config file is refused for 2.7 too
    conf.write_text("kumaVersion: '2.7'\ndropInvalidPackets: true\n")
    with pytest.raises(
        SettingsError, match=re.escape("dropInvalidPackets: Kuma 2.7 has no such setting")
    ):
        KumaSettings.load(config_files=[str(conf)])
    # and a library value or a record with one
    with pytest.raises(
        SettingsError, match=re.escape("iptables_logs: Kuma 2.7 has no such setting")
    ):
        KumaSettings(kuma_version="2.7", iptables_logs=True)
    with pytest.raises(
        SettingsError, match=re.escape("redirect_inbound_port_v6: Kuma 2.13 has no such setting")
    ):
        KumaSettings.from_json({"kuma_version": "2.13", "redirect_inbound_port_v6": 1})


def test_2_7_flags_mean_what_they_mean_in_kumactl_2_7(tmp_path: Path) -> None:
    base = {"--kuma-version": "2.7", "--kuma-dp-user": "0", "--redirect-inbound-port": "12346"}
    s = KumaSettings.load(flags=base)
    assert (s.inbound_port("ipv4"), s.inbound_port("ipv6")) == (12346, 15006)
    assert [w.code for w in s.warnings] == ["ipv6-inbound-port"]
    assert (
        KumaSettings.load(flags={**base, "--redirect-inbound-port-v6": "15010"}).inbound_port(
            "ipv6"
        )
        == 12346
    )
    assert KumaSettings.load(flags={**base, "--redirect-inbound-port-v6": "0"}).ipvs == ("ipv4",)
    assert KumaSettings.load(flags={"--kuma-version": "2.7", "--kuma-dp-uid": "4321"}).uid == 4321
    root = KumaSettings.load(flags={"--kuma-dp-uid": "root"})
    assert root.uid == 0, "2.11-2.14 take --kuma-dp-uid as --kuma-dp-user"


def test_render_for_a_pasted_2_7_line_is_2_7s_rule_set(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["render", "--direct-xml", str(tmp_path / "none.xml"), "--kuma-version", "2.7", "--kuma-dp-uid", "0",
         "--exclude-outbound-tcp-ports-for-uids", "53:106"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = parse_direct_xml(result.stdout.encode())
    assert not any("comment" in r.args for r in config.rules)
    assert any(
        r.args
        == (
            "-m",
            "multiport",
            "-p",
            "tcp",
            "--dport",
            "53",
            "-m",
            "owner",
            "--uid-owner",
            "106",
            "-j",
            "RETURN",
        )
        for r in config.rules
    )
