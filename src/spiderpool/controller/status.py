"""Keeps SpiderIPPool and SpiderSubnet status true, and runs their finalizers (leader only).

- Pool: ``totalIPCount`` = |ips - excludeIPs|; ``allocatedIPCount`` = the number of allocation
  records that a pod holds (a quarantined address is held for nobody: left out of ``allocatedIPs``).
  A pool deleted while IPs are in use stays Terminating until they are released; its
  finalizer comes off only after it has held no record for a grace period (``finalizer_grace``,
  10 s by default, as Kubernetes' ServiceCIDR controller waits): an agent whose cache has not yet
  seen the deletion may be creating a record in it at that very moment, and the grace lets that
  record be seen (and the pool kept) instead of it pointing at a pool that is gone.
- Subnet: ``controlledIPPools`` is the ledger of which IPs each pool of the subnet holds;
  ``allocatedIPCount`` counts those IPs, ``totalIPCount`` = |ips - excludeIPs|. The finalizer is
  removed once no pool of the subnet is left.

Changes arrive from the watch cache and are handled in small batches, so a burst of updates to
one object costs one status write.

The pool counts are also exported as the gauges ``spiderpool_ippool_allocated_ips`` and
``spiderpool_ippool_total_ips`` (per pool and IP version), by the leader only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge

from spiderpool.api import constants as c
from spiderpool.api.objects import PoolStatus, SubnetStatus
from spiderpool.controller.admission import link_to_subnet, pool_sets
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.workqueue import WorkQueue
from spiderpool.ipam.autopool import L_APP_GV, owner_of, subnet_of
from spiderpool.ipam.ranges import IPSet, RangeError, parse_cidr
from spiderpool.k8s.client import ApiError, Client, preconditions
from spiderpool.k8s.kinds import IPPOOL, SUBNET, Kind

log = logging.getLogger(__name__)

STATUS_WRITES = Counter("spiderpool_controller_status_writes_total", "Status updates written", ["kind"])
ADOPTIONS = Counter(
    "spiderpool_controller_subnet_adoptions_total", "Pools linked to their SpiderSubnet by the controller"
)
#: pool usage, from the counts the status writer computes; only the leader's are true, so a
#: replica exports them only while its reconciler runs (``StatusReconciler.run`` clears them)
POOL_ALLOCATED = Gauge(
    "spiderpool_ippool_allocated_ips",
    "IPs of a SpiderIPPool held by allocation records (its status.allocatedIPCount)",
    ["pool", "version"],
)
POOL_TOTAL = Gauge(
    "spiderpool_ippool_total_ips",
    "Usable IPs of a SpiderIPPool: ips minus excludeIPs (its status.totalIPCount)",
    ["pool", "version"],
)
BATCH_SECONDS = 0.2
#: how long a deleted pool must hold no record before its finalizer comes off
FINALIZER_GRACE = 10.0


def pool_status(pool: dict[str, Any], allocated: dict[str, dict[str, str]]) -> PoolStatus:
    """Counts, and upstream's ``allocatedIPs`` JSON map, derived from the pool's allocation records."""
    sets = pool_sets(pool.get("spec", {}))
    total = sets[1].count() if sets else 0
    return {
        "allocatedIPs": json.dumps(allocated, sort_keys=True) if allocated else None,
        "allocatedIPCount": len(allocated),
        "totalIPCount": total,
    }


def _version(pool: dict[str, Any]) -> str:
    """The IP version label: the family of the pool's subnet ("" when it does not parse)."""
    try:
        return str(parse_cidr(str(pool.get("spec", {}).get("subnet", ""))).version)
    except RangeError:
        return ""


def _cidr(obj: dict[str, Any]) -> str | None:
    try:
        return str(parse_cidr(str(obj.get("spec", {}).get("subnet", ""))))
    except RangeError:
        return None


