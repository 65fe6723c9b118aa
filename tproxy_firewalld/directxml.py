"""direct.xml <-> :class:`DirectConfig`, with lxml, the way firewalld reads and writes it.

Reading is safe (no DTD, no entity expansion, no network) and as strict as firewalld's own
SAX parser (``firewall/core/io/direct.py``): a file firewalld would reject is refused with
the reason, never "repaired" by rewriting only the part that parsed — which is what
``firewall-offline-cmd`` does to a broken file.

Writing produces the canonical form firewalld's ``Direct.write()`` produces, so firewalld's
own later rewrite of the file changes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from xml.parsers import expat

from lxml import etree

from tproxy_firewalld.entries import (
    Chain,
    DirectConfig,
    Passthrough,
    Rule,
    join_args,
    split_args,
)
from tproxy_firewalld.errors import DirectXmlError
from tproxy_firewalld.readfile import NotRegular, TooLarge, read_regular

#: firewalld has no limit, but nothing legitimate comes near this; a bigger file is refused
#: rather than parsed into memory.
MAX_SIZE = 16 * 1024 * 1024

IPVS = ("ipv4", "ipv6", "eb")
#: firewalld's ipXtables.BUILT_IN_CHAINS / ebtables.BUILT_IN_CHAINS keys
TABLES = {
    "ipv4": ("security", "raw", "mangle", "nat", "filter"),
    "ipv6": ("security", "raw", "mangle", "nat", "filter"),
    "eb": ("broute", "nat", "filter"),
}
_REQUIRED = {
    "direct": (),
    "chain": ("ipv", "table", "chain"),
    "rule": ("ipv", "table", "chain", "priority"),
    "passthrough": ("ipv",),
}
INT32 = (-(2**31), 2**31 - 1)

XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        remove_blank_text=False,
    )


def read_direct_xml(path: Path) -> DirectConfig:
    """The direct config in ``path``; a missing file is an empty config (as for firewalld)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return DirectConfig()
    except OSError as exc:
        raise DirectXmlError(f"{path}: cannot be read: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise DirectXmlError(
            f"{path}: is a symbolic link; refusing to follow it (replace it with a regular file)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise DirectXmlError(f"{path}: is not a regular file")
    if info.st_size > MAX_SIZE:
        raise DirectXmlError(
            f"{path}: is {info.st_size} bytes; files over {MAX_SIZE} bytes are refused"
        )
    try:
        # not followed, and a second look at what was opened: the file may have been swapped
        # for a symlink, a FIFO or a larger file since the lstat above.
        data = read_regular(path, MAX_SIZE, follow=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DirectXmlError(f"{path}: is a symbolic link; refusing to follow it") from None
        raise DirectXmlError(f"{path}: cannot be read: {exc.strerror}") from None
    except NotRegular:
        raise DirectXmlError(f"{path}: is not a regular file") from None
    except TooLarge:
        raise DirectXmlError(f"{path}: over {MAX_SIZE} bytes; refused") from None
    return parse_direct_xml(data, str(path))


class _Stop(Exception):
    """Ends the namespace scan early: nothing more for it to look at."""


def _expat_check(data: bytes, name: str) -> None:
    """Read the bytes the way firewalld reads them, and refuse what its parser refuses.

    firewalld parses direct.xml with ``xml.sax``: expat, without namespace processing, in
    whatever encoding the file declares (a UTF-16 file with a BOM is read as well). So:

    - an ``xmlns`` or ``xmlns:p`` attribute is, to firewalld, an attribute it does not know,
      and the whole file is refused; lxml would consume it as a namespace declaration (and
      drop ``xmlns:xml`` without a trace), so it is looked for here;
    - a file expat cannot read at all (not well-formed, an encoding it does not support, such
      as EUC-JP, which lxml would read) loads nothing into firewalld: refused too.

    Linear in the size of the file. The scan stops at the first element firewalld would
    refuse by its name (reported by the checks after lxml's parse, as firewalld checks the
    name before the attributes) and at a DOCTYPE (refused after it, nothing declared in it
    ever expanded).
    """

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag not in _REQUIRED:
            raise _Stop
        for attr in attrs:
            if attr == "xmlns" or attr.startswith("xmlns:"):
                raise DirectXmlError(
                    f"{name} (line {parser.CurrentLineNumber}): PARSE_ERROR: {tag}: "
                    f"Unexpected attribute {attr}; firewalld would reject this file"
                )

    def doctype(*_args: object) -> None:
        raise _Stop

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = doctype
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except _Stop:
        return
    except expat.ExpatError as exc:
        raise DirectXmlError(
            f"{name}: not a valid file: {_one_line(str(exc))} (firewalld's XML parser rejects it)"
        ) from None
    except (ValueError, LookupError) as exc:  # an encoding expat cannot read
        raise DirectXmlError(
            f"{name}: not a valid file: {_one_line(str(exc))} (firewalld's XML parser cannot read it)"
        ) from None


def parse_direct_xml(data: bytes, name: str = "direct.xml") -> DirectConfig:
    if len(data) > MAX_SIZE:
        raise DirectXmlError(f"{name}: over {MAX_SIZE} bytes; refused")
    if not data.strip():
        # firewalld: "no element found" -> the file is not valid and reload fails
        raise DirectXmlError(f"{name}: not a valid file: it is empty (firewalld rejects it)")
    _expat_check(data, name)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise DirectXmlError(f"{name}: not a valid file: {_one_line(str(exc))}") from None
    tree = root.getroottree()
    docinfo = tree.docinfo
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None:
        raise DirectXmlError(
            f"{name}: has a DOCTYPE (entity declarations are how XXE and 'billion laughs' "
            "attacks work); refused, nothing expanded"
        )
    return _check(root, name)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(name: str, element: etree._Element, message: str) -> DirectXmlError:
    line = getattr(element, "sourceline", None)
    where = f" (line {line})" if line else ""
    return DirectXmlError(f"{name}{where}: {message}; firewalld would reject this file")


def _check(root: etree._Element, name: str) -> DirectConfig:
    """firewalld's parser checks, with its messages, plus what its SAX handler trips over."""
    for element in root.iter():
        # firewalld's SAX parser does no namespace processing: an element in a namespace was
        # declared by an xmlns or xmlns:p attribute it does not know (the expat scan names
        # those first; this catches what it left to lxml).
        tag = element.tag
        if isinstance(tag, str) and tag.startswith("{"):
            local = etree.QName(element).localname
            if element.prefix:  # firewalld sees an element named "k:rule"
                raise _fail(
                    name, element, f"PARSE_ERROR: Unexpected element {element.prefix}:{local}"
                )
            raise _fail(name, element, f"PARSE_ERROR: {local}: Unexpected attribute xmlns")
    if not isinstance(root.tag, str) or root.tag != "direct":
        raise _fail(name, root, f"PARSE_ERROR: Unexpected element {root.tag}")
    _check_attrs(root, name)
    chains: list[Chain] = []
    rules: list[Rule] = []
    passthroughs: list[Passthrough] = []
    for element in root:
        if not isinstance(element.tag, str):
            continue  # comments and PIs were dropped by the parser; entities refused above
        if element.tag not in _REQUIRED:
            raise _fail(name, element, f"PARSE_ERROR: Unexpected element {element.tag}")
        if element.tag == "direct":
            raise _fail(name, element, "PARSE_ERROR: More than one direct tag.")
        if len(element):
            child = element[0]
            raise _fail(name, child, f"PARSE_ERROR: Unexpected element {child.tag}")
        _check_attrs(element, name)
        ipv = element.get("ipv", "")
        if ipv not in IPVS:
            raise _fail(name, element, f"INVALID_IPV: '{ipv}' not from {{'ipv4'|'ipv6'|'eb'}}")
        if element.tag == "passthrough":
            args = _args(element, name)
            if args:
                passthroughs.append(Passthrough(ipv, args))
            continue
        table = element.get("table", "")
        if table not in TABLES[ipv]:
            raise _fail(name, element, f"INVALID_TABLE: '{table}' not in {list(TABLES[ipv])}")
        chain = element.get("chain", "")
        if element.tag == "chain":
            chains.append(Chain(ipv, table, chain))
            continue
        priority = _priority(element, name)
        args = _args(element, name)
        if args:  # firewalld ignores rules without arguments
            rules.append(Rule(ipv, table, chain, priority, args))
    return DirectConfig(
        chains=tuple(dict.fromkeys(chains)),
        rules=tuple(dict.fromkeys(rules)),
        passthroughs=tuple(dict.fromkeys(passthroughs)),
    )


def _check_attrs(element: etree._Element, name: str) -> None:
    required = _REQUIRED[str(element.tag)]
    for attr in element.attrib:
        if attr not in required:
            raise _fail(
                name, element, f"PARSE_ERROR: {element.tag!s}: Unexpected attribute {attr!s}"
            )
    for attr in required:
        if attr not in element.attrib:
            raise _fail(name, element, f"PARSE_ERROR: Missing attribute {attr} for {element.tag}")


def _priority(element: etree._Element, name: str) -> int:
    text = element.get("priority", "")
    try:
        # firewalld uses int(), which also takes " 5 ", "+5" and "1_000"; so do we.
        value = int(text)
    except ValueError:
        # firewalld logs "not a valid priority" and then crashes in its SAX handler.
        raise _fail(name, element, f"{text!r} is not a valid priority") from None
    if not INT32[0] <= value <= INT32[1]:
        # the file parser takes it, but D-Bus getSettings cannot marshal it ('i' is int32)
        raise _fail(name, element, f"priority {value} is outside int32")
    return value


def _args(element: etree._Element, name: str) -> tuple[str, ...]:
    text = element.text or ""
    try:
        return split_args(text)
    except ValueError as exc:
        raise _fail(name, element, f"{element.tag} text {text!r}: {exc}") from None


def render_direct_xml(config: DirectConfig) -> bytes:
    """firewalld's canonical form: chains, then rules, then passthroughs, each grouped.

    Groups keep first-seen order and entries keep their order within a group, exactly as
    ``Direct.write()`` orders them.
    """
    root = etree.Element("direct")
    children: list[etree._Element] = []

    chain_groups: dict[tuple[str, str], list[Chain]] = {}
    for c in config.chains:
        chain_groups.setdefault((c.ipv, c.table), []).append(c)
    for group in chain_groups.values():
        for c in group:
            el = etree.Element("chain")
            el.set("ipv", c.ipv)
            el.set("table", c.table)
            el.set("chain", c.chain)
            children.append(el)

    rule_groups: dict[tuple[str, str, str], list[Rule]] = {}
    for r in config.rules:
        rule_groups.setdefault(r.chain_key, []).append(r)
    for rgroup in rule_groups.values():
        for r in rgroup:
            if not r.args:
                continue
            el = etree.Element("rule")
            el.set("ipv", r.ipv)
            el.set("table", r.table)
            el.set("chain", r.chain)
            el.set("priority", str(r.priority))
            el.text = join_args(r.args)
            children.append(el)

    pt_groups: dict[str, list[Passthrough]] = {}
    for p in config.passthroughs:
        pt_groups.setdefault(p.ipv, []).append(p)
    for pgroup in pt_groups.values():
        for p in pgroup:
            if not p.args:
                continue
            el = etree.Element("passthrough")
            el.set("ipv", p.ipv)
            el.text = join_args(p.args)
            children.append(el)

    # firewalld's layout: one entry per line, indented by two spaces.
    root.text = "\n  " if children else "\n"
    for i, el in enumerate(children):
        el.tail = "\n  " if i < len(children) - 1 else "\n"
        root.append(el)
    return XML_DECLARATION + etree.tostring(root, encoding="utf-8") + b"\n"
