"""The deferred ``SpiderEndpoint`` writer: each pod's endpoint (named after it) lists every NIC's
addresses, derived from the pod's records.

The records are the truth and the endpoint a view of them, so it is written after the CNI reply,
by a few workers, and while allocations are in progress it waits for them (at most
``ENDPOINT_MAX_DELAY``): they hold up pod start-up, an endpoint does not. Under a burst that
halves the API writes. A crash before a write loses nothing: ``resync`` at the next start writes
what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from spiderpool.agent.metrics import API_WRITES, ENDPOINTS_PENDING
from spiderpool.agent.pods import Objects, PodLocks
from spiderpool.agent.records import Records
from spiderpool.api.objects import EndpointNIC, EndpointStatus, new_endpoint
from spiderpool.ipam.result import assigned_from
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import ENDPOINT
from spiderpool.k8s.retry import wait_event

log = logging.getLogger(__name__)

#: concurrent SpiderEndpoint writers per agent
ENDPOINT_WORKERS = 4
#: how long an endpoint write may wait for a burst of allocations to pass
ENDPOINT_MAX_DELAY = 5.0
#: a failed endpoint write is tried again after this, doubled per failure up to the maximum
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


class Activity:
    """How many allocations are in progress; ``quiet`` is set when none is."""

    def __init__(self) -> None:
        self.count = 0
        self.quiet = asyncio.Event()
        self.quiet.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.count += 1
        self.quiet.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self.quiet.set()


class EndpointWriter:
    def __init__(
        self,
        client: Client,
        records: Records,
        pools: WatchCache,
        objects: Objects,
        locks: PodLocks,
        activity: Activity,
        node: str,
    ) -> None:
        self.client, self.records, self.pools, self.objects = client, records, pools, objects
        self.locks, self.activity, self.node = locks, activity, node
        #: pods whose endpoint needs a sync: key -> (uid, queued at), oldest first
        self._dirty: dict[str, tuple[str, float]] = {}
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._active = 0
        self._idle = asyncio.Event()
        self._flushing = False
        #: the latest uid marked per pod, and the failed writes in a row, while a retry is due
        self._latest: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._stopped = False

    def mark(self, key: str, uid: str) -> None:
        """Bring pod ``key``'s endpoint in line with the records of ``uid``, soon."""
        queued = self._dirty.get(key)
        # (a pod already queued keeps its place and age; the latest uid wins)
        self._dirty[key] = (uid, queued[1] if queued else time.monotonic())
        self._latest[key] = uid
        ENDPOINTS_PENDING.set(len(self._dirty) + self._active)
        self._idle.clear()
        self._wake.set()
        if not self._workers:
            # A few workers, not a task per pod: a burst of allocations must not open a burst of
            # API connections (each one a TLS handshake on both sides).
            self._workers = [asyncio.create_task(self._worker()) for _ in range(ENDPOINT_WORKERS)]

    async def resync(self) -> None:
        """After a (re)start: write the endpoints of this node's records that an earlier run left unwritten."""
        for c in (self.records.cache, self.pools):
            await c.synced.wait()
        pods = {
            (r["spec"]["namespace"], r["spec"]["pod"], r["spec"]["podUID"])
            for r in self.records.all()
            if r["spec"].get("node") == self.node
        }
        for ns, name, uid in pods:
            self.mark(f"{ns}/{name}", uid)

    async def _worker(self) -> None:
        while True:
            if not self._dirty:
                if self._active == 0:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._dirty))
            uid, queued = self._dirty[key]
            wait = queued + ENDPOINT_MAX_DELAY - time.monotonic()
            if self.activity.count and wait > 0 and not self._flushing:
                await wait_event(self.activity.quiet, wait)
                continue
            del self._dirty[key]
            self._active += 1
            try:
                async with self.locks.hold(key):
                    await self._sync(key, uid)
                self._failures.pop(key, None)
                if key not in self._dirty:
                    self._latest.pop(key, None)
            except Exception as exc:
                # The records stay the truth, but a view left stale until the agent restarts is a
                # silent failure (an apiserver down mid-burst did it): tried again, with back-off.
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1))
                log.warning("endpoint sync failed pod=%s error=%r retry_in=%.0fs", key, exc, delay)
                asyncio.get_running_loop().call_later(delay, self._retry, key, uid)
            finally:
                self._active -= 1
                ENDPOINTS_PENDING.set(len(self._dirty) + self._active)

    def _retry(self, key: str, uid: str) -> None:
        # (not if a newer incarnation of the pod was marked since: its own sync is the one that counts)
        if not self._stopped and self._latest.get(key) == uid and key not in self._dirty:
            self.mark(key, uid)

    async def _sync(self, key: str, uid: str) -> None:
        ns, name = key.split("/", 1)
        held = self.records.of(uid)
        if not held:
            await self._drop(ns, name, uid)
            return
        nics: dict[str, EndpointNIC] = {}
        for r in sorted(held, key=lambda r: (r["spec"]["interface"], r["spec"]["ipVersion"])):
            spec = r["spec"]
            a = assigned_from(self.pools.get(spec["pool"]), spec)
            entry = nics.setdefault(
                spec["interface"], {"interface": spec["interface"], "cleanGateway": bool(spec.get("cleanGateway"))}
            )
            if a.family == 4:
                entry["ipv4"], entry["ipv4Pool"] = a.cidr, a.pool
                if a.gateway:
                    entry["ipv4Gateway"] = a.gateway
            else:
                entry["ipv6"], entry["ipv6Pool"] = a.cidr, a.pool
                if a.gateway:
                    entry["ipv6Gateway"] = a.gateway
            if a.pool_routes:
                entry["routes"] = [{"dst": x.dst, "gw": x.gw} for x in a.pool_routes]
        first = held[0]["spec"]
        owner_kind, owner_name = first.get("ownerKind") or "Pod", first.get("ownerName") or name
        if owner_kind == "ReplicaSet":
            with contextlib.suppress(ApiError):
                owner_kind, owner_name, _ = await self.objects.top_owner(ns, owner_kind, owner_name)
        status: EndpointStatus = {
            "current": {"uid": uid, "node": first.get("node") or self.node, "ips": list(nics.values())},
            "ownerControllerType": owner_kind,
            "ownerControllerName": owner_name,
        }
        # A StatefulSet pod's endpoint outlives the pod, for its successor; any other dies with its pod.
        refs: list[dict[str, Any]] = (
            []
            if first.get("ownerKind") == "StatefulSet"
            else [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]
        )
        try:
            # Create first: the usual case (a new pod) costs one write and no read.
            API_WRITES.labels("create_endpoint").inc()
            await self.client.create(ENDPOINT, dict(new_endpoint(ns, name, status, refs)))
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
        await self.client.replace(ENDPOINT, current)  # with the resourceVersion read: compare-and-swap

    async def _drop(self, ns: str, name: str, uid: str) -> None:
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
            meta = current["metadata"]
            await self.client.delete(
                ENDPOINT, name, ns, preconditions={"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}
            )
        except ApiError as exc:
            if exc.code not in (404, 409):  # gone, or re-written for a new incarnation meanwhile
                raise

    async def flush(self) -> None:
        """Wait for pending endpoint writes (tests and shutdown)."""
        if self._workers:
            self._flushing = True
            self.activity.quiet.set()  # wake workers deferring to allocations
            try:
                await self._idle.wait()
            finally:
                self._flushing = False
                if self.activity.count:
                    self.activity.quiet.clear()

    def stop(self) -> None:
        self._stopped = True
        for task in self._workers:
            task.cancel()
        self._workers = []
