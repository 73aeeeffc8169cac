"""GC's verdicts on terminating pods (ipam/gc.py ``judge``): an address is taken back only when the
pod's containers are known to have ended, and then after a quarantine, because its sandbox (and the
link carrying the address) may still be there."""

from __future__ import annotations

from typing import Any

from spiderpool.ipam import gc

NOW = 1_800_000_000.0
SETTINGS = gc.Settings(quarantine=10, min_age=15)
RECORD = {"metadata": {"creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"podUID": "u1", "pod": "web"}}


def _pod(states: list[dict[str, Any]] | None, *, deleting: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": "u1", "name": "web"}
    if deleting:
        meta["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running"}
    if states is not None:
        status["containerStatuses"] = [{"name": f"c{i}", "state": s} for i, s in enumerate(states)]
    return {"metadata": meta, "status": status}


def test_a_terminating_pod_whose_containers_ended_is_quarantined_not_freed() -> None:
    verdict = gc.judge(RECORD, _pod([{"terminated": {"exitCode": 0}}]), gc.NodeHealth(), None, NOW, SETTINGS)
    assert verdict == gc.Verdict(True, "terminating_pod_stopped", quarantine=True)


def test_a_terminating_pod_whose_containers_never_started_keeps_its_address() -> None:
    """Deleted mid-ADD (ContainerCreating): no container ran, but the sandbox may carry the address."""
    for states in (None, [], [{"waiting": {"reason": "ContainerCreating"}}]):
        assert gc.judge(RECORD, _pod(states), gc.NodeHealth(), None, NOW, SETTINGS) == gc.KEEP
    running_and_done = [{"running": {}}, {"terminated": {"exitCode": 0}}]
    assert gc.judge(RECORD, _pod(running_and_done), gc.NodeHealth(), None, NOW, SETTINGS) == gc.KEEP


def test_a_live_pod_is_never_judged_and_a_gone_one_waits_for_its_record_to_age() -> None:
    assert gc.judge(RECORD, _pod([{"terminated": {}}], deleting=False), gc.NodeHealth(), None, NOW, SETTINGS) == gc.KEEP
    young = {"metadata": {"creationTimestamp": "2027-01-15T08:00:00Z"}, "spec": RECORD["spec"]}
    assert gc.judge(young, None, gc.NodeHealth(), None, NOW, SETTINGS) == gc.KEEP
    gone = gc.judge(RECORD, None, gc.NodeHealth(), None, NOW, SETTINGS)
    assert (gone.release, gone.reason, gone.quarantine, gone.confirm) == (True, "pod_deleted", True, True)


def test_zombie_on_not_ready_node_is_a_choice_and_never_a_statefulsets() -> None:
    """Upstream's ``zombieOnNotReadyNode``: off (the default here), a running container on a NotReady
    node keeps the address until the node is lost; on, it goes once the grace period is over."""
    running = _pod([{"running": {}}])
    not_ready = gc.node_health({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}, 30.0)
    assert not not_ready.ready
    assert gc.node_health({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, 30.0).ready
    assert gc.judge(RECORD, running, not_ready, None, NOW, SETTINGS) == gc.KEEP
    on = gc.Settings(quarantine=10, min_age=15, zombie_on_not_ready_node=True)
    assert gc.judge(RECORD, running, not_ready, None, NOW, on) == gc.Verdict(True, "node_not_ready")
    assert gc.judge(RECORD, running, gc.NodeHealth(), None, NOW, on) == gc.KEEP  # a Ready node: no
    future = dict(running, metadata={**running["metadata"], "deletionTimestamp": "2030-01-01T00:00:00Z"})
    assert gc.judge(RECORD, future, not_ready, None, NOW, on) == gc.KEEP  # the grace period is not over
    sts = {"metadata": RECORD["metadata"], "spec": {**RECORD["spec"], "ownerKind": "StatefulSet"}}
    assert gc.judge(sts, running, not_ready, None, NOW, on) == gc.KEEP
    assert "node_not_ready" in gc.NODE_REASONS
