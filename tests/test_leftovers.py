"""kumactl's --store-firewalld leftovers, of every generation, and Kuma 2.7's comment-less rules:
recognised exactly, listed by status and diff, removed by uninstall, replaced by install; what
only might be Kuma's is listed and removed on request only; nothing foreign is ever touched.

The direct.xml files are built here as kumactl's translator wrote them (Kuma's
pkg/transparentproxy/firewalld, re-implemented below from its description — not the library's
code): from a release's dry-run output, every table and family into ipv="ipv4", `-N` a chain,
`-A` a rule at priority 3 with the rest of the line verbatim, and nothing at all when a line
inserts. The dry-run outputs are Kuma's own where Kuma publishes them (its kumactl dry-run
release goldens, read from $TPFW_KUMA_GOLDENS; the rules of its translator's test data and of
the 1.2.0 goldens, quoted below as facts) and otherwise tproxy-firewalld's renders, which match
every golden (test_releases.py).
"""

from __future__ import annotations

import pwd
import re
from pathlib import Path
from typing import Optional

import pytest
from harness import Backend, SandboxFactory
from helpers import cli_runner, direct_lines, file_config, kuma_goldens, ready_root, tpfw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tproxy_firewalld.cli import app
from tproxy_firewalld.directxml import parse_direct_xml
from tproxy_firewalld.entries import Chain, DirectConfig, Entry, Rule
from tproxy_firewalld.kuma import KUMA, KumaSettings
from tproxy_firewalld.kuma_leftovers import recognise
from tproxy_firewalld.ruleset import render_restore

runner = cli_runner()
UID = 5678


# -- kumactl's translator ---------------------------------------------------------------------

_MODE = re.compile(r"--?(?P<mode>[A-Za-z-]+)\s*(?P<chain>\w*)\s*(?P<rulenum>\d+)?\s*(?P<spec>.*)?")


def _go_escape(text: str) -> str:
    """Go's encoding/xml EscapeText, for the characters Kuma's rules can hold."""
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        text = text.replace(a, b)
    return text


def kumactl_store(stdout: str) -> Optional[str]:
    """direct.xml as kumactl's --store-firewalld wrote it for a dry-run's output; None when
    the translator fails (`unsupported iptables mode [I]`)."""
    tables: dict[str, list[str]] = {}
    table = ""
    for line in stdout.splitlines():
        if "COMMIT" in line:
            table = ""
            continue
        m = re.search(r"\* (\w*)", line)
        if m:
            table = m.group(1)
            continue
        if table and line.strip() and not line.startswith("#"):
            tables.setdefault(table, []).append(line)
    chains: list[str] = []
    rules: list[str] = []
    for table, lines in tables.items():
        for line in lines:
            m = _MODE.match(line)
            assert m, line
            mode, chain, spec = m.group("mode"), m.group("chain"), m.group("spec") or ""
            if mode in ("N", "new-chain"):
                item = f'<chain ipv="ipv4" table="{table}" chain="{chain}"></chain>'
                target = chains
            elif mode in ("A", "append"):
                item = f'<rule ipv="ipv4" table="{table}" chain="{chain}" priority="3">{_go_escape(spec)}</rule>'
                target = rules
            else:
                return None
            if item not in target:
                target.append(item)
    body = "".join(f"\n  {x}" for x in chains + rules)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<direct>{body}\n</direct>'


def dry_run(
    settings: KumaSettings,
    *,
    comments: bool = True,
    header: bool = True,
    ipvs: Optional[tuple[str, ...]] = None,
) -> str:
    """A release's dry-run stdout from tproxy-firewalld's render (equal to Kuma's goldens)."""
    parts = []
    for ipv in ipvs or settings.ipvs:
        text = render_restore(settings, ipv)
        if not comments:
            text = re.sub(r'-m comment --comment ".*?" ', "", text)
        parts.append((f"### {ipv} ###\n\n" if header else "") + text)
    return "\n\n".join(parts)


