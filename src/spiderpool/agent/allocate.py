"""An ADD: the pure selection and candidate logic of ``spiderpool.ipam``, with the API at the edges.

The path of one allocation, top-down: ``allocate`` -> ``_allocate`` (the pod, its annotations,
what it already holds) -> auto-pools (wait for the controller) -> ``plan_nic`` (which pools) ->
``_take`` per family (walk the candidates, ``Records.create`` until one is ours). An allocation is
the creation of a record named after the IP: the apiserver refuses a second object of that name,
so no address can be held twice whatever the agents do concurrently; an agent that loses a race
moves to its next candidate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import aiohttp

from spiderpool.agent.endpoints import Activity, EndpointWriter
from spiderpool.agent.errors import AUTO_POOL_OFF, USED_OUT, IPAMError, as_ipam_error
from spiderpool.agent.events import PodEvents
from spiderpool.agent.metrics import ALLOCATION_FAILURES, ALLOCATIONS, LATENCY
from spiderpool.agent.pods import Objects, PodLocks, PodView
from spiderpool.agent.records import Records
from spiderpool.agent.settings import Settings
from spiderpool.api import annotations as ann
from spiderpool.api.objects import Record, RecordSpec
from spiderpool.ipam.allocate import Walker, eligible_nodes, held_back, usable
from spiderpool.ipam.autopool import L_APP_UID, App, owned_by
from spiderpool.ipam.moves import move_reason, split_predecessors
from spiderpool.ipam.ranges import IPSet
from spiderpool.ipam.result import Assigned, assigned_from, routes_for
from spiderpool.ipam.selection import NetconfDefaults, NicPlan, PodContext, SelectionError, plan_nic
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError
from spiderpool.k8s.kinds import NAMESPACE, NODE
from spiderpool.k8s.retry import wait_event

log = logging.getLogger(__name__)

MAX_TRIES_PER_POOL = 64
#: pools and nodes -> eligible nodes, cached per resourceVersion (cleared past this size)
ELIGIBLE_CACHE_MAX = 1024


def reserved_by_name(reserved: WatchCache) -> dict[str, IPSet]:
    """Each SpiderReservedIP's addresses."""
    out = {}
    for name, r in reserved.items.items():
        spec = r.get("spec", {})
        ips = spec.get("ips") or []
        family = spec.get("ipVersion") or (6 if ips and ":" in str(ips[0]) else 4)
        try:
            out[name] = IPSet.parse(int(family), ips)
        except ValueError:
            continue
    return out


