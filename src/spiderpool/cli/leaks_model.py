"""`kubectl spiderpool leaks`' vocabulary: the kinds of finding, a ``Finding``, the ``Cluster`` read,
and the small readings the kinds share. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spiderpool.ipam import gc
from spiderpool.ipam.allocate import usable
from spiderpool.ipam.ranges import IPSet, RangeError

Obj = Mapping[str, Any]
#: an object as the API gives it
Doc = dict[str, Any]

RECORD_WITHOUT_POD = "record-without-pod"
IP_WITHOUT_RECORD = "ip-without-record"
POOL_STATUS = "pool-status"
NETNS_ADDRESS = "netns-address"
KINDS = (RECORD_WITHOUT_POD, IP_WITHOUT_RECORD, POOL_STATUS, NETNS_ADDRESS)
#: (one, several)
KIND_TITLES = {
    RECORD_WITHOUT_POD: ("record without a live pod", "records without a live pod"),
    IP_WITHOUT_RECORD: ("pod address without a record", "pod addresses without a record"),
    POOL_STATUS: ("pool status unlike its records", "pool statuses unlike their records"),
    NETNS_ADDRESS: ("unrecorded address in a pod namespace", "unrecorded addresses in pod namespaces"),
}

#: what ``--fix`` does to a finding ("" : only reported)
QUARANTINE, RELEASE, RECORD, ADOPT, RECOUNT = "quarantine", "release", "record", "adopt", "recount"
#: how many addresses a pool-status finding names
SHOWN = 3
#: Multus' record of each attachment's interface and addresses
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


@dataclass
class Finding:
    kind: str
    #: short and stable: GC's reasons for records (pod_deleted, ...), else no_record, ...
    reason: str
    #: one sentence for the admin
    detail: str
    #: what --fix would do (see QUARANTINE ...), "" when it cannot prove anything
    action: str = ""
    ip: str = ""
    pool: str = ""
    namespace: str = ""
    pod: str = ""
    pod_uid: str = ""
    node: str = ""
    interface: str = ""
    #: when the record (or the pod, or the pool) was created
    since: str = ""
    #: the record's name, when there is one
    record: str = ""
    #: what --fix did, and whether the finding is gone now (None: not tried)
    result: str = ""
    fixed: bool | None = None

    @property
    def holder(self) -> str:
        return f"{self.namespace}/{self.pod}" if self.pod else ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "reason": self.reason, "detail": self.detail}
        for key, value in (
            ("ip", self.ip),
            ("pool", self.pool),
            ("namespace", self.namespace),
            ("pod", self.pod),
            ("podUID", self.pod_uid),
            ("node", self.node),
            ("interface", self.interface),
            ("since", self.since),
            ("record", self.record),
        ):
            if value:
                out[key] = value
        out["fix"] = self.action or None
        if self.fixed is not None:
            out["fixed"], out["result"] = self.fixed, self.result
        return out


@dataclass
class Cluster:
    """What the command read; ``pods`` may hold pods of other namespaces than the one looked at
    (the holders the records of its pods' addresses name)."""

    pools: list[Doc] = field(default_factory=list)
    records: list[Doc] = field(default_factory=list)
    pods: list[Doc] = field(default_factory=list)
    endpoints: list[Doc] = field(default_factory=list)
    nodes: list[Doc] = field(default_factory=list)
    statefulsets: list[Doc] = field(default_factory=list)
    reserved: list[Doc] = field(default_factory=list)
    #: seconds since each node's Lease was renewed (by its renewTime, on the apiserver's clock)
    lease_ages: dict[str, float] = field(default_factory=dict)


def age(since: str, now: float) -> str:
    """kubectl's AGE: ``45s``, ``12m``, ``5h``, ``3d``; "" when unknown."""
    t = gc.parse_time(since)
    if t is None:
        return ""
    s = max(0, int(now - t))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _ip(text: str) -> str | None:
    """An address in its canonical form (``172.18.0.5/16`` and ``fd00::0005`` are accepted)."""
    try:
        return str(ipaddress.ip_address(text.split("/", 1)[0].strip()))
    except ValueError:
        return None


def pod_alive(pod: Obj) -> bool:
    """Running or about to: not finished and not being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not (pod.get("metadata") or {}).get("deletionTimestamp")


def lease_ages(leases: Iterable[Obj], now: float) -> dict[str, float]:
    """Seconds since each node's Lease (kube-node-lease/<node>) was renewed. The renewTime is written
    with the node's clock: a node whose clock is minutes off looks that much older or younger here
    (GC times renewals on its own clock instead; a one-shot command cannot)."""
    out: dict[str, float] = {}
    for lease in leases:
        renewed = gc.parse_time(str((lease.get("spec") or {}).get("renewTime") or ""))
        if renewed is not None:
            out[str(lease["metadata"]["name"])] = max(0.0, now - renewed)
    return out


def reserved_sets(reserved: Iterable[Obj]) -> list[IPSet]:
    """Each SpiderReservedIP's addresses (those the agents never hand out)."""
    out = []
    for r in reserved:
        spec = r.get("spec") or {}
        ips = [str(i) for i in spec.get("ips") or []]
        family = spec.get("ipVersion") or (6 if ips and ":" in ips[0] else 4)
        try:
            out.append(IPSet.parse(int(family), ips))
        except (RangeError, ValueError):
            continue
    return out


def handed_out(pools: Iterable[Obj], reserved: Iterable[Obj]) -> dict[str, IPSet]:
    """pool -> what its agents may hand out (ips - excludeIPs - reserved - gateway), as the agent
    computes it; a pool whose spec does not parse hands out nothing."""
    sets = reserved_sets(reserved)
    out: dict[str, IPSet] = {}
    for pool in pools:
        try:
            out[str(pool["metadata"]["name"])] = usable(pool, sets)
        except (RangeError, KeyError, ValueError):
            continue
    return out


def pools_of(ip: str, handed: Mapping[str, IPSet]) -> list[str]:
    return sorted(name for name, s in handed.items() if ip in s)


def _ip_order(ip: str) -> tuple[int, int]:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return (0, 0)
    return (a.version, int(a))
