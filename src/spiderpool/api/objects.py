"""Typed views of the objects the agent and the controller build and read on their hot paths.

The apiserver speaks JSON, and these are dicts at run time (no conversion cost); the TypedDicts
let mypy check every key we read or write. The full schemas are the dataclasses of ``v2beta1``,
from which the CRDs are generated; these views name only what our code touches.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast

from spiderpool.api.constants import (
    LABEL_RECORD_NODE,
    LABEL_RECORD_POD,
    LABEL_RECORD_POD_UID,
    LABEL_RECORD_POOL,
    name_label,
    pod_label,
)
from spiderpool.api.v2beta1 import API_VERSION


class Meta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    finalizers: list[str]
    ownerReferences: list[dict[str, Any]]


class RecordSpec(TypedDict):
    """A ``SpiderIPAllocation``: one IP held by one pod's NIC (or by nobody, in quarantine).
    Required as the CRD requires them; we always write the rest, but read them as optional."""

    ip: str
    pool: str
    ipVersion: int
    namespace: str
    pod: str
    podUID: str
    interface: str
    node: NotRequired[str]
    containerID: NotRequired[str]
    cleanGateway: NotRequired[bool]
    ownerKind: NotRequired[str]
    ownerName: NotRequired[str]
    quarantineUntil: NotRequired[str]
    releaseReason: NotRequired[str]


class Record(TypedDict):
    apiVersion: str
    kind: str
    metadata: Meta
    spec: RecordSpec


def as_record(obj: dict[str, Any]) -> Record:
    """A record from the API (the CRD's schema makes every required field present)."""
    return cast(Record, obj)


def record_labels(spec: RecordSpec) -> dict[str, str]:
    """What a record is selected by: its pool (an agent watches the pools it serves), its pod and node."""
    labels = {LABEL_RECORD_POOL: name_label(spec["pool"]), LABEL_RECORD_POD_UID: spec["podUID"]}
    if spec.get("namespace") and spec.get("pod"):
        labels[LABEL_RECORD_POD] = pod_label(spec["namespace"], spec["pod"])
    if spec.get("node"):
        labels[LABEL_RECORD_NODE] = name_label(str(spec.get("node")))
    return labels


def new_record(name: str, spec: RecordSpec) -> Record:
    return {
        "apiVersion": API_VERSION,
        "kind": "SpiderIPAllocation",
        "metadata": {
            "name": name,
            "labels": record_labels(spec),
        },
        "spec": spec,
    }


def held_for(record: Record, uid: str, **changes: Any) -> Record:
    """A copy of ``record`` held by pod ``uid`` ("" for nobody), its pod-uid label following."""
    spec = cast(RecordSpec, {**record["spec"], **changes, "podUID": uid})
    labels = {**(record["metadata"].get("labels") or {}), **record_labels(spec)}
    return {**record, "metadata": {**record["metadata"], "labels": labels}, "spec": spec}


class Route(TypedDict):
    dst: str
    gw: str


class EndpointNIC(TypedDict, total=False):
    interface: str
    cleanGateway: bool
    ipv4: str
    ipv4Pool: str
    ipv4Gateway: str
    ipv6: str
    ipv6Pool: str
    ipv6Gateway: str
    routes: list[Route]


class EndpointCurrent(TypedDict):
    uid: str
    node: str
    ips: list[EndpointNIC]


class EndpointStatus(TypedDict):
    current: EndpointCurrent
    ownerControllerType: str
    ownerControllerName: str


class Endpoint(TypedDict):
    apiVersion: str
    kind: str
    metadata: Meta
    status: EndpointStatus


def new_endpoint(namespace: str, name: str, status: EndpointStatus, owners: list[dict[str, Any]]) -> Endpoint:
    return {
        "apiVersion": API_VERSION,
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": owners},
        "status": status,
    }


class PoolSpec(TypedDict, total=False):
    """A ``SpiderIPPool``'s spec (a ``SpiderSubnet``'s has the address fields of it)."""

    ipVersion: int
    subnet: str
    ips: list[str]
    excludeIPs: list[str]
    gateway: str
    routes: list[Route]
    default: bool
    disable: bool
    nodeName: list[str]
    nodeAffinity: dict[str, Any]
    namespaceName: list[str]
    namespaceAffinity: dict[str, Any]
    podAffinity: dict[str, Any]
    multusName: list[str]


class PoolStatus(TypedDict):
    """Upstream's: ``allocatedIPs`` is a JSON map IP -> holder (None when empty)."""

    allocatedIPs: str | None
    allocatedIPCount: int
    totalIPCount: int


class SubnetStatus(TypedDict):
    """Upstream's: ``controlledIPPools`` is a JSON map pool -> its IPs (and application)."""

    controlledIPPools: str | None
    allocatedIPCount: int
    totalIPCount: int


class Pool(TypedDict):
    apiVersion: str
    kind: str
    metadata: Meta
    spec: PoolSpec
    status: NotRequired[PoolStatus]


def as_pool(obj: dict[str, Any]) -> Pool:
    return cast(Pool, obj)
