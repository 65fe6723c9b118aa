"""Carry out a plan, all or nothing: every step can be undone, and a failure undoes the steps
already done, in reverse, then says exactly what was and was not undone.

Files are prepared before anything changes (a complete temp file beside the target, so a full
or read-only disk shows up first) and renamed into place when their turn comes. A timeout or a
lost connection to firewalld leaves its answer unknown: the undo of such a change is still
sent (firewalld carries out queued calls in order when it comes back), and the run reports
exit 8 with what may remain.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tproxy_firewalld import host
from tproxy_firewalld.directxml import MAX_SIZE, render_direct_xml
from tproxy_firewalld.entries import DirectConfig, Op
from tproxy_firewalld.errors import (
    DirectXmlError,
    FileError,
    FirewalldUnavailable,
    PartiallyApplied,
    TproxyError,
)
from tproxy_firewalld.files import (
    atomic_write,
    commit_write,
    discard,
    prepare_write,
    probe_directory,
    remove_file,
)
from tproxy_firewalld.firewalld import Firewalld
from tproxy_firewalld.planning import Plan
from tproxy_firewalld.readfile import NotRegular, TooLarge, read_regular

#: what is kept to put a file back: twice the largest file any reader of ours accepts
_MAX_PUT_BACK = 2 * MAX_SIZE


@dataclass(frozen=True)
class Undo:
    """How to undo one change: a runtime op (undone in pipelined batches) or a call."""

    what: str
    op: Optional[Op] = None
    call: Optional[Callable[[], None]] = None
    #: the call talks to firewalld (skipped once firewalld stopped answering)
    firewalld: bool = False


@dataclass
class _Run:
    """The effects the steps make (steps.Effects), each recording its undo, and what a
    failure needs to know to roll them back."""

    fw: Optional[Firewalld]
    undo: list[Undo] = field(default_factory=list)
    #: runtime changes whose outcome is unknown (no answer from firewalld)
    unknown: list[Op] = field(default_factory=list)
    temps: list[Path] = field(default_factory=list)
    #: the places of the steps not started yet (what a failure leaves as it was)
    pending: list[str] = field(default_factory=list)
    #: firewalld stopped answering, and whether it was asked anything since
    hung: bool = False
    asked_after_hang: bool = False
    #: where in ``undo`` the first firewalld.conf change was recorded: a reload's undo (another
    #: reload) goes there, so that it runs after the settings are put back
    conf_undo_at: Optional[int] = None
    #: the last calls to firewalld went unanswered (so it may still be carrying one out)
    silent: bool = False
    #: the first change firewalld never answered: the one call it may still carry out
    in_flight: Optional[str] = None

    def _firewalld(self) -> Firewalld:
        assert self.fw is not None
        return self.fw

    # ---------------------------------------------------------------- before anything changes

    def check_config(self) -> None:
        self._firewalld().check_config()

    def render_direct(self, config: DirectConfig, where: str) -> bytes:
        data = render_direct_xml(config)
        if len(data) > MAX_SIZE:
            # the next run (uninstall included) could not read it back
            raise DirectXmlError(
                f"{where} would grow to {len(data)} bytes, over the {MAX_SIZE} bytes this tool "
                "reads; nothing was changed"
            )
        return data

    def probe_write(self, path: Path, data: bytes) -> None:
        tmp = prepare_write(path, data)
        self.temps.append(tmp)
        discard(tmp)  # only a probe: the write itself keeps the .old backup and the label
        self.temps.remove(tmp)

    def prepare_write(self, path: Path, data: bytes, mode: int) -> Path:
        tmp = prepare_write(path, data, mode=mode)
        self.temps.append(tmp)
        return tmp

    def probe_directory(self, directory: Path) -> None:
        probe_directory(directory)

    # ---------------------------------------------------------------- the changes

    def change(self, phase: list[Op]) -> Optional[TproxyError]:
        results = self._firewalld().change(phase)
        failed: Optional[TproxyError] = None
        for op, result in zip(phase, results):
            if result.done:
                self.undo.append(Undo(op.undo().describe(), op=op.undo()))
            elif result.unknown:
                self.unknown.append(op)
                self.silent = True
                self.in_flight = self.in_flight or op.describe()
            if result.error is not None and failed is None:
                failed = result.error
        return failed

    def update_permanent(self, before: DirectConfig, after: DirectConfig) -> None:
        fw = self._firewalld()
        try:
            fw.update_permanent(after)
        except FirewalldUnavailable:
            # no answer: firewalld may still be carrying it out. Putting it back or reading it
            # would each wait out the timeout again; the rollback reports it instead.
            self.silent = True
            self.in_flight = self.in_flight or "update the permanent direct configuration"
            raise
        except TproxyError as exc:
            # firewalld changes its permanent configuration in memory before it writes the
            # file; a failed write (read-only /etc, full disk) leaves memory changed: put it back.
            with contextlib.suppress(TproxyError):
                fw.update_permanent(before)
            try:
                now = fw.permanent()
            except TproxyError:
                now = None
            if now is None or now.entries() != before.entries():
                raise PartiallyApplied(
                    f"{exc}; firewalld's permanent configuration could not be put back as it was "
                    f"({_count_diff(now, before)}); run `tproxy-firewalld diff` to see it"
                ) from None
            exc.message = f"{exc.message} (firewalld's permanent configuration, already changed in its memory, was put back as it was)"
            exc.args = (exc.message,)
            raise
        self.undo.append(
            Undo(
                "restore the permanent configuration",
                call=lambda: fw.update_permanent(before),
                firewalld=True,
            )
        )

    def write_file(self, path: Path, data: bytes) -> None:
        old = _read_bytes(path)
        atomic_write(path, data)
        self.undo.append(Undo(f"restore {path}", call=lambda: _restore_file(path, old)))

    def commit_file(self, tmp: Path, path: Path) -> None:
        old = _read_bytes(path)
        commit_write(tmp, path)
        self.temps.remove(tmp)
        self.undo.append(Undo(f"restore {path}", call=lambda: _restore_file(path, old)))

    def remove_file(self, path: Path) -> None:
        old = _read_bytes(path)
        remove_file(path)
        self.undo.append(Undo(f"restore {path}", call=lambda: _restore_file(path, old)))

    def add_address(self, iface: str, address: str) -> None:
        host.add_address(iface, address)
        self.undo.append(
            Undo(
                f"remove {address} from {iface}",
                call=lambda: host.remove_address(iface, address),
            )
        )

    def remove_address(self, iface: str, address: str) -> None:
        host.remove_address(iface, address)
        self.undo.append(
            Undo(f"add {address} to {iface}", call=lambda: host.add_address(iface, address))
        )

    def conf_changing(self) -> None:
        if self.conf_undo_at is None:
            self.conf_undo_at = len(self.undo)

    def set_conf(self, name: str, value: str, before: str) -> None:
        fw = self._firewalld()
        fw.set_conf(name, value)
        self.undo.append(
            Undo(
                f"set {name}={before} again",
                call=lambda: fw.set_conf(name, before),
                firewalld=True,
            )
        )

    def reload(self) -> None:
        fw = self._firewalld()
        fw.reload()
        undo = Undo("reload firewalld", call=fw.reload, firewalld=True)
        self.undo.insert(
            self.conf_undo_at if self.conf_undo_at is not None else len(self.undo), undo
        )


def apply_plan(plan: Plan, fw: Optional[Firewalld]) -> None:
    """Carry out ``plan``'s steps in order; on failure undo, and raise the error (its message
    says what was undone) or PartiallyApplied (exit 8) when something could not be undone."""
    run = _Run(fw, pending=[s.place for s in plan.steps])
    try:
        prepared = [s.prepare(run) for s in plan.steps]
    except BaseException as exc:
        for tmp in run.temps:
            discard(tmp)
        if isinstance(exc, TproxyError) and "nothing was changed" not in exc.message:
            exc.message = f"{exc.message}; nothing was changed"
            exc.args = (exc.message,)
        raise
    try:
        for step, ready in zip(plan.steps, prepared):
            run.pending.remove(step.place)
            step.execute(run, ready)
    except TproxyError as exc:
        for tmp in run.temps:
            discard(tmp)
        _rollback(run, exc)
        raise
    except BaseException:
        for tmp in run.temps:
            discard(tmp)
        raise


def _count_diff(now: Optional[DirectConfig], before: DirectConfig) -> str:
    if now is None:
        return "firewalld did not answer"
    extra = len(now.entries() - before.entries())
    missing = len(before.entries() - now.entries())
    return f"{extra} entries more and {missing} fewer than before"


def _rollback(run: _Run, exc: TproxyError) -> None:
    """Undo in reverse; the error's message says what was undone, or PartiallyApplied.

    Runtime undos go out as pipelined batches. firewalld carries out the calls of a
    connection in order, but only while their sender is still on the bus: calls queued behind
    a hung one are dropped once this run has gone (firewalld's authorisation check cannot find
    the sender; seen in the sandbox). So a firewalld that stopped answering gets one undo batch
    (enough for one that was only slow); after that nothing more is asked of it, since every
    further call would only wait out the timeout again, and the report says what may remain:
    the changes it had made and not undone, and the one call it may still be carrying out.
    """
    failed: list[str] = []
    run.hung = isinstance(exc, FirewalldUnavailable)
    made = len(run.undo)
    # newest first: what may still happen (no answer yet), then what was done
    maybe = [op.undo() for op in reversed(run.unknown)]
    batch: list[Op] = list(maybe)
    for undo in reversed(run.undo):
        if undo.op is not None:
            batch.append(undo.op)
            continue
        _undo_batch(run, batch, failed, maybe)
        batch = []
        assert undo.call is not None
        if undo.firewalld and run.hung and run.asked_after_hang:
            failed.append(f"{undo.what} (not tried: firewalld is not answering)")
            continue
        try:
            undo.call()
        except TproxyError as undo_exc:
            failed.append(f"{undo.what} ({undo_exc})")
            run.hung = run.hung or isinstance(undo_exc, FirewalldUnavailable)
    _undo_batch(run, batch, failed, maybe)
    untouched = ", ".join(run.pending)
    not_changed = f" (not changed: {untouched})" if untouched else ""
    if run.silent:
        # firewalld did not answer the last calls: it may finish the one it was carrying out
        undone = (
            f"{len(failed)} of the {made} change(s) made before could not be undone: {_shown(failed)}; "
            if failed
            else f"the {made} change(s) made before were undone; "
            if made
            else ""
        )
        in_flight = (
            f"it may still complete the call it was carrying out ({run.in_flight}); "
            if run.in_flight is not None
            else ""
        )
        raise PartiallyApplied(
            f"{exc}; firewalld stopped answering: {undone}{in_flight}the calls queued after it "
            "are dropped when this run ends. Once firewalld answers, run `tproxy-firewalld diff` "
            f"to see the state and run the command again{not_changed}"
        ) from None
    if failed:
        advice = (
            "firewalld is not answering; once it does, run `tproxy-firewalld diff` to see the "
            "state and run the command again"
            if run.hung
            else "Run `tproxy-firewalld diff` to see the state and run the command again"
        )
        raise PartiallyApplied(
            f"{exc}; undoing the {made} change(s) already made failed for {len(failed)}: "
            f"{_shown(failed)}. {advice}{not_changed}"
        ) from None
    note = (
        f"undid the {made} change(s) already made, nothing was changed"
        if made
        else "nothing was changed"
    )
    exc.message = f"{exc.message}; {note}"
    exc.args = (exc.message,)


def _shown(failed: list[str]) -> str:
    return "; ".join(failed[:3]) + (f"; ... ({len(failed)} in all)" if len(failed) > 3 else "")


def _undo_batch(run: _Run, batch: list[Op], failed: list[str], maybe: list[Op]) -> None:
    """Send one batch of runtime undos. ``maybe``: undos of changes firewalld never answered
    (they are reported as the call in flight, not as changes made)."""
    if not batch:
        return
    assert run.fw is not None
    if run.hung and run.asked_after_hang:
        failed += [
            f"{op.describe()} (not tried: firewalld is not answering)"
            for op in batch
            if op not in maybe
        ]
        run.silent = True
        return
    run.asked_after_hang = run.hung
    run.silent = False
    for op, result in zip(batch, run.fw.change(batch)):
        if result.unknown:
            run.hung = run.asked_after_hang = run.silent = True
            run.in_flight = run.in_flight or op.describe()
            if op not in maybe:
                failed.append(f"{op.describe()} (no answer)")
        elif result.error is not None:
            failed.append(f"{op.describe()} ({result.error})")


def _read_bytes(path: Path) -> Optional[bytes]:
    """What to put back if a later step fails: a regular file's bytes, else None (nothing to
    put back). Never follows a symlink, never waits on a FIFO someone planted there."""
    try:
        return read_regular(path, _MAX_PUT_BACK, follow=False)
    except TooLarge:
        # the readers refused anything this large before the plan was made: swapped since
        raise FileError(
            f"{path}: larger than {_MAX_PUT_BACK} bytes; refusing to replace it"
        ) from None
    except (OSError, NotRegular):
        return None


def _restore_file(path: Path, data: Optional[bytes]) -> None:
    if data is None:
        remove_file(path)
    else:
        atomic_write(path, data, backup=False)
