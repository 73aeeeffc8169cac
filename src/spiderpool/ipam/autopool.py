"""SpiderSubnet auto-pools ("fixed IPs for applications"): names, labels, sizes and which IPs. Pure.

An application (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob) whose pod template
carries ``ipam.spidernet.io/subnet(s)`` gets one SpiderIPPool per NIC and IP family, carved out of
the subnet by the controller and sized to the application; its pods allocate from it (the agent
finds it by its labels and matches the pod's top controller against the pool's podAffinity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spiderpool.api.constants import name_label
from spiderpool.ipam.ranges import Interval, IPSet

#: kind -> (API group, version, plural)
APP_KINDS: dict[str, tuple[str, str, str]] = {
    "Deployment": ("apps", "v1", "deployments"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "Job": ("batch", "v1", "jobs"),
    "CronJob": ("batch", "v1", "cronjobs"),
}

# Labels of an auto-pool (upstream's names), by which the agent and the controller find it.
L_OWNER_SUBNET = "ipam.spidernet.io/owner-spider-subnet"
L_APP_GV = "ipam.spidernet.io/owner-application-gv"
L_APP_KIND = "ipam.spidernet.io/owner-application-kind"
L_APP_NAMESPACE = "ipam.spidernet.io/owner-application-namespace"
L_APP_NAME = "ipam.spidernet.io/owner-application-name"
L_APP_UID = "ipam.spidernet.io/owner-application-uid"
L_RECLAIM = "ipam.spidernet.io/ippool-reclaim"
L_INTERFACE = "ipam.spidernet.io/interface"
L_IP_VERSION = "ipam.spidernet.io/ip-version"
L_CIDR = "ipam.spidernet.io/ippool-cidr"
#: the size the controller last gave the pool (so the agent can tell "growing" from "full")
A_DESIRED = "ipam.spidernet.io/auto-pool-desired-ip-number"

# podAffinity keys: matched against the pod's top controller, not its labels.
P_GROUP = "ipam.spidernet.io/app-api-group"
P_VERSION = "ipam.spidernet.io/app-api-version"
P_KIND = "ipam.spidernet.io/app-kind"
P_NAMESPACE = "ipam.spidernet.io/app-namespace"
P_NAME = "ipam.spidernet.io/app-name"

DEFAULT_EXTRA_IPS = 1


@dataclass(frozen=True)
class App:
    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def group(self) -> str:
        return APP_KINDS[self.kind][0]

    @property
    def version(self) -> str:
        return APP_KINDS[self.kind][1]

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def pod_labels(self) -> dict[str, str]:
        """What a pod of this application matches an auto-pool's podAffinity with."""
        return {
            P_GROUP: self.group,
            P_VERSION: self.version,
            P_KIND: self.kind,
            P_NAMESPACE: self.namespace,
            P_NAME: self.name,
        }


#: the longest object name
NAME_MAX = 253


def pool_name(family: int, app: App, iface: str) -> str:
    """Upstream's name: ``auto4-<app>-<nic>-<first 5 of the uid's last part>``.

    Upstream cuts the whole name at 253 characters, which for the longest application names cuts
    off the NIC and the uid part, so two NICs (or two incarnations) of one application would get
    the same name. Here the application's part is shortened instead."""
    suffix = app.uid.split("-")[-1][:5]
    head, tail = f"auto{family}-", f"-{iface.lower()}-{suffix}"
    room = NAME_MAX - len(head) - len(tail)
    return head + app.name.lower()[:room].rstrip("-.") + tail


def pool_labels(app: App, subnet: str, iface: str, family: int, reclaim: bool, cidr_label: str) -> dict[str, str]:
    """The auto-pool's labels. Names go through :func:`name_label` (a label value holds at most 63
    characters; the full names are in the pool's podAffinity and owner reference)."""
    return {
        L_OWNER_SUBNET: name_label(subnet),
        L_APP_GV: f"{app.group}_{app.version}",
        L_APP_KIND: app.kind,
        L_APP_NAMESPACE: app.namespace,
        L_APP_NAME: name_label(app.name),
        L_APP_UID: app.uid,
        L_RECLAIM: "true" if reclaim else "false",
        L_INTERFACE: iface,
        L_IP_VERSION: f"IPv{family}",
        L_CIDR: cidr_label,
    }


