"""IP garbage collection (leader only): takes back the IPs of pods that are gone, finished, or stuck
terminating on a node that is down, and frees quarantined IPs when their time is up.

Pod and node changes wake it (batched); a full scan of every record also runs periodically, and
at the next deadline it knows of (a quarantine ending, a terminating pod's grace running out).
The decisions are ``spiderpool.ipam.gc.judge``; every release is logged with its reason and
counted in ``spiderpool_controller_gc_released_ips_total{reason}``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from typing import Any

from prometheus_client import Counter, Histogram

from spiderpool.api.objects import Record, as_record, held_for
from spiderpool.controller.cache import ObjectCache
from spiderpool.ipam import gc
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client, preconditions
from spiderpool.k8s.events import EventRecorder
from spiderpool.k8s.kinds import IPALLOCATION, LEASE, NODE, POD, STATEFULSET
from spiderpool.k8s.retry import TRANSIENT, Backoff, wait_event

log = logging.getLogger(__name__)

RECORD = IPALLOCATION
ERRORS = Counter("spiderpool_controller_gc_errors", "GC decisions that failed and are tried again", ["stage"])
RELEASED = Counter("spiderpool_controller_gc_released_ips", "IPs taken back by garbage collection", ["reason"])
SCAN_SECONDS = Histogram(
    "spiderpool_controller_gc_scan_duration_seconds",
    "Time to judge every record once",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
)
QUARANTINED = Counter("spiderpool_controller_gc_quarantined_ips", "IPs put in quarantine", ["reason"])
BATCH_SECONDS = 0.5
#: a record whose release failed on the API is tried again this soon
RETRY_SECONDS = 5.0
#: a scan gives the event loop back this often (a record judged on a stale copy is refused by its
#: precondition and seen again by the next scan)
YIELD_EVERY = 1000


class GarbageCollector:
    def __init__(self, rest: Client, cache: ObjectCache, settings: gc.Settings, *, scan_interval: float) -> None:
        self.rest, self.cache, self.settings, self.scan_interval = rest, cache, settings, scan_interval
        self.pods = WatchCache(rest, POD, "Pod")
        self.nodes = WatchCache(rest, NODE, "Node")
        self.leases = WatchCache(rest, LEASE, "Lease", namespace="kube-node-lease")
        self.statefulsets = WatchCache(rest, STATEFULSET, "StatefulSet")
        self.wake = asyncio.Event()
        for c in (self.pods, self.nodes, self.statefulsets):
            c.listeners.append(lambda *_: self.wake.set())
        self.lease_ages = gc.LeaseAges()
        self.recorder = EventRecorder(rest, "spiderpool-controller")
        self.leases.listeners.append(self._on_lease)

    def _on_lease(self, _kind: str, key: str, _obj: dict[str, Any]) -> None:
        # (called after the cache changed: a deleted Lease is no longer in it)
        self.lease_ages.saw(key.rsplit("/", 1)[-1], self.leases.get(key), time.monotonic())

    async def run(self) -> None:
        caches = (self.pods, self.nodes, self.leases, self.statefulsets)
        tasks = [asyncio.create_task(c.run()) for c in caches]
        try:
            for c in (*caches, self.cache.record_cache):
                await c.synced.wait()
            backoff = Backoff(1.0, self.scan_interval)
            while True:
                try:
                    with SCAN_SECONDS.time():
                        next_due = await self.scan()
                    backoff.reset()
                except Exception as exc:
                    # never the end of GC: the API may be restarting under us; look again soon
                    ERRORS.labels("scan").inc()
                    log.warning("gc scan failed, retrying error=%r", exc)
                    next_due = self.rest.server_time() + backoff.next()
                timeout = max(0.5, min(self.scan_interval, next_due - self.rest.server_time()))
                await wait_event(self.wake, timeout)
                self.wake.clear()
                await asyncio.sleep(BATCH_SECONDS)  # coalesce a burst of pod events into one scan
        finally:
            for t in tasks:
                t.cancel()

    async def scan(self) -> float:
        """Judge every record once; return when the next time-based decision falls due (on the
        apiserver's clock: the times judged are the apiserver's and the ones we wrote on it)."""
        now = self.rest.server_time()
        next_due = now + self.scan_interval
        for i, (name, obj) in enumerate(list(self.cache.records.items())):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # (the webhooks and watches share this loop: 20,000 records take 0.6 s)
            record = as_record(obj)
            spec = record["spec"]
            pod = self.pods.get(f"{spec['namespace']}/{spec['pod']}")
            node_name = spec.get("node", "")
            health = gc.node_health(self.nodes.get(node_name), self.lease_ages.age(node_name, time.monotonic()))
            sts = self.statefulsets.get(f"{spec['namespace']}/{spec.get('ownerName')}")
            verdict = gc.judge(obj, pod, health, sts, now, self.settings)
            if verdict.release:
                try:
                    await self._act(name, record, verdict)
                except ApiError as exc:
                    if exc.code not in (404, 409):  # gone, or changed under us: the next scan sees it
                        ERRORS.labels("record").inc()
                        log.warning("gc failed record=%s error=%s", name, exc)
                        next_due = min(next_due, now + RETRY_SECONDS)
                except TRANSIENT as exc:
                    ERRORS.labels("record").inc()
                    log.warning("gc failed record=%s error=%r", name, exc)
                    next_due = min(next_due, now + RETRY_SECONDS)
            next_due = min(next_due, self._due(record, pod, now))
        return next_due

    def _due(self, record: Record, pod: dict[str, Any] | None, now: float) -> float:
        spec = record["spec"]
        times = [
            gc.parse_time(spec.get("quarantineUntil")),
            (gc.parse_time(record["metadata"].get("creationTimestamp")) or now) + self.settings.min_age,
        ]
        if pod is not None:
            deleted = gc.parse_time(pod["metadata"].get("deletionTimestamp"))
            if deleted is not None:
                times.append(deleted + self.settings.terminating_delay)
        # (an infinite delay: terminating pods keep their IPs until the pod is gone)
        future = [t for t in times if t is not None and now < t < math.inf]
        return min(future) if future else now + self.scan_interval

    async def _tell(self, record: Record, reason: str, what: str) -> None:
        """An event on the pod when its address is taken back because of its node."""
        if reason not in gc.NODE_REASONS:
            return
        spec = record["spec"]
        node = spec.get("node") or "?"
        why = {
            "node_deleted": f"its node {node} was deleted",
            "node_out_of_service": f"its node {node} is tainted {gc.OUT_OF_SERVICE}",
            "node_lost": f"its node {node} has not renewed its Lease for over {self.settings.stale_lease:.0f}s",
            "node_not_ready": f"its node {node} is NotReady and the pod's grace period is over"
            " (ipam.gc.statelessPod.zombieOnNotReadyNode)",
        }[reason]
        involved = {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": spec["namespace"],
            "name": spec["pod"],
            "uid": spec["podUID"],
        }
        message = f"IP {spec['ip']} of interface {spec['interface']} (pool {spec['pool']}) {what}: {why}"
        await self.recorder.emit(involved, "Warning", "IPReleasedNodeLost", message)

    async def _act(self, name: str, record: Record, verdict: gc.Verdict) -> None:
        spec = record["spec"]
        holder = f"{spec['namespace']}/{spec['pod']} uid={spec['podUID']}"
        if verdict.confirm:
            try:
                live = await self.rest.get(POD, spec["pod"], spec["namespace"])
            except ApiError as exc:
                if exc.code != 404:
                    raise
            else:
                if live["metadata"].get("uid") == spec["podUID"]:
                    return  # our pod cache lagged: the pod is there
        if verdict.quarantine:
            until = datetime.datetime.fromtimestamp(self.rest.server_time() + self.settings.quarantine, datetime.UTC)
            updated = held_for(
                record,
                "",
                quarantineUntil=until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                releaseReason=verdict.reason,
            )
            # (a PUT with the resourceVersion read: a record changed meanwhile is refused, 409)
            self.cache.record_cache.apply_local(await self.rest.replace(RECORD, dict(updated)))
            QUARANTINED.labels(verdict.reason).inc()
            await self._tell(record, verdict.reason, f"quarantined until {updated['spec'].get('quarantineUntil')}")
            log.info(
                "ip quarantined ip=%s pool=%s holder=%s reason=%s until=%s",
                spec["ip"],
                spec["pool"],
                holder,
                verdict.reason,
                updated["spec"].get("quarantineUntil"),
            )
            return
        # Preconditions: never delete a record that was re-created for another pod meanwhile.
        await self.rest.delete(RECORD, name, preconditions=preconditions(record))
        self.cache.record_cache.apply_local(None, key=name)
        RELEASED.labels(verdict.reason).inc()
        await self._tell(record, verdict.reason, "released")
        reason = spec.get("releaseReason") if verdict.reason == "quarantine_over" else verdict.reason
        log.info("ip released ip=%s pool=%s holder=%s reason=%s", spec["ip"], spec["pool"], holder, reason)
