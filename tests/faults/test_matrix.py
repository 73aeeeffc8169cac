"""The fault matrix: one fault injected into a running storm per row, then the storm runs to its
end. Every row must end with no duplicate ever seen, no record left after the GC bound, and the
storm converged with nobody's help (the harness only undoes the fault the way the world would)."""

from __future__ import annotations

import json

import pytest

from spiderpool_lab.cluster import Lab
from tests.faults.conftest import ROWS
from tests.faults.faults import FAULTS, Context, Fault
from tests.faults.storm import Storm
from tests.stack import Agents, Controllers


@pytest.mark.faults
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_fault_mid_storm_leaves_no_duplicate_no_leak(
    storm_lab: Lab, controllers: Controllers, agents: Agents, fault: type[Fault]
) -> None:
    ctx = Context(storm_lab, controllers, agents, namespace=f"storm-{fault.name}")
    injected = fault(ctx)
    try:
        row = Storm(storm_lab, ctx.namespace).run(injected)
    finally:
        injected.cleanup()
        storm_lab.kubectl("delete", "namespace", ctx.namespace, "--ignore-not-found", "--wait=false")
        # whatever the outcome, the next row starts on a whole cluster
        storm_lab.heal()
        controllers.wait_all()
        agents.wait_all()
    ROWS.append(row)
    print(f"{row.fault}: {row.as_json()}")
    assert not row.problems, "\n".join(row.problems) + "\n" + json.dumps(row.notes.get("diagnostics"), indent=1)
    assert row.duplicates == 0
    assert row.leaks == 0, f"{row.leaks} records of gone pods left after {row.leak_wait_s} s"
