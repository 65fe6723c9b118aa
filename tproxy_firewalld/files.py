"""Writing root-owned files safely: ``.old`` backup, temp file + fsync + rename.

firewalld's own writer truncates direct.xml in place (not atomic, no fsync); a crash there
leaves a broken file that firewalld then ignores at its next start. We never do that. Every
OSError becomes one line naming the file (``errors.os_error``).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Optional

from tproxy_firewalld.errors import os_error

#: The mode of a directory a write has to make: firewalld's own for its configuration directory
#: (firewalld's io/direct.py and io/firewalld_conf.py: ``os.mkdir(ETC_FIREWALLD, 0o750)``), the
#: package's for any other (the RPM makes /var/lib/tproxy-firewalld 0755).
FIREWALLD_DIR_MODE = 0o750
DIR_MODE = 0o755


def atomic_write(path: Path, data: bytes, *, backup: bool = True, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Mode, owner and SELinux label of an existing file are kept (a new file gets ``mode``,
    owned by us, like firewalld's); a copy of the old file is kept as ``<name>.old``, as
    firewalld does, with the same mode and owner.
    """
    directory = path.parent
    old = _before_write(path)
    tmp = _write_temp(directory, path.name, data, old, mode)
    if backup and old is not None:
        backup_path = path.with_name(path.name + ".old")
        try:
            _backup(path, backup_path, old)
        except OSError as exc:
            discard(tmp)
            raise os_error(backup_path, exc, "write the backup") from None
        except BaseException:
            discard(tmp)
            raise
    commit_write(tmp, path)


def prepare_write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """The first half of a write: a complete, synced temp file beside ``path`` (so a full or
    read-only disk shows before anything else changes). :func:`commit_write` renames it."""
    return _write_temp(path.parent, path.name, data, _before_write(path), mode)


def _before_write(path: Path) -> Optional[os.stat_result]:
    """What both writes do first: the directory made if it is missing, and what stands at
    ``path`` looked at: None when nothing, refused (one line) when not a regular file."""
    directory = path.parent
    mode = FIREWALLD_DIR_MODE if directory.parts[-2:] == ("etc", "firewalld") else DIR_MODE
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
        old = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(directory, exc, "write to") from None
    if not stat.S_ISREG(old.st_mode):
        raise os_error(path, OSError(0, "is not a regular file"), "replace")
    return old


def private_dir(directory: Path) -> bool:
    """Whether ``directory`` (made, mode 0700, if it is missing) is a directory of ours that
    nobody else can write to: not a symlink, owned by our effective uid, no group or other
    write bit. OSError when it can be neither made nor looked at."""
    with contextlib.suppress(FileExistsError):  # whatever stands there is judged below
        directory.mkdir(mode=0o700, parents=True)
    info = os.lstat(directory)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def probe_directory(directory: Path) -> None:
    """That a file can be created (and so one removed) in ``directory``: a read-only or full
    file system shows here, before anything else changes."""
    try:
        fd, tmp = _mkstemp(".probe.", directory)
    except FileNotFoundError:
        return  # nothing there to remove either
    except OSError as exc:
        raise os_error(directory, exc, "write to") from None
    os.close(fd)
    discard(Path(tmp))


def remove_stale_temps(directory: Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the temp files a killed run of ours left in ``directory`` for the files
    ``names`` (and their ``.old`` backups): ``.<name>.XXXXXXXX.tmp`` as :func:`_write_temp`
    and :func:`probe_directory` make them, regular files owned by us. Call it only under the
    target's lock: then no run of ours is writing one, so any there is stale. Best effort:
    what cannot be listed or removed stays, as it would have."""
    alternatives = "|".join(re.escape(n) for n in (*names, "probe"))
    pattern = re.compile(rf"\.(?:{alternatives})(?:\.old)?\.[a-z0-9_]{{8}}\.tmp")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def commit_write(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        discard(tmp)
        raise os_error(path, exc, "replace") from None


def discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def remove_file(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(path, exc, "remove") from None
    with contextlib.suppress(OSError):
        _fsync_dir(path.parent)


def _mkstemp(prefix: str, directory: Path) -> tuple[int, str]:
    # tempfile only when something is written: reading runs (diff, status, a render cache
    # hit) import this module for nothing else and need not pay for it
    import tempfile

    return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)


def _write_temp(
    directory: Path, name: str, data: bytes, old: Optional[os.stat_result], mode: int
) -> Path:
    try:
        fd, tmp = _mkstemp(f".{name}.", directory)
    except OSError as exc:
        raise os_error(directory, exc, "write to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if old is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
                _copy_label(directory / name, f.fileno())
            else:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise os_error(directory / name, exc, "write") from None
    return Path(tmp)


def _backup(path: Path, backup: Path, old: os.stat_result) -> None:
    # Same name and content as firewalld's backup, written atomically, owner and mode kept.
    with open(path, "rb") as f:
        data = f.read()
    tmp = _write_temp(path.parent, backup.name, data, old, 0o644)
    try:
        os.replace(tmp, backup)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_label(path: Path, fd: int) -> None:
    try:
        label = os.getxattr(path, "security.selinux", follow_symlinks=False)
    except OSError:
        return  # no SELinux (or no label): nothing to keep
    with contextlib.suppress(OSError):
        os.setxattr(fd, "security.selinux", label)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
