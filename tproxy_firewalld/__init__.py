"""tproxy-firewalld: Kuma's transparent-proxy redirect rules, kept in firewalld's direct config.

The library is a pure core (settings -> rule set -> plan) with thin edges that touch the
system (direct.xml, firewalld over D-Bus, iptables-restore). The CLI in :mod:`cli` only parses
flags, calls the library, prints, and picks the exit code.
"""

__version__ = "0.1.0"
