"""direct.xml: read as strictly as firewalld, written exactly as firewalld writes it.

The reference behaviour is firewalld's ``src/firewall/core/io/direct.py`` (an ``xml.sax``
parser without namespace processing, and ``Direct.write()``). Where this file needs
firewalld's writer it uses a small port of it (``firewalld_write``) built on the same
``xml.sax.saxutils`` calls firewalld uses, so the byte-for-byte comparison is against
firewalld's escaping and quoting, not against lxml's.
"""

from __future__ import annotations

import io
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from xml.sax import saxutils

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tproxy_firewalld import directxml
from tproxy_firewalld.directxml import parse_direct_xml, read_direct_xml, render_direct_xml
from tproxy_firewalld.entries import (
    Chain,
    DirectConfig,
    Passthrough,
    Rule,
    posix_split,
)
from tproxy_firewalld.errors import DirectXmlError, ExitCode
from tproxy_firewalld.kuma import OWNER

# --------------------------------------------------------------------------------------
# Helpers: firewalld's model, written down independently of the code under test
# --------------------------------------------------------------------------------------

HEADER = '<?xml version="1.0" encoding="utf-8"?>\n'
IP_TABLES = ("security", "raw", "mangle", "nat", "filter")
EB_TABLES = ("broute", "nat", "filter")
IPV_TABLES = [("ipv4", t) for t in IP_TABLES] + [("ipv6", t) for t in IP_TABLES]
IPV_TABLES += [("eb", t) for t in EB_TABLES]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# the documented boundaries, separators included (issue 13: KUMA_MESHCTL_ALLOW and a comment
# "kuma/mesh/transparent/proxy-ops: ..." are somebody else's)
OUR_CHAIN = "KUMA_MESH_"
OUR_COMMENT = "kuma/mesh/transparent/proxy/"
JUMPS = ("-j", "--jump", "-g", "--goto")

R = '<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="0">'


def doc(body: str) -> bytes:
    return f"<direct>{body}</direct>".encode()


