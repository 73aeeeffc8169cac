"""Watch-fed caches of SpiderIPPools and SpiderSubnets (plain dicts), shared by webhooks and reconcilers."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

from lightkube import AsyncClient

from spiderpool.controller.admission import Snapshot
from spiderpool.k8s.resources import SpiderIPPool, SpiderSubnet

log = logging.getLogger(__name__)

Listener = Callable[[str, str], None]  # (kind, name)


class ObjectCache:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.pools: dict[str, dict[str, Any]] = {}
        self.subnets: dict[str, dict[str, Any]] = {}
        self.synced = {"SpiderIPPool": asyncio.Event(), "SpiderSubnet": asyncio.Event()}
        self.listeners: list[Listener] = []

    def snapshot(self) -> Snapshot:
        # Copies are cheap at the sizes pools come in, and keep callers from mutating the cache.
        return Snapshot(pools=copy.deepcopy(self.pools), subnets=copy.deepcopy(self.subnets))

    def is_synced(self) -> bool:
        return all(e.is_set() for e in self.synced.values())

    async def run(self) -> None:
        await asyncio.gather(
            self._watch("SpiderIPPool", SpiderIPPool, self.pools),
            self._watch("SpiderSubnet", SpiderSubnet, self.subnets),
        )

    async def _watch(self, kind: str, res: Any, store: dict[str, dict[str, Any]]) -> None:
        while True:
            try:
                fresh: dict[str, dict[str, Any]] = {}
                async for obj in self.client.list(res):
                    d = obj.to_dict()
                    fresh[d["metadata"]["name"]] = d
                for name in set(store) - set(fresh):
                    store.pop(name)
                    self._notify(kind, name)
                for name, d in fresh.items():
                    store[name] = d
                    self._notify(kind, name)
                self.synced[kind].set()
                # lightkube re-lists on its own after a 410; the initial ADDED events repeat the list.
                async for event, obj in self.client.watch(res):
                    d = obj.to_dict()
                    name = d["metadata"]["name"]
                    if event == "DELETED":
                        store.pop(name, None)
                    else:
                        store[name] = d
                    self._notify(kind, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch broke kind=%s error=%s", kind, exc)
                await asyncio.sleep(1)

    def _notify(self, kind: str, name: str) -> None:
        for listener in self.listeners:
            listener(kind, name)