# -- the generations ----------------------------------------------------------------------------


def gid() -> int:
    try:
        return pwd.getpwuid(UID).pw_gid
    except KeyError:
        return UID  # kumactl 1.x: an unknown uid is its own gid


def istio_1_2(prefix: str = "MESH_", ipv6: bool = False) -> str:
    """kumactl 1.2.0 - 2.1 `--dry-run --kuma-dp-uid 5678 --store-firewalld`: the rules of Kuma
    1.2.0's install-transparent-proxy.defaults.golden.txt (`(.*)` is the chain prefix), IPv6
    as run.go's handleInboundIpv6Rules adds it on a host with IPv6; chains declared first."""
    g = gid()
    v4 = f"""-N {prefix}INBOUND
-N {prefix}REDIRECT
-N {prefix}IN_REDIRECT
-N {prefix}OUTPUT
-A {prefix}INBOUND -p tcp --dport 15008 -j RETURN
-A {prefix}REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A {prefix}IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j {prefix}INBOUND
-A {prefix}INBOUND -p tcp --dport 22 -j RETURN
-A {prefix}INBOUND -p tcp -j {prefix}IN_REDIRECT
-A OUTPUT -p tcp -j {prefix}OUTPUT
-A {prefix}OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A {prefix}OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner {UID} -j {prefix}IN_REDIRECT
-A {prefix}OUTPUT -o lo -m owner ! --uid-owner {UID} -j RETURN
-A {prefix}OUTPUT -m owner --uid-owner {UID} -j RETURN
-A {prefix}OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner {g} -j {prefix}IN_REDIRECT
-A {prefix}OUTPUT -o lo -m owner ! --gid-owner {g} -j RETURN
-A {prefix}OUTPUT -m owner --gid-owner {g} -j RETURN
-A {prefix}OUTPUT -d 127.0.0.1/32 -j RETURN
-A {prefix}OUTPUT -j {prefix}REDIRECT
"""
    out = (
        f"Writing following contents to rules file: /tmp/iptables-rules-1.txt\n* nat\n{v4}COMMIT\n"
    )
    if ipv6:
        v6 = (
            v4.replace("127.0.0.6/32", "::6/128")
            .replace("127.0.0.1/32", "::1/128")
            .replace("--to-ports 15006", "--to-ports 15010")
        )
        out += f"Writing following contents to rules file: /tmp/ip6tables-rules-1.txt\n* nat\n{v6}COMMIT\n"
    return out