def rejected(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    with pytest.raises(DirectXmlError) as info:
        parse_direct_xml(data)
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    assert info.value.exit_code == ExitCode.DIRECT_XML
    return message


def spec_ours_rule(rule: Rule) -> bool:
    """The ownership rule of the brief, written independently of entries.py."""
    if rule.chain.startswith(OUR_CHAIN):
        return True
    a = rule.args
    for prev, tok in zip(a, a[1:]):
        if prev in JUMPS and tok.startswith(OUR_CHAIN):
            return True
        if prev == "--comment" and tok.startswith(OUR_COMMENT):
            return True
    return False


def dedup(items: Iterable) -> list:
    return list(dict.fromkeys(items))


def regroup(config: DirectConfig) -> DirectConfig:
    """What firewalld holds after reading ``config``: deduplicated, grouped as Direct does.

    Chains grouped by (ipv, table), rules by (ipv, table, chain), passthroughs by ipv;
    groups in first-seen order, insertion order inside a group; argument-less rules and
    passthroughs dropped.
    """

    def group(items: list, key: Callable) -> list:
        groups: dict = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        return [item for g in groups.values() for item in g]

    return DirectConfig(
        chains=tuple(group(dedup(config.chains), lambda c: (c.ipv, c.table))),
        rules=tuple(
            group([r for r in dedup(config.rules) if r.args], lambda r: (r.ipv, r.table, r.chain))
        ),
        passthroughs=tuple(
            group([p for p in dedup(config.passthroughs) if p.args], lambda p: p.ipv)
        ),
    )


def per_group(config: DirectConfig) -> dict:
    out: dict = {}
    for c in config.chains:
        out.setdefault(("chain", c.ipv, c.table), []).append(c)
    for r in config.rules:
        out.setdefault(("rule", r.ipv, r.table, r.chain), []).append(r)
    for p in config.passthroughs:
        out.setdefault(("passthrough", p.ipv), []).append(p)
    return out


class _FirewalldXMLGenerator(saxutils.XMLGenerator):
    """firewalld's IO_Object_XMLGenerator: XMLGenerator plus a self-closing simpleElement."""

    def simpleElement(self, name: str, attrs: dict[str, str]) -> None:
        self._write("<" + name)  # type: ignore[attr-defined]
        for key, value in attrs.items():
            self._write(f" {key}={saxutils.quoteattr(value)}")  # type: ignore[attr-defined]
        self._write("/>")  # type: ignore[attr-defined]


def firewalld_write(config: DirectConfig) -> bytes:
    """A port of firewalld's Direct.add_* + Direct.write(), for byte comparisons."""
    chains: dict[tuple[str, str], list[str]] = {}
    for c in config.chains:
        lst = chains.setdefault((c.ipv, c.table), [])
        if c.chain not in lst:
            lst.append(c.chain)
    rules: dict[tuple[str, str, str], dict[tuple[int, tuple[str, ...]], int]] = {}
    for r in config.rules:
        rules.setdefault((r.ipv, r.table, r.chain), {}).setdefault((r.priority, r.args), r.priority)
    passthroughs: dict[str, list[tuple[str, ...]]] = {}
    for p in config.passthroughs:
        lst2 = passthroughs.setdefault(p.ipv, [])
        if p.args not in lst2:
            lst2.append(p.args)

    def join(args: tuple[str, ...]) -> str:
        return " ".join(shlex.quote(a) for a in args)

    out = io.StringIO()
    h = _FirewalldXMLGenerator(out, "utf-8")
    h.startDocument()
    h.startElement("direct", {})  # type: ignore[arg-type]
    h.ignorableWhitespace("\n")
    for (ipv, table), names in chains.items():
        for name in names:
            h.ignorableWhitespace("  ")
            h.simpleElement("chain", {"ipv": ipv, "table": table, "chain": name})
            h.ignorableWhitespace("\n")
    for (ipv, table, chain), values in rules.items():
        for priority, args in values:
            if len(args) < 1:
                continue
            h.ignorableWhitespace("  ")
            attrs = {"ipv": ipv, "table": table, "chain": chain, "priority": f"{priority:d}"}
            h.startElement("rule", attrs)  # type: ignore[arg-type]
            h.ignorableWhitespace(saxutils.escape(join(args)))
            h.endElement("rule")
            h.ignorableWhitespace("\n")
    for ipv, arglists in passthroughs.items():
        for args in arglists:
            if len(args) < 1:
                continue
            h.ignorableWhitespace("  ")
            h.startElement("passthrough", {"ipv": ipv})  # type: ignore[arg-type]
            h.ignorableWhitespace(saxutils.escape(join(args)))
            h.endElement("passthrough")
            h.ignorableWhitespace("\n")
    h.endElement("direct")
    h.ignorableWhitespace("\n")
    h.endDocument()
    return out.getvalue().encode("utf-8")


# --------------------------------------------------------------------------------------
# 1. Rejections, with firewalld's wording
# --------------------------------------------------------------------------------------

NOT_WELL_FORMED = {
    "truncated": b'<?xml version="1.0" encoding="utf-8"?>\n<direct>\n  <rule ipv="ipv4" tab',
    "unclosed-root": b"<direct>",
    "two-roots": b"<direct/><direct/>",
    "empty": b"",
    "whitespace-only": b"  \n\t \n",
    "mismatched-tags": doc(R + "-j A</chain>"),
    "undefined-entity": doc(R + "-j &foo;</rule>"),
    "text-before-root": b"junk<direct/>",
}


@pytest.mark.parametrize("data", NOT_WELL_FORMED.values(), ids=NOT_WELL_FORMED.keys())
def test_not_well_formed_is_refused(data: bytes) -> None:
    message = rejected(data)
    # firewalld: INVALID_TYPE "Not a valid file: <expat's reason>"
    assert "not a valid file" in message.lower()


REJECTED = {
    # name: (document, words firewalld uses)
    "unknown-element": (doc("<foo/>"), ["PARSE_ERROR", "Unexpected element foo"]),
    "unknown-element-after-good-ones": (
        doc(R + "-j A</rule><chain ipv='ipv4' table='nat' chain='X'/><foo/>"),
        ["Unexpected element foo"],
    ),
    "root-zones": (b"<zones/>", ["Unexpected element zones"]),
    "root-zone-with-direct-inside": (b"<zone><direct/></zone>", ["Unexpected element zone"]),
    "root-is-a-rule": (R.encode() + b"-j A</rule>", ["Unexpected element rule"]),
    "nested-direct": (doc("<direct/>"), ["PARSE_ERROR", "More than one direct tag."]),
    "unknown-attr-on-rule": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="0" owner="me">-j A</rule>'),
        ["PARSE_ERROR", "rule: Unexpected attribute owner"],
    ),
    "unknown-attr-on-chain": (
        doc('<chain ipv="ipv4" table="nat" chain="X" priority="1"/>'),
        ["chain: Unexpected attribute priority"],
    ),
    "unknown-attr-on-passthrough": (
        doc('<passthrough ipv="ipv4" table="nat">-t nat -N X</passthrough>'),
        ["passthrough: Unexpected attribute table"],
    ),
    "unknown-attr-on-direct": (
        b'<direct version="1"/>',
        ["direct: Unexpected attribute version"],
    ),
    "xml-lang-on-direct": (b'<direct xml:lang="en"/>', ["direct: Unexpected attribute"]),
    "rule-without-priority": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT">-j A</rule>'),
        ["PARSE_ERROR", "Missing attribute priority for rule"],
    ),
    "rule-without-ipv": (
        doc('<rule table="nat" chain="OUTPUT" priority="0">-j A</rule>'),
        ["Missing attribute ipv for rule"],
    ),
    "chain-without-chain": (
        doc('<chain ipv="ipv4" table="nat"/>'),
        ["Missing attribute chain for chain"],
    ),
    "passthrough-without-ipv": (
        doc("<passthrough>-t nat -N X</passthrough>"),
        ["Missing attribute ipv for passthrough"],
    ),
    "rule-ipv-ip4": (
        doc('<rule ipv="ip4" table="nat" chain="OUTPUT" priority="0">-j A</rule>'),
        ["INVALID_IPV", "'ip4'"],
    ),
    "chain-ipv-ip4": (doc('<chain ipv="ip4" table="nat" chain="X"/>'), ["INVALID_IPV", "'ip4'"]),
    "passthrough-ipv-ip4": (doc('<passthrough ipv="ip4">-L</passthrough>'), ["INVALID_IPV"]),
    "ipv-uppercase": (doc('<chain ipv="IPV4" table="nat" chain="X"/>'), ["INVALID_IPV"]),
    "ipv4-broute": (
        doc('<chain ipv="ipv4" table="broute" chain="X"/>'),
        ["INVALID_TABLE", "'broute'"],
    ),
    "ipv6-broute-rule": (
        doc('<rule ipv="ipv6" table="broute" chain="X" priority="0">-j A</rule>'),
        ["INVALID_TABLE", "'broute'"],
    ),
    "eb-security": (
        doc('<chain ipv="eb" table="security" chain="X"/>'),
        ["INVALID_TABLE", "'security'"],
    ),
    "eb-mangle-rule": (
        doc('<rule ipv="eb" table="mangle" chain="X" priority="0">-j A</rule>'),
        ["INVALID_TABLE", "'mangle'"],
    ),
    "empty-table": (doc('<chain ipv="ipv4" table="" chain="X"/>'), ["INVALID_TABLE"]),
    "priority-high": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="high">-j A</rule>'),
        ["high", "is not a valid priority"],
    ),
    "priority-1.5": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="1.5">-j A</rule>'),
        ["1.5", "is not a valid priority"],
    ),
    "priority-empty": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="">-j A</rule>'),
        ["is not a valid priority"],
    ),
    "priority-0x10": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="0x10">-j A</rule>'),
        ["is not a valid priority"],
    ),
    "priority-int32-max+1": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="2147483648">-j A</rule>'),
        ["2147483648", "int32"],
    ),
    "priority-int32-min-1": (
        doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="-2147483649">-j A</rule>'),
        ["-2147483649", "int32"],
    ),
    "priority-huge": (
        doc(f'<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="{10**30}">-j A</rule>'),
        ["int32"],
    ),
    "rule-unbalanced-single-quote": (
        doc(R + "-m comment --comment 'oops -j A</rule>"),
        ["No closing quotation"],
    ),
    "rule-unbalanced-double-quote": (doc(R + '-j "A</rule>'), ["No closing quotation"]),
    "rule-trailing-backslash": (doc(R + "-j A\\</rule>"), ["No escaped character"]),
    "passthrough-unbalanced-quote": (
        doc('<passthrough ipv="ipv4">-t nat -N "X</passthrough>'),
        ["No closing quotation"],
    ),
    "element-inside-rule": (doc(R + "-j <b>A</b></rule>"), ["Unexpected element b"]),
    "rule-inside-rule": (doc(R + "-j A" + R + "-j B</rule></rule>"), ["Unexpected element rule"]),
    "element-inside-chain": (
        doc('<chain ipv="ipv4" table="nat" chain="X"><rule/></chain>'),
        ["Unexpected element rule"],
    ),
    "namespaced-element": (
        doc(R + '-j A</rule><k:rule xmlns:k="urn:k"/>'),
        ["Unexpected element"],
    ),
}


