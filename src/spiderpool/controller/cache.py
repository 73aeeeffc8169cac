"""Watch-fed caches the controller shares between its webhooks and its reconcilers."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

from spiderpool.controller.admission import Snapshot
from spiderpool.ipam.holders import Holders, holders
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import Client
from spiderpool.k8s.kinds import IPALLOCATION, IPPOOL, SUBNET

Listener = Callable[[str, str], None]  # (kind, name)


class ObjectCache:
    def __init__(self, client: Client) -> None:
        self.pool_cache = WatchCache(client, IPPOOL)
        self.subnet_cache = WatchCache(client, SUBNET)
        self.record_cache = WatchCache(client, IPALLOCATION)
        self.pools = self.pool_cache.items
        self.subnets = self.subnet_cache.items
        self.records = self.record_cache.items
        self.listeners: list[Listener] = []
        for cache in (self.pool_cache, self.subnet_cache, self.record_cache):
            cache.listeners.append(self._relay)

    def _relay(self, kind: str, key: str, obj: dict[str, object]) -> None:
        if kind == "SpiderIPAllocation":
            # an allocation changes its pool's status
            spec = obj.get("spec")
            pool = spec.get("pool") if isinstance(spec, dict) else None
            if not pool:
                return
            kind, key = "SpiderIPPool", str(pool)
        for listener in self.listeners:
            listener(kind, key)

    def snapshot(self) -> Snapshot:
        # Copies are cheap at the sizes pools come in, and keep callers from mutating the cache.
        return Snapshot(
            pools=copy.deepcopy(self.pools), subnets=copy.deepcopy(self.subnets), allocated=self.allocations()
        )

    def allocations(self, *, quarantined: bool = True) -> Holders:
        """pool -> IP -> holder, from the allocation records (``ipam.holders``; ``quarantined``: with
        the addresses held for nobody, which a pool's status leaves out)."""
        return holders(self.records.values(), quarantined=quarantined)

    def is_synced(self) -> bool:
        return all(c.synced.is_set() for c in (self.pool_cache, self.subnet_cache, self.record_cache))

    async def run(self) -> None:
        await asyncio.gather(self.pool_cache.run(), self.subnet_cache.run(), self.record_cache.run())