# kumactl 1.8.x / 2.0.0-2.0.7 `--experimental-transparent-proxy-engine --redirect-all-dns-traffic`:
# the input of Kuma's translator test (pkg/transparentproxy/firewalld/testdata/full_direct.input.txt
# and its --verbose twin), uncommented DNS rules appended to OUTPUT.
KUMA_NET = """* nat
-N KUMA_MESH_INBOUND
-N KUMA_MESH_OUTBOUND
-N KUMA_MESH_INBOUND_REDIRECT
-N KUMA_MESH_OUTBOUND_REDIRECT
-A PREROUTING -p tcp -j KUMA_MESH_INBOUND
-A OUTPUT -p udp --dport 53 -m owner --uid-owner 5678 -j RETURN
-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053
-A OUTPUT -p tcp -j KUMA_MESH_OUTBOUND
-A KUMA_MESH_INBOUND -p tcp -j KUMA_MESH_INBOUND_REDIRECT
-A KUMA_MESH_OUTBOUND -s 127.0.0.6/32 -o lo -j RETURN
-A KUMA_MESH_OUTBOUND -p tcp ! --dport 53 -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 5678 -j KUMA_MESH_INBOUND_REDIRECT
-A KUMA_MESH_OUTBOUND -p tcp ! --dport 53 -o lo -m owner ! --uid-owner 5678 -j RETURN
-A KUMA_MESH_OUTBOUND -m owner --uid-owner 5678 -j RETURN
-A KUMA_MESH_OUTBOUND -p tcp --dport 53 -j REDIRECT --to-ports 15053
-A KUMA_MESH_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A KUMA_MESH_OUTBOUND -j KUMA_MESH_OUTBOUND_REDIRECT
-A KUMA_MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A KUMA_MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""
# the same with kumactl's conntrack zone split (kuma-net v0.4.3 iptables/builder/builder_raw.go)
KUMA_NET_RAW = """* raw
-A PREROUTING -p udp --sport 53 -j CT --zone 1
-A OUTPUT -p udp --dport 53 -m owner --uid-owner 5678 -j CT --zone 1
-A OUTPUT -p udp --sport 15053 -m owner --uid-owner 5678 -j CT --zone 2
-A OUTPUT -p udp --dport 53 -j CT --zone 2
COMMIT
"""
LONG = {
    "-N": "--new-chain", "-A": "--append", "-p": "--protocol", "--dport": "--destination-port",
    "--sport": "--source-port", "-j": "--jump", "-m": "--match", "-s": "--source",
    "-d": "--destination", "-o": "--out-interface",
}  # fmt: skip


def verbose(text: str) -> str:
    """kumactl --verbose: long option spellings, `# Custom Chains:` / `# Rules:` lines."""
    out = []
    for line in text.splitlines():
        if line.startswith("* "):
            out += [line, "", "# Custom Chains:"]
            continue
        if line.startswith("-A") and out[-1].startswith("--new-chain"):
            out += ["", "# Rules:"]
        out.append(" ".join(LONG.get(t, t) for t in line.split(" ")))
    return "\n".join(out) + "\n"


def settings_of(release: str, **values: object) -> KumaSettings:
    return KumaSettings.load(kuma_version=release, kuma_dp_user=str(UID), **values)  # type: ignore[arg-type]


def generations() -> dict[str, str]:
    """name -> what kumactl's --store-firewalld wrote (direct.xml text)."""
    goldens = kuma_goldens() / "releases"
    out = {
        "1.2-istio": istio_1_2(),
        "1.2-istio-ipv6-host": istio_1_2(ipv6=True),
        "translator-testdata-KUMA_": istio_1_2("KUMA_"),
        "1.8-kuma-net-dns": KUMA_NET,
        "1.8-kuma-net-dns-conntrack": KUMA_NET_RAW + KUMA_NET,
        "1.8-kuma-net-dns-verbose": verbose(KUMA_NET),
        "2.7-ipv4-host": dry_run(settings_of("2.7"), header=False, ipvs=("ipv4",)),
        "2.7-ipv6-host": dry_run(settings_of("2.7"), header=False, ipvs=("ipv6",)),
        "2.7-verbose": verbose(dry_run(settings_of("2.7"), header=False, ipvs=("ipv4",))),
        "2.13-comments": dry_run(settings_of("2.13")),
        "2.14-comments": dry_run(settings_of("2.14")),
        "2.14-ipv4-comments": dry_run(settings_of("2.14", ip_family_mode="ipv4")),
        # Kuma's own golden (comments off: no comment module on its CI host)
        "2.14-golden-defaults": (goldens / "2.14" / "install-transparent-proxy.defaults.golden.txt")
        .read_text()
        .replace("ifPlaceholder", "lo")
        .replace("--uid-owner 0", f"--uid-owner {UID}"),
        "2.11-golden-overrides": (
            goldens / "2.11" / "install-transparent-proxy.overrides.golden.txt"
        )
        .read_text()
        .replace("ifPlaceholder", "lo")
        .replace("--uid-owner 0", f"--uid-owner {UID}"),
    }
    stored = {name: kumactl_store(text) for name, text in out.items()}
    assert all(stored.values())
    return {name: xml for name, xml in stored.items() if xml is not None}


