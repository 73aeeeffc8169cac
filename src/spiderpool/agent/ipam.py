"""The agent's allocation service: pure selection and candidate logic from ``spiderpool.ipam``,
with the API reads and writes at the edges.

An allocation is the creation of a ``SpiderIPAllocation`` named after the IP. The apiserver refuses
a second object of the same name, so no address can be held twice, whatever the agents do
concurrently; an agent that loses a race moves to its next candidate. A release deletes the
records. The ``SpiderEndpoint`` of the pod (named after it) records every NIC's addresses, so a
repeated ADD, a new sandbox of the same pod and a re-created StatefulSet pod get the same IPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import ReplicaSet, StatefulSet
from lightkube.resources.core_v1 import Event, Namespace, Node, Pod
from prometheus_client import Counter, Histogram

from spiderpool.api import annotations as ann
from spiderpool.api.v2beta1 import API_VERSION
from spiderpool.ipam.allocate import candidates, prefix_of, record_name, usable
from spiderpool.ipam.ranges import IPSet
from spiderpool.ipam.result import Assigned, routes_for
from spiderpool.ipam.selection import NetconfDefaults, PodContext, SelectionError, plan_nic
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.resources import SpiderEndpoint, SpiderIPAllocation

log = logging.getLogger(__name__)

ALLOCATIONS = Counter("spiderpool_ipam_allocation_counts", "IP allocation requests")
ALLOCATION_FAILURES = Counter("spiderpool_ipam_allocation_failure_counts", "Failed allocations", ["reason"])
CONFLICTS = Counter("spiderpool_ipam_allocation_conflict_counts", "Record creates lost to another allocator")
RELEASES = Counter("spiderpool_ipam_release_counts", "IP release requests")
RELEASED_IPS = Counter("spiderpool_ipam_released_ip_counts", "IPs released", ["reason"])
API_WRITES = Counter("spiderpool_ipam_api_writes", "API writes made by the allocator", ["kind"])
LATENCY = Histogram(
    "spiderpool_ipam_allocation_duration_seconds",
    "Allocation latency at the agent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 10),
)

MAX_TRIES_PER_POOL = 64


class IPAMError(Exception):
    """An allocation error for the plugin: a CNI code, a message naming the pod, and a reason label."""

    def __init__(self, code: int, msg: str, *, reason: str, details: str = "", http: int = 500) -> None:
        super().__init__(msg)
        self.code, self.msg, self.reason, self.details, self.http = code, msg, reason, details, http


@dataclass(frozen=True)
class Settings:
    node: str
    ipv4: bool = True
    ipv6: bool = False
    #: the cluster network Multus uses when a pod names no default network (for ``multusName``)
    cluster_network: str = ""


@dataclass
class PodView:
    obj: dict[str, Any]
    owner_kind: str = ""
    owner_name: str = ""

    @property
    def meta(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.obj["metadata"])

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])

    def alive(self) -> bool:
        phase = self.obj.get("status", {}).get("phase")
        return not self.meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


@dataclass
class Allocator:
    client: AsyncClient
    settings: Settings
    pools: WatchCache
    reserved: WatchCache
    records: WatchCache
    #: IPs with a record (from the watch) or being created by this agent right now
    used: set[str] = field(default_factory=set)
    inflight: set[str] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records.listeners.append(self._on_record)

    def _on_record(self, _kind: str, key: str, obj: dict[str, Any]) -> None:
        ip = str(obj.get("spec", {}).get("ip", ""))
        if key in self.records.items:
            self.used.add(ip)
        else:
            self.used.discard(ip)

    def ready(self) -> bool:
        return all(c.synced.is_set() for c in (self.pools, self.reserved, self.records))

    def _pod_lock(self, key: str) -> asyncio.Lock:
        # ADD and DEL of one pod never interleave within this agent.
        return self._locks.setdefault(key, asyncio.Lock())

    # ------------------------------------------------------------ reads
    async def _pod(self, namespace: str, name: str) -> PodView | None:
        try:
            pod = (await self.client.get(Pod, name, namespace=namespace)).to_dict()
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        view = PodView(pod)
        for ref in pod["metadata"].get("ownerReferences") or []:
            if not ref.get("controller"):
                continue
            view.owner_kind, view.owner_name = str(ref["kind"]), str(ref["name"])
            if ref["kind"] == "ReplicaSet":
                try:
                    rs = await self.client.get(ReplicaSet, ref["name"], namespace=namespace)
                    for up in (rs.metadata.ownerReferences if rs.metadata else None) or []:
                        if up.controller:
                            view.owner_kind, view.owner_name = up.kind, up.name
                except ApiError:
                    pass
        return view

    async def _endpoint(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], (await self.client.get(SpiderEndpoint, name, namespace=namespace)).to_dict())
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    def _reserved_sets(self) -> list[IPSet]:
        out = []
        for r in self.reserved.items.values():
            spec = r.get("spec", {})
            ips = spec.get("ips") or []
            family = spec.get("ipVersion") or (6 if ips and ":" in str(ips[0]) else 4)
            try:
                out.append(IPSet.parse(int(family), ips))
            except ValueError:
                continue
        return out

    def records_of(self, uid: str, ifname: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records.items.values()
            if r.get("spec", {}).get("podUID") == uid and (ifname is None or r["spec"].get("interface") == ifname)
        ]

    # ------------------------------------------------------------ allocate
    async def allocate(self, req: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        ALLOCATIONS.inc()
        ns, name, ifname = str(req.get("podNamespace", "")), str(req.get("podName", "")), str(req.get("ifName", ""))
        try:
            async with self._pod_lock(f"{ns}/{name}"):
                reply = await self._allocate(req, ns, name, ifname)
            LATENCY.observe(time.monotonic() - started)
            return reply
        except IPAMError as err:
            ALLOCATION_FAILURES.labels(err.reason).inc()
            if err.reason not in ("pod_gone",):
                await self._event(ns, name, req.get("podUID", ""), "IPAllocationFailed", err.msg)
            raise

    async def _allocate(self, req: dict[str, Any], ns: str, name: str, ifname: str) -> dict[str, Any]:
        pod = await self._pod(ns, name)
        if pod is None:
            raise IPAMError(3, f"pod {ns}/{name} does not exist", reason="pod_gone", http=404)
        uid = str(req.get("podUID") or pod.uid)
        if uid != pod.uid:
            raise IPAMError(
                3, f"pod {ns}/{name} was re-created (uid {pod.uid}, CNI asked for {uid})", reason="pod_gone", http=409
            )
        if not pod.alive():
            raise IPAMError(3, f"pod {ns}/{name} is terminating; no IP is allocated to it", reason="pod_gone", http=409)
        try:
            pod_ann = ann.parse_pod(pod.meta.get("annotations"))
        except ann.AnnotationError as exc:
            raise IPAMError(7, f"pod {ns}/{name}: {exc}", reason="bad_annotation", http=400) from None

        endpoint, reused = await self._reuse(await self._endpoint(ns, name), pod, ifname, req)
        if reused is not None:
            return reused

        ctx = await self._context(pod, pod_ann)
        netconf = NetconfDefaults(
            ipv4=tuple(req.get("defaultIPv4IPPool") or ()),
            ipv6=tuple(req.get("defaultIPv6IPPool") or ()),
            clean_gateway=bool(req.get("cleanGateway")),
        )
        families = tuple(f for f, on in ((4, self.settings.ipv4), (6, self.settings.ipv6)) if on)
        try:
            plan = plan_nic(ctx, ifname, self.pools.items, netconf=netconf, families=families)
        except SelectionError as exc:
            raise IPAMError(100, str(exc), reason="no_available_pool", http=409) from None

        assigned: list[Assigned] = []
        # Records this pod already holds for this NIC (an ADD whose reply was lost, or an agent that died
        # between creating the record and writing the endpoint) are reused, never duplicated.
        held = {int(r["spec"]["ipVersion"]): r for r in self.records_of(pod.uid, ifname)}
        try:
            for cand in plan.families:
                record = held.get(cand.family)
                if record is not None and record["spec"]["pool"] in self.pools.items:
                    assigned.append(self._assigned(self.pools.items[record["spec"]["pool"]], record["spec"], ifname))
                    continue
                assigned.append(await self._take(cand.family, cand.pools, pod, ifname, req, cand.rejected))
        except IPAMError:
            for a in assigned:  # all families or none
                await self._delete_record(a.ip, pod.uid)
            raise
        routes = routes_for(assigned, pod_ann.routes, clean_gateway=plan.clean_gateway)
        await self._record_endpoint(endpoint, pod, ifname, assigned, plan.clean_gateway, routes)
        log.info(
            "allocated pod=%s/%s uid=%s nic=%s ips=%s",
            ns,
            name,
            pod.uid,
            ifname,
            ",".join(f"{a.ip}({a.pool})" for a in assigned),
        )
        return _reply(assigned, routes, ifname)

    async def _context(self, pod: PodView, pod_ann: ann.PodAnnotations) -> PodContext:
        ns = pod.meta["namespace"]
        nsobj = (await self.client.get(Namespace, ns)).to_dict()
        node_labels: dict[str, str] = {}
        node_name = pod.obj.get("spec", {}).get("nodeName") or self.settings.node
        with contextlib.suppress(ApiError):
            node_labels = (await self.client.get(Node, node_name)).to_dict()["metadata"].get("labels") or {}
        try:
            ns_defaults = ann.parse_namespace_defaults(nsobj["metadata"].get("annotations"))
        except ann.AnnotationError as exc:
            raise IPAMError(7, f"namespace {ns}: {exc}", reason="bad_annotation", http=400) from None
        return PodContext(
            namespace=ns,
            name=pod.meta["name"],
            labels=pod.meta.get("labels") or {},
            node=node_name,
            node_labels=node_labels,
            namespace_labels=nsobj["metadata"].get("labels") or {},
            annotations=pod_ann,
            namespace_defaults=ns_defaults,
            networks=ann.multus_networks(pod.meta.get("annotations"), ns, self.settings.cluster_network),
        )

    async def _take(
        self,
        family: int,
        pool_names: tuple[str, ...],
        pod: PodView,
        ifname: str,
        req: dict[str, Any],
        rejected: tuple[tuple[str, str], ...],
    ) -> Assigned:
        reasons = [f"{n}: {r}" for n, r in rejected]
        reserved = self._reserved_sets()
        for pool_name in pool_names:
            pool = self.pools.get(pool_name)
            if pool is None:
                reasons.append(f"{pool_name}: no such SpiderIPPool")
                continue
            space = usable(pool, reserved)
            taken = IPSet.parse(family, [ip for ip in self.used | self.inflight if (":" in ip) == (family == 6)])
            free = space.difference(taken)
            if not free:
                reasons.append(f"{pool_name}: all {space.count()} usable IPs are allocated (the pool is used up)")
                continue
            tries = 0
            for ip in candidates(free, self.settings.node):
                if ip in self.used or ip in self.inflight:
                    continue
                tries += 1
                if tries > MAX_TRIES_PER_POOL:
                    break
                self.inflight.add(ip)
                try:
                    if await self._create_record(ip, pool_name, family, pod, ifname, req):
                        return self._assigned(pool, {"ip": ip, "pool": pool_name, "ipVersion": family}, ifname)
                finally:
                    self.inflight.discard(ip)
            reasons.append(f"{pool_name}: every free IP was taken concurrently; retry")
        who = f"pod {pod.meta['namespace']}/{pod.meta['name']}"
        raise IPAMError(
            100,
            f"no IPv{family} address for interface {ifname} of {who}: " + "; ".join(reasons),
            reason="ip_used_out",
            http=409,
        )

    @staticmethod
    def _assigned(pool: dict[str, Any], record: dict[str, Any], ifname: str) -> Assigned:
        spec = pool["spec"]
        routes = tuple(ann.Route(r["dst"], r["gw"]) for r in spec.get("routes") or [])
        return Assigned(
            ifname,
            int(record["ipVersion"]),
            str(record["ip"]),
            prefix_of(pool),
            str(record["pool"]),
            spec.get("gateway"),
            routes,
        )

    async def _create_record(
        self, ip: str, pool: str, family: int, pod: PodView, ifname: str, req: dict[str, Any]
    ) -> bool:
        body = {
            "apiVersion": API_VERSION,
            "kind": "SpiderIPAllocation",
            "metadata": {
                "name": record_name(ip),
                "labels": {"ipam.spidernet.io/ippool": pool, "ipam.spidernet.io/pod-uid": pod.uid},
            },
            "spec": {
                "ip": ip,
                "pool": pool,
                "ipVersion": family,
                "namespace": pod.meta["namespace"],
                "pod": pod.meta["name"],
                "podUID": pod.uid,
                "interface": ifname,
                "node": self.settings.node,
                "containerID": str(req.get("containerID", "")),
                "ownerKind": pod.owner_kind,
                "ownerName": pod.owner_name,
            },
        }
        try:
            created = await self.client.create(SpiderIPAllocation.from_dict(body))
        except ApiError as exc:
            if exc.status.code == 409:
                CONFLICTS.inc()
                self.used.add(ip)  # someone else holds it; our watch will confirm
                return False
            raise
        finally:
            API_WRITES.labels("create_record").inc()
        self.records.apply_local(created.to_dict())
        return True

    async def _delete_record(self, ip: str, uid: str) -> bool:
        """Delete the record of ``ip`` only if pod ``uid`` holds it (never another pod's address)."""
        name = record_name(ip)
        cached = self.records.get(name)
        if cached is not None and cached.get("spec", {}).get("podUID") != uid:
            return False
        try:
            API_WRITES.labels("delete_record").inc()
            await self.client.delete(SpiderIPAllocation, name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        self.records.apply_local(None, key=name)
        return True

    async def _reuse(
        self, endpoint: dict[str, Any] | None, pod: PodView, ifname: str, req: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(the endpoint to update, or None to create one; the reply if this NIC already has addresses)."""
        if endpoint is None:
            return None, None
        current = endpoint.get("status", {}).get("current", {})
        entry = next((e for e in current.get("ips") or [] if e.get("interface") == ifname), None)
        same_pod = current.get("uid") == pod.uid
        stateful = pod.owner_kind == "StatefulSet"
        if entry is not None and (same_pod or stateful):
            ips = [
                (4, entry.get("ipv4"), entry.get("ipv4Pool"), entry.get("ipv4Gateway")),
                (6, entry.get("ipv6"), entry.get("ipv6Pool"), entry.get("ipv6Gateway")),
            ]
            assigned = [
                Assigned(ifname, fam, str(cidr).split("/")[0], int(str(cidr).split("/")[1]), str(pool), gw)
                for fam, cidr, pool, gw in ips
                if cidr
            ]
            if not same_pod:
                # A StatefulSet pod re-created under the same name: move its records to the new pod.
                for a in assigned:
                    await self._adopt_record(a.ip, pod, req)
                current["uid"] = pod.uid
                current["node"] = self.settings.node
                await self._write_endpoint(endpoint)
            routes = [ann.Route(r["dst"], r["gw"]) for r in entry.get("routes") or []]
            log.info(
                "reused pod=%s/%s nic=%s ips=%s",
                pod.meta["namespace"],
                pod.meta["name"],
                ifname,
                ",".join(a.ip for a in assigned),
            )
            return endpoint, _reply(assigned, routes, ifname)
        if not same_pod and not stateful:
            # A stale endpoint of an earlier pod of this name: its addresses and the endpoint go.
            old_uid = str(current.get("uid", ""))
            for r in self.records_of(old_uid):
                await self._delete_record(r["spec"]["ip"], old_uid)
            try:
                await self.client.delete(SpiderEndpoint, pod.meta["name"], namespace=pod.meta["namespace"])
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
            return None, None
        return endpoint, None

    async def _adopt_record(self, ip: str, pod: PodView, req: dict[str, Any]) -> None:
        record = self.records.get(record_name(ip))
        if record is None:
            return
        record = dict(record)
        record["spec"] = {
            **record["spec"],
            "podUID": pod.uid,
            "node": self.settings.node,
            "containerID": str(req.get("containerID", "")),
        }
        record["metadata"] = {
            **record["metadata"],
            "labels": {**record["metadata"].get("labels", {}), "ipam.spidernet.io/pod-uid": pod.uid},
        }
        API_WRITES.labels("update_record").inc()
        updated = await self.client.replace(SpiderIPAllocation.from_dict(record))
        self.records.apply_local(updated.to_dict())

    async def _record_endpoint(
        self,
        endpoint: dict[str, Any] | None,
        pod: PodView,
        ifname: str,
        assigned: list[Assigned],
        clean: bool,
        routes: list[ann.Route],
    ) -> None:
        entry: dict[str, Any] = {
            "interface": ifname,
            "cleanGateway": clean,
            "routes": [{"dst": r.dst, "gw": r.gw} for r in routes],
        }
        for a in assigned:
            v = "ipv4" if a.family == 4 else "ipv6"
            entry[v], entry[f"{v}Pool"] = a.cidr, a.pool
            if a.gateway:
                entry[f"{v}Gateway"] = a.gateway
        meta = pod.meta
        if endpoint is None:
            refs = []
            if pod.owner_kind != "StatefulSet":  # a StatefulSet pod's record outlives the pod
                refs = [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": pod.uid}]
            endpoint = {
                "apiVersion": API_VERSION,
                "kind": "SpiderEndpoint",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": refs},
                "status": {
                    "current": {"uid": pod.uid, "node": self.settings.node, "ips": [entry]},
                    "ownerControllerType": pod.owner_kind or "Pod",
                    "ownerControllerName": pod.owner_name or meta["name"],
                },
            }
            API_WRITES.labels("create_endpoint").inc()
            await self.client.create(SpiderEndpoint.from_dict(endpoint))
            return
        current = endpoint.setdefault("status", {}).setdefault("current", {"uid": pod.uid})
        current["ips"] = [e for e in current.get("ips") or [] if e.get("interface") != ifname] + [entry]
        current["uid"], current["node"] = pod.uid, self.settings.node
        await self._write_endpoint(endpoint)

    async def _write_endpoint(self, endpoint: dict[str, Any]) -> None:
        API_WRITES.labels("update_endpoint").inc()
        await self.client.replace(SpiderEndpoint.from_dict(endpoint))

    # ------------------------------------------------------------- release
    async def release(self, req: dict[str, Any]) -> dict[str, Any]:
        RELEASES.inc()
        ns, name, ifname = str(req.get("podNamespace", "")), str(req.get("podName", "")), str(req.get("ifName", ""))
        async with self._pod_lock(f"{ns}/{name}"):
            return await self._release(req, ns, name, ifname)

    async def _release(self, req: dict[str, Any], ns: str, name: str, ifname: str) -> dict[str, Any]:
        uid = str(req.get("podUID") or "")
        container = str(req.get("containerID") or "")
        if not uid and container:
            uid = next(
                (r["spec"]["podUID"] for r in self.records.items.values() if r["spec"].get("containerID") == container),
                "",
            )
        pod = await self._pod(ns, name) if ns and name else None
        if pod is not None and (not uid or pod.uid == uid) and pod.alive():
            # The pod lives on (a retried ADD, a new sandbox): its addresses stay with it.
            return {"released": [], "kept": "pod is alive"}
        if pod is not None and not uid:
            uid = pod.uid
        if not uid:
            return {"released": [], "kept": "nothing recorded for this container"}
        if await self._statefulset_keeps(pod, ns, name, uid):
            return {"released": [], "kept": "StatefulSet pod keeps its IPs for its successor"}
        released = []
        for r in self.records_of(uid, ifname or None):
            await self._delete_record(r["spec"]["ip"], uid)
            released.append(r["spec"]["ip"])
            RELEASED_IPS.labels("cni_del").inc()
        await self._drop_endpoint_nic(ns, name, uid, ifname)
        if released:
            log.info("released pod=%s/%s uid=%s nic=%s ips=%s", ns, name, uid, ifname, ",".join(released))
        return {"released": released}

    async def _statefulset_keeps(self, pod: PodView | None, ns: str, name: str, uid: str) -> bool:
        owner_kind, owner_name = (pod.owner_kind, pod.owner_name) if pod else ("", "")
        if not owner_kind:
            rec = next(iter(self.records_of(uid)), None)
            if rec is not None:
                owner_kind, owner_name = rec["spec"].get("ownerKind", ""), rec["spec"].get("ownerName", "")
        if owner_kind != "StatefulSet" or not owner_name:
            return False
        try:
            sts = await self.client.get(StatefulSet, owner_name, namespace=ns)
            namespace = await self.client.get(Namespace, ns)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        if namespace.metadata is not None and namespace.metadata.deletionTimestamp:
            return False  # the whole namespace is going: no successor will come
        ordinal = name.rsplit("-", 1)[-1]
        replicas = sts.spec.replicas if sts.spec and sts.spec.replicas is not None else 1
        return (
            ordinal.isdigit()
            and int(ordinal) < replicas
            and sts.metadata is not None
            and not sts.metadata.deletionTimestamp
        )

    async def _drop_endpoint_nic(self, ns: str, name: str, uid: str, ifname: str) -> None:
        endpoint = await self._endpoint(ns, name)
        if endpoint is None or endpoint.get("status", {}).get("current", {}).get("uid") != uid:
            return
        current = endpoint["status"]["current"]
        current["ips"] = [e for e in current.get("ips") or [] if ifname and e.get("interface") != ifname]
        try:
            if current["ips"]:
                await self._write_endpoint(endpoint)
            else:
                API_WRITES.labels("delete_endpoint").inc()
                await self.client.delete(SpiderEndpoint, name, namespace=ns)
        except ApiError as exc:
            if exc.status.code not in (404, 409):
                raise

    # -------------------------------------------------------- check and gc
    def check(self, req: dict[str, Any]) -> None:
        uid, ifname = str(req.get("podUID", "")), str(req.get("ifName", ""))
        have = sorted(r["spec"]["ip"] for r in self.records_of(uid, ifname))
        want = sorted(str(a).split("/")[0] for a in req.get("ips") or [])
        if have != want:
            raise IPAMError(
                100,
                f"pod {req.get('podNamespace')}/{req.get('podName')} interface {ifname}: the runtime reports {want}"
                f" but spiderpool holds {have} for it",
                reason="check_mismatch",
                http=409,
            )

    async def gc(self, req: dict[str, Any]) -> dict[str, Any]:
        """CNI GC: release this node's records whose attachment the runtime no longer has and whose pod is gone."""
        valid = {(str(a.get("containerID")), str(a.get("ifname"))) for a in req.get("validAttachments") or []}
        released = []
        for record in list(self.records.items.values()):
            spec = record["spec"]
            if spec.get("node") != self.settings.node or (spec.get("containerID"), spec.get("interface")) in valid:
                continue
            pod = await self._pod(spec["namespace"], spec["pod"])
            if pod is not None and pod.uid == spec["podUID"] and pod.alive():
                continue
            if await self._statefulset_keeps(pod, spec["namespace"], spec["pod"], spec["podUID"]):
                continue
            await self._delete_record(spec["ip"], spec["podUID"])
            RELEASED_IPS.labels("cni_gc").inc()
            released.append(spec["ip"])
        return {"released": released}

    # -------------------------------------------------------------- events
    async def _event(self, ns: str, name: str, uid: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ev = Event.from_dict(
            {
                "metadata": {"generateName": f"{name}.", "namespace": ns},
                "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid},
                "reason": reason,
                "message": message[:1024],
                "type": "Warning",
                "source": {"component": "spiderpool-agent", "host": self.settings.node},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )
        try:
            await self.client.create(cast(Event, ev))
        except ApiError as exc:
            log.warning("event not recorded reason=%s error=%s", reason, exc)


def _reply(assigned: list[Assigned], routes: list[ann.Route], ifname: str) -> dict[str, Any]:
    return {
        "ips": [
            {"version": a.family, "address": a.cidr, "nic": ifname, "ipPool": a.pool, "gateway": a.gateway}
            for a in assigned
        ],
        "routes": [{"ifName": ifname, "dst": r.dst, "gw": r.gw} for r in routes],
    }
