#!/usr/bin/env python3
"""Usage: rpm/source-tarball.py PREFIX OUTPUT.tar.gz  (from the top of the source tree)

The spec's Source0: the working tree as git sees it (tracked and untracked files, minus what
.gitignore excludes: no dist/, build/, .venv/), under PREFIX/. Outside a git checkout, every
file except .git, dist, build and .venv. Owners and order are fixed, so the same tree makes
the same archive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

SKIP = {".git", "dist", "build", ".venv"}


def tree_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        names = [n.decode() for n in out.split(b"\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for root, dirs, files in os.walk("."):
            dirs[:] = [d for d in dirs if d not in SKIP]
            names += [os.path.relpath(os.path.join(root, name)) for name in files]
    # A tracked file deleted in the working tree is not part of it.
    return sorted(n for n in names if os.path.lexists(n))


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def main(prefix: str, output: str) -> None:
    with tarfile.open(output, "w:gz") as tar:
        for name in tree_files():
            tar.add(name, arcname=f"{prefix}/{name}", recursive=False, filter=normalized)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
