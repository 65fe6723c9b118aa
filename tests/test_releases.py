"""Every maintained Kuma release (2.7, 2.11, 2.12, 2.13, 2.14): its rule set against every one
of its kumactl dry-run goldens (helpers.kuma_goldens(): releases/<X.Y>/), its flags, and
--kuma-version.

Each golden is compared as Kuma's own test compares it: the dry-run output of the arguments
Kuma's test passes (releases/README.md; v2.7.29 and v2.14.3's
app/kumactl/cmd/install/install_transparent_proxy_test.go), put through the same regular
expressions. The dry-run output is rebuilt here the way kumactl prints it: 2.11+ `### IPv4 ###`,
a blank line, the rules; 2.7 the rules of one family and its success line.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_runner, kuma_goldens, ready_root

from tproxy_firewalld.kuma import KUMA, KUMA_RELEASES, KumaSettings
from tproxy_firewalld.ruleset import build_ruleset, render_restore

SINCE_2_11 = ("2.11", "2.12", "2.13", "2.14")
TRAILER_2_7 = (
    "# Transparent proxy set up successfully, you can now run kuma-dp using transparent-proxy.\n"
)
BOOL_FLAGS = {f.flag for f in KumaSettings.flag_fields() if f.kind == "bool"}


def argv_flags(argv: str) -> dict[str, list[Any]]:
    """A kumactl command line as the CLI hands it to the settings (flag -> occurrences)."""
    tokens = shlex.split(argv)
    flags: dict[str, list[Any]] = {}
    i = 0
    while i < len(tokens):
        flag, eq, value = tokens[i].partition("=")
        if not eq:
            if flag in BOOL_FLAGS:
                value = "true"
            else:
                i += 1
                value = tokens[i]
        flags.setdefault(flag, []).append(value)
        i += 1
    return flags


def load(release: str, argv: str, tmp_path: Path | None = None) -> KumaSettings:
    return KumaSettings.load(flags={"--kuma-version": [release], **argv_flags(argv)})


def dry_run_2_11(settings: KumaSettings) -> str:
    """kumactl 2.11+ `--dry-run` stdout (iptables/setup.go dryRun: a header per family)."""
    parts = []
    for ipv in settings.ipvs:
        parts += [
            f"### {'IPv4' if ipv == 'ipv4' else 'IPv6'} ###",
            render_restore(settings, ipv).strip(),
        ]
    return "\n\n".join(parts) + "\n"


def kuma_transform_2_11(out: str) -> str:
    """v2.14.3 install_transparent_proxy_test.go:62-68 (v2.11.18's is the same)."""
    out = re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", out)
    out = re.sub(r'-m comment --comment ".*?" ', "", out)
    return re.sub(
        r"(?m)^-I OUTPUT (\d+) -p udp --dport 53 -m owner --uid-owner (\d+) -j (\w+)$",
        r"-I OUTPUT \1 -p udp --dport 53 -m owner --uid-owner \2 -j dnsJumpTargetPlaceholder",
        out,
    )


def kuma_transform_2_7(out: str) -> str:
    """v2.7.29 install_transparent_proxy_test.go:56-65."""
    out = re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", out)
    out = re.sub(r"-([sd]) ([^ ]+)", r"-\1 subnetPlaceholder/mask", out)
    out = re.sub(
        r"(?m)^-I OUTPUT (\d+) -p udp --dport 53 -m owner --uid-owner (\d+) -j (\w+)$",
        r"-I OUTPUT \1 -p udp --dport 53 -m owner --uid-owner \2 -j dnsJumpTargetPlaceholder",
        out,
    )
    return out.replace("15006", "inboundPort").replace("15010", "inboundPort")


# Kuma's test entries: (golden, extra arguments). 2.11+ adds `--ip-family-mode ipv4`.
FOR_UIDS = (
    "--exclude-outbound-ports-for-uids tcp:1900,1902,1000-2000:106-108 "
    "--exclude-outbound-ports-for-uids tcp:2900,2902,3000-5000:203 "
    "--exclude-outbound-ports-for-uids udp:3900,3902,4000-6000:303"
)
OVERRIDES = (
    "--redirect-outbound-port 12345 --redirect-inbound-port 12346 "
    "--exclude-outbound-ports 2000,2001 --exclude-inbound-ports 1000,1001"
)
CASES_2_11 = [
    ("install-transparent-proxy.defaults.golden.txt", "--kuma-dp-user root"),
    ("install-transparent-proxy.defaults.golden.txt", "--kuma-dp-user 0"),
    # Kuma's test also runs the no-conntrack golden on a host without the conntrack module;
    # tproxy-firewalld always writes the conntrack rules, so only the --skip entry applies.
    (
        "install-transparent-proxy.dns.no-conntrack.golden.txt",
        "--kuma-dp-user 0 --redirect-all-dns-traffic --redirect-dns-port 12345 --skip-dns-conntrack-zone-split",
    ),
    ("install-transparent-proxy.overrides.golden.txt", f"--kuma-dp-user root {OVERRIDES}"),
    (
        "install-transparent-proxy.overrides.golden.txt",
        f"--kuma-dp-user root {OVERRIDES} --ip-family-mode ipv4",
    ),
    ("install-transparent-proxy.excludedports.txt", f"--kuma-dp-user root {FOR_UIDS}"),
    (
        "install-transparent-proxy.excludedports_wildcards.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids '*:*:0'",
    ),
    (
        "install-transparent-proxy.excludedports_allprotos.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids 'tcp:*:0'",
    ),
    (
        "install-transparent-proxy.excludedports_onlyuid.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids 123",
    ),
    ("install-transparent-proxy.excludedports_simpler.txt", f"--kuma-dp-user root {FOR_UIDS}"),
]
CASES_2_7 = [
    ("install-transparent-proxy.defaults.golden.txt", "--kuma-dp-user root"),
    ("install-transparent-proxy.defaults.golden.txt", "--kuma-dp-uid 0"),
    (
        "install-transparent-proxy.dns.golden.txt",
        "--kuma-dp-uid 0 --redirect-all-dns-traffic --redirect-dns-port 12345",
    ),
    (
        "install-transparent-proxy.dns.no-conntrack.golden.txt",
        "--kuma-dp-uid 0 --redirect-all-dns-traffic --redirect-dns-port 12345 --skip-dns-conntrack-zone-split",
    ),
    (
        "install-transparent-proxy.overrides.golden.txt",
        f"--kuma-dp-user root {OVERRIDES} --redirect-inbound-port-v6 12346",
    ),
    (
        "install-transparent-proxy.overrides.golden.txt",
        f"--kuma-dp-user root {OVERRIDES} --ip-family-mode ipv4",
    ),
    (
        "install-transparent-proxy.excludedports.txt",
        "--kuma-dp-user root --exclude-outbound-tcp-ports-for-uids 1900,1902,1000-2000:106-108 "
        "--exclude-outbound-tcp-ports-for-uids 2900,2902,3000-5000:203 "
        "--exclude-outbound-udp-ports-for-uids 3900,3902,4000-6000:303",
    ),
    (
        "install-transparent-proxy.excludedports_wildcards.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids '*:*:0'",
    ),
    (
        "install-transparent-proxy.excludedports_allprotos.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids 'tcp:*:0'",
    ),
    (
        "install-transparent-proxy.excludedports_onlyuid.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids 123",
    ),
    ("install-transparent-proxy.excludedports_simpler.txt", f"--kuma-dp-user root {FOR_UIDS}"),
]
PARAMS = [
    pytest.param(release, golden, argv, id=f"{release}-{golden.split('.', 1)[1]}-{i}")
    for release in SINCE_2_11
    for i, (golden, argv) in enumerate(CASES_2_11)
] + [
    pytest.param("2.7", golden, argv, id=f"2.7-{golden.split('.', 1)[1]}-{i}")
    for i, (golden, argv) in enumerate(CASES_2_7)
]


def golden_text(release: str, name: str) -> str:
    return (kuma_goldens() / "releases" / release / name).read_text()


@pytest.mark.parametrize(("release", "golden", "argv"), PARAMS)
def test_every_golden_of_every_release(release: str, golden: str, argv: str) -> None:
    expected = golden_text(release, golden)
    if release == "2.7":
        settings = load(release, argv)
        # 2.7's dry-run prints one family (IPv6 when the host has it); its placeholders hide
        # which, so every family the settings install must give the golden.
        for ipv in settings.ipvs:
            assert kuma_transform_2_7(render_restore(settings, ipv) + TRAILER_2_7) == expected, ipv
    else:
        settings = load(release, "--ip-family-mode ipv4 " + argv)
        assert kuma_transform_2_11(dry_run_2_11(settings)) == expected


def test_the_golden_cases_cover_every_golden_file() -> None:
    for release in KUMA_RELEASES:
        files = {p.name for p in (kuma_goldens() / "releases" / release).iterdir()}
        cases = CASES_2_7 if release == "2.7" else CASES_2_11
        covered = {golden for golden, _ in cases}
        if release != "2.7":
            covered.add("install-transparent-proxy.dns.golden.txt")  # the stale one, below
        assert covered == files, release


DNS_ARGS = (
    "--ip-family-mode ipv4 --kuma-dp-user 0 --redirect-all-dns-traffic --redirect-dns-port 12345"
)


@pytest.mark.parametrize("release", SINCE_2_11)
def test_the_2_11_to_2_14_dns_golden_is_stale_and_what_the_code_emits_instead(release: str) -> None:
    """`install-transparent-proxy.dns.golden.txt` of 2.11-2.14 is 2.7's golden under a 2.11
    header: Kuma's test compares it only on a host with the conntrack module, where its CI
    never runs it (no iptables there: 'conntrack zone splitting is disabled'), so it went stale.

    Proven here: (1) the 2.11+ test's own transformations can never produce what it holds
    (`subnetPlaceholder`, `inboundPort` come from 2.7's test); (2) it is, line for line, 2.7's
    dns golden (2.14: with the `! --dport 53` that #16138 removed by hand); (3) what 2.11+ code
    emits for these arguments is the no-conntrack golden plus the raw table, and differs from
    the stale golden exactly by the TCP/53 REDIRECT in KUMA_MESH_OUTBOUND (removed by #14557)
    and the TCP/53 RETURN in OUTPUT (added by #15401)."""
    stale = golden_text(release, "install-transparent-proxy.dns.golden.txt")
    assert "subnetPlaceholder/mask" in stale and "inboundPort" in stale
    ours = kuma_transform_2_11(dry_run_2_11(load(release, DNS_ARGS)))
    assert "subnetPlaceholder" not in ours and "inboundPort" not in ours

    old = golden_text("2.7", "install-transparent-proxy.dns.golden.txt").replace(TRAILER_2_7, "")
    if release == "2.14":
        old = old.replace("-p tcp ! --dport 53 -o", "-p tcp -o")
    assert stale == "### IPv4 ###\n\n" + old

    no_conntrack = golden_text(release, "install-transparent-proxy.dns.no-conntrack.golden.txt")
    raw = (
        "* raw\n"
        "-A PREROUTING -p udp --sport 53 -j CT --zone 1\n"
        "-A OUTPUT -p udp --dport 53 -m owner --uid-owner 0 -j CT --zone 1\n"
        "-A OUTPUT -p udp --sport 12345 -m owner --uid-owner 0 -j CT --zone 2\n"
        "-A OUTPUT -p udp --dport 53 -j CT --zone 2\n"
        "COMMIT\n"
    )
    assert ours == no_conntrack.replace("### IPv4 ###\n\n", "### IPv4 ###\n\n" + raw)

    def unplaced(text: str) -> set[str]:
        text = re.sub(r"-([sd]) ([^ ]+)", r"-\1 X", text)
        return set(text.replace("15006", "P").replace("inboundPort", "P").splitlines())

    assert unplaced(stale) - unplaced(ours) == {
        "-A KUMA_MESH_OUTBOUND -p tcp --dport 53 -j REDIRECT --to-ports 12345"
    }
    assert unplaced(ours) - unplaced(stale) == {
        "-A OUTPUT -p tcp --dport 53 -m owner ! --uid-owner 0 -j RETURN"
    }


def test_2_11_to_2_13_differ_from_2_14_only_in_the_loopback_rules() -> None:
    """Facts of v2.11.18 builder_table_nat.go:147-163 (the same in 2.12.14 and 2.13.10): the
    comment says "(except to DNS port 53)" always; the match only when DNS is redirected in
    the family (here: an IPv4 nameserver only, so IPv6 has no `! --dport 53`)."""
    common = "--kuma-dp-user 5678"
    for release in ("2.11", "2.12", "2.13"):
        for dns in ("", " --redirect-dns"):
            old = build_ruleset(load_resolv(release, common + dns))
            new = build_ruleset(load_resolv("2.14", common + dns))
            changed = old.entries() ^ new.entries()
            assert {r.chain for r in changed} == {"KUMA_MESH_OUTBOUND"}  # type: ignore[union-attr]
            assert len(changed) == 8  # two rules per family, each side
            texts = {" ".join(r.args) for r in old.rules if r in changed}  # type: ignore[operator]
            assert all("(except to DNS port 53)" in t for t in texts)
            with_match = {t for t in texts if "! --dport 53" in t}
            if dns:
                assert len(with_match) == 2 and all(
                    "127.0.0.1/32" in t or "5678 -j RETURN" in t for t in with_match
                )
                assert all(
                    r.ipv == "ipv4"
                    for r in old.rules
                    if r in changed and "! --dport 53" in " ".join(r.args)
                )  # type: ignore[operator]
            else:
                assert with_match == set()
    comment = (
        "kuma/mesh/transparent/proxy/redirect outbound TCP traffic (except to DNS port 53) destined "
        "for loopback interface, but not targeting address 127.0.0.1/32, and owned by UID 5678 "
        "(kuma-dp user) to KUMA_MESH_INBOUND_REDIRECT chain for proper handling"
    )
    rules = build_ruleset(load_resolv("2.13", common + " --redirect-dns")).rules
    assert any(
        r.args[:4] == ("-m", "comment", "--comment", comment)
        and r.args[4:8] == ("-p", "tcp", "!", "--dport")
        for r in rules
    )


def load_resolv(release: str, argv: str) -> KumaSettings:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("nameserver 192.0.2.53\n")
        f.flush()
        return KumaSettings.load(
            flags={"--kuma-version": [release], **argv_flags(argv)}, resolv_conf_path=f.name
        )


def test_2_7_has_no_comments_and_its_own_template() -> None:
    settings = load("2.7", "--kuma-dp-user 0 --redirect-dns --vnet docker0:172.17.0.0/16")
    assert KUMA.template_path(settings).name == "kuma-2.7.rules.j2"
    assert KUMA.template_path(load("2.13", "")).name == "kuma.rules.j2"
    text = "".join(render_restore(settings, ipv) for ipv in settings.ipvs)
    assert "comment" not in text


# -- the kernel's view, every release: real firewalld, both backends ---------------------------

MANY_FLAGS_2_11 = (
    "--kuma-dp-user 4321 --redirect-inbound-port 16006 --redirect-outbound-port 16001 "
    "--exclude-inbound-ports 22 --exclude-outbound-ports 25 --exclude-inbound-ips 192.0.2.0/24 "
    "--exclude-outbound-ips 2001:db8::/48 --exclude-outbound-ips ::ffff:10.1.2.3 "
    "--exclude-outbound-ports-for-uids tcp:53,3000-5000:106-108 --redirect-dns --redirect-dns-port 16053 "
    "--vnet docker0:172.17.0.0/16 --iptables-logs --drop-invalid-packets "
    "--redirect-outbound-insert-instead-of-append"
)
MANY_FLAGS_2_7 = (
    "--kuma-dp-uid 4321 --redirect-inbound-port 16006 --redirect-inbound-port-v6 16010 "
    "--redirect-outbound-port 16001 --exclude-inbound-ports 22 "  # kumactl 2.7 refuses
    # --exclude-outbound-ports together with the tcp/udp variants below
    "--exclude-outbound-ports-for-uids tcp:53,3000-5000:106-108 "
    "--exclude-outbound-tcp-ports-for-uids 80:200 --exclude-outbound-udp-ports-for-uids 123:201 "
    "--redirect-dns --redirect-dns-port 16053 --vnet docker0:172.17.0.0/16 --vnet br+:fd00::/64"
)


def kumactl_text(settings: KumaSettings, ipv: str) -> str:
    """What kumactl of the release restores for the family: its dry-run rules, with an
    IPv4-mapped exclusion written verbatim as kumactl writes it (tproxy-firewalld writes the
    IPv4 address; the kernel must hold the same rule)."""
    text = render_restore(settings, ipv)
    if ipv == "ipv4":
        text = text.replace(" -d 10.1.2.3 ", " -d ::ffff:10.1.2.3 ")
    return text


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_every_release_in_the_kernel(make_sandbox: Any, backend: str, tmp_path: Path) -> None:
    """For each release, its defaults and a many-flags case: firewalld, loading our
    direct.xml, puts exactly the rules into the kernel that kumactl of that release restores
    (both families; one sandbox, the releases loaded in turn)."""
    from kernel_rules import (
        BARE_NETNS,
        FAMILIES,
        KUMA_TABLES,
        RESOLV_CONF,
        RESTORE,
        SAVE,
        assert_same_rules,
        firewalld_kernel_rules,
        kuma_rules,
        load_into_firewalld,
    )

    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    sb = make_sandbox(backend)
    checked = 0
    for release in KUMA_RELEASES:
        many = MANY_FLAGS_2_7 if release == "2.7" else MANY_FLAGS_2_11
        for case in ("--kuma-dp-user 5678", many):
            settings = KumaSettings.load(
                flags={"--kuma-version": [release], **argv_flags(case)},
                resolv_conf_path=str(resolv),
            )
            load_into_firewalld(sb, settings)
            for ipv in FAMILIES:
                if BARE_NETNS in sb.run("ip", "netns", "list").stdout.split():
                    sb.run("ip", "netns", "delete", BARE_NETNS)
                sb.run("ip", "netns", "add", BARE_NETNS)
                bare = ("ip", "netns", "exec", BARE_NETNS)
                sb.run(*bare, RESTORE[ipv], "--noflush", input=kumactl_text(settings, ipv))
                expected = kuma_rules(
                    "".join(sb.run(*bare, SAVE[ipv], "-t", t).stdout for t in KUMA_TABLES)
                )
                assert_same_rules(
                    firewalld_kernel_rules(sb, ipv),
                    expected,
                    f"{release} {case[:30]} {ipv} {backend}",
                )
                checked += 1
            if case == many and release != "2.7":
                nat = sb.iptables_save("ipv4", "nat")
                assert re.search(r"-A OUTPUT(_direct)? -d 10\.1\.2\.3/32 .*-j RETURN", nat), (
                    "IPv4-mapped, as iptables reads kumactl's"
                )
    assert checked == len(KUMA_RELEASES) * 2 * 2


def test_the_release_is_recorded_shown_and_diffed_against(tmp_path: Path) -> None:
    import json

    from tproxy_firewalld.cli import app

    runner = cli_runner()
    root = ready_root(tmp_path / "img")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    env = {"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)}
    base = ["--root", str(root)]
    line = ["--kuma-dp-user", "5678", "--redirect-dns"]
    assert (
        runner.invoke(app, ["install", *base, "--kuma-version", "2.12", *line], env=env).exit_code
        == 0
    )
    record = json.loads((root / "var/lib/tproxy-firewalld/installed.json").read_text())
    assert record["settings"]["kuma_version"] == "2.12"
    assert "recorded: Kuma 2.12 rule set" in runner.invoke(app, ["status", *base]).stdout
    assert runner.invoke(app, ["diff", *base]).exit_code == 0, "against the recorded 2.12"
    newer = runner.invoke(app, ["diff", *base, "--kuma-version", "2.14", *line], env=env)
    assert newer.exit_code == 1
    changed = [x for x in newer.stdout.splitlines() if x.startswith(("  + ", "  - "))]
    # the two loopback rules, IPv4 and IPv6 (IPv6 has no nameserver: only the comment differs)
    assert len(changed) == 8 and all("KUMA_MESH_OUTBOUND" in x and "loopback" in x for x in changed)
    upgrade = runner.invoke(app, ["install", *base, "--kuma-version", "2.14", *line], env=env)
    assert "direct.xml: +4 rules -4 rules; record: written" in upgrade.stdout, upgrade.stdout
    assert "recorded: Kuma 2.14 rule set" in runner.invoke(app, ["status", *base]).stdout
