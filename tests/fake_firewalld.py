"""An in-memory firewalld behind the library's Firewalld protocol, for unit tests of plan,
apply and rollback. Never the proof that a feature works against firewalld (the sandbox tests
are); it lets every failure point be reached on purpose."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from helpers import ready_root

from tproxy_firewalld.directxml import render_direct_xml
from tproxy_firewalld.entries import Chain, DirectConfig, Entry, Passthrough, Rule
from tproxy_firewalld.errors import FirewalldRejected, FirewalldUnavailable
from tproxy_firewalld.firewalld import DaemonInfo, Op, OpResult
from tproxy_firewalld.fwconf import set_in_conf
from tproxy_firewalld.target import Target


class ConfFile(dict[str, str]):
    """firewalld.conf as firewalld holds it, written through to ``path`` (if set) on every
    change: firewalld's Set writes the file, and a started firewalld holds what the file says.
    A test makes an edit firewalld has not loaded by writing the file itself."""

    path: Optional[Path] = None

    def write(self) -> None:
        if self.path is None:
            return
        text = self.path.read_text() if self.path.exists() else ""
        for name, value in self.items():
            text = set_in_conf(text, name, value)
        self.path.write_text(text)

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.write()

    def update(self, *args: Any, **kw: str) -> None:
        super().update(*args, **kw)
        self.write()


@dataclass
class FakeFirewalld:
    runtime_entries: list[Entry] = field(default_factory=list)
    permanent_config: DirectConfig = field(default_factory=DirectConfig)
    #: an op for which this returns True fails with COMMAND_FAILED
    fail: Callable[[Op], bool] = lambda op: False
    #: from this many ops on (counting every op ever sent), firewalld stops answering
    hang_after: Optional[int] = None
    #: how many of the next update() calls change the in-memory config and then fail to
    #: write it (as firewalld does on a read-only /etc)
    failing_updates: int = 0
    #: a failing update leaves the in-memory config in a third state (nothing puts it back)
    stuck: bool = False
    #: where firewalld writes its permanent config after an update (direct.xml), if anywhere
    file: Optional[Path] = None
    changes: list[str] = field(default_factory=list)
    sent: list[Op] = field(default_factory=list)
    #: calls made while hung: each one would wait out the whole D-Bus timeout
    waits: int = 0
    #: firewalld.conf as firewalld holds it (its config properties)
    conf: ConfFile = field(default_factory=lambda: ConfFile({"RFC3964_IPv4": "no"}))
    #: firewalld.conf as the running firewalld applies it (changed by reload())
    applied: dict[str, str] = field(default_factory=dict)
    #: the next set_conf / reload / check_config fails with this firewalld error code
    fail_set: Optional[str] = None
    fail_reload: Optional[str] = None
    fail_check: Optional[str] = None

    def __post_init__(self) -> None:
        self.applied = dict(self.conf)

    @property
    def daemon(self) -> DaemonInfo:
        return self.info()

    def info(self) -> DaemonInfo:
        return DaemonInfo(
            "RUNNING", "1.3.3", "nftables", "yes", self.conf.get("StrictForwardPorts"),
            self.conf.get("RFC3964_IPv4"), dict(self.conf),
        )  # fmt: skip

    def runtime(self) -> DirectConfig:
        return DirectConfig(
            chains=tuple(e for e in self.runtime_entries if isinstance(e, Chain)),
            rules=tuple(e for e in self.runtime_entries if isinstance(e, Rule)),
            passthroughs=tuple(e for e in self.runtime_entries if isinstance(e, Passthrough)),
        )

    def permanent(self) -> DirectConfig:
        if self.sent and self.hung():  # reads hang too, once the hang has begun
            self.waits += 1
            raise FirewalldUnavailable("firewalld did not answer (getSettings)")
        return self.permanent_config

    def hung(self) -> bool:
        return self.hang_after is not None and len(self.sent) >= self.hang_after

    def change(self, ops: Sequence[Op]) -> list[OpResult]:
        results = []
        if ops and self.hung():
            self.waits += 1
        for op in ops:
            self.changes.append(f"{op.verb} {op.entry.describe()}")
            if self.hung():
                self.sent.append(op)
                results.append(
                    OpResult(False, FirewalldUnavailable("firewalld did not answer"), unknown=True)
                )
                continue
            self.sent.append(op)
            if self.fail(op):
                results.append(
                    OpResult(
                        False,
                        FirewalldRejected(
                            f"{op.describe()}: firewalld says COMMAND_FAILED", "COMMAND_FAILED"
                        ),
                    )
                )
            elif op.verb == "add":
                if op.entry in self.runtime_entries:
                    results.append(OpResult(False))
                else:
                    self.runtime_entries.append(op.entry)
                    results.append(OpResult(True))
            elif op.entry in self.runtime_entries:
                self.runtime_entries.remove(op.entry)
                results.append(OpResult(True))
            else:
                results.append(OpResult(False))
        return results

    def update_permanent(self, config: DirectConfig) -> None:
        self.changes.append("config.direct.update")
        if self.hung():
            self.waits += 1
            raise FirewalldUnavailable("firewalld did not answer (update)")
        self.permanent_config = config  # firewalld imports first, then writes the file
        if self.failing_updates > 0:
            self.failing_updates -= 1
            if self.stuck:
                self.permanent_config = DirectConfig(chains=(Chain("ipv4", "filter", "STUCK"),))
            raise FirewalldRejected(
                "update the permanent direct configuration: firewalld says UNKNOWN_ERROR: "
                "[Errno 30] Read-only file system: '/etc/firewalld/direct.xml'"
            )
        if self.file is not None:
            self.file.write_bytes(render_direct_xml(config))

    def set_conf(self, name: str, value: str) -> None:
        self.changes.append(f"config.Set {name}={value}")
        if self.hung():
            raise FirewalldUnavailable("firewalld did not answer (Set)")
        if self.fail_set is not None:
            code, self.fail_set = self.fail_set, None
            raise FirewalldRejected(f"set {name}: firewalld says {code}", code)
        self.conf[name] = value

    def applied_conf(self) -> dict[str, str]:
        return dict(self.applied)

    def check_config(self) -> None:
        if self.fail_check is not None:
            code, self.fail_check = self.fail_check, None
            raise FirewalldRejected(
                f"check the permanent configuration: firewalld says {code}", code
            )

    def reload(self) -> None:
        self.changes.append("reload")
        if self.hung():
            raise FirewalldUnavailable("firewalld did not answer (reload)")
        if self.fail_reload is not None:
            code, self.fail_reload = self.fail_reload, None
            raise FirewalldRejected(f"reload firewalld: firewalld says {code}", code)
        self.applied = dict(self.conf)
        self.runtime_entries = list(self.permanent_config.entries())  # FlushAllOnReload=yes

    def close(self) -> None:
        pass

    def factory(self) -> Callable[[Target], tuple[FakeFirewalld, str]]:
        return lambda target: (self, "")


#: another tool's entries, in the fake's runtime and permanent config and in direct.xml
FOREIGN = DirectConfig(
    chains=(Chain("ipv4", "filter", "FOREIGN"),),
    rules=(Rule("ipv4", "filter", "FOREIGN", 0, ("-j", "RETURN")),),
)


def world(tmp_path: Path, **kw: object) -> tuple[Target, FakeFirewalld]:
    """An image root at tmp_path and a fake firewalld, both holding FOREIGN and nothing else;
    ``kw`` goes to FakeFirewalld (faults to inject)."""
    fake = FakeFirewalld(list(FOREIGN.entries()), FOREIGN, **kw)  # type: ignore[arg-type]
    ready_root(tmp_path)  # offline, firewalld.conf says what the fake says live
    (tmp_path / "etc/firewalld/direct.xml").write_bytes(render_direct_xml(FOREIGN))
    target = Target.make(tmp_path)
    fake.file = target.direct_xml
    fake.conf.path = target.firewalld_dir / "firewalld.conf"
    fake.conf.write()
    return target, fake
