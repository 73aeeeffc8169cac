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
import ipaddress
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, cast

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from spiderpool.agent.errors import USED_OUT, IPAMError, explain_api_error
from spiderpool.api import annotations as ann
from spiderpool.api.constants import LABEL_RECORD_POD_UID, LABEL_RECORD_POOL, name_label
from spiderpool.api.v2beta1 import API_VERSION
from spiderpool.ipam.allocate import (
    FREE,
    MINE,
    OTHER,
    Walker,
    eligible_nodes,
    held_back,
    prefix_of,
    record_name,
    usable,
)
from spiderpool.ipam.autopool import APP_KINDS, L_APP_UID, App, owned_by
from spiderpool.ipam.gc import statefulset_wants
from spiderpool.ipam.ranges import IPSet
from spiderpool.ipam.result import Assigned, routes_for
from spiderpool.ipam.selection import NetconfDefaults, PodContext, SelectionError, plan_nic
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.events import EventRecorder
from spiderpool.k8s.resources import SpiderEndpoint, SpiderIPAllocation
from spiderpool.k8s.rest import JOB, NAMESPACE, NODE, POD, REPLICASET, STATEFULSET, ApiError, Kind, Rest
from spiderpool.net import veth

log = logging.getLogger(__name__)

ALLOCATIONS = Counter("spiderpool_ipam_allocation_counts", "IP allocation requests")
ALLOCATION_FAILURES = Counter("spiderpool_ipam_allocation_failure_counts", "Failed allocations", ["reason"])
CONFLICTS = Counter("spiderpool_ipam_allocation_conflict_counts", "Record creates lost to another allocator")
RELEASES = Counter("spiderpool_ipam_release_counts", "IP release requests")
RELEASED_IPS = Counter("spiderpool_ipam_released_ip_counts", "IPs released", ["reason"])
API_WRITES = Counter("spiderpool_ipam_api_writes", "API writes made by the allocator", ["kind"])
ENDPOINTS_PENDING = Gauge("spiderpool_ipam_endpoint_sync_pending", "Pods whose SpiderEndpoint awaits a write")
LATENCY = Histogram(
    "spiderpool_ipam_allocation_duration_seconds",
    "Allocation latency at the agent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 10),
)

RELEASE_LATENCY = Histogram(
    "spiderpool_ipam_release_duration_seconds",
    "Release latency at the agent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 10),
)

RECORD, ENDPOINT = Kind.of(SpiderIPAllocation), Kind.of(SpiderEndpoint)

MAX_TRIES_PER_POOL = 64
#: concurrent SpiderEndpoint writers per agent
ENDPOINT_WORKERS = 4
#: how long an endpoint write may wait for a burst of allocations to pass
ENDPOINT_MAX_DELAY = 5.0


@dataclass(frozen=True)
class Settings:
    node: str
    ipv4: bool = True
    ipv6: bool = False
    #: the cluster network Multus uses when a pod names no default network (for ``multusName``)
    cluster_network: str = ""
    #: how long an ADD waits for the controller to create or grow a pod's auto-pool
    auto_pool_wait: float = 30.0
    #: how long an address another host turned out to use is held for nobody
    conflict_quarantine: float = 600.0


