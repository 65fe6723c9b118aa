#!/usr/bin/env python3
"""Builds tproxy-firewalld's RPM and SRPM for one target distribution, on this Debian machine.

    rpm/build.py rpm TARGET [--dist DIR] [--builddir DIR] [--python PY]
    rpm/build.py stack TARGET        (prints the Python of TARGET's stack, made if missing)
    rpm/build.py sources TARGET DIR  (the bundled libraries' Sources of the spec, into DIR)

TARGET: fedora, el10, el9 or el8 (rpm/targets.toml). `make rpm TARGET=...` runs the first.

- The target's Python stack: a virtual environment of a pyenv Python of the target's X.Y with
  exactly the libraries that the spec's Requires name, at the versions that distribution ships
  (tests/data/distros.toml), their own dependencies constrained to that distribution's versions
  too. Nothing else: a library the spec bundles is not there, so a run of the package's tree
  under this stack proves that Requires and bundle are complete. Under build/stacks/, reused
  while the same pins apply. It is also the interpreter the RPM is built with, as the target
  builds with its own python3 and its BuildRequires.
- The bundled libraries: the spec's Sources that are PyPI files (its "Bundled" block pins them),
  fetched with `pip download` (by name and version; pip checks the file's hash that PyPI's index
  lists), cached under build/pypi/, and copied into SOURCES, so the SRPM carries them.
- rpmbuild with rpm/debian.macros (the Fedora macros Debian's rpm lacks) and the target's
  defines (%fedora or %rhel, %dist, %py3_shbang_opts), --nodeps (Debian's rpm database knows
  no Fedora package). The RPM and SRPM go to DIST (default dist/TARGET/).

Stdlib only, for Debian's python3 (3.11, tomllib).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "rpm" / "tproxy-firewalld.spec"
MACROS = REPO / "rpm" / "macros.tproxy-firewalld"
DEBIAN_MACROS = REPO / "rpm" / "debian.macros"
TARGETS = REPO / "rpm" / "targets.toml"
DISTROS = REPO / "tests" / "data" / "distros.toml"
NAME = "tproxy-firewalld"
STACK_FORMAT = 1  # bump to rebuild every cached stack


def log(message: str) -> None:
    print(f"rpm/build.py: {message}", file=sys.stderr, flush=True)


def run(argv: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.exit(
            f"rpm/build.py: `{' '.join(map(str, argv))}` exited {result.returncode}\n"
            f"{result.stdout[-4000:]}{result.stderr[-6000:]}"
        )
    return result  # type: ignore[no-any-return]


def targets() -> dict[str, dict[str, object]]:
    return tomllib.loads(TARGETS.read_text())


def target(name: str) -> dict[str, object]:
    known = targets()
    if name not in known:
        sys.exit(f"rpm/build.py: unknown target {name!r}; known: {', '.join(known)}")
    return known[name]


def distribution(name: str) -> dict[str, object]:
    key = str(target(name)["distribution"])
    return tomllib.loads(DISTROS.read_text())[key]  # type: ignore[no-any-return]


def rpm_defines(name: str) -> list[str]:
    """--define arguments: the target's own macros, then the stand-ins' inputs."""
    defines = target(name)["defines"]
    assert isinstance(defines, dict)
    args = []
    for key, value in defines.items():
        args += ["--define", f"{key} {value}"]
    return args


def spec_query(name: str, *args: str) -> str:
    """rpmspec on the spec as the target's rpm would read it (without building anything)."""
    return run(
        ["rpmspec", "--load", DEBIAN_MACROS, *rpm_defines(name),
         "--define", f"_sourcedir {REPO / 'rpm'}", *args, SPEC]
    ).stdout  # fmt: skip


def spec_requires(name: str) -> list[str]:
    """The spec's own Requires for the target (no generated ones), names only."""
    out = spec_query(name, "-q", "--requires")
    return sorted({line.split()[0] for line in out.splitlines() if line.strip()})


def bundled_sources(name: str) -> list[str]:
    """The file names of the spec's PyPI Sources for the target (its bundled libraries): the
    Sources that are URLs (%pypi_source, %pypi_wheel), where the package's own are files."""
    parsed = spec_query(name, "-P")
    found = []
    for line in parsed.splitlines():
        m = re.match(r"Source\d+:\s*(\S+)", line)
        if m and "://" in m.group(1):
            found.append(m.group(1).rsplit("/", 1)[1])
    return found


# -- the Python stack ------------------------------------------------------------------------


def find_python(minor: str) -> Path:
    """The target's X.Y: pyenv's (the lowest patch release there), then Debian's."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(
        root.glob(f"{minor}.*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)]
    )
    for path in [
        *(c / "bin" / f"python{minor}" for c in candidates),
        Path(f"/usr/bin/python{minor}"),
    ]:
        if path.exists() and os.access(path, os.X_OK):
            return path
    sys.exit(f"rpm/build.py: no Python {minor} on this machine (pyenv install {minor})")


def stack_pins(name: str) -> tuple[list[str], list[str]]:
    """(requirements, constraints) for pip: what the spec requires, as the distribution ships it;
    every library of the distribution's Python at its version as constraints."""
    dist = distribution(name)
    python = str(target(name)["python"])
    packages = dist["packages"]
    assert isinstance(packages, dict)
    required = spec_requires(name)
    requirements, constraints = [], []
    for rpm_name, facts in sorted(packages.items()):
        if "pypi" not in facts or str(facts.get("python", dist["python"])) != python:
            continue
        pin = f"{facts['pypi']}=={facts['version']}"
        constraints.append(pin)
        if rpm_name in required:
            requirements.append(pin)
    return requirements, constraints


