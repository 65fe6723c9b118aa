"""diff's view of direct.xml against firewalld's permanent configuration, as unit tests (the
live matrix shows the same against real firewalld versions; these fail on their own when the
comparison or its report is broken).

A hand edit of direct.xml that firewalld has not loaded makes the two disagree: diff must say
so (not in sync, exit 1), in text and in JSON, whichever side holds the extra entry, and must
not call the file's own entries a difference of ours.
"""

from __future__ import annotations

from pathlib import Path

from fake_firewalld import FOREIGN, FakeFirewalld, world
from helpers import load

from tproxy_firewalld import api
from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.entries import DirectConfig, Rule
from tproxy_firewalld.kuma import KUMA
from tproxy_firewalld.observe import observe
from tproxy_firewalld.report import DiffReport
from tproxy_firewalld.target import Target

SETTINGS = load({"--kuma-dp-user": "5678"})
HAND_EDIT = Rule("ipv4", "filter", "INPUT", 0, ("-p", "tcp", "--dport", "2022", "-j", "ACCEPT"))


def installed(tmp_path: Path) -> tuple[Target, FakeFirewalld]:
    target, fake = world(tmp_path)
    api.install(SETTINGS, target=target, client=fake.factory())
    return target, fake


def diff_of(target: Target, fake: FakeFirewalld) -> DiffReport:
    return api.diff_observed(observe(target, fake, ""), None, None, KUMA)


def with_rule(config: DirectConfig, rule: Rule) -> DirectConfig:
    return DirectConfig(config.chains, (*config.rules, rule), config.passthroughs)


def test_after_install_file_and_firewalld_agree(tmp_path: Path) -> None:
    report = diff_of(*installed(tmp_path))
    assert report.in_sync
    assert report.file_only == () and report.firewalld_only == ()
    assert report.text()[-1] == "in sync"


def test_an_entry_only_in_direct_xml_is_a_disagreement(tmp_path: Path) -> None:
    target, fake = installed(tmp_path)
    edited = with_rule(fake.permanent(), HAND_EDIT)
    target.direct_xml.write_bytes(render_direct_xml(edited))  # by hand, not loaded
    report = diff_of(target, fake)
    assert report.file_only == (HAND_EDIT,) and report.firewalld_only == ()
    assert not report.in_sync
    # ours are where they should be in every place: only the disagreement is reported
    assert report.runtime is not None and report.runtime.empty
    assert report.file.empty
    text = report.text()
    assert any("disagree" in line for line in text)
    assert f"  only in direct.xml: {HAND_EDIT.describe()}" in text
    assert text[-1] == "differences found"
    doc = report.to_json()
    assert doc["in_sync"] is False
    assert doc["file_vs_permanent"]["only_in_file"] == [
        {
            "kind": "rule", "ipv": "ipv4", "table": "filter", "chain": "INPUT", "priority": 0,
            "args": ["-p", "tcp", "--dport", "2022", "-j", "ACCEPT"],
        }
    ]  # fmt: skip
    assert doc["file_vs_permanent"]["only_in_firewalld"] == []


def test_an_entry_only_in_firewalld_is_a_disagreement(tmp_path: Path) -> None:
    target, fake = installed(tmp_path)
    fake.permanent_config = with_rule(fake.permanent(), HAND_EDIT)  # file not rewritten
    report = diff_of(target, fake)
    assert report.firewalld_only == (HAND_EDIT,) and report.file_only == ()
    assert not report.in_sync
    assert f"  only in firewalld:  {HAND_EDIT.describe()}" in report.text()
    only = report.to_json()["file_vs_permanent"]["only_in_firewalld"]
    assert [(e["chain"], e["args"][-1]) for e in only] == [("INPUT", "ACCEPT")]


def test_foreign_entries_in_both_places_are_no_disagreement(tmp_path: Path) -> None:
    target, fake = installed(tmp_path)
    assert FOREIGN.entries() <= fake.permanent().entries()
    assert diff_of(target, fake).in_sync
