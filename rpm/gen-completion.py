#!/usr/bin/env python3
"""Write tproxy-firewalld's completion script for SHELL (bash, zsh or fish) to stdout.

The script is typer's own, the one `tproxy-firewalld --show-completion` prints in that shell:
it asks the installed command for completions (_TPROXY_FIREWALLD_COMPLETE=complete_<shell>),
so it stays right whatever options the CLI grows. `--show-completion` itself cannot be used at
build time: it picks the shell by looking at its parent process.
"""

from __future__ import annotations

import sys

from typer._completion_shared import get_completion_script

PROG = "tproxy-firewalld"
# typer's rule (typer.completion.show_callback): _<PROG, - as _, upper case>_COMPLETE
COMPLETE_VAR = "_{}_COMPLETE".format(PROG.replace("-", "_").upper())

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("bash", "zsh", "fish"):
        sys.exit(f"usage: {sys.argv[0]} bash|zsh|fish")
    script = get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=sys.argv[1])
    sys.stdout.write(script + "\n")
