#!/usr/bin/python
# Copyright: tproxy-firewalld developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
# Python 3.11 or later on the managed host, as the tproxy_firewalld library needs.

DOCUMENTATION = r"""
---
module: tproxy_firewalld
short_description: Kuma's transparent-proxy redirect rules as a persistent, removable part of firewalld
version_added: "0.1.0"
description:
  - Installs or removes the redirect rules of Kuma's transparent proxy (what
    C(kumactl install transparent-proxy) sets up, inbound to 15006, outbound to 15001, DNS to
    15053, the proxy's own UID exempt) in firewalld's direct configuration, runtime and
    permanent in step, without a reload.
  - A thin layer over the C(tproxy_firewalld) Python library, which must be installed on the
    managed host for the interpreter that runs this module (set C(ansible_python_interpreter)
    to it). The library computes a plan from the desired and the observed state; only
    the differences are applied, so a second identical run makes no change at all.
  - Every entry in firewalld's direct configuration that is not ours (other chains, rules,
    passthroughs) is kept exactly.
  - Every setting of the C(tproxy-firewalld) command line (which are C(kumactl)'s flags) is an
    option here, named as the flag with C(_) for C(-), e.g. C(--exclude-outbound-ports) is
    O(exclude_outbound_ports). An option that is not given (or is V(null)) takes Kuma's
    default, or the value from a O(config) file. Values are validated by the library itself,
    so the messages are the command line's, naming the option instead of the flag.
  - C(KUMA_TRANSPARENT_PROXY_*) environment variables on the managed host are deliberately
    not read (the command line reads them), so that a play's tasks say everything that
    shapes the rules.
  - Without a running firewalld (image builds, chroots, O(offline), O(root)) it writes
    C(/etc/firewalld/direct.xml) atomically; firewalld applies it at its next start.
author:
  - tproxy-firewalld developers (!UNKNOWN)
requirements:
  - python >= 3.11 on the managed host
  - the C(tproxy-firewalld) Python package on the managed host
  - firewalld (D-Bus API) when not offline
options:
  state:
    description:
      - V(present) installs the rules for the given settings (and replaces rules installed
        earlier with other settings, touching only the entries that differ).
      - V(absent) removes every entry of ours (chains C(KUMA_MESH_*), rules in them, jumping to
        them or carrying Kuma's comment) from runtime, permanent configuration and
        C(direct.xml); the settings options are ignored then.
    type: str
    choices: [present, absent]
    default: present
  offline:
    description:
      - Do not talk to firewalld; merge our entries into C(direct.xml), which firewalld applies
        at its next start (as C(--offline)). Without a running firewalld this happens anyway.
    type: bool
    default: false
  root:
    description:
      - Work on the image root directory O(root) (O(root)C(/etc/firewalld/direct.xml),
        O(root)C(/var/lib/tproxy-firewalld/installed.json)); implies O(offline) (as C(--root)).
    type: path
  allow_ssh_redirect:
    description:
      - Install even though inbound redirection would capture the port sshd listens on (as
        C(--allow-ssh-redirect)). Without it such an install is refused, in check mode too, since
        Ansible itself reaches most hosts over SSH, so exclude the port instead
        (O(exclude_inbound_ports)).
      - Needs a C(tproxy_firewalld) library with the lock-out guard.
    type: bool
    default: false
  rules_template:
    description:
      - Render the rules from this jinja2 template on the managed host instead of Kuma's
        (advanced; as C(--rules-template)). Its rules are checked like Kuma's and must carry
        Kuma's chain or comment prefix.
      - Needs a C(tproxy_firewalld) library that supports templates.
    type: path
  config:
    description:
      - Kuma config files (YAML or JSON, Kuma's shape) on the managed host, as C(--config);
        later files override earlier ones, lists replace. The options below override the
        files. The only way to set the config-only keys
        (C(redirect.inbound.includePorts), C(redirect.outbound.includePorts),
        C(redirect.outbound.enabled), C(redirect.dns.resolvConfigPath), C(log.level)).
    type: list
    elements: path
  kuma_dp_user:
    description:
      - User name or numeric UID the proxy runs as; its traffic is not redirected
        (C(--kuma-dp-user)). A numeric UID need not exist yet.
      - Default, as in Kuma, UID 5678 if it exists, else user C(kuma-dp), else 5678.
    type: str
  ip_family_mode:
    description:
      - V(dualstack) (IPv4 and IPv6 rules) or V(ipv4) (C(--ip-family-mode)).
      - Default V(dualstack).
    type: str
  redirect_inbound:
    description:
      - Redirect inbound TCP traffic (C(--redirect-inbound)). Default V(true).
    type: bool
  redirect_inbound_port:
    description:
      - Port inbound traffic is redirected to (C(--redirect-inbound-port)), 1-65535.
        Default V(15006).
    type: raw
  redirect_outbound_port:
    description:
      - Port outbound traffic is redirected to (C(--redirect-outbound-port)), 1-65535.
        Default V(15001).
    type: raw
  exclude_inbound_ports:
    description:
      - Inbound ports not to redirect (C(--exclude-inbound-ports)). Port 22 is B(not)
        excluded by default. Default none.
    type: list
    elements: raw
  exclude_outbound_ports:
    description:
      - Outbound TCP ports not to redirect (C(--exclude-outbound-ports)). Default none.
    type: list
    elements: raw
  exclude_inbound_ips:
    description:
      - Source IPs or CIDRs whose inbound traffic is not redirected (C(--exclude-inbound-ips));
        each applies to its own family. Default none.
    type: list
    elements: str
  exclude_outbound_ips:
    description:
      - Destination IPs or CIDRs whose outbound traffic is not redirected
        (C(--exclude-outbound-ips)). Default none.
    type: list
    elements: str
  exclude_outbound_ports_for_uids:
    description:
      - Entries C([tcp|udp:][ports:]uids), e.g. C(tcp:53,3000-5000:106-108); outbound traffic
        of these UIDs to these ports is not redirected
        (C(--exclude-outbound-ports-for-uids)). One list item per entry. Default none.
    type: list
    elements: raw
  redirect_dns:
    description:
      - Redirect DNS to the nameservers in C(/etc/resolv.conf) to the kuma-dp DNS proxy
        (C(--redirect-dns)). Default V(false).
    type: bool
  redirect_all_dns_traffic:
    description:
      - Redirect all DNS traffic (UDP 53) to the kuma-dp DNS proxy
        (C(--redirect-all-dns-traffic)); not together with O(redirect_dns). Default V(false).
    type: bool
  redirect_dns_port:
    description:
      - Port of the kuma-dp DNS proxy (C(--redirect-dns-port)), 1-65535. Default V(15053).
    type: raw
  skip_dns_conntrack_zone_split:
    description:
      - Do not add the raw-table conntrack zone rules for DNS
        (C(--skip-dns-conntrack-zone-split)). Default V(false).
    type: bool
  vnet:
    description:
      - C(IFACE:CIDR) of virtual networks (e.g. C(docker0:172.17.0.0/16)) whose traffic is
        redirected too (C(--vnet)). Default none.
    type: list
    elements: str
  iptables_logs:
    description:
      - Log matching packets with the kernel's LOG target (C(--iptables-logs)).
        Default V(false).
    type: bool
  drop_invalid_packets:
    description:
      - Drop packets in conntrack state INVALID (C(--drop-invalid-packets)). Default V(false).
    type: bool
  redirect_inbound_insert_instead_of_append:
    description:
      - Insert the PREROUTING jump above other rules instead of appending it
        (C(--redirect-inbound-insert-instead-of-append)). Default V(false).
    type: bool
  redirect_outbound_insert_instead_of_append:
    description:
      - Insert the OUTPUT jump above other rules instead of appending it
        (C(--redirect-outbound-insert-instead-of-append)). Default V(false).
    type: bool
attributes:
  check_mode:
    description: Computes and reports the plan (what would be added and removed); changes nothing.
    support: full
  diff_mode:
    description: >-
      Before and after of our entries, one per line: runtime and permanent configuration
      (live), or direct.xml (offline).
    support: full
  platform:
    description: Linux hosts with firewalld (RHEL, Fedora, Debian, ...).
    support: full
    platforms: posix
notes:
  - C(changed) is true exactly when the plan is not empty, that is when an entry of ours has
    to be added or removed in the runtime, permanent or offline C(direct.xml) configuration.
  - The settings the last install applied are recorded in
    C(/var/lib/tproxy-firewalld/installed.json); C(tproxy-firewalld diff) and
    C(tproxy-firewalld status) on the host read them.
seealso:
  - name: Kuma transparent proxy
    description: What the rules do and what each setting means.
    link: https://kuma.io/docs/latest/networking/transparent-proxying/
"""

