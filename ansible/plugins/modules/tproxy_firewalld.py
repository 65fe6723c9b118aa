#!/usr/bin/python
# Copyright: tproxy-firewalld developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
# Python 3.9 or later on the managed host, as the tproxy_firewalld library needs.

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
  - A firewalld.conf setting that would defeat the rules (firewalld's default
    C(RFC3964_IPv4=yes) with IPv6 rules before firewalld 2.3, C(StrictForwardPorts=yes))
    makes the task fail (C(exit_code) 12), changing nothing, unless
    O(configure_firewalld=true) lets it set that setting to C(no) (live through firewalld's
    API, then a reload; offline in C(firewalld.conf)). O(state=absent) puts the old value back
    unless somebody changed it since.
  - When the plan makes firewalld flush every iptables table (firewalld 2.0 or later when the
    first direct entry is added; every version at the reload of O(configure_firewalld)) while
    other tools (Docker, ...) keep chains or rules there, the task fails (C(exit_code) 13),
    changing nothing, unless O(allow_iptables_flush=true).
  - A thin layer over the C(tproxy_firewalld) Python library, which must be installed on the
    managed host for the interpreter that runs this module (set C(ansible_python_interpreter)
    to it). The library computes a plan from the desired and the observed state; only
    the differences are applied, so a second identical run makes no change at all.
  - Every entry in firewalld's direct configuration that is not ours (other chains, rules,
    passthroughs) is kept exactly.
  - Every setting of the library is an option here, by the same name. Those are the
    C(tproxy-firewalld) command line's (which are C(kumactl)'s flags, with C(_) for C(-), e.g.
    C(--exclude-outbound-ports) is O(exclude_outbound_ports)) and the config-file-only ones
    (O(include_inbound_ports), O(redirect_outbound), O(resolv_conf_path), O(log_level), ...).
    An option that is not given (or is V(null)) takes Kuma's default, or the value from a
    O(config) file. Values are validated by the library itself, whose messages name the
    option.
  - C(KUMA_TRANSPARENT_PROXY_*) environment variables on the managed host are deliberately
    not read (the command line reads them), so that a play's tasks say everything that
    shapes the rules.
  - Without a running firewalld (image builds, chroots, O(offline), O(root)) it writes
    C(/etc/firewalld/direct.xml) atomically; firewalld applies it at its next start.
author:
  - tproxy-firewalld developers (!UNKNOWN)
