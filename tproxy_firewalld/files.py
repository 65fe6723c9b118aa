"""Writing root-owned files safely: lock, ``.old`` backup, temp file + fsync + rename.

firewalld's own writer truncates direct.xml in place (not atomic, no fsync); a crash there
leaves a broken file that firewalld then ignores at its next start. We never do that.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tproxy_firewalld.errors import DirectXmlError, Locked, NotPermitted

#: seconds to wait for another run; TPROXY_FIREWALLD_LOCK_TIMEOUT overrides it
LOCK_TIMEOUT = 30.0


@contextlib.contextmanager
def locked(directory: Path, timeout: float | None = None) -> Iterator[None]:
    """Serialise runs of this tool that change ``directory`` (one lock file beside the data).

    The lock file lives in /run when that is writable, so it never lands in the config
    directory firewalld scans; an image root (``--root``) gets its own.
    """
    run = Path("/run/lock") if os.access("/run/lock", os.W_OK) else directory
    name = "tproxy-firewalld." + str(directory.resolve()).strip("/").replace("/", "_") + ".lock"
    path = run / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise NotPermitted(f"cannot take the lock {path}: permission denied; run as root") from None
    if timeout is None:
        timeout = float(os.environ.get("TPROXY_FIREWALLD_LOCK_TIMEOUT", LOCK_TIMEOUT))
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise Locked(
                        f"another tproxy-firewalld run holds {path} (waited {timeout:.0f} s); "
                        "try again when it has finished"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, backup: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Mode, owner and SELinux label of an existing file are kept (a new file is 0644
    root:root, like firewalld's); a copy of the old file is kept as ``<name>.old``, as
    firewalld does.
    """
    directory = path.parent
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        raise DirectXmlError(f"{path}: is not a regular file; refusing to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if old is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
                _copy_label(path, f.fileno())
            else:
                os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        if backup and old is not None:
            _backup(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _backup(path: Path) -> None:
    # Same name and content as firewalld's backup, but written atomically too.
    old = path.with_name(path.name + ".old")
    fd, tmp = tempfile.mkstemp(prefix=f".{old.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        shutil.copy2(path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, old)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
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
