"""Hostile input, fuzzed: every flag and config key answers with a value or one of our errors.

Never a traceback, and never a rule carrying more iptables arguments than the option allows:
every token of every rendered rule is either one of the template's own option names or a
value of a safe shape (no whitespace, quotes, leading dash, or non-ASCII).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tproxy_firewalld.entries import MAX_CHAIN_NAME, DirectConfig
from tproxy_firewalld.errors import SettingsError
from tproxy_firewalld.kuma import MAX_UID
from tproxy_firewalld.kuma import KumaSettings as Settings
from tproxy_firewalld.ruleset import build_ruleset

FIELDS = Settings.fields()

#: every option name the template writes (from its text, so a new option is noticed)
OPTIONS = {
    "-m", "--comment", "-p", "--dport", "--sport", "-s", "-d", "-o", "-i", "-j", "--to-ports",
    "--uid-owner", "--zone", "--log-prefix", "--log-level", "--ctstate",
}  # fmt: skip
SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:/,+@-]+")
INJECTIONS = [
    "1 -j ACCEPT", "22\n-A INPUT -j ACCEPT", '"80"', "'80'", "-j", "--dport", "$(reboot)", "`id`",
    "80;rm -rf /", "８０", "٨٠", "1e3", "0x50", " 80", "80 ", "+80", "1_000", "lo -j DROP",
    "docker0:10.0.0.0/8 -j ACCEPT", "eth0\t:10.0.0.0/8", "::1/128 -s 0/0", "tcp:80:1 -j X",
    "10.0.0.1/8\x00", "ｔｃｐ:80:1", "ud\u0440:53:1",
]  # fmt: skip

texts = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(min_size=0, max_size=40),
    st.from_regex(r"[0-9a-f:./,\-* ]{0,30}", fullmatch=True),
    st.integers(min_value=-(2**40), max_value=2**40).map(str),
)
values: st.SearchStrategy[Any] = st.one_of(
    texts,
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
    st.lists(texts, max_size=5),
    st.lists(st.integers(min_value=0, max_value=70000), min_size=0, max_size=300),
    st.dictionaries(st.text(max_size=5), texts, max_size=2),
)

FUZZED = {"inputs": 0}


def check_rules(config: DirectConfig) -> None:
    for chain in config.chains:
        assert len(chain.chain) <= MAX_CHAIN_NAME
    for rule in config.rules:
        assert -(2**31) <= rule.priority < 2**31
        args = rule.args
        i = 0
        while i < len(args):
            token = args[i]
            if token == "!":
                i += 1
                continue
            assert token in OPTIONS, (token, rule)
            value = args[i + 1]
            if token == "--comment":
                assert (
                    value.startswith("kuma/mesh/transparent/proxy/")
                    and "\n" not in value
                    and '"' not in value
                )
                assert len(value.encode()) <= 254
            else:
                assert SAFE_VALUE.fullmatch(value) and not value.startswith("-"), (
                    token,
                    value,
                    rule,
                )
            if token in ("-s", "-d"):
                network = ipaddress.ip_network(value, strict=False)
                assert (network.version == 6) == (rule.ipv == "ipv6"), rule
            if token in ("--dport", "--sport", "--to-ports"):
                for part in re.split(r"[,:]", value):
                    assert 1 <= int(part) <= 65535, rule
            if token == "--uid-owner":
                for part in value.split(":"):
                    assert 0 <= int(part) <= MAX_UID
            i += 2


def answer(**kw: Any) -> Settings | None:
    FUZZED["inputs"] += 1
    try:
        s = Settings.load(**kw)
    except SettingsError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 2000
        return None
    check_rules(build_ruleset(s))
    return s


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from([f for f in FIELDS if f.flag]), value=values)
def test_any_flag_value(field: Any, value: Any) -> None:
    if isinstance(value, dict):
        value = str(value)
    answer(flags={field.flag: value})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from([f for f in FIELDS if f.key]), value=values)
def test_any_config_key_value(field: Any, value: Any) -> None:
    import io

    import yaml

    data: dict[str, Any] = {}
    node = data
    *parents, leaf = field.key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    answer(config_files=["-"], stdin=io.StringIO(yaml.safe_dump(data, allow_unicode=True)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from([f for f in FIELDS if f.env]), value=texts)
def test_any_environment_value(field: Any, value: str) -> None:
    if "\x00" in value:
        return  # an environment variable cannot hold NUL
    answer(env={field.env: value})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from([f for f in FIELDS if not f.ignored]), value=values)
def test_any_library_value(field: Any, value: Any) -> None:
    """The library's way in (keyword values by setting name) and the constructor itself."""
    answer(**{field.name: value})
    FUZZED["inputs"] += 1
    try:
        s = Settings(**{field.name: value})
    except SettingsError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    check_rules(build_ruleset(s))


@settings(max_examples=200, deadline=None)
@given(
    flags=st.fixed_dictionaries(
        {},
        optional={
            "--exclude-outbound-ports-for-uids": st.lists(texts, max_size=4),
            "--exclude-inbound-ips": st.lists(texts, max_size=4),
            "--exclude-outbound-ips": st.lists(texts, max_size=4),
            "--vnet": st.lists(texts, max_size=3),
            "--exclude-inbound-ports": st.lists(texts, max_size=3),
        },
    )
)
def test_combinations(flags: dict[str, Any]) -> None:
    answer(flags=flags)


def test_valid_values_are_accepted_and_rendered_safely() -> None:
    s = answer(
        flags={
            "--exclude-outbound-ports-for-uids": ["tcp:53,3000-5000:106-108", "udp:*:0-4294967294"],
            "--exclude-inbound-ips": ["192.0.2.0/24", "2001:db8::/32"],
            "--vnet": ["br+:fd00::/64", "docker0:172.17.0.0/16"],
            "--kuma-dp-user": "4294967294",
        }
    )
    assert s is not None and s.kuma_dp_uid == 4294967294


def test_report_how_many_inputs_were_fuzzed() -> None:
    # runs last in this file (definition order): the figure for the closing note
    print(f"fuzzed inputs: {FUZZED['inputs']}")
    assert FUZZED["inputs"] > 0
