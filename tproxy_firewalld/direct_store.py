"""The direct store: our rules as firewalld direct entries, in firewalld's runtime and permanent
configuration (live) or in direct.xml (offline). Here: the steps that bring each place to the
desired entries of ours (the planner's half of the store; steps.py has what each step does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tproxy_firewalld.entries import DirectConfig, Owner
from tproxy_firewalld.errors import DirectXmlError
from tproxy_firewalld.steps import Diff, FileStep, PermanentStep, RuntimeStep, Step

if TYPE_CHECKING:
    from tproxy_firewalld.observe import Observed


def plan_steps(desired: DirectConfig, observed: Observed, owner: Owner) -> list[Step]:
    """Live: the runtime entries to add and remove, then the permanent configuration to hand
    to firewalld (or only direct.xml to rewrite from it); offline: direct.xml to write.
    Everyone else's entries are carried over untouched."""
    steps: list[Step] = []
    target = observed.target
    if observed.live:
        assert observed.runtime is not None and observed.permanent is not None
        if observed.file.foreign(owner).entries() != observed.permanent.foreign(owner).entries():
            raise DirectXmlError(
                f"{target.direct_xml} holds other entries than firewalld's permanent configuration "
                "(edited by hand and not loaded yet); writing now would lose that edit. Load it "
                "with `firewall-cmd --reload`, or undo it, then run this again"
            )
        runtime = Diff.between(desired, observed.runtime, owner)
        if not runtime.empty:
            steps.append(RuntimeStep(runtime))
        merged = observed.permanent.merged_with(desired, owner)
        permanent = Diff.between(desired, observed.permanent, owner)
        if merged.entries() != observed.permanent.entries():
            steps.append(PermanentStep(observed.permanent, merged, permanent))
        elif not Diff.between(desired, observed.file, owner).empty:
            # firewalld's copy is right but the file is not (an edit of our entries that
            # firewalld has not read): one update() makes firewalld write it out again.
            steps.append(
                PermanentStep(
                    observed.permanent,
                    merged,
                    Diff.between(desired, observed.file, owner),
                    file_repair=True,
                )
            )
    else:
        file = Diff.between(desired, observed.file, owner)
        if not file.empty:
            steps.append(
                FileStep(
                    target.direct_xml,
                    observed.file,
                    observed.file.merged_with(desired, owner),
                    file,
                )
            )
    return steps