#: how a generation's leftovers must be recognised: by the defaults, or only with settings
#: that match what the kumactl run was given
NEEDS_SETTINGS = {"2.11-golden-overrides": ["--redirect-outbound-port", "12345", "--redirect-inbound-port", "12346",
                                            "--exclude-outbound-ports", "2000,2001", "--exclude-inbound-ports", "1000,1001"]}  # fmt: skip
#: those firewalld cannot load (kumactl labels its IPv6 rules ipv4): offline only
IPV6_AS_IPV4 = {"1.2-istio-ipv6-host", "2.7-ipv6-host", "2.13-comments", "2.14-comments"}


def test_configurations_with_inserts_were_never_stored() -> None:
    """The premise: kumactl's translator fails on -I, so DNS (2.0.8+), UID and IP exclusions,
    vnet, logs never reached direct.xml (Kuma's own goldens of every release)."""
    for release in ("2.7", "2.11", "2.12", "2.13", "2.14"):
        folder = kuma_goldens() / "releases" / release
        for golden in folder.iterdir():
            text = golden.read_text()
            assert (kumactl_store(text) is None) == ("-I " in text), golden


# -- foreign entries around them ----------------------------------------------------------------

FOREIGN = """
  <chain ipv="ipv4" table="filter" chain="MYAPP"></chain>
  <chain ipv="ipv4" table="nat" chain="MESH_EGRESS"></chain>
  <chain ipv="ipv4" table="nat" chain="KUMA_MESHCTL"></chain>
  <rule ipv="ipv4" table="filter" chain="MYAPP" priority="0">-p tcp --dport 9999 -j ACCEPT</rule>
  <rule ipv="ipv4" table="nat" chain="MESH_EGRESS" priority="3">-p tcp -j REDIRECT --to-ports 15001</rule>
  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="3">-p tcp -j MESH_EGRESS</rule>
  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="0">-p udp --dport 53 -j REDIRECT --to-ports 5353</rule>
  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="3">-p udp --dport 53 -m owner --uid-owner 1234 -j RETURN</rule>
  <rule ipv="ipv6" table="nat" chain="OUTPUT" priority="3">-p udp --dport 53 -j REDIRECT --to-ports 15053</rule>
  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="4">-p udp --dport 53 -m owner --uid-owner 5678 -j RETURN</rule>
  <rule ipv="ipv4" table="mangle" chain="PREROUTING" priority="0">-m conntrack --ctstate INVALID -j DROP</rule>
  <rule ipv="ipv4" table="nat" chain="KUMA_MESHCTL" priority="3">-j RETURN</rule>
  <passthrough ipv="ipv4">-t filter -A INPUT -p tcp --dport 9998 -j ACCEPT</passthrough>
"""
#: of FOREIGN, those that look like Kuma's DNS rules but match nothing exactly (listed only)
SUSPECTED = {
    "rule ipv4 nat OUTPUT 0 -p udp --dport 53 -j REDIRECT --to-ports 5353",
    "rule ipv4 nat OUTPUT 3 -p udp --dport 53 -m owner --uid-owner 1234 -j RETURN",
    "rule ipv6 nat OUTPUT 3 -p udp --dport 53 -j REDIRECT --to-ports 15053",
    "rule ipv4 nat OUTPUT 4 -p udp --dport 53 -m owner --uid-owner 5678 -j RETURN",
}


def with_foreign(xml: str) -> str:
    head, tail = xml.split("<direct>", 1)
    return f"{head}<direct>{FOREIGN}{tail}"