def stack(name: str) -> Path:
    """The target's Python stack (made if missing): its python."""
    python = find_python(str(target(name)["python"]))
    version = run([python, "-c", "import sys; print(sys.version.split()[0])"]).stdout.strip()
    requirements, constraints = stack_pins(name)
    recipe = {
        "format": STACK_FORMAT,
        "target": name,
        "python": str(python),
        "version": version,
        "requirements": requirements,
        "constraints": constraints,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    stacks = REPO / "build" / "stacks"
    venv = stacks / f"{name}-{digest}"
    marker = venv / "stack.json"
    if marker.exists():
        return venv / "bin" / "python"
    log(f"{name}: Python {version} with {' '.join(requirements) or 'no libraries'} -> {venv}")
    partial = stacks / f"{name}-{digest}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    run([python, "-m", "venv", partial])
    # The venv is made in .partial and renamed: its scripts' shebangs would name .partial, so
    # pip is always run as `python -m pip` and nothing of the stack runs its scripts.
    constraints_file = partial / "constraints.txt"
    constraints_file.write_text("".join(f"{c}\n" for c in constraints))
    if requirements:
        run(
            [partial / "bin" / "python", "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "-c", constraints_file, *requirements]
        )  # fmt: skip
    installed = run(
        [partial / "bin" / "python", "-m", "pip", "list", "--format=json",
         "--disable-pip-version-check"]
    ).stdout  # fmt: skip
    recipe["installed"] = {p["name"]: p["version"] for p in json.loads(installed)}
    (partial / "stack.json").write_text(json.dumps(recipe, indent=2) + "\n")
    shutil.rmtree(venv, ignore_errors=True)
    partial.rename(venv)
    # the venv's own paths (pyvenv.cfg has none; bin/python is a symlink to the interpreter)
    return venv / "bin" / "python"


# -- the bundled libraries' Sources ---------------------------------------------------------


def fetch_sources(name: str, dest: Path, python: Path) -> list[Path]:
    """The spec's PyPI Sources for the target into dest, through the cache build/pypi/."""
    cache = REPO / "build" / "pypi"
    cache.mkdir(parents=True, exist_ok=True)
    fetched = []
    for filename in bundled_sources(name):
        cached = cache / filename
        if not cached.exists():
            if filename.endswith(".whl"):
                project, version = filename.split("-")[:2]
                kind = ["--only-binary", ":all:"]
            else:
                project, version = re.sub(r"\.(tar\.gz|zip)$", "", filename).rsplit("-", 1)
                kind = ["--no-binary", ":all:"]
            log(f"pip download {project}=={version}")
            run(
                [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--no-deps", *kind, "--dest", cache,
                 f"{project}=={version}"]
            )  # fmt: skip
            if not cached.exists():
                sys.exit(f"rpm/build.py: pip download did not give {filename} (in {cache})")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, dest / filename)
        fetched.append(dest / filename)
    return fetched


# -- the build -------------------------------------------------------------------------------


def build(name: str, dist: Path, builddir: Path, python: Path | None) -> None:
    if shutil.which("rpmbuild") is None:
        sys.exit("rpm/build.py: rpmbuild not found (apt-get install rpm)")
    python = python or stack(name)
    version = re.search(r"^Version:\s*(\S+)", SPEC.read_text(), re.M).group(1)  # type: ignore[union-attr]
    topdir = builddir / name
    shutil.rmtree(topdir, ignore_errors=True)
    sources = topdir / "SOURCES"
    sources.mkdir(parents=True)
    run(
        [sys.executable, REPO / "rpm" / "source-tarball.py", f"{NAME}-{version}",
         sources / f"{NAME}-{version}.tar.gz"],
        cwd=REPO,
    )  # fmt: skip
    shutil.copy2(MACROS, sources / MACROS.name)
    fetch_sources(name, sources, python)
    log(f"{name}: rpmbuild with {python}")
    # --load before --define: a --define given earlier would be overridden by the file.
    result = subprocess.run(
        ["rpmbuild", "--nodeps", "--load", str(DEBIAN_MACROS), *rpm_defines(name),
         "--define", f"_topdir {topdir.resolve()}", "--define", f"__python3 {python}",
         "-ba", str(SPEC)],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    (topdir / "rpmbuild.log").write_text(result.stdout)
    if result.returncode != 0:
        sys.exit(
            f"rpm/build.py: rpmbuild for {name} exited {result.returncode} "
            f"(log: {topdir / 'rpmbuild.log'}):\n{result.stdout[-6000:]}"
        )
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    for rpm in [*(topdir / "RPMS" / "noarch").glob("*.rpm"), *(topdir / "SRPMS").glob("*.rpm")]:
        shutil.copy2(rpm, dist / rpm.name)
        print(dist / rpm.name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_rpm = sub.add_parser("rpm", help="build the RPM and SRPM for TARGET")
    p_rpm.add_argument("target")
    p_rpm.add_argument("--dist", type=Path, help="default: dist/TARGET")
    p_rpm.add_argument("--builddir", type=Path, default=REPO / "build" / "rpm")
    p_rpm.add_argument("--python", type=Path, help="build with this python, not TARGET's stack")
    p_stack = sub.add_parser("stack", help="print the python of TARGET's stack (made if missing)")
    p_stack.add_argument("target")
    p_sources = sub.add_parser("sources", help="fetch the spec's bundled Sources for TARGET")
    p_sources.add_argument("target")
    p_sources.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    target(args.target)  # known?
    if args.command == "stack":
        print(stack(args.target))
    elif args.command == "sources":
        for path in fetch_sources(args.target, args.dest, stack(args.target)):
            print(path)
    else:
        dist = args.dist or REPO / "dist" / args.target
        build(args.target, dist.resolve(), args.builddir.resolve(), args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
