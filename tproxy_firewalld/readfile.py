"""The one bounded read of a regular file that every reader of ours uses (firewalld.conf,
direct.xml, the record, resolv.conf, config files, the render cache).

Opened with ``O_NONBLOCK`` (a FIFO planted where a file should be must not hang the run),
optionally ``O_NOFOLLOW``; judged by ``fstat`` of what was opened (not by a path that may
have been swapped since); never more than ``limit + 1`` bytes read. Each caller turns the
outcomes into its own one-line error: this module only says which outcome it was.
Standard library only: it is imported on every run's start-up path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union


class Refused(Exception):
    """The file is there but is not one to read (the subclass says why)."""


class NotRegular(Refused):
    """Not a regular file (a directory, a FIFO, a device, a socket)."""


class TooLarge(Refused):
    """Larger than the limit."""


class NotRootOwned(Refused):
    """Not owned by root, or writable by group or others (only with ``root_owned``)."""


def read_regular(
    path: Union[str, Path], limit: int, *, follow: bool = True, root_owned: bool = False
) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``.

    Raises OSError as ``os.open`` or the read raise it (FileNotFoundError when there is no
    file; ELOOP when ``follow`` is false and it is a symbolic link), NotRegular, TooLarge
    or (``root_owned``) NotRootOwned.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    # judged before the descriptor becomes a file object (which refuses a directory itself)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotRegular(str(path))
    if root_owned and (info.st_uid != 0 or info.st_mode & 0o022):
        os.close(fd)
        raise NotRootOwned(str(path))
    with open(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(str(path))
    return data
