"""apply and rollback, every failure point on purpose, with an in-memory firewalld (the sandbox
tests prove the same against the real one for the failures it can be made to have).

The target is an image root in a temporary directory with the fake as its firewalld: plans
are live (runtime and permanent steps), files land in the temporary directory, and nothing of
this host is touched (no lo address: that only happens on the live system).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_firewalld import FOREIGN, FakeFirewalld, world
from helpers import load

from tproxy_firewalld import api, files
from tproxy_firewalld.entries import Chain, DirectConfig, Rule
from tproxy_firewalld.errors import (
    DirectXmlError,
    ExitCode,
    FileError,
    FirewalldRejected,
    FirewalldUnavailable,
    Locked,
    PartiallyApplied,
)
from tproxy_firewalld.firewalld import Op
from tproxy_firewalld.kuma import OWNER
from tproxy_firewalld.ruleset import build_ruleset
from tproxy_firewalld.target import Target

SETTINGS = load({"--kuma-dp-user": "5678"})
OURS = build_ruleset(SETTINGS)
N_OPS = len(OURS)  # 30: 8 chains, 22 rules


def state(target: Target, fake: FakeFirewalld) -> tuple[object, ...]:
    record = target.state_file.read_bytes() if target.state_file.exists() else None
    return (
        set(fake.runtime().entries()),
        fake.permanent().entries(),
        target.direct_xml.read_bytes(),
        record,
    )


def install(target: Target, fake: FakeFirewalld, **kw: object) -> api.Result:
    return api.install(SETTINGS, target=target, client=fake.factory(), **kw)  # type: ignore[arg-type]


def test_install_then_install_again_changes_nothing(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    first = install(target, fake)
    assert first.changed and [s.kind for s in first.steps] == ["runtime", "permanent", "record"]
    assert fake.runtime().ours(OWNER).entries() == OURS.entries()
    assert fake.permanent().ours(OWNER).entries() == OURS.entries()
    assert fake.permanent().foreign(OWNER) == FOREIGN
    assert (
        first.runtime is not None
        and first.runtime.before == ()
        and len(first.runtime.after) == N_OPS
    )
    sent = len(fake.changes)
    second = install(target, fake)
    assert not second.changed and second.summary() == "nothing to do"
    assert len(fake.changes) == sent, "no changing call at all"


def test_jumps_go_last_and_each_phase_waits_for_the_one_before(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    install(target, fake)
    kinds = [("chain" if isinstance(op.entry, Chain) else op.entry.chain) for op in fake.sent]
    assert kinds[:8] == ["chain"] * 8
    builtin = [i for i, k in enumerate(kinds) if k in ("OUTPUT", "PREROUTING")]
    assert builtin == list(range(N_OPS - len(builtin), N_OPS)), (
        "the jumps from built-in chains last"
    )


@pytest.mark.parametrize("k", range(0, N_OPS, 3))
def test_a_step_rejected_anywhere_is_undone_completely(tmp_path: Path, k: int) -> None:
    target, fake = world(tmp_path)
    failing = [e for phase in _phases() for e in phase][k]
    fake.fail = lambda op: op.verb == "add" and op.entry == failing
    before = state(target, fake)
    with pytest.raises(FirewalldRejected) as info:
        install(target, fake)
    assert (
        "nothing was changed" in info.value.message
        and info.value.exit_code == ExitCode.FIREWALLD_REJECTED
    )
    assert state(target, fake) == before


def _phases() -> list[list[object]]:
    from tproxy_firewalld.steps import add_phases

    return add_phases(OURS.entries())  # type: ignore[return-value]


def test_a_failed_removal_during_uninstall_is_undone(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    install(target, fake)
    before = state(target, fake)
    fake.fail = lambda op: op.verb == "remove" and isinstance(op.entry, Chain)
    with pytest.raises(FirewalldRejected, match="nothing was changed"):
        api.uninstall(target=target, client=fake.factory())
    assert state(target, fake) == before


def test_a_hung_firewalld_ends_in_exit_8_with_the_undo_queued(tmp_path: Path) -> None:
    target, fake = world(tmp_path, hang_after=12)
    with pytest.raises(PartiallyApplied) as info:
        install(target, fake)
    message = info.value.message
    assert info.value.exit_code == ExitCode.PARTIALLY_APPLIED and "\n" not in message
    assert (
        message.startswith("firewalld did not answer") and "firewalld stopped answering" in message
    )
    assert "12 of the 12 change(s) made before could not be undone" in message
    # the first call without an answer is the one firewalld may still be carrying out
    sent_adds = [op for op in fake.sent if op.verb == "add"]
    assert (
        f"may still complete the call it was carrying out ({sent_adds[12].describe()})" in message
    )
    assert "not changed: the permanent configuration, the record" in message
    # one undo batch, newest first, is still sent (enough for a firewalld that was only slow)
    undos = [op for op in fake.sent if op.verb == "remove"]
    assert [op.entry for op in undos] == [op.entry for op in reversed(sent_adds)]
    assert fake.permanent_config == FOREIGN and not target.state_file.exists()


def test_a_hang_at_the_permanent_update_waits_twice_at_most(tmp_path: Path) -> None:
    """The update went out unanswered: trying to put it back, or reading it, would each wait
    out the timeout again. One wait for the update, one for the runtime undo batch (so a hung
    firewalld ends a run within twice the D-Bus timeout)."""
    target, fake = world(tmp_path, hang_after=N_OPS)
    with pytest.raises(PartiallyApplied) as info:
        install(target, fake)
    assert fake.waits == 2, fake.changes[N_OPS:]
    message = info.value.message
    assert (
        "may still complete the call it was carrying out (update the permanent direct configuration)"
        in message
    )
    assert f"{N_OPS} of the {N_OPS} change(s) made before could not be undone" in message


def test_a_hang_while_observing_is_exit_5_and_nothing_is_sent(tmp_path: Path) -> None:
    target, fake = world(tmp_path)

    def hung() -> DirectConfig:
        raise FirewalldUnavailable(
            "firewalld did not answer within 20 s (read the runtime direct configuration)"
        )

    fake.runtime = hung  # type: ignore[method-assign]
    with pytest.raises(FirewalldUnavailable) as info:
        install(target, fake)
    assert info.value.exit_code == ExitCode.FIREWALLD_UNAVAILABLE and fake.changes == []


def test_changes_sent_to_a_firewalld_that_stops_answering_are_never_called_nothing(
    tmp_path: Path,
) -> None:
    """Sent but unanswered: the first may still happen, so exit 8, not "nothing was changed"."""
    target, fake = world(tmp_path, hang_after=0)
    with pytest.raises(PartiallyApplied) as info:
        install(target, fake)
    first = fake.sent[0].describe()
    assert (
        f"firewalld stopped answering: it may still complete the call it was carrying out ({first})"
        in info.value.message
    )


def test_a_permanent_update_that_cannot_be_written_is_put_back(tmp_path: Path) -> None:
    """firewalld changes its permanent config in memory, then fails to write direct.xml: the
    old config goes back (its write fails too, but memory is what counts), runtime undone."""
    target, fake = world(tmp_path, failing_updates=2)
    before = state(target, fake)
    with pytest.raises(FirewalldRejected) as info:
        install(target, fake)
    assert (
        "Read-only file system" in info.value.message
        and "nothing was changed" in info.value.message
    )
    assert state(target, fake) == before


def test_a_permanent_config_that_cannot_be_put_back_is_reported(tmp_path: Path) -> None:
    target, fake = world(tmp_path, failing_updates=2, stuck=True)
    with pytest.raises(PartiallyApplied) as info:
        install(target, fake)
    assert (
        "could not be put back as it was (1 entries more and 2 fewer than before)"
        in info.value.message
    )


def test_a_record_that_cannot_be_written_undoes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, fake = world(tmp_path)
    before = state(target, fake)

    def full(tmp: Path, path: Path) -> None:
        files.discard(tmp)
        raise FileError(f"cannot replace {path}: No space left on device")

    monkeypatch.setattr("tproxy_firewalld.transaction.commit_write", full)
    with pytest.raises(FileError) as info:
        install(target, fake)
    assert "No space left on device" in info.value.message and "undid the" in info.value.message
    assert state(target, fake) == before
    assert not list(target.state_file.parent.glob(".installed.json.*")), "no temp file left"


def test_an_unwritable_state_directory_refuses_before_any_change(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/tproxy-firewalld").write_text("a file where the directory should be")
    with pytest.raises(FileError):
        install(target, fake)
    assert fake.changes == [], "refused before anything changed"


def test_a_corrupt_record_never_blocks_uninstall(tmp_path: Path) -> None:
    for corrupt in (
        b"[]",
        b'"x"',
        b"{",
        b'{"schema": "tproxy-firewalld/installed/2", "settings": {"redirect_inbound_port": "1 -j X"}}',
    ):
        target, fake = world(tmp_path / str(len(corrupt)))
        install(target, fake)
        target.state_file.write_bytes(corrupt)
        result = api.uninstall(target=target, client=fake.factory())
        assert [w.code for w in result.warnings] == ["record-unreadable"]
        assert fake.runtime().ours(OWNER).is_empty() and not target.state_file.exists()


def test_a_plan_is_applied_only_to_the_state_it_was_made_for(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    planned = api.plan(SETTINGS, target=target, client=fake.factory())
    assert planned.changed and planned.record is not None
    fake.runtime_entries.append(Rule("ipv4", "nat", "KUMA_MESH_OUTBOUND", 99, ("-j", "RETURN")))
    with pytest.raises(Locked, match="the system changed since the plan was made"):
        api.apply(planned, client=fake.factory())
    fake.runtime_entries.pop()
    result = api.apply(planned, client=fake.factory())
    assert result.changed and fake.runtime().ours(OWNER).entries() == OURS.entries()
    assert not api.plan(SETTINGS, target=target, client=fake.factory()).changed


def test_dry_run_changes_nothing_and_reports_the_same_plan(tmp_path: Path) -> None:
    target, fake = world(tmp_path)
    before = state(target, fake)
    dry = install(target, fake, dry_run=True)
    assert dry.changed and dry.dry_run and state(target, fake) == before and fake.changes == []
    real = install(target, fake)
    assert [s.summary() for s in dry.steps] == [s.summary() for s in real.steps]


def test_ops_are_undone_in_reverse(tmp_path: Path) -> None:
    assert Op("add", Chain("ipv4", "nat", "X")).undo() == Op("remove", Chain("ipv4", "nat", "X"))
    target, fake = world(tmp_path)
    install(target, fake)
    json.dumps(install(target, fake).to_json())  # every result is JSON


@pytest.mark.parametrize("live", [True, False], ids=["permanent", "file"])
def test_a_direct_xml_that_would_outgrow_what_is_read_back_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live: bool
) -> None:
    """A file over directxml.MAX_SIZE is refused when read: writing one (or having firewalld
    write one) would leave every later run, uninstall included, refusing."""
    from tproxy_firewalld import transaction

    target, fake = world(tmp_path)
    monkeypatch.setattr(transaction, "MAX_SIZE", target.direct_xml.stat().st_size + 100)
    before = state(target, fake)
    client = fake.factory() if live else (lambda _target: (None, "offline"))
    with pytest.raises(
        DirectXmlError, match=r"would grow to .* bytes, over the .* nothing was changed"
    ):
        api.install(SETTINGS, target=target, client=client)  # type: ignore[arg-type]
    assert state(target, fake) == before and fake.changes == []