@pytest.mark.parametrize(("data", "words"), REJECTED.values(), ids=REJECTED.keys())
def test_refused_with_firewalld_wording(data: bytes, words: list[str]) -> None:
    message = rejected(data)
    for word in words:
        assert word in message, (word, message)


def test_one_bad_entry_refuses_the_whole_file_and_names_its_line() -> None:
    data = (
        HEADER + "<direct>\n"
        '  <chain ipv="ipv4" table="nat" chain="A"/>\n'
        '  <rule ipv="ipv4" table="nat" chain="A" priority="0">-j RETURN</rule>\n'
        '  <rule ipv="ipv4" table="nat" chain="A" priority="x">-j RETURN</rule>\n'
        "</direct>\n"
    ).encode()
    message = rejected(data)
    assert "(line 5)" in message
    assert "firewalld would reject" in message


def test_xmlns_with_a_uri_on_direct_is_refused() -> None:
    assert "PARSE_ERROR" in rejected(b'<direct xmlns="urn:x"/>')


XMLNS_CASES = {
    "xmlns-uri-on-direct": b'<direct xmlns="x"/>',
    "xmlns-empty-on-direct": b'<direct xmlns=""/>',
    "xmlns-prefix-on-direct": b'<direct xmlns:k="urn:k"/>',
    "xmlns-prefix-on-rule": doc(
        '<rule xmlns:k="urn:k" ipv="ipv4" table="nat" chain="OUTPUT" priority="0">-j A</rule>'
    ),
}


@pytest.mark.parametrize("data", XMLNS_CASES.values(), ids=XMLNS_CASES.keys())
def test_xmlns_is_an_unexpected_attribute_as_for_firewalld(data: bytes) -> None:
    message = rejected(data)
    assert "Unexpected attribute xmlns" in message


@pytest.mark.parametrize("where", ["direct", "chain"])
def test_xmlns_xml_redeclaration_is_refused(where: str) -> None:
    decl = 'xmlns:xml="http://www.w3.org/XML/1998/namespace"'
    data = (
        f"<direct {decl}/>"
        if where == "direct"
        else f'<direct><chain {decl} ipv="ipv4" table="nat" chain="X"/></direct>'
    )
    assert "Unexpected attribute xmlns" in rejected(data)


XMLNS_XML = 'xmlns:xml="http://www.w3.org/XML/1998/namespace"'
FOREIGN_RULE = '<rule ipv="ipv4" table="filter" chain="INPUT" priority="0">-p tcp --dport 7777 -j ACCEPT</rule>'


def test_a_utf16_file_is_read_as_firewalld_reads_it() -> None:
    # firewalld (expat) loads a UTF-16 direct.xml's rules (seen in the sandbox); so do we
    text = f'<?xml version="1.0" encoding="utf-16"?>\n<direct>\n  {FOREIGN_RULE}\n</direct>\n'
    config = parse_direct_xml(text.encode("utf-16"))
    assert config.rules == (
        Rule("ipv4", "filter", "INPUT", 0, ("-p", "tcp", "--dport", "7777", "-j", "ACCEPT")),
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_with_xmlns_xml_is_refused_as_firewalld_refuses_it(encoding: str) -> None:
    """firewalld: "PARSE_ERROR: direct: Unexpected attribute xmlns:xml", zero rules loaded.
    The byte pattern used before never matched UTF-16, and lxml drops xmlns:xml: the file was
    accepted and "repaired" into one whose foreign rules then went live."""
    bom = "\ufeff" if encoding != "utf-16" else ""
    text = f'{bom}<?xml version="1.0" encoding="utf-16"?>\n<direct {XMLNS_XML}>\n  {FOREIGN_RULE}\n</direct>\n'
    message = rejected(text.encode(encoding))
    assert "direct: Unexpected attribute xmlns:xml" in message


def test_an_encoding_firewalld_cannot_read_is_refused() -> None:
    # lxml reads EUC-JP; firewalld's expat does not ("multi-byte encodings are not supported")
    text = f'<?xml version="1.0" encoding="EUC-JP"?>\n<direct>{FOREIGN_RULE}</direct>\n'
    assert "cannot read" in rejected(text.encode("euc-jp"))


@given(st.text(alphabet=" \t\r\n'\"\\ab#-!$\x00\u00e9\u3000\x0b", max_size=24))
@settings(max_examples=3000, deadline=None)
def test_posix_split_is_exactly_shlex_split(text: str) -> None:
    try:
        expected = tuple(shlex.split(text))
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            posix_split(text)
    else:
        assert posix_split(text) == expected


def test_a_long_token_is_split_in_linear_time() -> None:
    # shlex.split: 0.7 s for 128 KiB, four times as long for each doubling
    for text in ("a" * 2**22, '"' + "a" * 2**22 + '"', "a\\ " * 2**20):
        started = time.monotonic()
        assert sum(map(len, posix_split(text))) >= 2**21
        assert time.monotonic() - started < 5


def test_undeclared_prefix_is_refused() -> None:
    # firewalld: "Unexpected element k:rule"; lxml already fails on the undeclared prefix
    rejected(doc(R + "-j A</rule><k:rule/>"))


# ---- DOCTYPE / entities: refused, nothing expanded ---------------------------------------

SECRET = "SECRET_MARKER_7f3a91"


def _billion_laughs(levels: int = 10) -> str:
    ents = ['<!ENTITY l0 "lollollollollollollollollollol">']
    for i in range(1, levels):
        ents.append(f'<!ENTITY l{i} "' + f"&l{i - 1};" * 10 + '">')
    return "<!DOCTYPE direct [" + "".join(ents) + "]>"


def _doctype_cases(secret_file: Path) -> dict[str, str]:
    url = secret_file.as_uri()
    laughs = _billion_laughs()
    return {
        "xxe-etc-passwd-in-text": (
            '<!DOCTYPE direct [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            f"<direct>{R}&x;</rule></direct>"
        ),
        "xxe-secret-in-text": (
            f'<!DOCTYPE direct [<!ENTITY x SYSTEM "{url}">]><direct>{R}-j &x;</rule></direct>'
        ),
        "xxe-secret-in-priority": (
            f'<!DOCTYPE direct [<!ENTITY x SYSTEM "{url}">]><direct>'
            '<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="&x;">-j A</rule></direct>'
        ),
        "xxe-secret-in-chain-name": (
            f'<!DOCTYPE direct [<!ENTITY x SYSTEM "{url}">]><direct>'
            '<chain ipv="ipv4" table="nat" chain="&x;"/></direct>'
        ),
        "xxe-parameter-entity": (f'<!DOCTYPE direct [<!ENTITY % p SYSTEM "{url}"> %p;]><direct/>'),
        "external-dtd": f'<!DOCTYPE direct SYSTEM "{url}"><direct/>',
        "billion-laughs-in-text": f"{laughs}<direct>{R}&l9;</rule></direct>",
        "billion-laughs-in-attribute": (
            f'{laughs}<direct><chain ipv="ipv4" table="nat" chain="&l9;"/></direct>'
        ),
        "harmless-internal-entity": (
            '<!DOCTYPE direct [<!ENTITY one "1">]><direct>'
            '<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="&one;">-j A</rule></direct>'
        ),
        "bare-doctype": "<!DOCTYPE direct><direct/>",
    }


DOCTYPE_IDS = list(_doctype_cases(Path("/x")).keys())


@pytest.mark.parametrize("case", DOCTYPE_IDS)
def test_doctype_and_entities_are_refused_unexpanded(tmp_path: Path, case: str) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET + "\n")
    passwd = Path("/etc/passwd")
    passwd_first = passwd.read_text().split("\n")[0] if passwd.exists() else ""
    data = _doctype_cases(secret_file)[case]
    start = time.monotonic()
    message = rejected(data)
    assert time.monotonic() - start < 2, "entities must not be expanded"
    assert SECRET not in message
    if passwd_first:
        assert passwd_first not in message
    assert "lollol" not in message
    assert "DOCTYPE" in message or "not a valid file" in message


