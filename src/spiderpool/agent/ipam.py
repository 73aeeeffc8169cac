"""The agent's IP service, put together: one object per responsibility, sharing the watch caches.

- ``records.Records``: the index of the allocation records and every write to them;
- ``pods.Objects``: pods, namespaces, nodes and owners, cache first; ``pods.PodLocks``;
- ``allocate.Allocator``: an ADD;
- ``release.Releaser``: a DEL, CHECK and GC, and addresses taken back early (conflicts);
- ``endpoints.EndpointWriter``: the SpiderEndpoints, written after the reply;
- ``events.PodEvents``: Events about pods.
"""

from __future__ import annotations

from spiderpool.agent.allocate import Allocator
from spiderpool.agent.endpoints import Activity, EndpointWriter
from spiderpool.agent.events import PodEvents
from spiderpool.agent.pods import Objects, PodLocks
from spiderpool.agent.records import Records
from spiderpool.agent.release import Releaser
from spiderpool.agent.settings import Settings
from spiderpool.k8s.cache import ScopedCache, WatchCache
from spiderpool.k8s.client import Client


class IPAM:
    def __init__(
        self,
        client: Client,
        settings: Settings,
        *,
        pools: WatchCache,
        reserved: WatchCache,
        records: WatchCache | ScopedCache,
        pods: WatchCache | None = None,
        namespaces: WatchCache | None = None,
        nodes: WatchCache | None = None,
        subnets: WatchCache | None = None,
    ) -> None:
        """``pods`` (this node's), ``namespaces`` and ``nodes`` are optional: without them the agent
        reads the API."""
        self.settings = settings
        self.records = Records(client, records, settings.node, cooldown=settings.reuse_cooldown)
        self.objects = Objects(client, pods=pods, namespaces=namespaces, nodes=nodes)
        self.locks, activity = PodLocks(), Activity()
        self.endpoints = EndpointWriter(client, self.records, pools, self.objects, self.locks, activity, settings.node)
        events = PodEvents(client, settings.node)
        self.allocator = Allocator(
            settings,
            records=self.records,
            objects=self.objects,
            endpoints=self.endpoints,
            events=events,
            locks=self.locks,
            activity=activity,
            pools=pools,
            reserved=reserved,
            subnets=subnets,
        )
        self.releaser = Releaser(
            settings,
            records=self.records,
            objects=self.objects,
            endpoints=self.endpoints,
            locks=self.locks,
            events=events,
        )
        self.caches = [c for c in (pools, reserved, records, pods, namespaces, nodes, subnets) if c is not None]

    def ready(self) -> bool:
        return all(c.synced.is_set() for c in self.caches)