def subnet_status(subnet: dict[str, Any], pools: list[dict[str, Any]]) -> SubnetStatus:
    """The subnet's ledger and counts, from the pools that share its CIDR."""
    sets = pool_sets(subnet.get("spec", {}))
    if sets is None:
        return {"controlledIPPools": None, "allocatedIPCount": 0, "totalIPCount": 0}
    _, usable = sets
    try:
        previous = json.loads(subnet.get("status", {}).get("controlledIPPools") or "{}")
    except ValueError:
        previous = {}
    ledger: dict[str, Any] = {}
    held = IPSet(usable.family)
    for pool in sorted(pools, key=lambda p: str(p["metadata"]["name"])):
        psets = pool_sets(pool.get("spec", {}))
        if psets is None:
            continue
        mine = psets[0].intersection(usable)
        name = str(pool["metadata"]["name"])
        entry: dict[str, Any] = {"ips": mine.to_ranges()}
        labels = pool["metadata"].get("labels") or {}
        owner = owner_of(pool)
        if owner is not None:  # an auto-pool: whose it is, in upstream's form
            kind, app_ns, app_name = owner
            entry["application"] = f"{labels.get(L_APP_GV, '')}_{kind}_{app_ns}_{app_name}"
        else:
            app = previous.get(name, {}).get("application") if isinstance(previous.get(name), dict) else None
            if app:
                entry["application"] = app
        ledger[name] = entry
        held = held.union(mine)
    return {
        "controlledIPPools": json.dumps(ledger, sort_keys=True) if ledger else None,
        "allocatedIPCount": held.count(),
        "totalIPCount": usable.count(),
    }


