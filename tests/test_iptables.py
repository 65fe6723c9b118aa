"""What iptables says when the kernel lacks a module, mapped to one line with the fix (issue 10
item 5: RHEL 10 moved xt_owner, xt_comment, xt_conntrack, ... into kernel-modules-extra).

The samples are iptables' own output: the first two were printed on this machine's kernel, which
has no xt_ipvs (iptables 1.8.9, nft and legacy); the others are libxtables' and iptables/nft.c's
messages for the other cases (1.8.x), with the framing lines iptables-restore prints.
"""

from __future__ import annotations

import pytest

from tproxy_firewalld.iptables import _explain, module_for

SAMPLES = {
    "nft-1.8.9": (
        "Warning: Extension ipvs revision 0 not supported, missing kernel module?\n"
        "iptables-restore v1.8.9 (nf_tables): \n"
        "line 2: RULE_APPEND failed (No such file or directory): rule in chain OUTPUT\n",
        "ipvs", "xt_ipvs",
    ),
    "legacy-1.8.9": (
        "Warning: Extension ipvs revision 0 not supported, missing kernel module?\n"
        "iptables-restore: line 3 failed\n",
        "ipvs", "xt_ipvs",
    ),
    "nft-target": (
        "Warning: Extension REDIRECT revision 0 not supported, missing kernel module?\n"
        "iptables-restore v1.8.11 (nf_tables): \n"
        "line 7: RULE_APPEND failed (No such file or directory): rule in chain KUMA_MESH_OUTBOUND\n",
        "REDIRECT", "xt_REDIRECT",
    ),
    "no-revision-at-all": (  # e.g. `state`, an alias whose revisions 1-3 all fail
        "Warning: Extension conntrack is not supported, missing kernel module?\n"
        "iptables-restore v1.8.11 (nf_tables): Couldn't load match `conntrack':No such file or directory\n\n"
        "Error occurred at line: 4\n"
        "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n",
        "conntrack", "xt_conntrack",
    ),
    "nft-1.8.4": (  # RHEL 8: no warning yet, the extension is simply not loadable
        "iptables-restore v1.8.4 (nf_tables): Couldn't load match `owner':No such file or directory\n\n"
        "Error occurred at line: 12\n"
        "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n",
        "owner", "xt_owner",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("stderr", "name", "module"), SAMPLES.values(), ids=SAMPLES.keys())
def test_a_missing_kernel_module_is_named_with_its_fix(stderr: str, name: str, module: str) -> None:
    message = _explain("ipv4", stderr, 4)
    assert f"cannot load the {name} extension ({module})" in message
    assert "`dnf install kernel-modules-extra`" in message and f"`modprobe {module}`" in message
    assert message.endswith("nothing was changed") and "\n" not in message


def test_other_rejections_are_not_blamed_on_a_module() -> None:
    stderr = (
        "iptables-restore v1.8.9 (nf_tables): \n"
        "line 2: RULE_APPEND failed (Invalid argument): rule in chain PREROUTING\n"
    )
    message = _explain("ipv4", stderr, 4)
    assert message.startswith("iptables-restore rejects the rendered ipv4 rules: ")
    assert "kernel-modules-extra" not in message


def test_module_names_keep_their_case_and_known_exceptions() -> None:
    assert [module_for(n) for n in ("owner", "comment", "multiport", "REDIRECT", "CT", "LOG", "tcp", "udp")] == [
        "xt_owner", "xt_comment", "xt_multiport", "xt_REDIRECT", "xt_CT", "xt_LOG", "xt_tcpudp", "xt_tcpudp",
    ]  # fmt: skip