def test_doctype_refused_through_the_file_reader_too(tmp_path: Path) -> None:
    path = tmp_path / "direct.xml"
    path.write_text(_doctype_cases(tmp_path / "s")["billion-laughs-in-text"])
    with pytest.raises(DirectXmlError):
        read_direct_xml(path)


# --------------------------------------------------------------------------------------
# 2. File level
# --------------------------------------------------------------------------------------

VALID = (
    HEADER + '<direct>\n  <chain ipv="ipv4" table="nat" chain="KUMA_MESH_X"/>\n</direct>\n'
).encode()


def test_missing_file_is_an_empty_config(tmp_path: Path) -> None:
    assert read_direct_xml(tmp_path / "direct.xml") == DirectConfig()
    assert read_direct_xml(tmp_path / "direct.xml").is_empty()


def test_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "direct.xml"
    path.write_bytes(VALID)
    assert read_direct_xml(path) == DirectConfig(chains=(Chain("ipv4", "nat", "KUMA_MESH_X"),))


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "direct.xml"
    path.write_bytes(doc("<foo/>"))
    with pytest.raises(DirectXmlError) as info:
        read_direct_xml(path)
    assert str(path) in str(info.value)


def test_symlink_to_valid_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.xml"
    target.write_bytes(VALID)
    link = tmp_path / "direct.xml"
    link.symlink_to(target)
    with pytest.raises(DirectXmlError) as info:
        read_direct_xml(link)
    assert "symbolic link" in str(info.value)


def test_dangling_symlink_is_refused_not_treated_as_missing(tmp_path: Path) -> None:
    link = tmp_path / "direct.xml"
    link.symlink_to(tmp_path / "nowhere.xml")
    with pytest.raises(DirectXmlError) as info:
        read_direct_xml(link)
    assert "symbolic link" in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "direct.xml"
    path.mkdir()
    with pytest.raises(DirectXmlError) as info:
        read_direct_xml(path)
    assert "not a regular file" in str(info.value)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "direct.xml"
    os.mkfifo(path)
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(read_direct_xml(path))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # it opened the FIFO: unblock it, then fail
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
        pytest.fail("read_direct_xml blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], DirectXmlError)
    assert "not a regular file" in str(outcome[0])


def test_oversized_file_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directxml, "MAX_SIZE", 64)
    path = tmp_path / "direct.xml"
    path.write_bytes(b"<direct>" + b"<!--" + b"x" * 100 + b"-->" + b"</direct>")

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    # module globals shadow the builtin, so read_direct_xml's open() would hit this
    monkeypatch.setattr(directxml, "open", no_open, raising=False)
    with pytest.raises(DirectXmlError) as info:
        read_direct_xml(path)
    assert "64" in str(info.value) and "refused" in str(info.value)


def test_file_of_exactly_max_size_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"<direct><!--" + b"x" * 20 + b"--></direct>"
    monkeypatch.setattr(directxml, "MAX_SIZE", len(data))
    path = tmp_path / "direct.xml"
    path.write_bytes(data)
    assert read_direct_xml(path) == DirectConfig()
    path.write_bytes(data + b"\n")
    with pytest.raises(DirectXmlError):
        read_direct_xml(path)


def test_oversized_bytes_are_refused_by_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directxml, "MAX_SIZE", 16)
    with pytest.raises(DirectXmlError, match="refused"):
        parse_direct_xml(b"<direct>" + b" " * 20 + b"</direct>")


def test_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "direct.xml"
    path.write_bytes(VALID)

    def denied(*args: object, **kwargs: object) -> None:
        # root reads a mode-000 file anyway, so the refusal is simulated at the read
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(directxml, "read_regular", denied)
    with pytest.raises(DirectXmlError, match="cannot be read: Permission denied"):
        read_direct_xml(path)


# --------------------------------------------------------------------------------------
# 3. What firewalld accepts, quirks included
# --------------------------------------------------------------------------------------


