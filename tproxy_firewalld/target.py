"""Where a run works: the live system (firewalld over D-Bus, or its files when it is not
running) or an image root (``--root DIR``: files only), and the lock that serialises runs.

``--root`` is a path, not a string: it is resolved, and a root that is ``/`` — by its device
and inode, so a bind mount of ``/`` counts — is the live system (with its SSH guard and its
firewalld). Inside a real image root every path is
resolved the way ``chroot`` would see it — absolute symlinks lead to the root, not to the host,
and ``..`` stops at the root — so no write ever leaves the image (as ``systemd-tmpfiles
--root`` and ``firewall-offline-cmd`` resolve paths).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tproxy_firewalld.errors import FileError, Locked, NotPermitted, SettingsError, os_error
from tproxy_firewalld.files import private_dir, remove_stale_temps
from tproxy_firewalld.fwconf import CONF_FILE, version_in

#: seconds to wait for another run; TPROXY_FIREWALLD_LOCK_TIMEOUT overrides it
LOCK_TIMEOUT = 30.0
#: the live system's lock lives here: a directory only root can create files in
RUN_DIR = Path("/run/tproxy-firewalld")
STATE_DIR = "var/lib/tproxy-firewalld"
MAX_SYMLINKS = 40


@dataclass(frozen=True)
class Target:
    """The live system (``root is None``) or an image root."""

    root: Optional[Path] = None
    #: do not talk to firewalld even if it runs (the live system only; a root is always offline)
    offline: bool = False
    bus_address: Optional[str] = None
    #: seconds a D-Bus call may take (None: TPROXY_FIREWALLD_TIMEOUT or the default)
    timeout: Optional[float] = None

    @classmethod
    def make(
        cls,
        root: Optional[os.PathLike[str] | str] = None,
        *,
        offline: bool = False,
        bus_address: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Target:
        if root is None:
            return cls(None, offline, bus_address, timeout)
        text = os.fspath(root)
        if not text or "\0" in text:
            raise SettingsError(f"--root: {text!r} is not a directory", "root")
        resolved = Path(os.path.realpath(text))
        if resolved == Path("/") or is_slash(resolved):
            return cls(None, offline, bus_address, timeout)  # `--root /` is the live system
        if resolved.exists() and not resolved.is_dir():
            raise SettingsError(f"--root: {text} is not a directory", "root")
        return cls(resolved, True, bus_address, timeout)

    @property
    def live_system(self) -> bool:
        return self.root is None

    @property
    def label(self) -> str:
        return "/" if self.root is None else str(self.root)

    def path(self, relative: str) -> Path:
        """``relative`` (e.g. ``etc/firewalld/direct.xml``) on this target, symlinks resolved
        inside an image root."""
        if self.root is None:
            return Path("/") / relative
        return chase(self.root, relative)

    @property
    def firewalld_dir(self) -> Path:
        return self.path("etc/firewalld")

    # Every file is chased to its last component: in an image root, etc/firewalld/direct.xml
    # or firewalld.conf may itself be an absolute symlink, which means the image's file.

    @property
    def direct_xml(self) -> Path:
        return self.path("etc/firewalld/direct.xml")

    @property
    def conf_file(self) -> Path:
        return self.path("etc/firewalld/firewalld.conf")

    @property
    def state_file(self) -> Path:
        # Documented in the README: the settings the last install applied.
        return self.path(f"{STATE_DIR}/installed.json")

    def firewalld_version(self) -> Optional[tuple[int, ...]]:
        """The version of the firewalld installed here, from its Python package
        (``usr/lib/python3*/{dist,site}-packages/firewall/config/__init__.py``: Debian's,
        Fedora's and RHEL's); every path resolved inside an image root, so a symlinked
        ``python3.X`` never leads to the host's firewalld. None when it cannot be found."""
        try:
            names = sorted(os.listdir(self.path("usr/lib")))
        except OSError:
            return None
        for name in names:
            if not name.startswith("python3"):
                continue
            for packages in ("dist-packages", "site-packages"):
                found = version_in(
                    self.path(f"usr/lib/{name}/{packages}/firewall/config/__init__.py")
                )
                if found is not None:
                    return found
        return None

    @contextlib.contextmanager
    def locked(self, timeout: Optional[float] = None) -> Iterator[None]:
        """Serialise the runs of this tool that change this target."""
        if self.root is None:
            directory = _lock_dir(RUN_DIR)
            path = directory / "live.lock"
        else:
            directory = self.path(STATE_DIR)
            try:
                directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(directory, exc, "create") from None
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
            path = directory / f".lock-{digest}"
        with _flock(path, lock_timeout(timeout)):
            self._remove_stale_temps()
            yield

    def _remove_stale_temps(self) -> None:
        """A run killed between writing a temp file and renaming it leaves the temp file: the
        next run that holds the lock removes it (no other run of ours can be writing one)."""

        remove_stale_temps(self.state_file.parent, (self.state_file.name,))
        remove_stale_temps(self.firewalld_dir, (self.direct_xml.name, CONF_FILE))


def is_slash(path: Path) -> bool:
    """Whether ``path`` is this system's ``/`` under another name (a bind mount of it, as in a
    container started with ``-v /:/host``): the same directory, by device and inode."""
    try:
        here, slash = os.stat(path), os.stat("/")
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (slash.st_dev, slash.st_ino)


def lock_timeout(given: Optional[float] = None) -> float:
    if given is not None:
        return given
    text = os.environ.get("TPROXY_FIREWALLD_LOCK_TIMEOUT")
    if text is None:
        return LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise SettingsError(
            f"TPROXY_FIREWALLD_LOCK_TIMEOUT: value {text!r} is not a number of seconds in [0, 3600]"
        )
    return value


def _lock_dir(directory: Path) -> Path:
    """The live lock's directory: made if missing, refused unless it is a private one of ours."""
    try:
        ours = private_dir(directory)
    except OSError as exc:
        raise os_error(directory, exc, "create") from None
    if not ours:
        raise Locked(
            f"{directory} is not a directory of ours (it must be a directory owned by uid "
            f"{os.geteuid()} that nobody else can write to); remove it and run this again"
        )
    return directory


@contextlib.contextmanager
def _flock(path: Path, timeout: float) -> Iterator[None]:
    try:
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Locked(f"the lock {path} is a symbolic link; refusing to follow it") from None
        if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
            raise NotPermitted(
                f"cannot take the lock {path}: permission denied; run as root"
            ) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory, a socket
            raise Locked(
                f"the lock {path} is not a regular file of ours; remove it and run this again"
            ) from None
        raise os_error(path, exc, "open the lock") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise Locked(
                f"the lock {path} is not a regular file of ours; remove it and run this again"
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise os_error(path, exc, "lock") from None
                if time.monotonic() >= deadline:
                    raise Locked(
                        f"another tproxy-firewalld run holds {path} (waited {timeout:g} s); "
                        "try again when it has finished"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def chase(root: Path, relative: str) -> Path:
    """``relative`` under ``root``, every symlink resolved as inside a chroot at ``root``.

    Components that do not exist are appended as they are. Raises FileError on a symlink loop.
    """
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return candidate.joinpath(*parts) if parts else candidate
        except OSError as exc:
            raise os_error(candidate, exc, "look at") from None
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise FileError(f"{root / relative}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return current