EXAMPLES = r"""
- name: Kuma's transparent proxy rules, SSH not redirected
  tproxy.firewalld.tproxy_firewalld:
    state: present
    exclude_inbound_ports: [22]

- name: DNS through the kuma-dp DNS proxy, some destinations left alone
  tproxy.firewalld.tproxy_firewalld:
    kuma_dp_user: kuma-dp
    redirect_dns: true
    exclude_inbound_ports: [22]
    exclude_outbound_ips: [10.0.0.0/8, "fd00::/8"]
    exclude_outbound_ports_for_uids:
      - "tcp:53,3000-5000:106-108"
      - "udp:53:0"

- name: Settings from a Kuma config file, one of them overridden
  tproxy.firewalld.tproxy_firewalld:
    config: [/etc/kuma/transparent-proxy.yaml]
    redirect_outbound_port: 15002

- name: Bake the rules into an image root (firewalld applies them at its first start)
  tproxy.firewalld.tproxy_firewalld:
    root: /srv/images/fedora-root
    exclude_inbound_ports: [22]

- name: Remove them again (everything else in firewalld stays)
  tproxy.firewalld.tproxy_firewalld:
    state: absent
"""

RETURN = r"""
mode:
  description: V(live) (firewalld over D-Bus, runtime and permanent) or V(offline) (direct.xml written).
  returned: success
  type: str
  sample: live
summary:
  description: One line, as the command line prints it.
  returned: success
  type: str
  sample: "runtime: +8 chains +24 rules; permanent: updated (+8 chains +24 rules)"
runtime:
  description:
    - Entries of ours added to and removed from firewalld's runtime configuration (in check
      mode, that would be); V(null) when offline.
    - An entry is a dict with C(kind) (V(chain), V(rule) or V(passthrough)), C(ipv),
      C(table), C(chain), C(priority) and C(args) (the iptables arguments as a list).
  returned: success
  type: dict
  contains:
    add:
      description: Entries added, in the order they are added (chains, their rules, jumps last).
      type: list
      elements: dict
    remove:
      description: Entries removed, in the order they are removed (jumps first, chains last).
      type: list
      elements: dict
  sample:
    add:
      - {kind: chain, ipv: ipv4, table: nat, chain: KUMA_MESH_INBOUND}
    remove: []
permanent:
  description: The same for firewalld's permanent configuration; V(null) when offline.
  returned: success
  type: dict
  contains:
    add:
      description: Entries added.
      type: list
      elements: dict
    remove:
      description: Entries removed.
      type: list
      elements: dict
file:
  description: The same for C(direct.xml) when offline; V(null) when live.
  returned: success
  type: dict
  contains:
    add:
      description: Entries added.
      type: list
      elements: dict
    remove:
      description: Entries removed.
      type: list
      elements: dict
notes:
  description: What the library had to say (e.g. the loopback address it added, offline mode).
  returned: success
  type: list
  elements: str
  sample: ["warning: iptables-restore --test needs root; ipv6 rules not checked"]
settings:
  description: The effective settings (defaults, config files and options merged), as recorded.
  returned: success and O(state=present)
  type: dict
  sample: {inbound_port: 15006, outbound_port: 15001, kuma_dp_uid: 5678}
"""

