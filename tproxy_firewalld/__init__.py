"""tproxy-firewalld: Kuma's transparent-proxy redirect rules, kept in firewalld's direct config.

The library is a pure core (settings -> rule set -> plan) with thin edges that touch the
system (direct.xml, firewalld over D-Bus, iptables-restore). The CLI in :mod:`cli` only parses
flags, calls the library, prints, and picks the exit code.
"""

import os
import sys

_b = os.path.join(os.path.dirname(__file__), "_bundled")
os.path.isdir(_b) and _b not in sys.path and sys.path.append(_b)

__version__ = "0.1.0"
