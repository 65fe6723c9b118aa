"""The record's own fields are checked when it is read (issue 18, mutation gap): a record whose
template, profile or loopback addresses are not what install writes is refused as a whole
(RecordError: uninstall then goes on without it, and says so), never half-trusted. Before these
tests, removing any one of those checks failed no test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import load

from tproxy_firewalld.record import Record, RecordError, read_record

SETTINGS = load({"--kuma-dp-user": "5678"})


def written(tmp_path: Path, **changes: Any) -> Path:
    doc = Record(SETTINGS, ("::6/128",), "/etc/kuma/rules.j2").to_json()
    doc.update(changes)
    path = tmp_path / "installed.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_record_as_install_writes_it_reads_back(tmp_path: Path) -> None:
    record = read_record(written(tmp_path))
    assert record == Record(SETTINGS, ("::6/128",), "/etc/kuma/rules.j2")


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("template", "rules.j2", "template must be an absolute path"),
        ("template", ["/etc/kuma/rules.j2"], "template must be an absolute path"),
        ("profile", "istio", "unknown profile 'istio'"),
        ("loopback_added", ["127.0.0.6/8"], "loopback_added must be a list of known addresses"),
        ("loopback_added", "::6/128", "loopback_added must be a list of known addresses"),
    ],
)
def test_a_record_with_a_field_install_never_writes_is_refused(
    tmp_path: Path, field: str, value: Any, complaint: str
) -> None:
    with pytest.raises(RecordError, match=complaint):
        read_record(written(tmp_path, **{field: value}))