def one_rule(priority: str = "0", text: str = "-j A") -> DirectConfig:
    return parse_direct_xml(
        doc(f'<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="{priority}">{text}</rule>')
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (" 5 ", 5),
        ("+5", 5),
        ("\t5\n", 5),  # attribute-value normalisation turns these into spaces
        ("05", 5),
        ("1_000", 1000),  # Python int(), as in firewalld
        ("-5", -5),
        ("-0", 0),
        ("-2147483648", INT32_MIN),
        ("2147483647", INT32_MAX),
    ],
)
def test_priority_is_python_int(text: str, value: int) -> None:
    (rule,) = one_rule(text).rules
    assert rule.priority == value


@pytest.mark.parametrize(
    "element",
    [
        R + "</rule>",
        '<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="0"/>',
        R + "   </rule>",
        R + "\n\n</rule>",
        R + "<!-- only a comment --></rule>",
        '<passthrough ipv="ipv4"/>',
        '<passthrough ipv="ipv4">  </passthrough>',
    ],
)
def test_argumentless_rules_and_passthroughs_are_ignored(element: str) -> None:
    assert parse_direct_xml(doc(element)) == DirectConfig()


def test_argumentless_rule_still_has_its_attributes_checked() -> None:
    rejected(doc('<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="x"/>'))
    rejected(doc('<rule ipv="ipv4" table="nat" chain="OUTPUT"/>'))


def test_duplicates_are_dropped_first_seen_order() -> None:
    config = parse_direct_xml(
        doc(
            '<chain ipv="ipv4" table="nat" chain="B"/>'
            '<chain ipv="ipv4" table="nat" chain="A"/>'
            '<chain ipv="ipv4" table="nat" chain="B"/>'
            '<chain ipv="ipv6" table="nat" chain="B"/>'
            f"{R}-j B</rule>{R}-j A</rule>{R}-j  B</rule>"
            '<rule ipv="ipv4" table="nat" chain="OUTPUT" priority="1">-j B</rule>'
            '<passthrough ipv="ipv4">-N X</passthrough>'
            '<passthrough ipv="ipv4">-N  X</passthrough>'
            '<passthrough ipv="ipv6">-N X</passthrough>'
        )
    )
    assert config.chains == (
        Chain("ipv4", "nat", "B"),
        Chain("ipv4", "nat", "A"),
        Chain("ipv6", "nat", "B"),
    )
    assert config.rules == (
        Rule("ipv4", "nat", "OUTPUT", 0, ("-j", "B")),
        Rule("ipv4", "nat", "OUTPUT", 0, ("-j", "A")),
        Rule("ipv4", "nat", "OUTPUT", 1, ("-j", "B")),
    )
    assert config.passthroughs == (
        Passthrough("ipv4", ("-N", "X")),
        Passthrough("ipv6", ("-N", "X")),
    )


def test_bang_and_quoted_bang_are_the_same_rule() -> None:
    plain = one_rule(text="-m owner ! --uid-owner 5678 -j A")
    quoted = one_rule(text="-m owner '!' --uid-owner 5678 -j A")
    dquoted = one_rule(text='-m owner "!" --uid-owner 5678 -j A')
    assert plain == quoted == dquoted
    assert plain.rules[0].args == ("-m", "owner", "!", "--uid-owner", "5678", "-j", "A")
    both = parse_direct_xml(
        doc(
            f"{R}-m owner ! --uid-owner 5678 -j A</rule>"
            f"{R}-m owner '!' --uid-owner 5678 -j A</rule>"
        )
    )
    assert len(both.rules) == 1


def test_comments_and_processing_instructions_are_ignored() -> None:
    data = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        "<!-- before -->\n<?app before?>\n"
        "<direct>\n"
        "  <!-- a comment with <rule> in it -->\n"
        "  <?app inside?>\n"
        '  <chain ipv="ipv4" table="nat" chain="A"/>\n'
        f"  {R}-j <!-- gone -->ACCEPT<?pi gone?></rule>\n"
        f"  {R}-j<!-- joins -->B</rule>\n"
        "</direct>\n<!-- after -->\n<?app after?>\n"
    ).encode()
    config = parse_direct_xml(data)
    assert config.chains == (Chain("ipv4", "nat", "A"),)
    # firewalld's SAX handler concatenates the character data around a comment
    assert [r.args for r in config.rules] == [("-j", "ACCEPT"), ("-jB",)]


def test_multiline_rule_text_joins() -> None:
    config = one_rule(text="\n    -p tcp\n    -m comment --comment 'two\nlines'\n    -j A\n  ")
    assert config.rules[0].args == (
        ("-p", "tcp", "-m", "comment", "--comment", "two lines", "-j", "A")
    )


def test_entities_cdata_and_character_references_in_text() -> None:
    config = one_rule(text="--comment 'a &amp; b &lt;c&gt;' -j &#x41;<![CDATA[ & <x>]]>")
    assert config.rules[0].args == ("--comment", "a & b <c>", "-j", "A", "&", "<x>")


def test_text_outside_entries_is_ignored() -> None:
    config = parse_direct_xml(
        doc('stray <chain ipv="eb" table="broute" chain="C">ignored</chain> text')
    )
    assert config == DirectConfig(chains=(Chain("eb", "broute", "C"),))


def test_attribute_order_and_quote_style_do_not_matter() -> None:
    config = parse_direct_xml(
        doc("<rule priority='-3' chain='POSTROUTING' table='mangle' ipv='ipv6'>-j A</rule>")
    )
    assert config.rules == (Rule("ipv6", "mangle", "POSTROUTING", -3, ("-j", "A")),)


def test_every_ipv_table_pair_is_accepted() -> None:
    body = "".join(f'<chain ipv="{ipv}" table="{t}" chain="C"/>' for ipv, t in IPV_TABLES)
    config = parse_direct_xml(doc(body))
    assert [(c.ipv, c.table) for c in config.chains] == IPV_TABLES


def test_utf8_bom_and_declaration_variants_are_accepted() -> None:
    assert parse_direct_xml(b"\xef\xbb\xbf<direct/>") == DirectConfig()
    assert parse_direct_xml(b"<?xml version='1.0'?><direct/>") == DirectConfig()
    standalone = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><direct/>'
    assert parse_direct_xml(standalone) == DirectConfig()


# --------------------------------------------------------------------------------------
# 4. The canonical writer
# --------------------------------------------------------------------------------------