import asyncio  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

LIB_IMPORT_ERROR = None
try:
    from tproxy_firewalld.errors import TproxyError
    from tproxy_firewalld.operations import Paths
    from tproxy_firewalld.operations import install as lib_install
    from tproxy_firewalld.operations import uninstall as lib_uninstall
    from tproxy_firewalld.plan import entry_json, order_adds
    from tproxy_firewalld.ruleset import build_ruleset
    from tproxy_firewalld.settings import FIELDS_BY_FLAG, load_settings
except ImportError:
    LIB_IMPORT_ERROR = traceback.format_exc()

    class TproxyError(Exception):  # keeps the except clauses below valid without the library
        pass


#: The settings options, each the kumactl flag with "_" for "-" (C(--config) included).
SETTINGS_OPTIONS = {
    "config": dict(type="list", elements="path"),
    "kuma_dp_user": dict(type="str"),
    "ip_family_mode": dict(type="str"),
    "redirect_inbound": dict(type="bool"),
    "redirect_inbound_port": dict(type="raw"),
    "redirect_outbound_port": dict(type="raw"),
    "exclude_inbound_ports": dict(type="list", elements="raw"),
    "exclude_outbound_ports": dict(type="list", elements="raw"),
    "exclude_inbound_ips": dict(type="list", elements="str"),
    "exclude_outbound_ips": dict(type="list", elements="str"),
    "exclude_outbound_ports_for_uids": dict(type="list", elements="raw"),
    "redirect_dns": dict(type="bool"),
    "redirect_all_dns_traffic": dict(type="bool"),
    "redirect_dns_port": dict(type="raw"),
    "skip_dns_conntrack_zone_split": dict(type="bool"),
    "vnet": dict(type="list", elements="str"),
    "iptables_logs": dict(type="bool"),
    "drop_invalid_packets": dict(type="bool"),
    "redirect_inbound_insert_instead_of_append": dict(type="bool"),
    "redirect_outbound_insert_instead_of_append": dict(type="bool"),
}