class Allocator:
    def __init__(
        self,
        settings: Settings,
        *,
        records: Records,
        objects: Objects,
        endpoints: EndpointWriter,
        events: PodEvents,
        locks: PodLocks,
        activity: Activity,
        pools: WatchCache,
        reserved: WatchCache,
        subnets: WatchCache | None = None,
    ) -> None:
        self.settings = settings
        self.records, self.objects, self.endpoints, self.events = records, objects, endpoints, events
        self.locks, self.activity = locks, activity
        self.pools, self.reserved, self.subnets = pools, reserved, subnets
        self._walker = Walker(settings.node)
        self._eligible_cache: dict[tuple[str, str, int], list[str]] = {}
        self._nodes_generation = 0
        if objects.nodes is not None:
            objects.nodes.listeners.append(self._on_node)
        self._pools_changed = asyncio.Event()
        pools.listeners.append(self._on_pool)
        records.cache.listeners.append(lambda *_: self._pools_changed.set())

    def _on_pool(self, _kind: str, key: str, _obj: dict[str, Any]) -> None:
        self._pools_changed.set()
        if key not in self.pools.items:
            self.records.unserve(key)

    def _on_node(self, _kind: str, _key: str, _obj: dict[str, Any]) -> None:
        self._nodes_generation += 1

    async def allocate(self, req: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        ALLOCATIONS.inc()
        ns, name, ifname = str(req.get("podNamespace", "")), str(req.get("podName", "")), str(req.get("ifName", ""))
        try:
            with self.activity.busy():
                async with self.locks.hold(f"{ns}/{name}"):
                    reply = await self._allocate(req, ns, name, ifname)
            LATENCY.observe(time.monotonic() - started)
            return reply
        except (IPAMError, ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            err = as_ipam_error(exc, f"pod {ns}/{name}", self.settings.node).prefixed().hinted(ns, name)
            ALLOCATION_FAILURES.labels(err.reason).inc()
            if err.reason not in ("pod_gone",):
                await self.events.warn(ns, name, str(req.get("podUID", "")), "IPAllocationFailed", err.msg)
            raise err from None

    async def _allocate(self, req: dict[str, Any], ns: str, name: str, ifname: str) -> dict[str, Any]:
        pod = await self.objects.pod(ns, name)
        if pod is not None and req.get("podUID") and pod.uid != req["podUID"]:
            pod = await self.objects.pod(ns, name, fresh=True)  # the cache may lag a re-created pod
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
            await self.events.warn(ns, name, pod.uid, "UnknownAnnotationKey", warning)

        # What the pod already holds for this NIC (a repeated ADD, a new sandbox, an ADD whose reply was
        # lost, a StatefulSet pod re-created under its name) is returned, never allocated twice.
        held = self.records.of(pod.uid, ifname)
        if not held and (not self.records.cache.live or (pod.uid, ifname) in self.records.doubts):
            # The cache may lack what this pod already holds: our watch is down (a partition, an
            # apiserver restart), or an earlier create of ours had no answer. Without this look, the
            # runtime's retry would get a second address and the first would stay with the pod.
            held = await self.records.read_of(pod.uid, ifname)
        statefulset = pod.owner_kind == "StatefulSet"
        if held and not (statefulset and self._partial(held)):
            reused = [assigned_from(self.pools.items.get(r["spec"]["pool"]), r["spec"]) for r in held]
            routes = routes_for(reused, pod_ann.routes, clean_gateway=bool(held[0]["spec"].get("cleanGateway")))
            self.endpoints.mark(pod.key, pod.uid)
            return _reply(reused, routes, ifname)
        # A StatefulSet pod re-created under its name keeps its predecessor's addresses, from the
        # pools it still names (ipam.moves); the rest are released and taken anew below.
        old = await self._predecessors(pod, ifname) if statefulset else []

        app = None
        if pod_ann.subnets or self._names_subnets(pod_ann.ippool):
            if not self.settings.auto_pool:
                raise IPAMError(7, f"pod {ns}/{name}: {AUTO_POOL_OFF}", reason="auto_pool_disabled", http=400)
            app = await self.objects.app_of(pod)
            holds = {str(r["spec"]["pool"]) for r in [*held, *old]}
            pod_ann = await self._with_auto_pools(pod, pod_ann, app, ifname, holds)
        ctx = await self._context(pod, pod_ann, app)
        netconf = NetconfDefaults(
            ipv4=tuple(req.get("defaultIPv4IPPool") or ()),
            ipv6=tuple(req.get("defaultIPv6IPPool") or ()),
            clean_gateway=bool(req.get("cleanGateway")),
        )
        try:
            plan = plan_nic(ctx, ifname, self.pools.items, netconf=netconf, families=self.settings.families)
        except SelectionError as exc:
            raise IPAMError(100, str(exc), reason="no_available_pool", http=409) from None
        have = list(held)
        if old:
            have += await self._adopt_statefulset(pod, plan, old, req)
        assigned: list[Assigned] = []
        taken: list[Assigned] = []
        try:
            for cand in plan.families:
                mine = [r for r in have if int(r["spec"]["ipVersion"]) == cand.family]
                if mine:
                    assigned.append(assigned_from(self.pools.items.get(mine[0]["spec"]["pool"]), mine[0]["spec"]))
                    continue
                got = await self._take(cand.family, cand.pools, pod, ifname, req, cand.rejected, plan.clean_gateway)
                taken.append(got)
                assigned.append(got)
        except IPAMError:
            for a in taken:  # all families or none (a kept predecessor's address stays the pod's)
                await self.records.delete(a.ip, pod.uid)
            raise
        routes = routes_for(assigned, pod_ann.routes, clean_gateway=plan.clean_gateway)
        self.endpoints.mark(pod.key, pod.uid)
        log.info(
            "allocated pod=%s uid=%s nic=%s ips=%s",
            pod.key,
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

    async def _with_auto_pools(
        self, pod: PodView, pod_ann: ann.PodAnnotations, app: App, ifname: str, holds: set[str]
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
            if subnets and family in self.settings.families:
                names[family] = (await self._auto_pool(pod, app, ifname, family, subnets[0], holds),)
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
        space = usable(pool, list(reserved_by_name(self.reserved).values()))
        return any(str(ip) not in self.records.used and str(ip) not in self.records.inflight for ip in space)

    async def _auto_pool(self, pod: PodView, app: App, ifname: str, family: int, subnet: str, holds: set[str]) -> str:
        """The name of the pod's auto-pool, once the controller has made it ready (bounded wait): one
        with a free address, or the one the pod (or its StatefulSet predecessor) holds an address of."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.auto_pool_wait
        while True:
            pool = self._find_auto_pool(app, ifname, family)
            if pool is not None:
                await self.records.serve(str(pool["metadata"]["name"]))
            if pool is not None and (pool["metadata"]["name"] in holds or self._has_free(pool)):
                return str(pool["metadata"]["name"])
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._pools_changed.clear()
            await wait_event(self._pools_changed, remaining)
        if pool is not None:
            return str(pool["metadata"]["name"])  # full: the allocation explains that it is used up
        raise IPAMError(
            11,
            f"pod {pod.key}: the IPv{family} auto-pool of {app.describe()} for "
            f"interface {ifname} (from SpiderSubnet {subnet}) is not there after {self.settings.auto_pool_wait:.0f}s;"
            " is spiderpool-controller running? See the events of the application",
            reason="auto_pool_not_ready",
            http=503,
        )

    async def _context(self, pod: PodView, pod_ann: ann.PodAnnotations, app: App | None = None) -> PodContext:
        ns = pod.meta["namespace"]
        nsobj = await self.objects.get(self.objects.namespaces, NAMESPACE, ns)
        node_name = pod.obj.get("spec", {}).get("nodeName") or self.settings.node
        node = await self.objects.get(self.objects.nodes, NODE, node_name)
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

    # ------------------------------------------------------------ take
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
        by_name = reserved_by_name(self.reserved)
        reserved = list(by_name.values())
        used, inflight = self.records.used, self.records.inflight
        for pool_name in pool_names:
            pool = self.pools.get(pool_name)
            if pool is None:
                reasons.append(f"{pool_name}: no such SpiderIPPool")
                continue
            await self.records.serve(pool_name)
            space = usable(pool, reserved)
            tries = 0
            eligible = self._eligible(pool)
            active = self.records.pool_nodes.get(pool_name, {}).keys()
            cooling: list[float] = []
            for ip in self._walker.candidates(pool_name, space, self.records.held_by, eligible, active):
                tries += 1
                if tries > MAX_TRIES_PER_POOL:
                    break
                until = self.records.cooling_until(ip)
                if until is not None:  # released a moment ago: its last pod's link may still carry it
                    cooling.append(until)
                    continue
                inflight.add(ip)
                try:
                    spec: RecordSpec = {
                        "ip": ip,
                        "pool": pool_name,
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
                    }
                    if await self.records.create(spec):
                        return assigned_from(pool, spec)
                finally:
                    inflight.discard(ip)
            if cooling:
                # only just-released addresses are left here: wait for the first to cool, then walk again
                await asyncio.sleep(max(0.0, min(cooling) - time.monotonic()))
                return await self._take(
                    family,
                    (pool_name, *pool_names[pool_names.index(pool_name) + 1 :]),
                    pod,
                    ifname,
                    req,
                    rejected,
                    clean,
                )
            if tries == 0 or all(str(ip) in used for ip in space):
                # (all() stops at the first free address: it costs at most the number of used ones)
                reasons.append(
                    f"{pool_name}: {USED_OUT}: all {space.count()} usable IPs are allocated (the pool is used up)"
                    + held_back(pool, by_name)
                    + self._quarantined(pool_name)
                )
            else:
                reasons.append(f"{pool_name}: every free IP was taken concurrently; retry")
        raise IPAMError(
            100,
            f"no IPv{family} address for interface {ifname} of pod {pod.key}: " + "; ".join(reasons),
            reason="ip_used_out",
            http=409,
        )

    def _quarantined(self, pool_name: str, limit: int = 3) -> str:
        """The pool's addresses held for nobody (another host answers for them, or their last pod may
        still run), for an "used out" message ("" if none)."""
        held = sorted(
            (r["spec"]["ip"], r["spec"].get("releaseReason") or "quarantine", r["spec"].get("quarantineUntil") or "")
            for r in self.records.of("")
            if r["spec"]["pool"] == pool_name and r["spec"].get("quarantineUntil")
        )
        if not held:
            return ""
        shown = ", ".join(f"{ip} ({why}, until {until})" for ip, why, until in held[:limit])
        more = f" and {len(held) - limit} more" if len(held) > limit else ""
        verb = "is" if len(held) == 1 else "are"
        return f"; {len(held)} of them {verb} quarantined: {shown}{more}"

    def _eligible(self, pool: dict[str, Any]) -> list[str]:
        """The nodes the pool serves (see ``Walker``), recomputed when the pool or a node changes."""
        nodes = self.objects.nodes
        if nodes is None:
            return []
        key = (pool["metadata"]["name"], pool["metadata"].get("resourceVersion", ""), self._nodes_generation)
        if key not in self._eligible_cache:
            if len(self._eligible_cache) > ELIGIBLE_CACHE_MAX:
                self._eligible_cache.clear()
            labels = {name: n["metadata"].get("labels") or {} for name, n in nodes.items.items()}
            self._eligible_cache[key] = eligible_nodes(pool, labels)
        return self._eligible_cache[key]

    def _partial(self, held: list[Record]) -> bool:
        """Whether a pod holds an address of fewer families than the agent serves (an earlier ADD
        that kept a predecessor's address of one family and failed on the other)."""
        return len({int(r["spec"]["ipVersion"]) for r in held}) < len(self.settings.families)

    async def _predecessors(self, pod: PodView, ifname: str) -> list[Record]:
        """The records a StatefulSet pod's predecessor (same name, another uid) holds for this NIC."""
        ns, name = pod.meta["namespace"], pod.meta["name"]
        return [
            r
            for r in await self.records.predecessors(ns, name)
            if r["spec"]["interface"] == ifname
            and r["spec"]["podUID"] != pod.uid
            and r["spec"].get("ownerKind") == "StatefulSet"
            and not r["spec"].get("quarantineUntil")  # taken back by the garbage collector: nobody's
        ]

    async def _adopt_statefulset(
        self, pod: PodView, plan: NicPlan, old: list[Record], req: dict[str, Any]
    ) -> list[Record]:
        """Move the predecessor's records whose pools the pod still names to this pod; release the
        others (their addresses cool down as any released address does) and say so on the pod."""
        kept, moved = split_predecessors(plan, old)
        adopted = [await self.records.move_to(r, pod.uid, str(req.get("containerID", ""))) for r in kept]
        if adopted:
            log.info(
                "StatefulSet pod keeps its IPs pod=%s uid=%s ips=%s",
                pod.key,
                pod.uid,
                ",".join(r["spec"]["ip"] for r in adopted),
            )
        for r in moved:
            spec = r["spec"]
            if await self.records.delete(spec["ip"], spec["podUID"], reason="pool_changed"):
                why = move_reason(plan, spec)
                log.info("StatefulSet pod's IP released: its pool changed pod=%s ip=%s", pod.key, spec["ip"])
                await self.events.normal(
                    pod.meta["namespace"],
                    pod.meta["name"],
                    pod.uid,
                    "IPPoolChanged",
                    f"{why}: released; the interface takes an address from the pools it names now",
                )
        return adopted


def _reply(assigned: list[Assigned], routes: list[ann.Route], ifname: str) -> dict[str, Any]:
    return {
        "ips": [
            {"version": a.family, "address": a.cidr, "nic": ifname, "ipPool": a.pool, "gateway": a.gateway}
            for a in assigned
        ],
        "routes": [{"ifName": ifname, "dst": r.dst, "gw": r.gw} for r in routes],
    }