@dataclass
class PodView:
    obj: dict[str, Any]
    owner_kind: str = ""
    owner_name: str = ""
    owner_uid: str = ""

    @property
    def meta(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.obj["metadata"])

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])

    def alive(self) -> bool:
        phase = self.obj.get("status", {}).get("phase")
        return not self.meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class Allocator:
    client: Rest
    settings: Settings
    pools: WatchCache
    reserved: WatchCache
    records: WatchCache
    #: this node's pods, all namespaces and this node (optional: without them the agent reads the API)
    pods: WatchCache | None = None
    namespaces: WatchCache | None = None
    nodes: WatchCache | None = None
    subnets: WatchCache | None = None
    #: IPs with a record (from the watch) or being created by this agent right now
    used: set[str] = field(default_factory=set)
    inflight: set[str] = field(default_factory=set)
    by_uid: dict[str, set[str]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: pods whose endpoint needs a sync (key -> uid), oldest first, drained by a few workers
    _endpoint_dirty: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (uid, queued at)
    _allocating: int = 0
    _quiet: asyncio.Event = field(default_factory=_set_event)  # no allocation in progress
    _flushing: bool = False
    _endpoint_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _endpoint_workers: list[asyncio.Task[None]] = field(default_factory=list)
    _endpoint_active: int = 0
    _endpoint_idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.recorder = EventRecorder(self.client, "spiderpool-agent", self.settings.node)
        self.records.listeners.append(self._on_record)
        self._walker = Walker(self.settings.node)
        self._top_owners: dict[str, tuple[str, str, str]] = {}
        self._pools_changed = asyncio.Event()
        self.pools.listeners.append(lambda *_: self._pools_changed.set())
        self.records.listeners.append(lambda *_: self._pools_changed.set())
        self._record_index: dict[str, tuple[str, str, str]] = {}  # record -> (pod uid, pool, node)
        self._eligible_cache: dict[tuple[str, str, int], list[str]] = {}
        #: pool -> node -> how many of the pool's addresses the node's pods hold
        self._pool_nodes: dict[str, dict[str, int]] = {}
        self._nodes_generation = 0
        if self.nodes is not None:
            self.nodes.listeners.append(self._on_node)

    def _on_record(self, _kind: str, key: str, obj: dict[str, Any]) -> None:
        spec = obj.get("spec", {})
        ip, uid = str(spec.get("ip", "")), str(spec.get("podUID", ""))
        old = self._record_index.pop(key, None)
        if old is not None:  # undo what the previous version of this record counted
            old_uid, old_pool, old_node = old
            keys = self.by_uid.get(old_uid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_uid[old_uid]
            counts = self._pool_nodes.get(old_pool, {})
            counts[old_node] = counts.get(old_node, 1) - 1
            if counts[old_node] <= 0:
                counts.pop(old_node, None)
        if key in self.records.items:
            self.used.add(ip)
            pool, node = str(spec.get("pool", "")), str(spec.get("node", ""))
            self._record_index[key] = (uid, pool, node)
            self.by_uid.setdefault(uid, set()).add(key)
            counts = self._pool_nodes.setdefault(pool, {})
            counts[node] = counts.get(node, 0) + 1
        else:
            self.used.discard(ip)

    def _on_node(self, _kind: str, _key: str, _obj: dict[str, Any]) -> None:
        self._nodes_generation += 1

    def caches(self) -> list[WatchCache]:
        caches = (self.pools, self.reserved, self.records, self.pods, self.namespaces, self.nodes, self.subnets)
        return [c for c in caches if c]

    def ready(self) -> bool:
        return all(c.synced.is_set() for c in self.caches())

    def _pod_lock(self, key: str) -> asyncio.Lock:
        # ADD and DEL of one pod never interleave within this agent.
        return self._locks.setdefault(key, asyncio.Lock())

    # ------------------------------------------------------------ reads
    async def _pod(self, namespace: str, name: str, *, fresh: bool = False) -> PodView | None:
        """The pod from the watch cache, or from the API when asked for ``fresh`` or not cached yet."""
        pod = None if fresh or self.pods is None else self.pods.get(f"{namespace}/{name}")
        if pod is None:
            try:
                pod = await self.client.get(POD, name, namespace)
            except ApiError as exc:
                if exc.code == 404:
                    return None
                raise
        view = PodView(pod)
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                view.owner_kind, view.owner_name = str(ref["kind"]), str(ref["name"])
                view.owner_uid = str(ref.get("uid", ""))
        return view

    async def _object(self, cache: WatchCache | None, res: Kind, name: str) -> dict[str, Any]:
        obj = cache.get(name) if cache is not None else None
        if obj is None:
            try:
                obj = await self.client.get(res, name)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                obj = {"metadata": {"name": name}}
        return obj

    def _reserved_by_name(self) -> dict[str, IPSet]:
        out = {}
        for name, r in self.reserved.items.items():
            spec = r.get("spec", {})
            ips = spec.get("ips") or []
            family = spec.get("ipVersion") or (6 if ips and ":" in str(ips[0]) else 4)
            try:
                out[name] = IPSet.parse(int(family), ips)
            except ValueError:
                continue
        return out

    def _reserved_sets(self) -> list[IPSet]:
        return list(self._reserved_by_name().values())

    def records_of(self, uid: str, ifname: str | None = None) -> list[dict[str, Any]]:
        out = []
        for key in self.by_uid.get(uid, ()):
            r = self.records.items.get(key)
            if r is not None and (ifname is None or r["spec"].get("interface") == ifname):
                out.append(r)
        return out

    # ------------------------------------------------------------ allocate
    async def allocate(self, req: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        ALLOCATIONS.inc()
        ns, name, ifname = str(req.get("podNamespace", "")), str(req.get("podName", "")), str(req.get("ifName", ""))
        self._allocating += 1
        self._quiet.clear()
        try:
            async with self._pod_lock(f"{ns}/{name}"):
                reply = await self._allocate(req, ns, name, ifname)
            LATENCY.observe(time.monotonic() - started)
            return reply
        except (IPAMError, ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            err = _as_ipam_error(exc, f"pod {ns}/{name}", self.settings.node).prefixed()
            ALLOCATION_FAILURES.labels(err.reason).inc()
            if err.reason not in ("pod_gone",):
                await self._event(ns, name, str(req.get("podUID", "")), "IPAllocationFailed", err.msg)
            raise err from None
        finally:
            self._allocating -= 1
            if not self._allocating:
                self._quiet.set()

    async def _allocate(self, req: dict[str, Any], ns: str, name: str, ifname: str) -> dict[str, Any]:
        pod = await self._pod(ns, name)
        if pod is not None and req.get("podUID") and pod.uid != req["podUID"]:
            pod = await self._pod(ns, name, fresh=True)  # the cache may lag a re-created pod
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
        for warning in pod_ann.warnings:  # upstream ignores unknown keys silently; we allocate, and say so
            await self._event(ns, name, pod.uid, "UnknownAnnotationKey", warning)

        # What the pod already holds for this NIC (a repeated ADD, a new sandbox, an ADD whose reply was
        # lost, a StatefulSet pod re-created under its name) is returned, never allocated twice.
        held = self.records_of(pod.uid, ifname)
        if not held and pod.owner_kind == "StatefulSet":
            held = await self._adopt_statefulset(pod, ifname, req)
        if held:
            reused = [self._assigned(self.pools.items.get(r["spec"]["pool"]), r["spec"], ifname) for r in held]
            clean = bool(held[0]["spec"].get("cleanGateway"))
            routes = routes_for(reused, pod_ann.routes, clean_gateway=clean)
            self._sync_endpoint_later(pod)
            return _reply(reused, routes, ifname)

        app = None
        if pod_ann.subnets or self._names_subnets(pod_ann.ippool):
            app = await self._app_of(pod)
            pod_ann = await self._with_auto_pools(pod, pod_ann, app, ifname)
        ctx = await self._context(pod, pod_ann, app)
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
        try:
            for cand in plan.families:
                assigned.append(
                    await self._take(cand.family, cand.pools, pod, ifname, req, cand.rejected, plan.clean_gateway)
                )
        except IPAMError:
            for a in assigned:  # all families or none
                await self._delete_record(a.ip, pod.uid)
            raise
        routes = routes_for(assigned, pod_ann.routes, clean_gateway=plan.clean_gateway)
        self._sync_endpoint_later(pod)
        log.info(
            "allocated pod=%s/%s uid=%s nic=%s ips=%s",
            ns,
            name,
            pod.uid,
            ifname,
            ",".join(f"{a.ip}({a.pool})" for a in assigned),
        )
        return _reply(assigned, routes, ifname)

    # ------------------------------------------------------- auto-pools
    def _names_subnets(self, choice: ann.PoolChoice | None) -> bool:
        """``ippool`` naming SpiderSubnets, not pools (the reference walkthrough's form): the controller
        serves it as the ``subnet`` annotation, and so does the agent."""
        if choice is None or self.subnets is None:
            return False
        names = [*choice.ipv4, *choice.ipv6]
        return bool(names) and all(n in self.subnets.items and n not in self.pools.items for n in names)

    async def _app_of(self, pod: PodView) -> App:
        """The application whose auto-pool serves the pod: its top controller."""
        ns = pod.meta["namespace"]
        kind, name, uid = pod.owner_kind, pod.owner_name, pod.owner_uid
        if kind in ("ReplicaSet", "Job"):
            key = f"{kind}/{ns}/{name}/{uid}"
            if key not in self._top_owners:
                res = REPLICASET if kind == "ReplicaSet" else JOB
                try:
                    parent = await self.client.get(res, name, ns)
                except ApiError as exc:
                    raise IPAMError(
                        11, f"pod {ns}/{pod.meta['name']}: its {kind} {name} cannot be read: {exc}", reason="api_error"
                    ) from None
                top = (kind, name, uid)
                for ref in parent["metadata"].get("ownerReferences") or []:
                    if ref.get("controller") and ref.get("kind") in ("Deployment", "CronJob"):
                        top = (str(ref["kind"]), str(ref["name"]), str(ref.get("uid", "")))
                self._top_owners[key] = top
            kind, name, uid = self._top_owners[key]
        if kind not in APP_KINDS:
            raise IPAMError(
                7,
                f"pod {ns}/{pod.meta['name']}: the subnet annotations give auto-pools to applications (Deployment, "
                "ReplicaSet, StatefulSet, DaemonSet, Job, CronJob); this pod has none, so name a pool with "
                "ipam.spidernet.io/ippool instead",
                reason="bad_annotation",
                http=400,
            )
        return App(kind, ns, name, uid)

    async def _with_auto_pools(
        self, pod: PodView, pod_ann: ann.PodAnnotations, app: App, ifname: str
    ) -> ann.PodAnnotations:
        if pod_ann.subnets:
            choice = next((c for c in pod_ann.subnets if c.interface == ifname), None)
            if choice is None:
                return replace(pod_ann, subnets=())  # no auto-pool for this NIC: the other sources decide
        else:
            assert pod_ann.ippool is not None
            choice = ann.PoolChoice(ifname, pod_ann.ippool.ipv4[:1], pod_ann.ippool.ipv6[:1])
        names: dict[int, tuple[str, ...]] = {4: (), 6: ()}
        for family, subnets in ((4, choice.ipv4), (6, choice.ipv6)):
            if subnets and (self.settings.ipv4 if family == 4 else self.settings.ipv6):
                names[family] = (await self._auto_pool(pod, app, ifname, family, subnets[0]),)
        auto = ann.PoolChoice(ifname, names[4], names[6])
        return replace(pod_ann, ippool=None, ippools=(), auto_pools=(auto,))

    def _find_auto_pool(self, app: App, ifname: str, family: int) -> dict[str, Any] | None:
        for pool in self.pools.items.values():
            labels = pool["metadata"].get("labels") or {}
            if (
                owned_by(pool, app, ifname, family)
                and labels.get(L_APP_UID) == app.uid
                and not pool["metadata"].get("deletionTimestamp")
            ):
                return pool
        return None

    def _has_free(self, pool: dict[str, Any]) -> bool:
        space = usable(pool, self._reserved_sets())
        return any(str(ip) not in self.used and str(ip) not in self.inflight for ip in space)

    async def _auto_pool(self, pod: PodView, app: App, ifname: str, family: int, subnet: str) -> str:
        """The name of the pod's auto-pool, once the controller has made it ready (bounded wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.auto_pool_wait
        while True:
            pool = self._find_auto_pool(app, ifname, family)
            if pool is not None and self._has_free(pool):
                return str(pool["metadata"]["name"])
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._pools_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pools_changed.wait(), remaining)
        if pool is not None:
            return str(pool["metadata"]["name"])  # full: the allocation explains that it is used up
        raise IPAMError(
            11,
            f"pod {pod.meta['namespace']}/{pod.meta['name']}: the IPv{family} auto-pool of {app.describe()} for "
            f"interface {ifname} (from SpiderSubnet {subnet}) is not there after {self.settings.auto_pool_wait:.0f}s;"
            " is spiderpool-controller running? See the events of the application",
            reason="auto_pool_not_ready",
            http=503,
        )

    async def _context(self, pod: PodView, pod_ann: ann.PodAnnotations, app: App | None = None) -> PodContext:
        ns = pod.meta["namespace"]
        nsobj = await self._object(self.namespaces, NAMESPACE, ns)
        node_name = pod.obj.get("spec", {}).get("nodeName") or self.settings.node
        node = await self._object(self.nodes, NODE, node_name)
        try:
            ns_defaults = ann.parse_namespace_defaults(nsobj["metadata"].get("annotations"))
        except ann.AnnotationError as exc:
            raise IPAMError(7, f"namespace {ns}: {exc}", reason="bad_annotation", http=400) from None
        return PodContext(
            namespace=ns,
            name=pod.meta["name"],
            # an auto-pool's podAffinity names the pod's application, not its labels
            labels={**(pod.meta.get("labels") or {}), **(app.pod_labels() if app else {})},
            node=node_name,
            node_labels=node["metadata"].get("labels") or {},
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
        clean: bool,
    ) -> Assigned:
        reasons = [f"{n}: {r}" for n, r in rejected]
        reserved_by_name = self._reserved_by_name()
        reserved = list(reserved_by_name.values())
        for pool_name in pool_names:
            pool = self.pools.get(pool_name)
            if pool is None:
                reasons.append(f"{pool_name}: no such SpiderIPPool")
                continue
            space = usable(pool, reserved)
            tries = 0
            eligible = self._eligible(pool)
            active = self._pool_nodes.get(pool_name, {}).keys()
            for ip in self._walker.candidates(pool_name, space, self._held_by, eligible, active):
                tries += 1
                if tries > MAX_TRIES_PER_POOL:
                    break
                self.inflight.add(ip)
                try:
                    if await self._create_record(ip, pool_name, family, pod, ifname, req, clean):
                        return self._assigned(pool, {"ip": ip, "pool": pool_name, "ipVersion": family}, ifname)
                finally:
                    self.inflight.discard(ip)
            if tries == 0 or all(str(ip) in self.used for ip in space):
                # (all() stops at the first free address: it costs at most the number of used ones)
                reasons.append(
                    f"{pool_name}: {USED_OUT}: all {space.count()} usable IPs are allocated (the pool is used up)"
                    + held_back(pool, reserved_by_name)
                )
            else:
                reasons.append(f"{pool_name}: every free IP was taken concurrently; retry")
        who = f"pod {pod.meta['namespace']}/{pod.meta['name']}"
        raise IPAMError(
            100,
            f"no IPv{family} address for interface {ifname} of {who}: " + "; ".join(reasons),
            reason="ip_used_out",
            http=409,
        )

    def _eligible(self, pool: dict[str, Any]) -> list[str]:
        """The nodes the pool serves (see ``Walker``), recomputed when the pool or a node changes."""
        if self.nodes is None:
            return []
        key = (pool["metadata"]["name"], pool["metadata"].get("resourceVersion", ""), self._nodes_generation)
        if key not in self._eligible_cache:
            if len(self._eligible_cache) > 1024:
                self._eligible_cache.clear()
            labels = {name: n["metadata"].get("labels") or {} for name, n in self.nodes.items.items()}
            self._eligible_cache[key] = eligible_nodes(pool, labels)
        return self._eligible_cache[key]

    def _held_by(self, ip: str) -> int:
        if ip in self.inflight:
            return MINE
        if ip not in self.used:
            return FREE
        record = self.records.items.get(record_name(ip))
        # (a create just lost to another agent leaves the IP used but not yet in the cache: OTHER)
        return MINE if record is not None and record["spec"].get("node") == self.settings.node else OTHER

    @staticmethod
    def _assigned(pool: dict[str, Any] | None, record: dict[str, Any], ifname: str) -> Assigned:
        spec = (pool or {}).get("spec", {})
        routes = tuple(ann.Route(r["dst"], r["gw"]) for r in spec.get("routes") or [])
        prefix = prefix_of(pool) if pool else (32 if int(record["ipVersion"]) == 4 else 128)
        return Assigned(
            ifname,
            int(record["ipVersion"]),
            str(record["ip"]),
            prefix,
            str(record["pool"]),
            spec.get("gateway"),
            routes,
        )

    async def _create_record(
        self, ip: str, pool: str, family: int, pod: PodView, ifname: str, req: dict[str, Any], clean: bool
    ) -> bool:
        body = {
            "apiVersion": API_VERSION,
            "kind": "SpiderIPAllocation",
            "metadata": {
                "name": record_name(ip),
                "labels": {LABEL_RECORD_POOL: name_label(pool), LABEL_RECORD_POD_UID: pod.uid},
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
                "cleanGateway": clean,
                "ownerKind": pod.owner_kind,
                "ownerName": pod.owner_name,
            },
        }
        try:
            created = await self.client.create(RECORD, body)
        except ApiError as exc:
            if exc.code == 409:
                CONFLICTS.inc()
                self.used.add(ip)  # someone else holds it; our watch will confirm
                return False
            raise
        finally:
            API_WRITES.labels("create_record").inc()
        self.records.apply_local(created)
        return True

    async def quarantine(self, ip: str, uid: str, reason: str, seconds: float) -> None:
        """Take ``ip`` from pod ``uid`` but hold it for nobody until the controller frees it (see GC)."""
        record = self.records.get(record_name(ip))
        if record is None or record["spec"].get("podUID") != uid:
            return
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        spec = {**record["spec"], "podUID": "", "quarantineUntil": until.strftime("%Y-%m-%dT%H:%M:%SZ")}
        spec["releaseReason"] = reason
        labels = {**(record["metadata"].get("labels") or {}), LABEL_RECORD_POD_UID: ""}
        body = {**record, "metadata": {**record["metadata"], "labels": labels}, "spec": spec}
        API_WRITES.labels("update_record").inc()
        self.records.apply_local(await self.client.replace(RECORD, body))
        RELEASED_IPS.labels(reason).inc()
        log.warning("ip quarantined ip=%s uid=%s reason=%s until=%s", ip, uid, reason, spec["quarantineUntil"])

    async def release_nic(self, uid: str, ifname: str, reason: str = "detect_gateway") -> None:
        for r in self.records_of(uid, ifname):
            if await self._delete_record(r["spec"]["ip"], uid):
                RELEASED_IPS.labels(reason).inc()

    async def quarantine_conflict(self, ip: str, uid: str, ifname: str, seconds: float | None = None) -> None:
        """``ip`` turned out to be another host's: hold it for nobody, and free the NIC's other
        addresses, so the runtime's retry gets a whole new set (never a NIC missing a family)."""
        await self.quarantine(ip, uid, "ip_conflict", self.settings.conflict_quarantine if seconds is None else seconds)
        await self.release_nic(uid, ifname, reason="ip_conflict_sibling")

    async def _delete_record(self, ip: str, uid: str) -> bool:
        """Delete the record of ``ip`` only if pod ``uid`` holds it (never another pod's address)."""
        name = record_name(ip)
        cached = self.records.get(name)
        if cached is not None and cached.get("spec", {}).get("podUID") != uid:
            return False
        try:
            API_WRITES.labels("delete_record").inc()
            await self.client.delete(RECORD, name)
        except ApiError as exc:
            if exc.code != 404:
                raise
        self.records.apply_local(None, key=name)
        return True

    async def _adopt_statefulset(self, pod: PodView, ifname: str, req: dict[str, Any]) -> list[dict[str, Any]]:
        """Move the records of a StatefulSet pod's predecessor (same name, old uid) to this pod."""
        ns, name = pod.meta["namespace"], pod.meta["name"]
        old = [
            r
            for r in self.records.items.values()
            if r["spec"].get("namespace") == ns
            and r["spec"].get("pod") == name
            and r["spec"].get("interface") == ifname
            and r["spec"].get("ownerKind") == "StatefulSet"
            and not r["spec"].get("quarantineUntil")  # taken back by the garbage collector: nobody's
        ]
        adopted = []
        for record in old:
            record = dict(record)
            record["spec"] = {
                **record["spec"],
                "podUID": pod.uid,
                "node": self.settings.node,
                "containerID": str(req.get("containerID", "")),
            }
            labels = {**record["metadata"].get("labels", {}), LABEL_RECORD_POD_UID: pod.uid}
            record["metadata"] = {**record["metadata"], "labels": labels}
            API_WRITES.labels("update_record").inc()
            updated = await self.client.replace(RECORD, record)
            self.records.apply_local(updated)
            adopted.append(updated)
        if adopted:
            log.info(
                "StatefulSet pod keeps its IPs pod=%s/%s uid=%s ips=%s",
                ns,
                name,
                pod.uid,
                ",".join(r["spec"]["ip"] for r in adopted),
            )
        return adopted

    # ------------------------------------------------------------ endpoint
    async def resync_endpoints(self) -> None:
        """After a (re)start: write the endpoints of this node's records that an earlier run left unwritten."""
        for c in (self.records, self.pools):
            await c.synced.wait()
        pods = {
            (r["spec"]["namespace"], r["spec"]["pod"], r["spec"]["podUID"])
            for r in self.records.items.values()
            if r["spec"].get("node") == self.settings.node
        }
        for ns, name, uid in pods:
            self._mark_endpoint(f"{ns}/{name}", uid)

    def _mark_endpoint(self, key: str, uid: str) -> None:
        queued = self._endpoint_dirty.get(key)
        # (a pod already queued keeps its place and age; the latest uid wins)
        self._endpoint_dirty[key] = (uid, queued[1] if queued else time.monotonic())
        ENDPOINTS_PENDING.set(len(self._endpoint_dirty) + self._endpoint_active)
        self._endpoint_idle.clear()
        self._endpoint_wake.set()
        if not self._endpoint_workers:
            # A few workers, not a task per pod: a burst of allocations must not open a burst of
            # API connections (each one a TLS handshake on both sides).
            self._endpoint_workers = [asyncio.create_task(self._endpoint_worker()) for _ in range(ENDPOINT_WORKERS)]

    def _sync_endpoint_later(self, pod: PodView) -> None:
        """Bring the pod's SpiderEndpoint in line with its records, off the reply path.

        The endpoint is derived from the records (the source of truth), so writing it after replying
        loses nothing: a crash before the write is repaired by the resync at the next start.
        """
        self._mark_endpoint(f"{pod.meta['namespace']}/{pod.meta['name']}", pod.uid)

    async def _endpoint_worker(self) -> None:
        while True:
            if not self._endpoint_dirty:
                if self._endpoint_active == 0:
                    self._endpoint_idle.set()
                self._endpoint_wake.clear()
                await self._endpoint_wake.wait()
                continue
            key = next(iter(self._endpoint_dirty))
            uid, queued = self._endpoint_dirty[key]
            wait = queued + ENDPOINT_MAX_DELAY - time.monotonic()
            if self._allocating and wait > 0 and not self._flushing:
                # Allocations first: they hold up pod start-up, while an endpoint is a view of the
                # records that may trail them a little. Under a burst this halves the API writes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._quiet.wait(), wait)
                continue
            del self._endpoint_dirty[key]
            self._endpoint_active += 1
            try:
                async with self._pod_lock(key):
                    await self._sync_endpoint(key, uid)
            except Exception as exc:
                log.warning("endpoint sync failed pod=%s error=%s", key, exc)
            finally:
                self._endpoint_active -= 1
                ENDPOINTS_PENDING.set(len(self._endpoint_dirty) + self._endpoint_active)

    async def _sync_endpoint(self, key: str, uid: str) -> None:
        ns, name = key.split("/", 1)
        held = self.records_of(uid)
        if not held:
            await self._drop_endpoint(ns, name, uid)
            return
        nics: dict[str, dict[str, Any]] = {}
        for r in sorted(held, key=lambda r: (r["spec"]["interface"], r["spec"]["ipVersion"])):
            spec = r["spec"]
            pool = self.pools.get(spec["pool"])
            a = self._assigned(pool, spec, spec["interface"])
            entry = nics.setdefault(
                spec["interface"], {"interface": spec["interface"], "cleanGateway": bool(spec.get("cleanGateway"))}
            )
            v = "ipv4" if a.family == 4 else "ipv6"
            entry[v], entry[f"{v}Pool"] = a.cidr, a.pool
            if a.gateway:
                entry[f"{v}Gateway"] = a.gateway
            if a.pool_routes:
                entry["routes"] = [{"dst": x.dst, "gw": x.gw} for x in a.pool_routes]
        first = held[0]["spec"]
        owner_kind, owner_name = first.get("ownerKind") or "Pod", first.get("ownerName") or name
        if owner_kind == "ReplicaSet":
            owner_kind, owner_name = await self._top_owner(ns, owner_kind, owner_name)
        status = {
            "current": {"uid": uid, "node": first.get("node") or self.settings.node, "ips": list(nics.values())},
            "ownerControllerType": owner_kind,
            "ownerControllerName": owner_name,
        }
        # A StatefulSet pod's endpoint outlives the pod, for its successor; any other dies with its pod.
        refs = (
            []
            if first.get("ownerKind") == "StatefulSet"
            else [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]
        )
        body = {
            "apiVersion": API_VERSION,
            "kind": "SpiderEndpoint",
            "metadata": {"name": name, "namespace": ns, "ownerReferences": refs},
            "status": status,
        }
        try:
            # Create first: the usual case (a new pod) costs one write and no read.
            API_WRITES.labels("create_endpoint").inc()
            await self.client.create(ENDPOINT, body)
            return
        except ApiError as exc:
            if exc.code != 409:
                raise
        current = await self.client.get(ENDPOINT, name, ns)
        if current.get("status") == status and current["metadata"].get("ownerReferences", []) == refs:
            return
        current["status"] = status
        current["metadata"]["ownerReferences"] = refs
        API_WRITES.labels("update_endpoint").inc()
        await self.client.replace(ENDPOINT, current)

    async def _drop_endpoint(self, ns: str, name: str, uid: str) -> None:
        """Delete the pod's endpoint once it holds nothing (never another incarnation's endpoint)."""
        try:
            current = await self.client.get(ENDPOINT, name, ns)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        if current.get("status", {}).get("current", {}).get("uid") not in (uid, None):
            return
        API_WRITES.labels("delete_endpoint").inc()
        try:
            await self.client.delete(ENDPOINT, name, ns)
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def _top_owner(self, ns: str, kind: str, name: str) -> tuple[str, str]:
        try:
            rs = await self.client.get(REPLICASET, name, ns)
        except ApiError:
            return kind, name
        for ref in rs["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                return str(ref["kind"]), str(ref["name"])
        return kind, name

    async def flush_endpoints(self) -> None:
        """Wait for pending endpoint writes (tests and shutdown)."""
        if self._endpoint_workers:
            self._flushing = True
            self._quiet.set()  # wake workers deferring to allocations
            try:
                await self._endpoint_idle.wait()
            finally:
                self._flushing = False
                if self._allocating:
                    self._quiet.clear()

    def stop_endpoint_workers(self) -> None:
        for task in self._endpoint_workers:
            task.cancel()
        self._endpoint_workers = []

    # ------------------------------------------------------------- release
    async def release(self, req: dict[str, Any]) -> dict[str, Any]:
        RELEASES.inc()
        ns, name, ifname = str(req.get("podNamespace", "")), str(req.get("podName", "")), str(req.get("ifName", ""))
        with RELEASE_LATENCY.time():
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
        pod = None
        if ns and name:
            pod = await self._pod(ns, name)
            if pod is None or pod.alive():
                pod = await self._pod(ns, name, fresh=True)  # only a terminating pod is trusted from the cache
        if pod is not None and not uid:
            uid = pod.uid
        # An IPv6 address the kernel's duplicate address detection refused is someone else's: it must
        # not come back to this pod on the runtime's retry, nor go to the next pod.
        refused = await self._quarantine_refused(req, uid, ifname)
        if pod is not None and pod.uid == uid and pod.alive():
            # The pod lives on (a retried ADD, a new sandbox): its addresses stay with it.
            return {"released": [], "quarantined": refused, "kept": "pod is alive"}
        if not uid:
            released = await self._end_quarantine(container, ns, name, ifname)
            return {"released": released, "kept": "" if released else "nothing recorded for this container"}
        if await self._statefulset_keeps(pod, ns, name, uid):
            return {"released": [], "kept": "StatefulSet pod keeps its IPs for its successor"}
        released = []
        for r in self.records_of(uid, ifname or None):
            if await self._delete_record(r["spec"]["ip"], uid):
                released.append(r["spec"]["ip"])
                RELEASED_IPS.labels("cni_del").inc()
        released += await self._end_quarantine(container, ns, name, ifname)
        self._mark_endpoint(f"{ns}/{name}", uid)
        if released:
            log.info("released pod=%s/%s uid=%s nic=%s ips=%s", ns, name, uid, ifname, ",".join(released))
        return {"released": released}

    async def _end_quarantine(self, container: str, ns: str, name: str, ifname: str) -> list[str]:
        """The controller quarantines the address of a pod that went without its sandbox being torn
        down (force-deleted, on a lost node), in case that sandbox still runs. This DEL is that sandbox
        going: its addresses are free now, not when the quarantine ends. (Never an address another host
        uses: ``ip_conflict``.)"""
        out = []
        for key in list(self.by_uid.get("", ())):  # quarantined records hold no pod
            record = self.records.items.get(key)
            spec = (record or {}).get("spec", {})
            if record is None or not container or spec.get("containerID") != container:
                continue
            if (spec.get("namespace"), spec.get("pod")) != (ns, name) or (ifname and spec.get("interface") != ifname):
                continue
            if not spec.get("quarantineUntil") or spec.get("releaseReason") == "ip_conflict":
                continue
            meta = record["metadata"]
            options = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
            try:
                API_WRITES.labels("delete_record").inc()
                await self.client.request(
                    "DELETE",
                    RECORD.path(None, key),
                    {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": options},
                )
            except ApiError as exc:
                if exc.code in (404, 409):  # gone already, or changed meanwhile: leave it to the controller
                    continue
                raise
            self.records.apply_local(None, key=key)
            RELEASED_IPS.labels("quarantine_ended_by_del").inc()
            log.info("quarantine ended by DEL ip=%s pod=%s/%s container=%s", spec["ip"], ns, name, container[:12])
            out.append(str(spec["ip"]))
        return out

    async def _quarantine_refused(self, req: dict[str, Any], uid: str, ifname: str) -> list[str]:
        netns = str(req.get("netNamespace") or "")
        mine = {str(ipaddress.ip_address(r["spec"]["ip"])): r for r in self.records_of(uid, ifname or None)}
        if not netns or not ifname or not uid or not any(":" in ip for ip in mine):
            return []  # only IPv6 addresses go through the kernel's duplicate address detection
        out = []
        for ip in await asyncio.to_thread(veth.dad_failed, netns, ifname):
            record = mine.get(str(ipaddress.ip_address(ip)))
            if record is not None:
                await self.quarantine_conflict(record["spec"]["ip"], uid, ifname)
                out.append(ip)
        return out

    async def _statefulset_keeps(self, pod: PodView | None, ns: str, name: str, uid: str) -> bool:
        owner_kind, owner_name = (pod.owner_kind, pod.owner_name) if pod else ("", "")
        if not owner_kind:
            rec = next(iter(self.records_of(uid)), None)
            if rec is not None:
                owner_kind, owner_name = rec["spec"].get("ownerKind", ""), rec["spec"].get("ownerName", "")
        if owner_kind != "StatefulSet" or not owner_name:
            return False
        try:
            sts = await self.client.get(STATEFULSET, owner_name, ns)
            namespace = await self.client.get(NAMESPACE, ns)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        if namespace["metadata"].get("deletionTimestamp"):
            return False  # the whole namespace is going: no successor will come
        return statefulset_wants(sts, name)

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
            if spec.get("quarantineUntil"):
                continue  # the controller's to free
            pod = await self._pod(spec["namespace"], spec["pod"], fresh=True)
            if pod is not None and pod.uid == spec["podUID"] and pod.alive():
                continue
            if await self._statefulset_keeps(pod, spec["namespace"], spec["pod"], spec["podUID"]):
                continue
            if await self._delete_record(spec["ip"], spec["podUID"]):
                RELEASED_IPS.labels("cni_gc").inc()
                released.append(spec["ip"])
        return {"released": released}

    # -------------------------------------------------------------- events
    async def _event(self, ns: str, name: str, uid: str, reason: str, message: str) -> None:
        involved = {"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid}
        await self.recorder.emit(involved, "Warning", reason, message)


def _as_ipam_error(exc: Exception, who: str, node: str) -> IPAMError:
    if isinstance(exc, IPAMError):
        return exc
    if isinstance(exc, ApiError):
        return explain_api_error(exc, who)
    return IPAMError(
        11,
        f"{who}: spiderpool-agent on node {node} cannot reach the Kubernetes API ({exc!r}); the runtime retries",
        reason="api_unreachable",
        http=503,
    )


def _reply(assigned: list[Assigned], routes: list[ann.Route], ifname: str) -> dict[str, Any]:
    return {
        "ips": [
            {"version": a.family, "address": a.cidr, "nic": ifname, "ipPool": a.pool, "gateway": a.gateway}
            for a in assigned
        ],
        "routes": [{"ifName": ifname, "dst": r.dst, "gw": r.gw} for r in routes],
    }