EXAMPLE = """<?xml version="1.0" encoding="utf-8"?>
<direct>
  <chain ipv="ipv4" table="nat" chain="KUMA_MESH_OUTBOUND"/>
  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="-5">-p tcp -m owner '!' --uid-owner 5678 -j KUMA_MESH_OUTBOUND</rule>
  <rule ipv="ipv4" table="nat" chain="KUMA_MESH_OUTBOUND" priority="0">-m comment --comment 'kuma tp &amp; x' -j RETURN</rule>
  <passthrough ipv="ipv4">-t nat -N KUMA_X</passthrough>
</direct>
"""

EXAMPLE_CONFIG = DirectConfig(
    chains=(Chain("ipv4", "nat", "KUMA_MESH_OUTBOUND"),),
    rules=(
        Rule(
            "ipv4", "nat", "OUTPUT", -5,
            ("-p", "tcp", "-m", "owner", "!", "--uid-owner", "5678", "-j", "KUMA_MESH_OUTBOUND"),
        ),
        Rule(
            "ipv4", "nat", "KUMA_MESH_OUTBOUND", 0,
            ("-m", "comment", "--comment", "kuma tp & x", "-j", "RETURN"),
        ),
    ),
    passthroughs=(Passthrough("ipv4", ("-t", "nat", "-N", "KUMA_X")),),
)  # fmt: skip


def test_example_renders_to_exact_bytes() -> None:
    assert render_direct_xml(EXAMPLE_CONFIG) == EXAMPLE.encode()
    assert firewalld_write(EXAMPLE_CONFIG) == EXAMPLE.encode()  # the port agrees


def test_example_parses_back() -> None:
    assert parse_direct_xml(EXAMPLE.encode()) == EXAMPLE_CONFIG


def test_empty_config_exact_bytes() -> None:
    expected = b'<?xml version="1.0" encoding="utf-8"?>\n<direct>\n</direct>\n'
    assert render_direct_xml(DirectConfig()) == expected
    assert firewalld_write(DirectConfig()) == expected
    assert parse_direct_xml(expected) == DirectConfig()


def test_argumentless_entries_are_not_written() -> None:
    config = DirectConfig(
        rules=(Rule("ipv4", "nat", "OUTPUT", 0, ()),),
        passthroughs=(Passthrough("ipv4", ()),),
    )
    assert render_direct_xml(config) == render_direct_xml(DirectConfig())


def test_grouping_order_is_firewalds() -> None:
    c = Chain
    config = DirectConfig(
        chains=(
            c("ipv4", "nat", "N1"),
            c("ipv6", "filter", "F1"),
            c("ipv4", "mangle", "M1"),
            c("ipv4", "nat", "N2"),
            c("ipv6", "filter", "F2"),
            c("eb", "broute", "B1"),
            c("ipv4", "nat", "N3"),
        ),
        rules=(
            Rule("ipv4", "nat", "OUTPUT", 5, ("-j", "o1")),
            Rule("ipv4", "nat", "PREROUTING", 0, ("-j", "p1")),
            Rule("ipv6", "nat", "OUTPUT", 0, ("-j", "v6")),
            Rule("ipv4", "nat", "OUTPUT", -1, ("-j", "o2")),  # lower priority, still after o1
            Rule("ipv4", "mangle", "OUTPUT", 0, ("-j", "m1")),  # same chain, other table
            Rule("ipv4", "nat", "PREROUTING", 0, ("-j", "p2")),
            Rule("ipv4", "nat", "OUTPUT", 0, ("-j", "o3")),
        ),
        passthroughs=(
            Passthrough("ipv6", ("-a",)),
            Passthrough("ipv4", ("-b",)),
            Passthrough("eb", ("-c",)),
            Passthrough("ipv6", ("-d",)),
            Passthrough("ipv4", ("-e",)),
        ),
    )
    expected = (
        HEADER + "<direct>\n"
        '  <chain ipv="ipv4" table="nat" chain="N1"/>\n'
        '  <chain ipv="ipv4" table="nat" chain="N2"/>\n'
        '  <chain ipv="ipv4" table="nat" chain="N3"/>\n'
        '  <chain ipv="ipv6" table="filter" chain="F1"/>\n'
        '  <chain ipv="ipv6" table="filter" chain="F2"/>\n'
        '  <chain ipv="ipv4" table="mangle" chain="M1"/>\n'
        '  <chain ipv="eb" table="broute" chain="B1"/>\n'
        '  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="5">-j o1</rule>\n'
        '  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="-1">-j o2</rule>\n'
        '  <rule ipv="ipv4" table="nat" chain="OUTPUT" priority="0">-j o3</rule>\n'
        '  <rule ipv="ipv4" table="nat" chain="PREROUTING" priority="0">-j p1</rule>\n'
        '  <rule ipv="ipv4" table="nat" chain="PREROUTING" priority="0">-j p2</rule>\n'
        '  <rule ipv="ipv6" table="nat" chain="OUTPUT" priority="0">-j v6</rule>\n'
        '  <rule ipv="ipv4" table="mangle" chain="OUTPUT" priority="0">-j m1</rule>\n'
        '  <passthrough ipv="ipv6">-a</passthrough>\n'
        '  <passthrough ipv="ipv6">-d</passthrough>\n'
        '  <passthrough ipv="ipv4">-b</passthrough>\n'
        '  <passthrough ipv="ipv4">-e</passthrough>\n'
        '  <passthrough ipv="eb">-c</passthrough>\n'
        "</direct>\n"
    ).encode()
    assert render_direct_xml(config) == expected
    assert firewalld_write(config) == expected
    assert parse_direct_xml(expected) == regroup(config)


SPECIAL_TOKENS = [
    "a&b",
    "<x>",
    "a>b",
    "it's",
    'say "hi"',
    "two  spaces",
    " ",
    "!",
    "$HOME",
    "`id`",
    "back\\slash",
    "#hash",
    "semi;colon",
    "glob*?[",
    "é",
    "日本語",
    "emoji 😀",
    "\u00a0nbsp",
    "\u2028line-sep",
    "\ufeffbom",
    "&amp;",
    "]]>",
    "'",
    '"',
    "''",
    "-",
]


