"""Keeps SpiderIPPool and SpiderSubnet status true, and runs their finalizers (leader only).

- Pool: ``totalIPCount`` = |ips - excludeIPs|; ``allocatedIPCount`` = the number of allocation
  records. The finalizer is removed once a deleted pool holds no allocation, so a pool deleted
  while IPs are in use stays Terminating until they are released.
- Subnet: ``controlledIPPools`` is the ledger of which IPs each pool of the subnet holds;
  ``allocatedIPCount`` counts those IPs, ``totalIPCount`` = |ips - excludeIPs|. The finalizer is
  removed once no pool of the subnet is left.

Changes arrive from the watch cache and are handled in small batches, so a burst of updates to
one object costs one status write.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType
from prometheus_client import Counter

from spiderpool.api import constants as c
from spiderpool.controller.admission import link_to_subnet, pool_sets
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.workqueue import BatchQueue
from spiderpool.ipam.autopool import L_APP_GV, owner_of, subnet_of
from spiderpool.ipam.ranges import IPSet, RangeError, parse_cidr
from spiderpool.k8s.resources import SpiderIPPool, SpiderSubnet

log = logging.getLogger(__name__)

STATUS_WRITES = Counter("spiderpool_controller_status_writes_total", "Status updates written", ["kind"])
ADOPTIONS = Counter(
    "spiderpool_controller_subnet_adoptions_total", "Pools linked to their SpiderSubnet by the controller"
)
BATCH_SECONDS = 0.2


def pool_status(pool: dict[str, Any], allocated: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Counts, and upstream's ``allocatedIPs`` JSON map, derived from the pool's allocation records."""
    sets = pool_sets(pool.get("spec", {}))
    total = sets[1].count() if sets else 0
    return {
        "allocatedIPs": json.dumps(allocated, sort_keys=True) if allocated else None,
        "allocatedIPCount": len(allocated),
        "totalIPCount": total,
    }


def _cidr(obj: dict[str, Any]) -> str | None:
    try:
        return str(parse_cidr(str(obj.get("spec", {}).get("subnet", ""))))
    except RangeError:
        return None


def subnet_status(subnet: dict[str, Any], pools: list[dict[str, Any]]) -> dict[str, Any]:
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
    def __init__(self, client: AsyncClient, cache: ObjectCache) -> None:
        self.client = client
        self.cache = cache
        self.queue = BatchQueue("status", BATCH_SECONDS, retry_on=(ApiError,))
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
        await self.queue.run(self._reconcile)

    async def _reconcile(self, kind: str, name: str) -> None:
        try:
            if kind == "SpiderIPPool":
                await self.reconcile_pool(name)
            else:
                await self.reconcile_subnet(name)
        except ApiError as exc:
            if exc.status.code != 404:  # gone meanwhile: nothing to do
                raise

    async def _finalize(self, res: Any, obj: dict[str, Any], releasable: bool) -> None:
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
        await self.client.patch(res, meta["name"], patch, patch_type=PatchType.MERGE)
        log.info("finalizer %s kind=%s name=%s", "removed" if deleting else "added", obj.get("kind"), meta["name"])

    async def _write_status(self, res: Any, obj: dict[str, Any], want: dict[str, Any], kind: str) -> dict[str, Any]:
        """Write the status if it differs; return the object as it now stands."""
        have = obj.get("status") or {}
        if all(have.get(k) == v for k, v in want.items()):
            return obj
        updated = await self.client.patch(
            res.Status, obj["metadata"]["name"], {"status": want}, patch_type=PatchType.MERGE
        )
        STATUS_WRITES.labels(kind).inc()
        return dict(updated.to_dict())

    async def reconcile_pool(self, name: str) -> None:
        pool = self.cache.pools.get(name)
        if pool is None:
            return
        allocated = self.cache.allocations().get(name, {})
        pool = await self._write_status(SpiderIPPool, pool, pool_status(pool, allocated), "SpiderIPPool")
        await self._finalize(SpiderIPPool, pool, releasable=not allocated)

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
        await self.client.patch(SpiderIPPool, meta["name"], patch, patch_type=PatchType.MERGE)
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
        subnet = await self._write_status(SpiderSubnet, subnet, subnet_status(subnet, pools), "SpiderSubnet")
        if not subnet["metadata"].get("deletionTimestamp"):
            for pool in pools:
                await self._adopt(subnet, pool)
        if subnet["metadata"].get("deletionTimestamp"):
            # Deleting a subnet deletes the pools it owns; each of them waits for its own IPs.
            for pool in pools:
                owned = subnet_of(pool) == name
                if owned and not pool["metadata"].get("deletionTimestamp"):
                    await self.client.delete(SpiderIPPool, pool["metadata"]["name"])
        await self._finalize(SpiderSubnet, subnet, releasable=not pools)