def argument_spec():
    spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        offline=dict(type="bool", default=False),
        root=dict(type="path"),
        allow_ssh_redirect=dict(type="bool", default=False),
        rules_template=dict(type="path"),
    )
    spec.update(SETTINGS_OPTIONS)
    return spec


def flag_of(option):
    return "--" + option.replace("_", "-")


def option_of(flag):
    return flag[2:].replace("-", "_")


#: Flags that appear in the library's messages and notes, longest first so that
#: "--redirect-dns-port" is not read as "--redirect-dns" followed by "-port".
_FLAG_IN_TEXT = re.compile(
    r"(?<![\w-])--(?:"
    + "|".join(re.escape(flag_of(o)[2:]) for o in sorted(argument_spec(), key=len, reverse=True))
    + r")(?![\w-])"
)


def name_options(text):
    """A library message as the module's user reads it: the option named, not the flag.

    "--redirect-inbound-port: value 'x' is not a valid port ..." becomes
    "redirect_inbound_port: value 'x' is not a valid port ..."; nothing else changes.
    """
    return _FLAG_IN_TEXT.sub(lambda m: option_of(m.group(0)), text)


def settings_flags(params):
    """The options given, keyed by kumactl flag, as load_settings takes them."""
    flags = {}
    for option in SETTINGS_OPTIONS:
        if option == "config":
            continue
        value = params.get(option)
        if value is None:
            continue  # not given: the default, or what a config file says
        flags[flag_of(option)] = value
    return flags


def diff_text(entries):
    return "".join(entry.describe() + "\n" for entry in order_adds(set(entries)))


def before_after(desired, diff):
    """Our entries before and after, from the desired ones and the planned difference.

    The plan is Diff.between(desired, observed): add = desired - observed, remove =
    observed - desired; so observed = (desired - add) | remove, exactly what was observed
    when the plan was made, with no second look.
    """
    after = set(desired)
    before = (after - set(diff.add)) | set(diff.remove)
    return diff_text(before), diff_text(after)


