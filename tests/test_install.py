"""Installing with pipx from a checkout (the README's "Install per distribution", pip/pipx block): pipx makes its
own virtual environment, pip builds the wheel (hatchling) and installs it with its dependencies
from PyPI, and the command runs from pipx's bin directory. Nothing here touches a firewall."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def run(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
    return result  # type: ignore[no-any-return]


def test_pipx_install_from_a_checkout(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    run(sys.executable, "-m", "venv", tools)
    run(tools / "bin" / "python", "-m", "pip", "install", "--quiet", "pipx", timeout=300)
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    run(tools / "bin" / "pipx", "install", REPO, env=env, timeout=600)
    out = run(tmp_path / "bin" / "tproxy-firewalld", "--version", env=env, cwd="/").stdout
    assert out == f"tproxy-firewalld {VERSION}\n"
    assert "render" in run(tmp_path / "bin" / "tproxy-firewalld", "--help", env=env).stdout