def test_special_characters_round_trip() -> None:
    config = DirectConfig(
        chains=(
            Chain("ipv4", "filter", "a&b<c>'d"),
            Chain("ipv4", "filter", "é 日本"),
            Chain("ipv4", "filter", ""),
        ),
        rules=(
            Rule("ipv6", "raw", "a&b<c>'d", 7, tuple(SPECIAL_TOKENS)),
            *(Rule("ipv4", "filter", "T", i, (tok,)) for i, tok in enumerate(SPECIAL_TOKENS)),
        ),
        passthroughs=(Passthrough("eb", tuple(SPECIAL_TOKENS)),),
    )
    data = render_direct_xml(config)
    assert data == firewalld_write(config)
    assert parse_direct_xml(data) == regroup(config)
    text = data.decode("utf-8")
    assert "'a&amp;b'" in text and "'&lt;x&gt;'" in text and "'!'" in text
    assert "日本語" in text and "😀" in text  # written as UTF-8, not as character references
    assert 'chain="a&amp;b&lt;c&gt;\'d"' in text


@pytest.mark.xfail(
    strict=True,
    reason=(
        "firewalld writes attributes with saxutils.quoteattr, which switches to single quotes "
        "when a value contains '\"' but no \"'\" (chain='a\"b'); lxml always writes "
        'chain="a&quot;b" — same XML, different bytes, so firewalld\'s rewrite is not a no-op'
    ),
)
def test_double_quote_in_chain_name_is_written_as_firewalld_does() -> None:
    config = DirectConfig(chains=(Chain("ipv4", "nat", 'a"b'),))
    assert b"chain='a\"b'" in firewalld_write(config)
    assert render_direct_xml(config) == firewalld_write(config)


def test_double_quote_in_chain_name_still_round_trips() -> None:
    config = DirectConfig(
        chains=(Chain("ipv4", "nat", 'a"b'),),
        rules=(Rule("ipv4", "nat", 'a"b', 0, ('"',)),),
    )
    assert parse_direct_xml(render_direct_xml(config)) == config


# --------------------------------------------------------------------------------------
# 5. Properties
# --------------------------------------------------------------------------------------

PROPS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# XML 1.0 cannot carry control characters, surrogates or U+FFFE/U+FFFF (category Cn).
_INTERESTING = " '\"!&<>\\$`#;*-=,:/.é€日😀\u00a0\u2028\ufeff"
_CATS = ("Cc", "Cs", "Cn")


def _text(min_size: int, max_size: int, quote: bool = True) -> st.SearchStrategy[str]:
    no = "" if quote else '"'
    anything = st.characters(blacklist_categories=_CATS, blacklist_characters=no)
    shell_ish = st.sampled_from([c for c in _INTERESTING + "abcxyzABC0123" if c not in no])
    return st.one_of(
        st.text(alphabet=anything, min_size=min_size, max_size=max_size),
        st.text(alphabet=shell_ish, min_size=min_size, max_size=max_size),
    )


tokens = st.one_of(_text(1, 12), st.sampled_from(SPECIAL_TOKENS))
token_lists = st.lists(tokens, min_size=1, max_size=6).map(tuple)
priorities = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from([INT32_MIN, INT32_MAX, -1, 0, 1]),
)
ipv_tables = st.sampled_from(IPV_TABLES)
# rules crowd into a few groups, so that regrouping actually reorders things
rule_ipv_tables = st.one_of(st.sampled_from([("ipv4", "nat"), ("ipv6", "mangle")]), ipv_tables)
BUILTINS = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"]

FOREIGN_NAMES = {
    quote: st.one_of(
        st.sampled_from(["OUTPUT", "PREROUTING"]),
        st.sampled_from(
            [*BUILTINS, "X", "MY_CHAIN", "KUMA", "kuma_mesh_x", "KUMA_MESH", "KUMA_MESHCTL_ALLOW"]
        ),
        _text(0, 10, quote),
    ).filter(lambda n: not n.startswith(OUR_CHAIN))
    for quote in (True, False)
}
OUR_NAMES = st.builds(
    lambda s: OUR_CHAIN + s,
    st.one_of(
        st.sampled_from(["_OUTBOUND", "_INBOUND"]),
        st.sampled_from(["", "_OUTBOUND", "_INBOUND", "_DNS"]),
        _text(0, 8, False),
    ),
)
RULE_CHAINS_FOR_MARKED = st.one_of(
    st.sampled_from(["OUTPUT", "PREROUTING"]), st.sampled_from(BUILTINS), _text(0, 8, False)
)
LOOKALIKE_ARGS = st.one_of(
    token_lists,
    # looks a bit like ours, but is not: jump/comment to something else
    st.tuples(
        st.sampled_from(JUMPS),
        st.sampled_from(
            ["ACCEPT", "KUMA", "kuma_mesh", "KUMA_MES", "KUMA_MESH", "KUMA_MESHCTL_ALLOW"]
        ),
    ),
    st.tuples(
        st.just("--comment"),
        st.sampled_from(
            [
                "kuma",
                "x kuma/mesh/transparent/proxy",
                "kuma/mesh/transparent/proxy",
                "kuma/mesh/transparent/proxy-ops: keep ssh open",
            ]
        ),
    ),
    st.tuples(st.just("KUMA_MESH_X"), st.just("-j")),  # prefix, but not after a jump
    st.tuples(st.just(OUR_COMMENT), st.just("--comment")),  # comment, but before the flag
)
COMMENT_SUFFIXES = st.sampled_from(["", "/x", ": outbound", "/mesh"])
FEW_TOKENS = st.lists(tokens, max_size=3)


@st.composite
def foreign_chains(draw: st.DrawFn, quote: bool = True) -> Chain:
    ipv, table = draw(ipv_tables)
    return Chain(ipv, table, draw(FOREIGN_NAMES[quote]))


@st.composite
def our_chains(draw: st.DrawFn) -> Chain:
    ipv, table = draw(ipv_tables)
    return Chain(ipv, table, draw(OUR_NAMES))


@st.composite
def foreign_rules(draw: st.DrawFn, quote: bool = True) -> Rule:
    ipv, table = draw(rule_ipv_tables)
    chain = draw(FOREIGN_NAMES[quote])
    rule = Rule(ipv, table, chain, draw(priorities), tuple(draw(LOOKALIKE_ARGS)))
    if spec_ours_rule(rule):  # random tokens happened to carry our mark
        rule = Rule(ipv, table, chain, rule.priority, ("-j", "ACCEPT"))
    return rule


