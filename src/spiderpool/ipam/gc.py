"""When an allocation is taken back from its pod (garbage collection). Pure: the caller brings the
record, the pod, the node's health and the StatefulSet, and acts on the verdict.

The rule is "nothing leaks, nothing is freed under a live pod":
- the pod is gone (or re-created under its name with another UID): release, unless a StatefulSet
  will bring the pod back (then its successor adopts the IP);
- the pod has finished (Succeeded/Failed): release;
- the pod is terminating and its node says its containers have stopped, or its node is out of
  service (``node.kubernetes.io/out-of-service``) or lost (its Lease is stale past a limit, or the
  Node is gone): release.
An IP taken from a pod that may still run somewhere (a deleted pod whose CNI DEL never came, a pod
on a lost node) is quarantined: its record holds the IP for no pod for a while, so nobody else gets
an address that may still answer on the wire.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
RETENTION = "ipam.spidernet.io/ip-retention-policy"


@dataclass(frozen=True)
class Settings:
    #: a node whose Lease was last renewed longer ago than this is lost
    stale_lease: float = 300.0
    #: how long a released IP of a possibly running pod stays out of circulation
    quarantine: float = 60.0
    #: a record younger than this is not judged by a missing pod (the pod cache may lag the record)
    min_age: float = 30.0
    #: extra wait after a terminating pod's deletion time before its stopped containers count
    terminating_delay: float = 0.0
    #: upstream's ``zombieOnNotReadyNode``: a terminating pod that no StatefulSet owns, on a NotReady
    #: node, loses its IPs once its deletion time has passed, without waiting for the node to be
    #: lost. Off here (the containers may still run on a partitioned node, with the address on the
    #: wire): the choice of a user who wants the address back in minutes (docs/api.md)
    zombie_on_not_ready_node: bool = False


@dataclass(frozen=True)
class NodeHealth:
    exists: bool = True
    out_of_service: bool = False
    #: seconds since the node's Lease was renewed (None: no Lease)
    lease_age: float | None = None
    #: the Node's Ready condition is True (or not reported)
    ready: bool = True


@dataclass(frozen=True)
class Verdict:
    release: bool
    reason: str = ""
    #: the pod may still run: hold the IP for no pod for a while instead of freeing it
    quarantine: bool = False
    #: decided from a missing pod: confirm with a live read before acting
    confirm: bool = False


KEEP = Verdict(False)
#: the reasons an address is taken back because of its pod's node (an event on the pod says so)
NODE_REASONS = frozenset({"node_deleted", "node_out_of_service", "node_lost", "node_not_ready"})


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def statefulset_wants(sts: Mapping[str, Any] | None, pod_name: str) -> bool:
    """Whether the StatefulSet will (re)create a pod of this name, or retains its IPs when scaled
    down (annotation ``ipam.spidernet.io/ip-retention-policy: {"whenScaled": "Retain"}``)."""
    if sts is None or sts.get("metadata", {}).get("deletionTimestamp"):
        return False
    prefix, _, ordinal = pod_name.rpartition("-")
    if prefix != sts["metadata"]["name"] or not ordinal.isdigit():
        return False
    if retention(sts).get("whenScaled") == "Retain":
        return True
    spec = sts.get("spec") or {}
    replicas = 1 if spec.get("replicas") is None else int(spec["replicas"])
    start = int((spec.get("ordinals") or {}).get("start") or 0)
    return start <= int(ordinal) < start + replicas


def retention(sts: Mapping[str, Any]) -> dict[str, str]:
    raw = (sts.get("metadata", {}).get("annotations") or {}).get(RETENTION)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def node_health(node: Mapping[str, Any] | None, lease_age: float | None) -> NodeHealth:
    """``lease_age``: seconds since its Lease was seen renewed (``LeaseAges``), None without a Lease."""
    if node is None:
        return NodeHealth(exists=False)
    taints = (node.get("spec") or {}).get("taints") or []
    oos = any(t.get("key") == OUT_OF_SERVICE for t in taints)
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((str(c.get("status")) for c in conditions if c.get("type") == "Ready"), "True") == "True"
    return NodeHealth(True, oos, lease_age, ready)


class LeaseAges:
    """How long ago each node's Lease was last seen renewed, on the observer's own clock.

    A kubelet writes ``renewTime`` with its node's clock, which may be minutes off: judged against
    ours, a node 5 minutes behind would look lost while it is well. So, as Kubernetes' node
    lifecycle controller does, a renewal is a *change* of ``renewTime``, timed when it is seen; a
    Lease that has not changed since we started is as old as our watch of it."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def saw(self, node: str, lease: Mapping[str, Any] | None, now: float) -> None:
        """A Lease event (``lease`` None: deleted); ``now`` is the observer's monotonic clock."""
        if lease is None:
            self._seen.pop(node, None)
            return
        renew = str((lease.get("spec") or {}).get("renewTime") or "")
        if renew and self._seen.get(node, ("", 0.0))[0] != renew:
            self._seen[node] = (renew, now)

    def age(self, node: str, now: float) -> float | None:
        seen = self._seen.get(node)
        return None if seen is None else max(0.0, now - seen[1])