def foreign_config() -> DirectConfig:
    return parse_direct_xml(f"<direct>{FOREIGN}</direct>".encode())


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- offline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(generations()))
def test_every_generation_offline_listed_removed_replaced(tmp_path: Path, name: str) -> None:
    xml = generations()[name]
    kumas = parse_direct_xml(xml.encode())
    root = ready_root(tmp_path / "img")
    path = root / "etc/firewalld/direct.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(with_foreign(xml))
    before = path.read_bytes()
    extra = NEEDS_SETTINGS.get(name, [])
    args = ["--root", str(root)]

    if extra:
        # not what kumactl writes for the defaults: uninstall leaves the unmarked ones, diff
        # with the settings kumactl was given names them
        code, out, _ = cli("diff", *args, *extra)
        assert code == 1 and "(kumactl leftover)" in out, out
    else:
        code, out, _ = cli("status", *args)
        assert code == 0 and f"kumactl leftovers: {len(kumas)} entries" in out, out
        for e in kumas.entries():
            assert f"  {e.describe()}" in out, e
        for line in SUSPECTED:
            assert f"  ? {line}" in out, out

        code, out, _ = cli("uninstall", *args, "--dry-run")
        assert code == 0 and path.read_bytes() == before
        assert f"would remove {len(kumas)} kumactl leftovers" in out, out
        assert out.count("(kumactl leftover)") == len(kumas), out

        code, out, _ = cli("uninstall", *args)
        assert code == 0, out
        assert file_config_at(path).entries() == foreign_config().entries(), (
            "exactly the foreign entries are left"
        )

        code, out, _ = cli("uninstall", *args, "--remove-suspected")
        assert code == 0
        left = {e.describe() for e in file_config_at(path).entries()}
        assert left == {e.describe() for e in foreign_config().entries()} - SUSPECTED

    # install replaces them (given the settings kumactl had)
    path.write_text(with_foreign(xml))
    code, out, err = cli("install", *args, "--kuma-dp-user", str(UID), *extra)
    assert code == 0, err
    after = file_config_at(path)
    assert after.foreign(KUMA.owner).entries() == foreign_config().entries()
    assert _only_ours(after, extra), "no leftover survives install"
    code, out, _ = cli("diff", *args)
    assert code == 0, out


def file_config_at(path: Path) -> DirectConfig:
    return parse_direct_xml(path.read_bytes())


def _only_ours(config: DirectConfig, extra: list[str]) -> bool:
    """config holds the foreign entries and exactly our rule set (no leftover of kumactl's)."""
    from tproxy_firewalld.ruleset import build_ruleset

    flags = {extra[i]: [extra[i + 1]] for i in range(0, len(extra), 2)}
    ours = build_ruleset(KumaSettings.load(flags={"--kuma-dp-user": str(UID), **flags})).entries()
    return config.entries() - ours == foreign_config().entries()


def test_2_7_ownership_by_exact_match_with_the_record(tmp_path: Path) -> None:
    """Kuma 2.7's rules carry no comment: those outside KUMA_MESH_ chains are ours only because
    they are exactly what 2.7 renders for the recorded (or given, or default) settings."""
    root = ready_root(tmp_path / "img")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"redirect: {{dns: {{resolvConfigPath: {resolv}}}}}\n")
    line = ["--kuma-version", "2.7", "--kuma-dp-user", "4321", "--redirect-dns", "--config", str(conf),
            "--exclude-outbound-ports-for-uids", "tcp:25:7", "--vnet", "docker0:172.17.0.0/16"]  # fmt: skip
    path = root / "etc/firewalld/direct.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<direct>{FOREIGN}</direct>")
    code, out, err = cli("install", "--root", str(root), *line)
    assert code == 0, err
    installed = file_config_at(path)
    unmarked = [
        r for r in installed.rules if not KUMA.owner.marks(r) and r not in foreign_config().rules
    ]
    assert len(unmarked) > 10 and all(r.chain in ("PREROUTING", "OUTPUT") for r in unmarked)
    assert cli("diff", "--root", str(root))[0] == 0
    code, out, _ = cli("status", "--root", str(root))
    assert (
        "kumactl leftovers" not in out
        and f"file: {len(installed) - len(foreign_config())} of our entries" in out
    )
    assert "recorded: Kuma 2.7 rule set, installed " in out, out
    # the record goes: the rules for UID 4321 are no longer known, so only suspected
    (root / "var/lib/tproxy-firewalld/installed.json").unlink()
    code, out, _ = cli("uninstall", "--root", str(root), "--dry-run")
    assert "suspected (might be Kuma's" in out and "--uid-owner 4321 -j RETURN" in out, out
    # given again (diff with them names nothing to remove), and with the record uninstall is exact
    assert cli("diff", "--root", str(root), *line)[0] == 0
    assert cli("install", "--root", str(root), *line)[0] == 0
    code, out, _ = cli("uninstall", "--root", str(root))
    assert code == 0 and file_config_at(path).entries() == foreign_config().entries(), out


