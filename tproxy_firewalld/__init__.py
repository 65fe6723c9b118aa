"""tproxy-firewalld: Kuma's transparent-proxy redirect rules, kept in firewalld's direct config.

A pure core (settings -> rule set -> plan) with thin edges that touch the system (direct.xml,
firewalld over D-Bus, iptables, lo, the state record). The synchronous API:

    import tproxy_firewalld as tpfw

    settings = tpfw.Settings.load(exclude_inbound_ports=[22])
    result = tpfw.install(settings)        # or: tpfw.apply(tpfw.plan(settings))
    report = tpfw.diff()                   # against what was installed
    tpfw.uninstall()

Names are imported on first use, so ``import tproxy_firewalld`` stays cheap. No submodule is
named as an exported function (planning, transaction, health): importing a submodule binds it
as an attribute of the package, which would hide the function of the same name.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# Libraries a distribution lacks are bundled in the package's own private directory by the
# RPM (declared as bundled(python3dist(...))); the distribution's own copies come first.
_bundled = _os.path.join(_os.path.dirname(__file__), "_bundled")
if _os.path.isdir(_bundled) and _bundled not in _sys.path:
    _sys.path.append(_bundled)

_EXPORTS = {
    "Settings": "tproxy_firewalld.kuma:KumaSettings",
    "Target": "tproxy_firewalld.target:Target",
    "plan": "tproxy_firewalld.api:plan",
    "apply": "tproxy_firewalld.api:apply",
    "install": "tproxy_firewalld.api:install",
    "uninstall": "tproxy_firewalld.api:uninstall",
    "diff": "tproxy_firewalld.api:diff",
    "render": "tproxy_firewalld.api:render",
    "status": "tproxy_firewalld.health:status",
    "Plan": "tproxy_firewalld.planning:Plan",
    "Result": "tproxy_firewalld.report:Result",
    "DiffReport": "tproxy_firewalld.report:DiffReport",
    "Status": "tproxy_firewalld.report:Status",
    "TproxyError": "tproxy_firewalld.errors:TproxyError",
    "SettingsError": "tproxy_firewalld.errors:SettingsError",
    "ExitCode": "tproxy_firewalld.errors:ExitCode",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    spec = _EXPORTS.get(name)
    if spec is None:
        raise AttributeError(f"module 'tproxy_firewalld' has no attribute {name!r}")
    import importlib

    module, _, attr = spec.partition(":")
    value = getattr(importlib.import_module(module), attr)
    # Importing a submodule binds it as an attribute of this package: api imports
    # tproxy_firewalld.transaction and .plan, which then hid the functions apply() and plan() (the
    # README's plan-then-apply example failed with "'module' object is not callable").
    for other in _EXPORTS:
        if type(globals().get(other)) is type(_os):
            del globals()[other]
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