def ansible_diff(desired, result):
    """Ansible's diff format: one before/after pair per configuration the plan covers."""
    pairs = []
    for name, diff in (
        ("runtime", result.runtime),
        ("permanent", result.permanent),
        ("direct.xml", result.file),
    ):
        if diff is None:
            continue
        before, after = before_after(desired, diff)
        header = f"{name} (tproxy-firewalld entries)"
        pairs.append(dict(before_header=header, after_header=header, before=before, after=after))
    return pairs


def diff_json(diff):
    if diff is None:
        return None
    return dict(add=[entry_json(e) for e in diff.add], remove=[entry_json(e) for e in diff.remove])


def install_extras(params):
    """install()'s keyword arguments beyond the settings, passed only when asked for, so that
    the module also works with a library that predates them."""
    wanted = {}
    if params["allow_ssh_redirect"]:
        wanted["allow_ssh_redirect"] = True
    if params["rules_template"]:
        wanted["template"] = params["rules_template"]
    known = inspect.signature(lib_install).parameters
    missing = [k for k in wanted if k not in known]
    if missing:
        names = {"allow_ssh_redirect": "allow_ssh_redirect", "template": "rules_template"}
        raise TproxyError(
            f"the installed tproxy_firewalld library does not support "
            f"{', '.join(names[k] for k in missing)}; upgrade it on the managed host"
        )
    return wanted


def run(module):
    params = module.params
    state = params["state"]
    root = params["root"]
    offline = bool(params["offline"]) or root is not None
    paths = Paths(Path(root)) if root is not None else Paths()

    settings = None
    if state == "present":
        config_files = params["config"] or []
        if "-" in config_files:
            raise TproxyError(
                "config: '-' (standard input) cannot be used in a module; give a path"
            )
        unknown = [f for f in settings_flags(params) if f not in FIELDS_BY_FLAG]
        if unknown:
            raise TproxyError(
                f"the installed tproxy_firewalld library does not know "
                f"{', '.join(option_of(f) for f in unknown)}; upgrade it on the managed host"
            )
        extra = install_extras(params)
        # env={}: the managed host's KUMA_TRANSPARENT_PROXY_* variables are not read.
        settings = load_settings(config_files=config_files, env={}, flags=settings_flags(params))
        for warning in settings.warnings:
            module.warn(name_options(warning))
        template = extra.get("template")
        desired = (
            build_ruleset(settings, template) if template else build_ruleset(settings)
        ).entries()
        action = lib_install(
            settings, paths=paths, offline=offline, dry_run=module.check_mode, **extra
        )
    else:
        desired = set()
        action = lib_uninstall(paths=paths, offline=offline, dry_run=module.check_mode)
    result = asyncio.run(action)

    notes = [name_options(note) for note in result.notes]
    for note in notes:
        if note.startswith("warning: "):
            module.warn(note[len("warning: ") :])
    # Result.changed covers the runtime, permanent and file diffs; dbus_changes also catches
    # the one plan whose diffs are empty (firewalld's copy right, direct.xml hand-edited).
    changed = result.changed or bool(result.dbus_changes)
    out = dict(
        changed=changed,
        mode=result.mode,
        summary=result.summary(),
        runtime=diff_json(result.runtime),
        permanent=diff_json(result.permanent),
        file=diff_json(result.file),
        notes=notes,
    )
    if settings is not None:
        out["settings"] = settings.to_json()
    if module._diff:
        out["diff"] = ansible_diff(desired, result)
    return out


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if LIB_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("tproxy-firewalld"), exception=LIB_IMPORT_ERROR)
    try:
        out = run(module)
    except TproxyError as exc:
        module.fail_json(
            msg=name_options(str(exc)),
            error=type(exc).__name__,
            exit_code=int(getattr(exc, "exit_code", 2)),
        )
    except Exception as exc:  # a bug in the library: one line, the traceback with -vvv
        module.fail_json(
            msg=f"tproxy_firewalld failed unexpectedly: {type(exc).__name__}: {exc}",
            exception=traceback.format_exc(),
        )
    module.exit_json(**out)


if __name__ == "__main__":
    main()