def test_a_bare_drop_invalid_rule_is_kumactls_only_for_settings_that_drop(tmp_path: Path) -> None:
    """kumactl 2.9+ with comments off stored `-m conntrack --ctstate INVALID -j DROP`, which any
    admin might write: exact only for recorded or given settings with --drop-invalid-packets;
    otherwise suspected (at kumactl's ipv4 and priority 3), never removed unasked."""
    s = settings_of("2.14", drop_invalid_packets=True)
    xml = kumactl_store(dry_run(s, comments=False))
    assert xml is not None and "INVALID -j DROP</rule>" in xml
    root = ready_root(tmp_path / "img")
    path = root / "etc/firewalld/direct.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(with_foreign(xml))
    drop = "rule ipv4 mangle PREROUTING 3 -m conntrack --ctstate INVALID -j DROP"
    code, out, _ = cli("status", "--root", str(root))
    assert (
        f"  ? {drop}" in out and "kumactl's --drop-invalid-packets rule without its comment" in out
    ), out
    assert cli("uninstall", "--root", str(root))[0] == 0
    assert drop in {e.describe() for e in file_config_at(path).rules}, "left: only suspected"
    path.write_text(with_foreign(xml))
    code, out, err = cli(
        "install", "--root", str(root), "--kuma-dp-user", str(UID), "--drop-invalid-packets"
    )
    assert code == 0, err
    assert drop not in {e.describe() for e in file_config_at(path).rules}, (
        "replaced: exact for the given settings"
    )
    assert _only_ours(file_config_at(path), ["--drop-invalid-packets", "true"])


# -- property: nothing foreign is ever removed ------------------------------------------------------

LEFTOVERS = {
    name: parse_direct_xml(xml.encode())
    for name, xml in generations().items()
    if name not in NEEDS_SETTINGS
}
_names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12)
_tables = st.sampled_from(["filter", "nat", "mangle", "raw"])
_builtin = st.sampled_from(["INPUT", "OUTPUT", "PREROUTING", "POSTROUTING", "FORWARD"])
_tokens = st.lists(
    st.sampled_from(["-p", "tcp", "udp", "--dport", "53", "15053", "15001", "-j", "RETURN", "REDIRECT",
                     "--to-ports", "-m", "owner", "--uid-owner", "5678", "1000", "-d", "127.0.0.1/32", "!",
                     "-o", "lo", "ACCEPT", "CT", "--zone", "1", "conntrack", "--ctstate", "INVALID", "DROP"]),
    min_size=1, max_size=10,
)  # fmt: skip