def containers_stopped(pod: Mapping[str, Any]) -> bool:
    """The kubelet reports every container of the pod terminated. A container that never started
    (waiting, or not reported yet) is no proof: the pod's sandbox, and its network with our address,
    may be up, or still being set up by an ADD (the fault matrix's force-delete row found a pod
    deleted mid-ADD whose IP was freed while its sandbox carried it)."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    every = statuses + (status.get("initContainerStatuses") or [])
    return bool(statuses) and all("terminated" in (s.get("state") or {}) for s in every)


def judge(
    record: Mapping[str, Any],
    pod: Mapping[str, Any] | None,
    node: NodeHealth,
    sts: Mapping[str, Any] | None,
    now: float,
    settings: Settings,
) -> Verdict:
    spec = record.get("spec") or {}
    until = parse_time(spec.get("quarantineUntil"))
    if until is not None:
        return Verdict(True, "quarantine_over") if now >= until else KEEP
    statefulset = spec.get("ownerKind") == "StatefulSet"
    if pod is None or str(pod["metadata"].get("uid")) != spec.get("podUID"):
        created = parse_time(record.get("metadata", {}).get("creationTimestamp"))
        if created is not None and now - created < settings.min_age:
            return KEEP
        if statefulset and statefulset_wants(sts, str(spec.get("pod"))):
            return KEEP  # the successor adopts it
        if statefulset:
            reason = "statefulset_scaled_down" if sts is not None else "statefulset_deleted"
        else:
            reason = "pod_deleted" if pod is None else "pod_recreated"
        return Verdict(True, reason, quarantine=True, confirm=True)
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed") and not statefulset:
        return Verdict(True, "pod_completed")
    deleted_at = parse_time(pod["metadata"].get("deletionTimestamp"))
    if deleted_at is None:
        return KEEP
    if not node.exists:
        return Verdict(True, "node_deleted", quarantine=True)
    if node.out_of_service:
        return Verdict(True, "node_out_of_service", quarantine=True)
    if node.lease_age is not None and node.lease_age > settings.stale_lease:
        return Verdict(True, "node_lost", quarantine=True)
    if settings.zombie_on_not_ready_node and not node.ready and not statefulset and now >= deleted_at:
        return Verdict(True, "node_not_ready")
    if now >= deleted_at + settings.terminating_delay and containers_stopped(pod):
        if statefulset and statefulset_wants(sts, str(spec.get("pod"))):
            return KEEP
        # the containers are gone, the sandbox may not be yet (its CNI DEL may even be failing, a
        # plugin missing): quarantined, so no other pod gets an address its old link still answers for
        return Verdict(True, "terminating_pod_stopped", quarantine=True)
    return KEEP