requirements:
  - python >= 3.9 on the managed host
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
    type: bool
    default: false
  rules_template:
    description:
      - Render the rules from this jinja2 template on the managed host instead of Kuma's
        (advanced; as C(--rules-template)). Its rules are checked like Kuma's and must carry
        Kuma's chain or comment prefix.
    type: path
  timeout:
    description:
      - Seconds one D-Bus call to firewalld may take before the run gives up (as C(--timeout));
        a hung firewalld then fails the task instead of hanging it.
    type: float
  config:
    description:
      - Kuma config files (YAML or JSON, Kuma's shape) on the managed host, as C(--config);
        later files override earlier ones, lists replace. The options below override the
        files. The only way to set the config-only keys
        (C(redirect.inbound.includePorts), C(redirect.outbound.includePorts),
        C(redirect.outbound.enabled), C(redirect.dns.resolvConfigPath), C(log.level)).
    type: list
    elements: path
  # settings:begin
  kuma_version:
    description:
      - "The Kuma release whose rule set and kumactl flags to reproduce: 2.7 (LTS), 2.11, 2.12, 2.13 or 2.14 (each as of its newest patch release). Recorded with the installed rules."
      - "As C(--kuma-version) and config key C(kumaVersion). Default C(2.14)."
    type: raw
  kuma_dp_user:
    description:
      - "User name or numeric UID the proxy runs as; its own traffic is not redirected. Default: UID 5678 if it exists, else user kuma-dp, else 5678. A numeric UID need not exist yet."
      - "As C(--kuma-dp-user) and config key C(kumaDPUser). Default C(none)."
    type: raw
  ip_family_mode:
    description:
      - "dualstack (IPv4 and IPv6 rules) or ipv4."
      - "As C(--ip-family-mode) and config key C(ipFamilyMode). Default C(dualstack)."
    type: raw
  redirect_inbound:
    description:
      - "Redirect inbound TCP traffic to the proxy (--redirect-inbound=false turns it off)."
      - "As C(--redirect-inbound) and config key C(redirect.inbound.enabled). Default C(true)."
    type: bool
  redirect_inbound_port:
    description:
      - "Port inbound traffic is redirected to."
      - "As C(--redirect-inbound-port) and config key C(redirect.inbound.port). Default C(15006)."
    type: raw
  redirect_inbound_port_v6:
    description:
      - "Kuma 2.7 only: port IPv6 inbound traffic is redirected to (kumactl 2.7's own default 15006, whatever --redirect-inbound-port says; 15010 means --redirect-inbound-port; 0 turns IPv6 off)."
      - "As C(--redirect-inbound-port-v6). Default C(15006)."
      - "Kuma 2.7 only (O(kuma_version))."
    type: raw
  exclude_inbound_ports:
    description:
      - "Inbound TCP ports not to redirect (comma list; a repeated flag replaces the list, as in kumactl). Note: 22 is NOT excluded by default."
      - "As C(--exclude-inbound-ports) and config key C(redirect.inbound.excludePorts). Default C(none)."
    type: list
    elements: raw
  include_inbound_ports:
    description:
      - "Only these inbound TCP ports are redirected (config file only; excludePorts then has no effect)."
      - "As config key C(redirect.inbound.includePorts). Default C(none)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: list
    elements: raw
  exclude_inbound_ips:
    description:
      - "Source IPs/CIDRs whose inbound traffic is not redirected, each in its own family (comma list; repeated flags add up)."
      - "As C(--exclude-inbound-ips) and config key C(redirect.inbound.excludePortsForIPs). Default C(none)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: list
    elements: raw
  exclude_inbound_ports_for_uids:
    description:
      - "Refused (Kuma's rule for it disables inbound redirection)."
      - "As config key C(redirect.inbound.excludePortsForUIDs). Default C(none)."
    type: list
    elements: raw
  redirect_inbound_insert_instead_of_append:
    description:
      - "Insert the PREROUTING jump above other rules instead of appending it."
      - "As C(--redirect-inbound-insert-instead-of-append) and config key C(redirect.inbound.insertRedirectInsteadOfAppend). Default C(false)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: bool
  redirect_outbound:
    description:
      - "Redirect outbound TCP traffic to the proxy (config file only)."
      - "As config key C(redirect.outbound.enabled). Default C(true)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: bool
  redirect_outbound_port:
    description:
      - "Port outbound traffic is redirected to."
      - "As C(--redirect-outbound-port) and config key C(redirect.outbound.port). Default C(15001)."
    type: raw
  exclude_outbound_ports:
    description:
      - "Outbound TCP ports not to redirect (comma list; a repeated flag replaces the list, as in kumactl)."
      - "As C(--exclude-outbound-ports) and config key C(redirect.outbound.excludePorts). Default C(none)."
    type: list
    elements: raw
  include_outbound_ports:
    description:
      - "Only these outbound TCP ports are redirected (config file only; excludePorts then has no effect)."
      - "As config key C(redirect.outbound.includePorts). Default C(none)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: list
    elements: raw
  exclude_outbound_ips:
    description:
      - "Destination IPs/CIDRs whose outbound traffic is not redirected, each in its own family (comma list; repeated flags add up)."
      - "As C(--exclude-outbound-ips) and config key C(redirect.outbound.excludePortsForIPs). Default C(none)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: list
    elements: raw
  exclude_outbound_ports_for_uids:
    description:
      - "[tcp|udp:][ports:]uids, e.g. tcp:53,3000-5000:106-108: outbound traffic of these UIDs to these ports is not redirected (repeated flags add up; ';' separates entries)."
      - "As C(--exclude-outbound-ports-for-uids) and config key C(redirect.outbound.excludePortsForUIDs). Default C(none)."
    type: list
    elements: raw
  exclude_outbound_tcp_ports_for_uids:
    description:
      - "Kuma 2.7 only (deprecated there): ports:uids, as --exclude-outbound-ports-for-uids tcp:ports:uids (repeated flags add up; they come after the --exclude-outbound-ports-for-uids entries)."
      - "As C(--exclude-outbound-tcp-ports-for-uids). Default C(none)."
      - "Kuma 2.7 only (O(kuma_version))."
    type: list
    elements: raw
  exclude_outbound_udp_ports_for_uids:
    description:
      - "Kuma 2.7 only (deprecated there): ports:uids, as --exclude-outbound-ports-for-uids udp:ports:uids (repeated flags add up; they come after the tcp entries)."
      - "As C(--exclude-outbound-udp-ports-for-uids). Default C(none)."
      - "Kuma 2.7 only (O(kuma_version))."
    type: list
    elements: raw
  redirect_outbound_insert_instead_of_append:
    description:
      - "Insert the OUTPUT jump above other rules instead of appending it."
      - "As C(--redirect-outbound-insert-instead-of-append) and config key C(redirect.outbound.insertRedirectInsteadOfAppend). Default C(false)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: bool
  redirect_dns:
    description:
      - "Redirect DNS to the nameservers in resolv.conf to the kuma-dp DNS proxy."
      - "As C(--redirect-dns) and config key C(redirect.dns.enabled). Default C(false)."
    type: bool
  redirect_all_dns_traffic:
    description:
      - "Redirect all DNS traffic (UDP 53) to the kuma-dp DNS proxy."
      - "As C(--redirect-all-dns-traffic) and config key C(redirect.dns.captureAll). Default C(false)."
    type: bool
  redirect_dns_port:
    description:
      - "Port of the kuma-dp DNS proxy."
      - "As C(--redirect-dns-port) and config key C(redirect.dns.port). Default C(15053)."
    type: raw
  skip_dns_conntrack_zone_split:
    description:
      - "Do not add the raw-table conntrack zone rules for DNS."
      - "As C(--skip-dns-conntrack-zone-split) and config key C(redirect.dns.skipConntrackZoneSplit). Default C(false)."
    type: bool
  resolv_conf_path:
    description:
      - "Where the nameservers for --redirect-dns are read (config file only)."
      - "As config key C(redirect.dns.resolvConfigPath). Default C(/etc/resolv.conf)."
    type: raw
  vnet:
    description:
      - "IFACE:CIDR of a virtual network (e.g. docker0:172.17.0.0/16) whose traffic is redirected too (repeated flags add up)."
      - "As C(--vnet) and config key C(redirect.vnet.networks). Default C(none)."
    type: list
    elements: raw
  iptables_logs:
    description:
      - "Log matching packets with the kernel's LOG target."
      - "As C(--iptables-logs) and config key C(log.enabled). Default C(false)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: bool
  log_level:
    description:
      - "Level of those log messages (config file only)."
      - "As config key C(log.level). Default C(7)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: raw
  drop_invalid_packets:
    description:
      - "Drop packets in conntrack state INVALID (mangle PREROUTING)."
      - "As C(--drop-invalid-packets) and config key C(dropInvalidPackets). Default C(false)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: bool
  disable_comments:
    description:
      - "Refused: the comments are how the rules are recognised."
      - "As C(--disable-comments) and config key C(comments.disabled). Default C(false)."
      - "Kuma 2.11, 2.12, 2.13, 2.14 only (O(kuma_version))."
    type: bool
  configure_firewalld:
    description:
      - "tproxy-firewalld's own, not kumactl's: let install set the firewalld.conf settings that would defeat the rules (RFC3964_IPv4=no for IPv6 rules, StrictForwardPorts=no) and reload firewalld to apply them; uninstall puts the old values back. Without it install refuses (exit 12)."
      - "As C(--configure-firewalld) and config key C(configureFirewalld). Default C(false)."
    type: bool
  allow_iptables_flush:
    description:
      - "tproxy-firewalld's own, not kumactl's: install even though firewalld will then flush other tools' iptables chains and rules (Docker's, ...): firewalld >= 2.0 when the first direct entry is added, every version at the reload --configure-firewalld makes. Without it install refuses (exit 13) when there are any."
      - "As C(--allow-iptables-flush) and config key C(allowIptablesFlush). Default C(false)."
    type: bool
  # settings:end
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
  sample: "runtime: +8 chains +24 rules; permanent: updated (+8 chains +24 rules); lo: +::6/128; record: written"
steps:
  description:
    - What the run changed (in check mode, would change), in order; empty when nothing.
    - Each step has C(step) (V(loopback), V(runtime), V(permanent), V(file),
      V(firewalld-conf), V(reload) or V(record)) and C(summary); runtime, permanent and file
      steps list the entries in C(add) and C(remove); a firewalld-conf step has C(name),
      C(before), C(after) and C(path) (V(null) live).
    - An entry is a dict with C(kind) (V(chain), V(rule) or V(passthrough)), C(ipv),
      C(table), C(chain), C(priority) and C(args) (the iptables arguments as a list).
  returned: success
  type: list
  elements: dict
runtime:
  description: Our entries in firewalld's runtime configuration, C(before) and C(after) the run; V(null) when offline.
  returned: success
  type: dict
  contains:
    before:
      description: Entries before.
      type: list
      elements: dict
    after:
      description: Entries after.
      type: list
      elements: dict
permanent:
  description: The same for firewalld's permanent configuration; V(null) when offline.
  returned: success
  type: dict
file:
  description: The same for C(direct.xml).
  returned: success
  type: dict
warnings:
  description: What the library had to say, each with a C(code), a C(message) and the C(setting) it is about (or V(null)).
  returned: success
  type: list
  elements: dict
firewalld_conf:
  description: >-
    The firewalld.conf settings the rules need (C(RFC3964_IPv4) for IPv6 rules before
    firewalld 2.3, C(StrictForwardPorts) where firewalld has it), as found before the run: C(name),
    C(value), C(wanted) and C(in_sync); empty for O(state=absent).
  returned: success
  type: list
  elements: dict
settings:
  description: The effective settings (defaults, config files and options merged), as recorded; V(null) for O(state=absent).
  returned: success
  type: dict
  sample: {redirect_inbound_port: 15006, redirect_outbound_port: 15001, kuma_dp_uid: 5678}
"""

import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

MODULE_OPTIONS = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    offline=dict(type="bool", default=False),
    root=dict(type="path"),
    allow_ssh_redirect=dict(type="bool", default=False),
    rules_template=dict(type="path"),
    timeout=dict(type="float"),
    config=dict(type="list", elements="path"),
)
PLACES = (("runtime", "runtime"), ("permanent", "permanent"), ("file", "direct.xml"))


def argument_spec(settings_type):
    """The module's own options and every setting (generated from the library's table)."""
    return dict(MODULE_OPTIONS, **settings_type.argument_spec())


def run(module, lib):
    params = module.params
    target = lib.Target.make(params["root"], offline=params["offline"], timeout=params["timeout"])
    if params["state"] == "absent":
        return lib.uninstall(target=target, dry_run=module.check_mode)
    config = params["config"] or []
    if "-" in config:
        raise lib.SettingsError(
            "config: '-' (standard input) cannot be used in a module; give a path", "config"
        )
    # KUMA_TRANSPARENT_PROXY_* on the managed host are not read (env=None): the task says it all.
    values = {
        f.name: params[f.name] for f in lib.Settings.option_fields() if params[f.name] is not None
    }
    settings = lib.Settings.load(config_files=config, **values)
    return lib.install(
        settings,
        target=target,
        dry_run=module.check_mode,
        rules_template=params["rules_template"],
        allow_ssh_redirect=params["allow_ssh_redirect"],
    )


def main():
    try:
        import tproxy_firewalld as lib
    except ImportError:
        module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
        module.fail_json(
            msg=missing_required_lib("tproxy-firewalld"), exception=traceback.format_exc()
        )
    module = AnsibleModule(argument_spec=argument_spec(lib.Settings), supports_check_mode=True)
    try:
        result = run(module, lib)
    except lib.TproxyError as exc:
        module.fail_json(
            msg=exc.message,
            error=type(exc).__name__,
            exit_code=int(exc.exit_code),
            setting=getattr(exc, "setting", None),
        )
    for warning in result.warnings:
        module.warn(warning.message)
    out = result.to_json()
    out.pop("schema")
    if module._diff:
        out["diff"] = [
            dict(
                before_header=f"{title} (tproxy-firewalld entries)",
                after_header=f"{title} (tproxy-firewalld entries)",
                before=getattr(result, place).lines("before"),
                after=getattr(result, place).lines("after"),
            )
            for place, title in PLACES
            if getattr(result, place) is not None and (place != "file" or result.mode == "offline")
        ]
    module.exit_json(**out)


if __name__ == "__main__":
    main()