def is_auto_pool(pool: Mapping[str, Any]) -> bool:
    """Whether spiderpool-controller made ``pool`` for an application (and so owns its IPs)."""
    labels = pool.get("metadata", {}).get("labels") or {}
    return bool(labels.get(L_APP_KIND)) and labels.get(L_APP_KIND) in APP_KINDS


def owner_of(pool: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the application an auto-pool belongs to, with the full name: from
    its podAffinity, which holds the name whatever its length (the label may be shortened)."""
    if not is_auto_pool(pool):
        return None
    labels = pool.get("metadata", {}).get("labels") or {}
    match = ((pool.get("spec") or {}).get("podAffinity") or {}).get("matchLabels") or {}
    name = match.get(P_NAME) or labels.get(L_APP_NAME)
    namespace = match.get(P_NAMESPACE) or labels.get(L_APP_NAMESPACE)
    if not name or not namespace:
        return None
    return str(labels[L_APP_KIND]), str(namespace), str(name)


def subnet_of(pool: Mapping[str, Any]) -> str | None:
    """The SpiderSubnet a pool belongs to, by its full name: from the controller owner reference,
    else from the label (which holds a shortened name when the name is long)."""
    meta = pool.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "SpiderSubnet" and ref.get("controller"):
            return str(ref.get("name"))
    value = (meta.get("labels") or {}).get(L_OWNER_SUBNET)
    return None if value is None else str(value)


def owned_by(pool: Mapping[str, Any], app: App, iface: str | None = None, family: int | None = None) -> bool:
    """Whether ``pool`` is an auto-pool of the application kind/namespace/name (any incarnation)."""
    labels = pool.get("metadata", {}).get("labels") or {}
    return (
        owner_of(pool) == (app.kind, app.namespace, app.name)
        and (iface is None or labels.get(L_INTERFACE) == iface)
        and (family is None or labels.get(L_IP_VERSION) == f"IPv{family}")
    )


def managed_by_app(obj: Mapping[str, Any]) -> bool:
    """Whether another application controls this one (a Deployment's ReplicaSet, a CronJob's Job)."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("kind") in APP_KINDS for r in refs)


def replicas(kind: str, obj: Mapping[str, Any]) -> int:
    """How many pods the application runs at once."""
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        n = spec.get("replicas")
        return 1 if n is None else int(n)
    if kind == "DaemonSet":
        return int((obj.get("status") or {}).get("desiredNumberScheduled") or 0)
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    parallelism = spec.get("parallelism")
    return max(1, 1 if parallelism is None else int(parallelism))


def template_annotations(kind: str, obj: Mapping[str, Any]) -> dict[str, str]:
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return dict(((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {})


def desired_size(ip_number: tuple[bool, int] | None, replicas: int, default_extra: int = DEFAULT_EXTRA_IPS) -> int:
    """``N`` -> N; ``+N`` -> replicas + N; absent -> replicas + the cluster's default extra."""
    if ip_number is None:
        return replicas + default_extra
    flexible, n = ip_number
    return replicas + n if flexible else n


def lowest(ips: IPSet, k: int) -> IPSet:
    """The ``k`` lowest addresses of ``ips`` (all of them if it has fewer)."""
    out: list[Interval] = []
    for iv in ips.intervals:
        if k <= 0:
            break
        size = iv.end - iv.start + 1
        take = min(size, k)
        out.append(Interval(iv.start, iv.start + take - 1))
        k -= take
    return IPSet(ips.family, out)


@dataclass(frozen=True)
class Resize:
    ips: IPSet
    #: addresses the pool should have had but the subnet could not give
    short: int = 0
    #: addresses it should have shed but pods still hold
    stuck: int = 0


def resize(current: IPSet, want: int, subnet_free: IPSet, in_use: IPSet) -> Resize:
    """The pool's new IPs: grow with the subnet's lowest free addresses; shrink by dropping the
    lowest addresses no pod holds (never one a pod holds)."""
    have = current.count()
    if want > have:
        extra = lowest(subnet_free.difference(current), want - have)
        return Resize(current.union(extra), short=want - have - extra.count())
    if want < have:
        drop = lowest(current.difference(in_use), have - want)
        return Resize(current.difference(drop), stuck=have - want - drop.count())
    return Resize(current)
