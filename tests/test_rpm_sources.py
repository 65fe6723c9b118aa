"""The spec's bundled libraries' Sources name no host (issue 17 item 12): Fedora's convention,
%pypi_source (python-srpm-macros) and a %pypi_wheel built on its %__pypi_url. Fast: rpmspec
parses the spec per target, nothing is built (tests/test_rpm.py builds the packages)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
#: the package index's download host, as a URL spells it
HOST = re.compile(r"files\.pythonhosted\.org|pypi\.org|pypi\.python\.org")


def rpm_build() -> Any:
    spec = importlib.util.spec_from_file_location("rpm_build", REPO / "rpm" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_project_file_spells_the_index_host() -> None:
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    spelled = [
        name
        for name in tracked
        if (REPO / name).is_file() and HOST.search((REPO / name).read_text(errors="replace"))
    ]
    assert spelled == [], spelled


@pytest.mark.parametrize("target", ["el8", "el9", "fedora"])
def test_bundled_sources_are_the_index_files_by_name(target: str) -> None:
    build = rpm_build()
    sources = re.findall(r"^Source\d+:\s*(\S+)$", build.spec_query(target, "-P"), re.M)
    bundled = [s for s in sources if "://" in s]
    assert [s.rsplit("/", 1)[1] for s in bundled] == build.bundled_sources(target)
    for url in bundled:
        scheme, _, path = url.partition("/packages/")
        tag, letter, project, filename = path.split("/")
        host = scheme.removeprefix("https://")
        assert scheme.startswith("https://") and host and "/" not in host, url
        assert filename.startswith(f"{project}-") and letter == project[0], url
        # PyPI's redirector finds a file by project, name and Python tag: "source" for an
        # sdist, the wheel's own tag for a wheel
        assert tag == ("py3" if filename.endswith("-py3-none-any.whl") else "source"), url
    expected = {"el8": 6, "el9": 1, "fedora": 0}[target]
    assert len(bundled) == expected