@st.composite
def foreign_entry(draw: st.DrawFn) -> Entry:
    """Anything another tool may hold, including Kuma lookalikes: a leftover with one thing
    changed (priority, family, a value or a chain name)."""
    kind = draw(st.sampled_from(["chain", "rule", "lookalike"]))
    if kind == "chain":
        name = draw(_names)
        if name.startswith("KUMA_MESH_"):
            name = "X" + name
        return Chain(draw(st.sampled_from(["ipv4", "ipv6"])), draw(_tables), name)
    if kind == "rule":
        rule = Rule(
            draw(st.sampled_from(["ipv4", "ipv6"])),
            draw(_tables),
            draw(_builtin),
            draw(st.integers(-5, 5)),
            tuple(draw(_tokens)),
        )
        return rule
    source = draw(st.sampled_from(sorted(LEFTOVERS)))
    base = draw(st.sampled_from(sorted(LEFTOVERS[source].rules)))
    change = draw(st.sampled_from(["priority", "ipv", "value", "extra"]))
    if change == "priority":
        return Rule(
            base.ipv,
            base.table,
            base.chain,
            draw(st.sampled_from([-1, 0, 1, 2, 4, 100])),
            base.args,
        )
    if change == "ipv":
        return Rule("ipv6", base.table, base.chain, base.priority, base.args)
    if change == "extra":
        return Rule(
            base.ipv,
            base.table,
            base.chain,
            base.priority,
            (*base.args, "-m", "mark", "--mark", "7"),
        )
    values = [
        i
        for i, a in enumerate(base.args)
        if a in ("5678", "15053", "15001", "15006", "53", "22", "15008")
        or a.startswith(("MESH_", "KUMA_"))
    ]
    if not values:
        return Rule(base.ipv, base.table, base.chain, 7, base.args)
    i = draw(st.sampled_from(values))
    args = list(base.args)
    args[i] = "X" + args[i] if args[i].startswith(("MESH_", "KUMA_")) else str(int(args[i]) + 1000)
    return Rule(base.ipv, base.table, base.chain, base.priority, tuple(args))


def _any_generation() -> set[Entry]:
    """Everything the test's own generations hold: a generated entry equal to one of them is
    kumactl's, not foreign."""
    out: set[Entry] = set()
    for config in LEFTOVERS.values():
        out |= config.entries()
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(sorted(LEFTOVERS)),
    foreign=st.lists(foreign_entry(), max_size=12),
)
def test_nothing_foreign_is_ever_removed(source: str, foreign: list[Entry]) -> None:
    """Whatever else direct.xml holds (other tools' entries, Kuma lookalikes with one thing
    changed), uninstall's ownership takes all of a kumactl leftover and nothing else — except
    what is ours by name (a KUMA_MESH_ chain, a rule in or jumping to one), as ever. A
    foreign rule inside (or jumping to) one of the leftover's old-scheme chains makes that
    chain and its rules only suspected: then they rightly stay."""
    leftover = LEFTOVERS[source]
    foreign_set = {e for e in foreign if e not in _any_generation()}
    config = DirectConfig(
        chains=tuple({*leftover.chains, *(e for e in foreign_set if isinstance(e, Chain))}),
        rules=tuple({*leftover.rules, *(e for e in foreign_set if isinstance(e, Rule))}),
    )
    recognition = recognise([config], [], KUMA)
    owner = KUMA.owner.claiming(recognition.claimed())
    removed = config.ours(owner).entries()
    by_name = {e for e in foreign_set if KUMA.owner.marks(e)}
    assert removed & foreign_set <= by_name, sorted(str(e) for e in removed & foreign_set - by_name)
    old_chains = {(c.ipv, c.table, c.chain) for c in leftover.chains if not KUMA.owner.marks(c)}
    spoiled = any(
        isinstance(e, Rule) and {(e.ipv, e.table, x) for x in (e.chain, *e.args)} & old_chains
        for e in foreign_set
    )
    if spoiled:
        assert not {c for c in leftover.chains if (c.ipv, c.table, c.chain) in old_chains} & removed
    else:
        assert leftover.entries() <= removed


# -- live -------------------------------------------------------------------------------------------


#: what firewalld can load (kumactl labelled IPv6 rules ipv4: those are tested offline), two
#: rounds of several generations at once (kumactl rewrote the whole file, so a real direct.xml
#: holds one; a mix is the harder case for recognition, and it keeps the sandbox time low)
LIVE_ROUNDS = [
    [
        "1.2-istio",
        "translator-testdata-KUMA_",
        "1.8-kuma-net-dns-conntrack",
        "1.8-kuma-net-dns-verbose",
    ],
    ["2.7-ipv4-host", "2.7-verbose", "2.14-ipv4-comments", "2.14-golden-defaults"],
]


