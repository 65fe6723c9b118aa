"""Writes and private directories, each done one way (issue 18, "Once each"): atomic_write and
prepare_write make a missing directory with the same mode and refuse a non-regular target
with the same error; one private_dir serves the render cache and the live lock."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tproxy_firewalld import files, target
from tproxy_firewalld.errors import ExitCode, FileError, Locked, TproxyError


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _prepare_and_commit(path: Path, data: bytes) -> None:
    files.commit_write(files.prepare_write(path, data), path)


WRITES = {"atomic_write": files.atomic_write, "prepare_write": _prepare_and_commit}


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.usefixtures("umask")
def test_a_missing_directory_gets_one_mode_whichever_write_makes_it(
    tmp_path: Path, write: str
) -> None:
    WRITES[write](tmp_path / "etc/firewalld/direct.xml", b"<direct/>")
    WRITES[write](tmp_path / "var/lib/tproxy-firewalld/installed.json", b"{}")
    # firewalld's own mode for its directory, the package's (the RPM's) for ours
    assert stat.S_IMODE((tmp_path / "etc/firewalld").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "var/lib/tproxy-firewalld").stat().st_mode) == 0o755


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("what", ["fifo", "dir"])
def test_a_non_regular_target_is_refused_alike(tmp_path: Path, write: str, what: str) -> None:
    path = tmp_path / "direct.xml"
    if what == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(TproxyError) as info:
        WRITES[write](path, b"<direct/>")
    assert type(info.value) is FileError and info.value.exit_code == ExitCode.IO_ERROR
    assert str(info.value) == f"cannot replace {path}: is not a regular file"


def test_private_dir(tmp_path: Path) -> None:
    made = tmp_path / "a/b"
    assert files.private_dir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert not files.private_dir(open_dir)
    link = tmp_path / "link"
    link.symlink_to(made)
    assert not files.private_dir(link)
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    assert not files.private_dir(plain), "a file there is refused, not an OSError"


def test_the_lock_directory_refuses_what_is_not_ours_in_one_line(tmp_path: Path) -> None:
    plain = tmp_path / "run"
    plain.write_bytes(b"")
    with pytest.raises(Locked, match="is not a directory of ours"):
        target._lock_dir(plain)
    assert target._lock_dir(tmp_path / "fresh") == tmp_path / "fresh"
