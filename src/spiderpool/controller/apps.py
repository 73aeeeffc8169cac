"""Auto-pools for applications (leader only): one SpiderIPPool per application, NIC and IP family,
carved out of the SpiderSubnet its pod template names, sized to it, and deleted with it.

- Grows with the subnet's lowest free IPs when replicas (or ``ippool-ip-number``) go up; shrinks by
  the lowest IPs no pod holds when they go down (an IP a pod holds is never taken away: the pool
  shrinks further as those pods go).
- Deleted with the application unless ``ipam.spidernet.io/ippool-reclaim: "false"``; a kept pool is
  adopted by the next application of the same kind, namespace and name.
- ``ipam.spidernet.io/ippool`` naming a SpiderSubnet instead of a pool (as the reference walkthrough
  does) is read as ``ipam.spidernet.io/subnet``, with one Warning event on the application.
- Every failure an admin can act on (subnet exhausted or missing, bad annotation) is a Warning
  event on the application.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from prometheus_client import Counter

from spiderpool.api import annotations as ann
from spiderpool.api.constants import name_label
from spiderpool.controller.admission import pool_sets
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.workqueue import WorkQueue
from spiderpool.ipam import autopool as ap
from spiderpool.ipam.ranges import IPSet, RangeError, cidr_label, parse_cidr
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client, preconditions
from spiderpool.k8s.events import EventRecorder
from spiderpool.k8s.kinds import IPPOOL, RESERVEDIP, Kind

log = logging.getLogger(__name__)

POOL = IPPOOL
AUTO_POOL_CHANGES = Counter("spiderpool_controller_auto_pool_changes_total", "Auto-pool writes", ["action"])
BATCH_SECONDS = 0.1
SAID_MAX = 4096


class AppPoolReconciler:
    def __init__(self, rest: Client, cache: ObjectCache, *, default_extra: int = ap.DEFAULT_EXTRA_IPS) -> None:
        self.rest, self.cache, self.default_extra = rest, cache, default_extra
        self.apps = {
            kind: WatchCache(rest, Kind(group, version, plural, True), kind)
            for kind, (group, version, plural) in ap.APP_KINDS.items()
        }
        self.reserved = WatchCache(rest, RESERVEDIP)
        for c in self.apps.values():
            c.listeners.append(lambda kind, key, _obj: self.enqueue(kind, key))
        cache.listeners.append(self._on_pool_or_subnet)
        # Reserved IPs come and go rarely: every application is sized again (a pool waiting for
        # addresses gets them as soon as a reservation that held them goes).
        self.reserved.listeners.append(lambda *_: self._enqueue_all())
        self.recorder = EventRecorder(rest, "spiderpool-controller")
        self.queue = WorkQueue("auto-pool", BATCH_SECONDS)
        #: (app uid, reason) -> the last message said, so each is said once (bounded: oldest out)
        self._said: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run an event write off the reconcile path (keeping a reference until it is done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ queue
    def enqueue(self, kind: str, key: str) -> None:
        self.queue.add((kind, key))

    def _owner(self, pool: dict[str, Any] | None) -> tuple[str, str] | None:
        """(kind, namespace/name) of the application an auto-pool belongs to."""
        owner = ap.owner_of(pool or {})
        if owner is None or owner[0] not in self.apps:
            return None
        return owner[0], f"{owner[1]}/{owner[2]}"

    def _on_pool_or_subnet(self, kind: str, name: str) -> None:
        if kind == "SpiderIPPool":  # also relayed for its allocation records
            owner = self._owner(self.cache.pools.get(name))
            if owner:
                self.enqueue(*owner)
        elif kind == "SpiderSubnet":  # rare: look at every application again
            self._enqueue_all()

    def _enqueue_all(self) -> None:
        for app_kind, c in self.apps.items():
            for key in c.items:
                self.enqueue(app_kind, key)

    async def run(self) -> None:
        tasks = [asyncio.create_task(c.run()) for c in (*self.apps.values(), self.reserved)]
        try:
            for c in (
                *self.apps.values(),
                self.reserved,
                self.cache.pool_cache,
                self.cache.subnet_cache,
                self.cache.record_cache,
            ):
                await c.synced.wait()
            for kind, c in self.apps.items():
                for key in c.items:
                    self.enqueue(kind, key)
            for pool in list(self.cache.pools.values()):  # applications deleted while no leader ran
                owner = self._owner(pool)
                if owner:
                    self.enqueue(*owner)
            await self.queue.run(self.reconcile)
        finally:
            for t in tasks:
                t.cancel()

    # -------------------------------------------------------- reconcile
    async def reconcile(self, kind: str, key: str) -> None:
        namespace, name = key.split("/", 1)
        obj = self.apps[kind].get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            await self._reclaim(ap.App(kind, namespace, name, ""))
            return
        if ap.managed_by_app(obj):
            return  # a Deployment's ReplicaSet, a CronJob's Job: the pool is the top controller's
        app = ap.App(kind, namespace, name, str(obj["metadata"]["uid"]))
        template = ap.template_annotations(kind, obj)
        try:
            nics = self._subnets_of(app, template)
            ip_number = ann.parse_ip_number(template[ann.IP_NUMBER]) if ann.IP_NUMBER in template else None
            reclaim = ann.parse_reclaim(template[ann.RECLAIM]) if ann.RECLAIM in template else True
        except ann.AnnotationError as exc:
            await self._event(app, "InvalidAnnotation", f"the pod template's {exc}")
            return
        if not nics:
            return
        replicas = ap.replicas(kind, obj)
        size = ap.desired_size(ip_number, replicas, self.default_extra)
        for nic in nics:
            for family, names in ((4, nic.ipv4), (6, nic.ipv6)):
                if names:
                    await self._ensure(app, str(nic.interface), family, names[0], size, replicas, reclaim)

    def _subnets_of(self, app: ap.App, template: dict[str, str]) -> tuple[ann.PoolChoice, ...]:
        parsed = ann.parse_pod(template)
        for warning in parsed.warnings:
            self._later(self._event(app, "UnknownAnnotationKey", f"the pod template's {warning}"))
        if parsed.subnets:
            if parsed.ippool is not None or parsed.ippools:
                self._later(
                    self._event(
                        app,
                        "ConflictingAnnotations",
                        "the pod template names both a SpiderSubnet (ipam.spidernet.io/subnet(s)) and pools "
                        "(ipam.spidernet.io/ippool(s)); the subnet wins, as upstream does: remove one of them",
                    )
                )
            return parsed.subnets
        choice = parsed.ippool
        if choice is None:
            return ()
        names = [*choice.ipv4, *choice.ipv6]
        if not all(n in self.cache.subnets and n not in self.cache.pools for n in names):
            return ()
        # The walkthrough's form: ippool naming a SpiderSubnet. Serve it as the subnet annotation, and say so.
        self._later(
            self._event(
                app,
                "SubnetInIPPoolAnnotation",
                f"ipam.spidernet.io/ippool names SpiderSubnet {', '.join(names)}, not a SpiderIPPool; it is served "
                f"as ipam.spidernet.io/subnet (an auto-pool for this {app.kind}). Write "
                f'ipam.spidernet.io/subnet: \'{{"ipv4": ["{names[0]}"]}}\' to say so.',
            )
        )
        return (ann.PoolChoice("eth0", choice.ipv4[:1], choice.ipv6[:1]),)

    async def _ensure(
        self, app: ap.App, iface: str, family: int, subnet_name: str, size: int, replicas: int, reclaim: bool
    ) -> None:
        subnet = self.cache.subnets.get(subnet_name)
        if subnet is None or subnet["metadata"].get("deletionTimestamp"):
            await self._event(
                app, "SubnetNotFound", f"SpiderSubnet {subnet_name} does not exist; no auto-pool for {iface}"
            )
            return
        sets = pool_sets(subnet.get("spec", {}))
        if sets is None or sets[1].family != family:
            await self._event(app, "SubnetMismatch", f"SpiderSubnet {subnet_name} is not an IPv{family} subnet")
            return
        offered = sets[1]
        cidr = str(parse_cidr(str(subnet["spec"]["subnet"])))
        mine = [p for p in self.cache.pools.values() if ap.owned_by(p, app, iface, family)]
        pool = next((p for p in mine if _label(p, ap.L_APP_UID) == app.uid), None)
        if pool is None:  # a kept pool of an earlier incarnation is adopted
            pool = next((p for p in mine if _label(p, ap.L_RECLAIM) == "false"), None)
        if pool is not None and pool["metadata"].get("deletionTimestamp"):
            return  # wait for it to go; its deletion event brings us back
        if pool is not None and ap.subnet_of(pool) not in (subnet_name, name_label(subnet_name)):
            await self._event(
                app,
                "ApplicationSubnetChanged",
                f"auto-pool {pool['metadata']['name']} comes from SpiderSubnet {ap.subnet_of(pool)}; "
                f"an application's subnet cannot change to {subnet_name}: delete and re-create the application",
            )
            return
        current = _ips(pool, family) if pool is not None else IPSet(family)
        taken = IPSet(family)
        for other in self.cache.pools.values():
            if other is not pool and _same_cidr(other, cidr):
                taken = taken.union(_ips(other, family))
        free = offered.difference(taken).difference(self._reserved(family))
        name = pool["metadata"]["name"] if pool is not None else ap.pool_name(family, app, iface)
        in_use = IPSet.parse(family, list(self.cache.allocations().get(name, {})))
        plan = ap.resize(current, size, free, in_use)
        spec = {
            "ipVersion": family,
            "subnet": cidr,
            "ips": plan.ips.to_ranges(),
            "podAffinity": {"matchLabels": app.pod_labels()},
        }
        for k in ("gateway", "routes", "vlan"):
            if subnet["spec"].get(k) is not None:
                spec[k] = subnet["spec"][k]
        labels = ap.pool_labels(app, subnet_name, iface, family, reclaim, cidr_label(cidr))
        annotations = {ap.A_DESIRED: str(size)}
        if pool is None and not plan.ips.count():
            # Upstream makes no empty pool either: there is nothing to hand out. The application is
            # looked at again when the subnet, a reservation or another pool changes.
            await self._event(
                app,
                "SubnetExhausted",
                f"SpiderSubnet {subnet_name} has no free IP for the auto-pool of {iface} (IPv{family}): "
                + self._why_no_free(offered, taken, family)
                + "; the pool is created as soon as IPs are free. Add IPs to the subnet or free some.",
            )
            return
        if pool is None:
            body = {
                "apiVersion": POOL.api_version,
                "kind": "SpiderIPPool",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": spec,
            }
            await self.rest.create(POOL, body)
            AUTO_POOL_CHANGES.labels("create").inc()
            log.info("auto-pool created pool=%s app=%s ips=%d", name, app.describe(), plan.ips.count())
            await self._event(
                app,
                "AutoPoolCreated",
                f"SpiderIPPool {name} created from SpiderSubnet {subnet_name} for {iface} with "
                f"{plan.ips.count()} IPs ({', '.join(plan.ips.to_ranges())})",
                warning=False,
            )
        else:
            meta = pool["metadata"]
            have_ann = meta.get("annotations") or {}
            same = (
                _ips(pool, family) == plan.ips
                and all((meta.get("labels") or {}).get(k) == v for k, v in labels.items())
                and have_ann.get(ap.A_DESIRED) == str(size)
                and (pool["spec"].get("podAffinity") or {}).get("matchLabels") == app.pod_labels()
            )
            if not same:
                updated = {
                    **pool,
                    "metadata": {
                        **meta,
                        "labels": {**(meta.get("labels") or {}), **labels},
                        "annotations": {**have_ann, **annotations},
                    },
                    "spec": {**pool["spec"], **spec},
                }
                await self.rest.replace(POOL, updated)
                AUTO_POOL_CHANGES.labels("resize").inc()
                log.info(
                    "auto-pool resized pool=%s app=%s ips=%d->%d",
                    name,
                    app.describe(),
                    current.count(),
                    plan.ips.count(),
                )
                if current != plan.ips:
                    await self._event(
                        app,
                        "AutoPoolResized",
                        f"SpiderIPPool {name} now holds {plan.ips.count()} IPs (was {current.count()}; "
                        f"{replicas} replicas, {size} wanted)",
                        warning=False,
                    )
        if plan.short:
            await self._event(
                app,
                "SubnetExhausted",
                f"SpiderSubnet {subnet_name} is exhausted: auto-pool {name} should hold {size} IPs ({replicas} "
                f"replicas plus spares) but got {plan.ips.count()}; pods beyond that stay Pending. "
                "Add IPs to the subnet, free some, or lower the replicas.",
            )
        else:
            self._said.pop((app.uid, "SubnetExhausted"), None)

    async def _reclaim(self, app: ap.App) -> None:
        """The application is gone: delete its reclaimable auto-pools (their IPs return to the subnet)."""
        for pool in list(self.cache.pools.values()):
            if not ap.owned_by(pool, app) or _label(pool, ap.L_RECLAIM) != "true":
                continue
            if pool["metadata"].get("deletionTimestamp"):
                continue
            try:
                # (preconditions: never a pool re-created or changed since the cache saw it)
                await self.rest.delete(POOL, pool["metadata"]["name"], preconditions=preconditions(pool))
            except ApiError as exc:
                if exc.code != 404:
                    raise
            AUTO_POOL_CHANGES.labels("delete").inc()
            log.info("auto-pool deleted with its application pool=%s app=%s", pool["metadata"]["name"], app.describe())

    def _reserved(self, family: int) -> IPSet:
        out = IPSet(family)
        for r in self.reserved.items.values():
            out = out.union(_ips(r, family))
        return out

    def _why_no_free(self, offered: IPSet, taken: IPSet, family: int) -> str:
        """Where a subnet's IPs went: other pools, and which SpiderReservedIPs."""
        parts = [f"{offered.intersection(taken).count()} of its {offered.count()} usable IPs belong to other pools"]
        rest = offered.difference(taken)
        for name in sorted(self.reserved.items):
            held = rest.intersection(_ips(self.reserved.items[name], family))
            if held.count():
                parts.append(
                    f"{held.count()} are reserved by SpiderReservedIP {name} ({', '.join(held.to_ranges()[:3])})"
                )
                rest = rest.difference(held)
        return ", ".join(parts)

    async def _event(self, app: ap.App, reason: str, message: str, *, warning: bool = True) -> None:
        # A reconcile runs again on every change to the application's pools: say a thing once.
        if self._said.get((app.uid, reason)) == message:
            return
        self._said[(app.uid, reason)] = message
        self._said.move_to_end((app.uid, reason))
        while len(self._said) > SAID_MAX:
            self._said.popitem(last=False)
        involved = {
            "apiVersion": f"{app.group}/{app.version}",
            "kind": app.kind,
            "namespace": app.namespace,
            "name": app.name,
            "uid": app.uid,
        }
        log.info("event app=%s reason=%s message=%s", app.describe(), reason, message)
        await self.recorder.emit(involved, "Warning" if warning else "Normal", reason, message)


def _label(pool: dict[str, Any], key: str) -> str | None:
    labels = pool.get("metadata", {}).get("labels") or {}
    value = labels.get(key)
    return None if value is None else str(value)


def _fam(text: str) -> int:
    return 6 if ":" in str(text) else 4


def _ips(pool: dict[str, Any], family: int) -> IPSet:
    try:
        return IPSet.parse(family, [x for x in pool.get("spec", {}).get("ips") or [] if _fam(x) == family])
    except RangeError:
        return IPSet(family)


def _same_cidr(pool: dict[str, Any], cidr: str) -> bool:
    try:
        return str(parse_cidr(str(pool.get("spec", {}).get("subnet", "")))) == cidr
    except RangeError:
        return False