def merged(names: list[str]) -> str:
    bodies = [generations()[n].split("<direct>", 1)[1].rsplit("</direct>", 1)[0] for n in names]
    return '<?xml version="1.0" encoding="UTF-8"?>\n<direct>' + "".join(bodies) + "\n</direct>"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_leftovers_live_listed_removed_replaced(
    make_sandbox: SandboxFactory, backend: Backend
) -> None:
    """Loaded by firewalld, listed by status, shown by uninstall --dry-run, removed by
    uninstall (runtime, permanent, file, kernel) with every foreign entry kept; the second
    round replaced by install instead."""
    sb = make_sandbox(backend)
    assert not {n for r in LIVE_ROUNDS for n in r} & (IPV6_AS_IPV4 | set(NEEDS_SETTINGS))
    foreign = foreign_config()
    for names in LIVE_ROUNDS:
        xml = merged(names)
        kumas = parse_direct_xml(xml.encode())
        sb.direct_xml.write_text(with_foreign(xml))
        sb.reload()
        assert sb.state() == "running", names
        assert "-j REDIRECT --to-ports 15001" in sb.iptables_save("ipv4", "nat"), names
        status = tpfw(sb, "status").stdout
        assert f"kumactl leftovers: {len(kumas)} entries" in status, (names, status)
        for line in SUSPECTED:
            assert f"  ? {line}" in status, status
        dry = tpfw(sb, "uninstall", "--dry-run").stdout
        assert dry.count("(kumactl leftover)") == 2 * len(kumas), dry  # runtime and permanent
        assert sb.direct_xml.read_text() == with_foreign(xml)
        last = names is LIVE_ROUNDS[-1]
        tpfw(sb, "install" if last else "uninstall")
        assert file_config(sb).foreign(KUMA.owner).entries() == foreign.entries(), names
        runtime = "\n".join(direct_lines(sb))
        for e in kumas.rules:
            if not KUMA.owner.marks(e):
                assert (
                    f"{e.ipv} {e.table} {e.chain} {e.priority} {' '.join(e.args)}" not in runtime
                ), e
        saved = sb.iptables_save("ipv4", "nat") + sb.iptables_save("ipv4", "raw")
        for gone in ("MESH_OUTPUT", "KUMA_OUTPUT", "15053", "CT --zone"):
            assert gone not in saved, (names, gone)
        if last:
            assert "KUMA_MESH_OUTBOUND" in saved and tpfw(sb, "diff", check=False).returncode == 0
            assert "kumactl leftovers" not in tpfw(sb, "status").stdout
        else:
            assert "KUMA_MESH_" not in saved
    assert "MESH_EGRESS" in sb.iptables_save("ipv4", "nat"), "a foreign chain named alike survives"


@pytest.mark.parametrize("backend", ["nftables"])
def test_2_7_install_live_and_uninstall_removes_its_unmarked_rules(
    make_sandbox: SandboxFactory, backend: Backend, tmp_path: Path
) -> None:
    sb = make_sandbox(backend)
    tpfw(
        sb,
        "install",
        "--kuma-version",
        "2.7",
        "--redirect-all-dns-traffic",
        "--exclude-outbound-ports-for-uids",
        "udp:53:99",
    )
    saved = sb.iptables_save("ipv4", "nat")
    assert "--to-ports 15053" in saved and "comment" not in saved
    assert tpfw(sb, "diff", check=False).returncode == 0
    status = tpfw(sb, "status").stdout
    assert (
        "kumactl leftovers" not in status and "suspected" not in status and "drift: none" in status
    )
    tpfw(sb, "uninstall")
    assert [line for line in direct_lines(sb) if "53" in line or "KUMA" in line] == []
    assert "15053" not in sb.iptables_save("ipv4", "nat") and "KUMA" not in sb.iptables_save(
        "ipv4", "nat"
    )