class StatusReconciler:
    def __init__(self, client: Client, cache: ObjectCache, *, finalizer_grace: float = FINALIZER_GRACE) -> None:
        self.client = client
        self.cache = cache
        self.finalizer_grace = finalizer_grace
        self.queue = WorkQueue("status", BATCH_SECONDS)
        #: deleted pools seen without a record: name -> since when (monotonic)
        self._empty_since: dict[str, float] = {}
        #: pools whose usage this reconciler exports: name -> the version label it used
        self._exported: dict[str, str] = {}
        cache.listeners.append(self.enqueue)

    def enqueue(self, kind: str, name: str) -> None:
        self.queue.add((kind, name))
        if kind == "SpiderIPPool":
            # a pool change moves its subnet's ledger
            pool = self.cache.pools.get(name)
            cidr = _cidr(pool) if pool else None
            for sub_name, sub in self.cache.subnets.items():
                if cidr is None or _cidr(sub) == cidr:
                    self.queue.add(("SpiderSubnet", sub_name))

    async def run(self) -> None:
        for name in list(self.cache.pools):
            self.enqueue("SpiderIPPool", name)
        for name in list(self.cache.subnets):
            self.enqueue("SpiderSubnet", name)
        try:
            await self.queue.run(self._reconcile)
        finally:
            # cancelled when this replica stops leading: the next leader's counts are the true
            # ones, and a standby that kept its last values would be scraped as a second answer
            for name in list(self._exported):
                self._unexport(name)

    def _export(self, pool: dict[str, Any], status: PoolStatus) -> None:
        name, version = str(pool["metadata"]["name"]), _version(pool)
        if self._exported.get(name, version) != version:
            self._unexport(name)
        self._exported[name] = version
        POOL_ALLOCATED.labels(name, version).set(status["allocatedIPCount"])
        POOL_TOTAL.labels(name, version).set(status["totalIPCount"])

    def _unexport(self, name: str) -> None:
        version = self._exported.pop(name, None)
        if version is None:
            return
        for gauge in (POOL_ALLOCATED, POOL_TOTAL):
            with contextlib.suppress(KeyError):  # (older prometheus_client: already removed)
                gauge.remove(name, version)

    async def _reconcile(self, kind: str, name: str) -> None:
        try:
            if kind == "SpiderIPPool":
                await self.reconcile_pool(name)
            else:
                await self.reconcile_subnet(name)
        except ApiError as exc:
            if exc.code != 404:  # gone meanwhile: nothing to do
                raise

    async def _finalize(self, res: Kind, obj: dict[str, Any], releasable: bool) -> None:
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        deleting = bool(meta.get("deletionTimestamp"))
        if deleting and releasable and c.FINALIZER in finalizers:
            finalizers.remove(c.FINALIZER)
        elif not deleting and c.FINALIZER not in finalizers:
            finalizers.append(c.FINALIZER)  # created while the webhook was down
        else:
            return
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        await self.client.patch(res, meta["name"], patch)
        log.info("finalizer %s kind=%s name=%s", "removed" if deleting else "added", obj.get("kind"), meta["name"])

    async def _write_status(
        self, res: Kind, obj: dict[str, Any], want: PoolStatus | SubnetStatus, kind: str
    ) -> dict[str, Any]:
        """Write the status if it differs; return the object as it now stands."""
        have = obj.get("status") or {}
        if all(have.get(k) == v for k, v in want.items()):
            return obj
        updated = await self.client.patch(res, obj["metadata"]["name"], {"status": want}, subresource="status")
        STATUS_WRITES.labels(kind).inc()
        return updated

    async def reconcile_pool(self, name: str) -> None:
        pool = self.cache.pools.get(name)
        if pool is None:
            self._empty_since.pop(name, None)
            self._unexport(name)
            return
        # (a quarantined address is nobody's: not listed, and it does not hold a deleted pool back)
        allocated = self.cache.allocations(quarantined=False).get(name, {})
        want = pool_status(pool, allocated)
        # from the records, before the write: true even while the write is refused and retried
        self._export(pool, want)
        pool = await self._write_status(IPPOOL, pool, want, "SpiderIPPool")
        await self._finalize(IPPOOL, pool, releasable=self._empty_long_enough(pool, bool(allocated)))

    def _empty_long_enough(self, pool: dict[str, Any], allocated: bool) -> bool:
        """A deleted pool may lose its finalizer: no record for ``finalizer_grace`` seconds."""
        name = str(pool["metadata"]["name"])
        if allocated or not pool["metadata"].get("deletionTimestamp"):
            self._empty_since.pop(name, None)
            return False
        now = time.monotonic()
        since = self._empty_since.setdefault(name, now)
        left = since + self.finalizer_grace - now
        if left > 0:
            self.queue.add_after(("SpiderIPPool", name), left)  # look again when the grace is over
            return False
        return True

    async def _adopt(self, subnet: dict[str, Any], pool: dict[str, Any]) -> None:
        """A pool of the subnet's CIDR belongs to it (owner reference and label) and inherits its
        gateway and routes, as the webhook does on a write: also for a pool made before the subnet,
        or written while no webhook answered."""
        if pool["metadata"].get("deletionTimestamp"):
            return
        linked = copy.deepcopy(pool)
        link_to_subnet(linked, linked.setdefault("spec", {}), subnet)
        meta, new_meta = pool["metadata"], linked["metadata"]
        changes: dict[str, Any] = {}
        if new_meta.get("labels") != meta.get("labels"):
            changes["labels"] = new_meta["labels"]
        if new_meta.get("ownerReferences") != meta.get("ownerReferences"):
            changes["ownerReferences"] = new_meta["ownerReferences"]
        spec = {k: linked["spec"][k] for k in ("gateway", "routes") if linked["spec"].get(k) != pool["spec"].get(k)}
        if not changes and not spec:
            return
        patch: dict[str, Any] = {"metadata": {**changes, "resourceVersion": meta["resourceVersion"]}}
        if spec:
            patch["spec"] = spec
        # (the resourceVersion makes it a compare-and-swap: a pool changed meanwhile is looked at again)
        await self.client.patch(IPPOOL, meta["name"], patch)
        ADOPTIONS.inc()
        log.info(
            "pool adopted by its subnet pool=%s subnet=%s inherited=%s",
            meta["name"],
            subnet["metadata"]["name"],
            ",".join(sorted(spec)) or "-",
        )

    async def reconcile_subnet(self, name: str) -> None:
        subnet = self.cache.subnets.get(name)
        if subnet is None:
            return
        cidr = _cidr(subnet)
        pools = [p for p in self.cache.pools.values() if cidr is not None and _cidr(p) == cidr]
        subnet = await self._write_status(SUBNET, subnet, subnet_status(subnet, pools), "SpiderSubnet")
        if not subnet["metadata"].get("deletionTimestamp"):
            for pool in pools:
                await self._adopt(subnet, pool)
        if subnet["metadata"].get("deletionTimestamp"):
            # Deleting a subnet deletes the pools it owns; each of them waits for its own IPs.
            for pool in pools:
                owned = subnet_of(pool) == name
                if owned and not pool["metadata"].get("deletionTimestamp"):
                    await self.client.delete(IPPOOL, pool["metadata"]["name"], preconditions=preconditions(pool))
        await self._finalize(SUBNET, subnet, releasable=not pools)
