"""The state record read back: a document of any shape is a Record or a RecordError, never a
traceback, and a bad one blocks neither ``uninstall`` nor ``status``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_runner, load, ready_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tproxy_firewalld.cli import app
from tproxy_firewalld.kuma import KumaSettings
from tproxy_firewalld.record import (
    _V1_NAMES,
    SCHEMA,
    Record,
    RecordError,
    read_record,
    record_from_json,
)

runner = cli_runner()

#: values of every JSON type, with the strings records really hold among them
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-2, 70000)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.sampled_from(["RFC3964_IPv4", "yes", "no", "tcp", "1", "0", "::6/128", "/t", "2.14"])
)
KEYS = st.sampled_from(["name", "before", "after", "protocols", "ports", "uids", "iface", "cidr"])
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)
SETTING_NAMES = [f.name for f in KumaSettings.fields()]
V2 = st.fixed_dictionaries(
    {"schema": st.just(SCHEMA)},
    optional={
        key: JSON
        for key in ("profile", "installed_at", "template", "loopback_added", "firewalld_conf")
    }
    | {"settings": st.dictionaries(st.sampled_from(SETTING_NAMES), JSON, max_size=4) | JSON},
)
V1 = st.fixed_dictionaries(
    {"version": st.just(1)},
    optional={
        "ipv6_loopback_added": JSON,
        "settings": st.dictionaries(
            st.sampled_from(sorted(_V1_NAMES) + SETTING_NAMES), JSON, max_size=4
        )
        | JSON,
    },
)

#: the shapes issue 17 found raising TypeError / AttributeError
WRONG_SHAPES: list[Any] = [
    {
        "schema": SCHEMA,
        "settings": {},
        "firewalld_conf": [{"name": ["RFC3964_IPv4"], "before": "yes", "after": "no"}],
    },
    {
        "version": 1,
        "settings": {
            "outbound_exclude_ports_for_uids": [{"protocols": [1], "ports": ["22"], "uids": "0"}]
        },
    },
    {
        "version": 1,
        "settings": {
            "outbound_exclude_ports_for_uids": [{"protocols": ["tcp"], "ports": ["22"], "uids": 0}]
        },
    },
    {"version": 1, "settings": {"vnet": [{"iface": ["docker0"], "cidr": "172.17.0.0/16"}]}},
    {"schema": SCHEMA, "settings": {}, "installed_at": ["2026-01-02T03:04:05Z"]},
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(V2 | V1 | JSON)
def test_a_document_of_any_shape_is_a_record_or_a_record_error(doc: Any) -> None:
    try:
        record_from_json(doc, "installed.json")
    except RecordError as exc:
        assert exc.message.startswith("installed.json: ") and "\n" not in exc.message


@pytest.mark.parametrize("doc", WRONG_SHAPES)
def test_wrong_shapes_are_record_errors(doc: Any) -> None:
    with pytest.raises(RecordError, match=r"^installed.json: "):
        record_from_json(doc, "installed.json")


def test_a_v1_record_of_the_right_shape_still_reads() -> None:
    record = record_from_json(
        {
            "version": 1,
            "settings": {
                "outbound_exclude_ports_for_uids": [
                    {"protocols": ["tcp"], "ports": ["22:25"], "uids": "0:5"}
                ],
                "vnet": [{"iface": "docker0", "cidr": "172.17.0.0/16"}],
            },
        },
        "installed.json",
    )
    assert record.settings.to_json()["vnet"] == ["docker0:172.17.0.0/16"]
    assert record.settings.to_json()["exclude_outbound_ports_for_uids"] == ["tcp:22-25:0-5"]


@pytest.mark.parametrize("doc", WRONG_SHAPES)
def test_uninstall_and_status_go_on_with_a_record_of_the_wrong_shape(
    tmp_path: Path, doc: Any
) -> None:
    root = ready_root(tmp_path / "img")
    record = root / "var/lib/tproxy-firewalld/installed.json"
    install = runner.invoke(app, ["install", "--root", str(root), "--kuma-dp-user", "0"])
    assert install.exit_code == 0, install.stderr
    record.write_text(json.dumps(doc))
    status = runner.invoke(app, ["status", "--root", str(root)])
    assert status.exception is None or isinstance(status.exception, SystemExit), status.exception
    assert "the record is unreadable: " in status.stdout + status.stderr
    uninstall = runner.invoke(app, ["uninstall", "--root", str(root)])
    assert uninstall.exit_code == 0, (uninstall.stdout, uninstall.stderr, uninstall.exception)
    assert "Warning: the record was unreadable" in uninstall.stderr
    assert not record.exists()
    assert "KUMA" not in (root / "etc/firewalld/direct.xml").read_text()


# -- the record's own fields (issue 18, mutation gap): a record whose template, profile or
# -- loopback addresses are not what install writes is refused as a whole, never half-trusted;
# -- before these tests, removing any one of those checks failed no test


CHECKED_SETTINGS = load({"--kuma-dp-user": "5678"})


def written(tmp_path: Path, **changes: Any) -> Path:
    doc = Record(CHECKED_SETTINGS, ("::6/128",), "/etc/kuma/rules.j2").to_json()
    doc.update(changes)
    path = tmp_path / "installed.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_record_as_install_writes_it_reads_back(tmp_path: Path) -> None:
    record = read_record(written(tmp_path))
    assert record == Record(CHECKED_SETTINGS, ("::6/128",), "/etc/kuma/rules.j2")


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