@st.composite
def our_rules(draw: st.DrawFn) -> Rule:
    ipv, table = draw(rule_ipv_tables)
    kind = draw(st.sampled_from(["in-our-chain", "jump", "comment"]))
    before = draw(FEW_TOKENS)
    after = draw(FEW_TOKENS)
    if kind == "in-our-chain":
        chain = draw(OUR_NAMES)
        args = tuple(before + after) or ("-j", "RETURN")
    else:
        chain = draw(RULE_CHAINS_FOR_MARKED)
        if kind == "jump":
            mark = (draw(st.sampled_from(JUMPS)), draw(OUR_NAMES))
        else:
            mark = ("--comment", OUR_COMMENT + draw(COMMENT_SUFFIXES))
        args = (*before, *mark, *after)
    return Rule(ipv, table, chain, draw(priorities), args)


passthroughs = st.builds(Passthrough, st.sampled_from(["ipv4", "ipv6", "eb"]), token_lists)


CHAIN_S = {
    (q, o): (foreign_chains(q) | our_chains()) if o else foreign_chains(q)
    for q in (True, False)
    for o in (True, False)
}
RULE_S = {
    (q, o): (foreign_rules(q) | our_rules()) if o else foreign_rules(q)
    for q in (True, False)
    for o in (True, False)
}


def configs(quote: bool = True, ours: bool = True) -> st.SearchStrategy[DirectConfig]:
    """Valid configs without duplicates (as a parse gives), ours and foreign mixed."""
    return st.builds(
        DirectConfig,
        chains=st.lists(CHAIN_S[quote, ours], max_size=8, unique=True).map(tuple),
        rules=st.lists(RULE_S[quote, ours], max_size=10, unique=True).map(tuple),
        passthroughs=st.lists(passthroughs, max_size=4, unique=True).map(tuple),
    )


def ours_sets() -> st.SearchStrategy[DirectConfig]:
    """What an install would write: our chains and rules only (duplicates possible)."""
    return st.builds(
        DirectConfig,
        chains=st.lists(our_chains(), max_size=6).map(tuple),
        rules=st.lists(our_rules(), max_size=8).map(tuple),
    )


# ---- a. round trip and stability ---------------------------------------------------------


@PROPS
@given(configs())
def test_render_parse_round_trip(config: DirectConfig) -> None:
    data = render_direct_xml(config)
    back = parse_direct_xml(data)
    assert per_group(back) == per_group(config)
    assert back.entries() == config.entries()
    assert back == regroup(config)  # exactly firewalld's order
    assert render_direct_xml(back) == data  # stable


@PROPS
@given(configs())
def test_render_is_stable(config: DirectConfig) -> None:
    once = render_direct_xml(config)
    assert render_direct_xml(parse_direct_xml(once)) == once


@PROPS
@given(configs(quote=False))
def test_render_matches_firewalld_writer_byte_for_byte(config: DirectConfig) -> None:
    # '"' in attribute values is left out: see the xfail test above.
    assert render_direct_xml(config) == firewalld_write(config)


@PROPS
@given(configs())
def test_dbus_shape_round_trips(config: DirectConfig) -> None:
    assert DirectConfig.from_dbus(*config.to_dbus()) == config


@PROPS
@given(
    st.one_of(
        foreign_rules(),
        our_rules(),
        st.builds(
            Rule,
            st.just("ipv4"),
            st.just("nat"),
            FOREIGN_NAMES[True] | OUR_NAMES,
            priorities,
            token_lists,
        ),
    )
)
def test_rule_ownership_is_the_documented_rule(rule: Rule) -> None:
    assert OWNER.owns(rule) == spec_ours_rule(rule)


@PROPS
@given(st.one_of(foreign_chains(), our_chains()))
def test_chain_ownership_is_the_prefix(chain: Chain) -> None:
    assert OWNER.owns(chain) == chain.chain.startswith(OUR_CHAIN)


def test_generators_produce_what_they_claim() -> None:
    @settings(max_examples=100, deadline=None)
    @given(foreign_rules(), our_rules(), foreign_chains(), our_chains())
    def check(fr: Rule, orl: Rule, fc: Chain, oc: Chain) -> None:
        assert not spec_ours_rule(fr) and spec_ours_rule(orl)
        assert not fc.chain.startswith(OUR_CHAIN) and oc.chain.startswith(OUR_CHAIN)

    check()


# ---- b. merge ----------------------------------------------------------------------------


@PROPS
@given(configs(), ours_sets())
def test_merge_keeps_foreign_and_replaces_ours(existing: DirectConfig, ours: DirectConfig) -> None:
    merged = existing.merged_with(ours, OWNER)
    foreign = existing.foreign(OWNER)
    assert merged.foreign(OWNER) == foreign  # same entries, same tuples, same order
    assert merged.ours(OWNER) == DirectConfig(
        chains=tuple(dedup(ours.chains)), rules=tuple(dedup(ours.rules))
    )
    assert merged.passthroughs == existing.passthroughs
    # nothing of the old "ours" survives unless it is also in the new set
    assert merged.entries() == foreign.entries() | ours.entries()


@PROPS
@given(configs(), ours_sets())
def test_merge_survives_render_and_parse(existing: DirectConfig, ours: DirectConfig) -> None:
    merged = existing.merged_with(ours, OWNER)
    back = parse_direct_xml(render_direct_xml(merged))
    assert back.entries() == merged.entries()
    assert per_group(back) == per_group(merged)
    # foreign entries come first in the merge, so their regrouped order is exactly
    # what firewalld would make of the foreign entries alone
    assert back.foreign(OWNER) == regroup(existing.foreign(OWNER))
    assert per_group(back.ours(OWNER)) == per_group(DirectConfig(
        chains=tuple(dedup(ours.chains)), rules=tuple(dedup(ours.rules))
    ))  # fmt: skip


@PROPS
@given(configs(), ours_sets())
def test_second_install_is_a_no_op(existing: DirectConfig, ours: DirectConfig) -> None:
    # file on disk after a first install ...
    first = render_direct_xml(existing.merged_with(ours, OWNER))
    # ... read back and merged again with the same rules: same bytes
    second = render_direct_xml(parse_direct_xml(first).merged_with(ours, OWNER))
    assert second == first


@PROPS
@given(configs())
def test_merge_with_nothing_removes_exactly_ours(existing: DirectConfig) -> None:
    removed = existing.merged_with(DirectConfig(), OWNER)
    assert removed == existing.foreign(OWNER)
    assert removed.ours(OWNER).is_empty()
    back = parse_direct_xml(render_direct_xml(removed))
    assert back == regroup(existing.foreign(OWNER))
