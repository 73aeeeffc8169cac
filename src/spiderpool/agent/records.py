"""The allocation records (``SpiderIPAllocation``, one per IP, named after it): the agent's index
of them, and every write the agent makes to them.

The index follows the records' watch cache: which IPs are used, which records each pod holds,
and how many of each pool's IPs each node's pods hold (the allocator spreads nodes over a pool
with it). Writes are safe against a stale cache: a record is created by name (the apiserver
refuses a second one, so no IP is held twice), and changed or deleted only with the uid and
resourceVersion it was read with, so a record released and re-created for another pod meanwhile
is never touched.
"""

from __future__ import annotations

import datetime
import logging
import time

from spiderpool.agent.metrics import API_WRITES, CONFLICTS, RELEASED_IPS
from spiderpool.api.constants import (
    LABEL_RECORD_NODE,
    LABEL_RECORD_POD,
    LABEL_RECORD_POD_UID,
    LABEL_RECORD_POOL,
    name_label,
    pod_label,
)
from spiderpool.api.objects import Record, RecordSpec, as_record, held_for, new_record
from spiderpool.ipam.allocate import FREE, MINE, OTHER, record_name
from spiderpool.k8s.cache import ScopedCache, WatchCache
from spiderpool.k8s.client import ApiError, Client, preconditions
from spiderpool.k8s.kinds import IPALLOCATION

log = logging.getLogger(__name__)

#: how often a delete re-reads a record that changed under it before giving up to the controller
DELETE_TRIES = 3
#: seconds a released IP waits before it is handed out again (``--ip-reuse-cooldown``)
REUSE_COOLDOWN = 5.0
#: the cooling map is pruned past this size
COOLING_MAX = 4096


def pool_scoped(client: Client, node: str) -> ScopedCache:
    """The records of the pools this node's agent serves: those its pods hold addresses in (found
    at start), and each pool it allocates from (``Records.serve``), not every record in the cluster."""

    async def pools_of_node() -> list[str]:
        items, _ = await client.list(IPALLOCATION, labels=f"{LABEL_RECORD_NODE}={name_label(node)}")
        return sorted({str((i["metadata"].get("labels") or {}).get(LABEL_RECORD_POOL, "")) for i in items} - {""})

    return ScopedCache(client, IPALLOCATION, label=LABEL_RECORD_POOL, discover=pools_of_node)


class Records:
    def __init__(
        self, client: Client, cache: WatchCache | ScopedCache, node: str, *, cooldown: float = REUSE_COOLDOWN
    ) -> None:
        self.client, self.cache, self.node = client, cache, node
        #: IPs with a record (from the watch) or being created by this agent right now
        self.used: set[str] = set()
        self.inflight: set[str] = set()
        #: pod uid -> names of its records ("" holds the quarantined ones)
        self.by_uid: dict[str, set[str]] = {}
        #: pool -> node -> how many of the pool's addresses the node's pods hold
        self.pool_nodes: dict[str, dict[str, int]] = {}
        #: record -> (pod uid, pool, node) as counted above
        self._counted: dict[str, tuple[str, str, str]] = {}
        #: IP -> when it may be handed out again (monotonic): just released, its last holder's
        #: interface may still carry it (the runtime's DEL frees the IP before the link goes)
        self.cooling: dict[str, float] = {}
        self.cooldown = cooldown
        #: (pod uid, interface) whose record create had an unknown outcome (the request may have been
        #: carried out and its answer lost): the next ADD for them looks in the API, not the cache
        self.doubts: set[tuple[str, str]] = set()
        cache.listeners.append(self._on_record)

    # ------------------------------------------------------------ the index
    def _on_record(self, _kind: str, key: str, obj: dict[str, object]) -> None:
        old = self._counted.pop(key, None)
        if old is not None:  # undo what the previous version of this record counted
            old_uid, old_pool, old_node = old
            keys = self.by_uid.get(old_uid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_uid[old_uid]
            counts = self.pool_nodes.get(old_pool, {})
            counts[old_node] = counts.get(old_node, 1) - 1
            if counts[old_node] <= 0:
                counts.pop(old_node, None)
                if not counts:
                    self.pool_nodes.pop(old_pool, None)
        spec = obj.get("spec")
        ip = str(spec.get("ip", "")) if isinstance(spec, dict) else ""
        if key in self.cache.items and isinstance(spec, dict):
            self.used.add(ip)
            uid, pool, node = str(spec.get("podUID", "")), str(spec.get("pool", "")), str(spec.get("node", ""))
            self._counted[key] = (uid, pool, node)
            self.by_uid.setdefault(uid, set()).add(key)
            counts = self.pool_nodes.setdefault(pool, {})
            counts[node] = counts.get(node, 0) + 1
        elif ip in self.used:
            self.used.discard(ip)
            if self.cooldown > 0:
                now = time.monotonic()
                self.cooling[ip] = now + self.cooldown
                if len(self.cooling) > COOLING_MAX:  # (bounded: drop what has cooled)
                    self.cooling = {k: t for k, t in self.cooling.items() if t > now}

    def cooling_until(self, ip: str) -> float | None:
        """When ``ip``, released a moment ago, may be handed out again (None: it may now)."""
        until = self.cooling.get(ip)
        if until is None:
            return None
        if until <= time.monotonic():
            del self.cooling[ip]
            return None
        return until

    async def serve(self, pool: str) -> None:
        """Make sure the index holds every record of ``pool`` (a scoped cache watches it from now on)."""
        if isinstance(self.cache, ScopedCache):
            await self.cache.serve(name_label(pool))

    def unserve(self, pool: str) -> None:
        """``pool`` is gone: stop watching its records."""
        if isinstance(self.cache, ScopedCache):
            self.cache.unserve(name_label(pool))

    async def predecessors(self, namespace: str, name: str) -> list[Record]:
        """The records held under the pod name ``namespace/name`` (by any uid): from the index, and
        when it has none and watches only some pools, from the API (their pools are served from then on)."""
        found = [r for r in self.all() if r["spec"]["namespace"] == namespace and r["spec"]["pod"] == name]
        if found or not isinstance(self.cache, ScopedCache):
            return found
        items, _ = await self.client.list(IPALLOCATION, labels=f"{LABEL_RECORD_POD}={pod_label(namespace, name)}")
        for pool in {str(i["spec"]["pool"]) for i in items}:
            await self.serve(pool)
        return [r for r in self.all() if r["spec"]["namespace"] == namespace and r["spec"]["pod"] == name]

    async def read_of(self, uid: str, ifname: str) -> list[Record]:
        """What pod ``uid`` holds for ``ifname``, read from the API (the cache may have missed it):
        the records found are put into the cache too."""
        items, _ = await self.client.list(IPALLOCATION, labels=f"{LABEL_RECORD_POD_UID}={uid}")
        for item in items:
            self.cache.apply_local(item)
        self.doubts.discard((uid, ifname))
        return [as_record(i) for i in items if i.get("spec", {}).get("interface") == ifname]

    def get(self, name: str) -> Record | None:
        obj = self.cache.get(name)
        return as_record(obj) if obj is not None else None

    def all(self) -> list[Record]:
        return [as_record(r) for r in self.cache.items.values()]

    def of(self, uid: str, ifname: str | None = None) -> list[Record]:
        """The records pod ``uid`` holds (for NIC ``ifname``, when given)."""
        out = []
        for key in self.by_uid.get(uid, ()):
            r = self.get(key)
            if r is not None and (ifname is None or r["spec"]["interface"] == ifname):
                out.append(r)
        return out

    def held_by(self, ip: str) -> int:
        """Who holds ``ip``, as the allocator's candidate walk asks: FREE, MINE (this node) or OTHER."""
        if ip in self.inflight:
            return MINE
        if ip not in self.used:
            return FREE
        record = self.get(record_name(ip))
        # (a create just lost to another agent leaves the IP used but not yet in the cache: OTHER)
        return MINE if record is not None and record["spec"].get("node") == self.node else OTHER

    # ------------------------------------------------------------ writes
    async def create(self, spec: RecordSpec) -> bool:
        """Take ``spec["ip"]`` for the pod; False if another holder has it."""
        name = record_name(spec["ip"])
        API_WRITES.labels("create_record").inc()
        try:
            created = await self.client.create(IPALLOCATION, dict(new_record(name, spec)))
        except ApiError as exc:
            if exc.code != 409:
                if exc.code >= 500:  # (the server may have stored it before failing to answer)
                    self.doubts.add((spec["podUID"], spec["interface"]))
                raise
            # Taken: by another pod, or by our own first try of a create the client retried.
            if exc.attempts > 1 and await self._ours(name, spec):
                return True
            CONFLICTS.inc()
            self.used.add(spec["ip"])  # someone else holds it; our watch will confirm
            return False
        except Exception:
            # no answer (the connection broke, a timeout): the create may have been carried out
            self.doubts.add((spec["podUID"], spec["interface"]))
            raise
        self.cache.apply_local(created)
        return True

    async def _ours(self, name: str, spec: RecordSpec) -> bool:
        try:
            current = as_record(await self.client.get(IPALLOCATION, name))
        except ApiError as exc:
            if exc.code == 404:
                return False  # released again meanwhile: the next candidate then
            raise
        have = current["spec"]
        if (have["podUID"], have["interface"], have.get("node")) != (
            spec["podUID"],
            spec["interface"],
            spec.get("node"),
        ):
            return False
        self.cache.apply_local(dict(current))
        return True

    async def delete(self, ip: str, uid: str, *, reason: str = "") -> bool:
        """Delete the record of ``ip`` if pod ``uid`` holds it, never another pod's: the delete
        carries the uid and resourceVersion of the version read, and a record the cache does not
        know is read first. True if it is gone (or was already)."""
        name = record_name(ip)
        record = self.get(name)
        for _ in range(DELETE_TRIES):
            if record is None:
                record = await self._read(name)
                if record is None:
                    self.cache.apply_local(None, key=name)
                    return True
            if record["spec"]["podUID"] != uid:
                return False
            try:
                API_WRITES.labels("delete_record").inc()
                await self.client.delete(IPALLOCATION, name, preconditions=preconditions(record))
            except ApiError as exc:
                if exc.code == 409:  # changed since we read it: read it again and judge again
                    record = None
                    continue
                if exc.code != 404:
                    raise
            self.cache.apply_local(None, key=name)
            if reason:
                RELEASED_IPS.labels(reason).inc()
            return True
        log.warning("record changed under every delete, left to the controller ip=%s uid=%s", ip, uid)
        return False

    async def _read(self, name: str) -> Record | None:
        try:
            return as_record(await self.client.get(IPALLOCATION, name))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def delete_quarantined(self, record: Record) -> bool:
        """End a quarantine early (its sandbox is gone); False if the record changed meanwhile."""
        name = record["metadata"]["name"]
        try:
            API_WRITES.labels("delete_record").inc()
            await self.client.delete(IPALLOCATION, name, preconditions=preconditions(record))
        except ApiError as exc:
            if exc.code in (404, 409):  # gone already, or changed meanwhile: leave it to the controller
                return False
            raise
        self.cache.apply_local(None, key=name)
        return True

    async def quarantine(self, ip: str, uid: str, reason: str, seconds: float) -> None:
        """Take ``ip`` from pod ``uid`` but hold it for nobody until the controller frees it (see GC)."""
        record = self.get(record_name(ip))
        if record is None or record["spec"]["podUID"] != uid:
            return
        # (the apiserver's clock: the controller ends the quarantine on it, whatever this node's says)
        until = datetime.datetime.fromtimestamp(self.client.server_time() + seconds, datetime.UTC)
        body = held_for(record, "", quarantineUntil=until.strftime("%Y-%m-%dT%H:%M:%SZ"), releaseReason=reason)
        API_WRITES.labels("update_record").inc()
        # (a PUT with the resourceVersion read: a record changed meanwhile is refused, 409)
        self.cache.apply_local(await self.client.replace(IPALLOCATION, dict(body)))
        RELEASED_IPS.labels(reason).inc()
        log.warning("ip quarantined ip=%s uid=%s reason=%s until=%s", ip, uid, reason, body["spec"]["quarantineUntil"])

    async def move_to(self, record: Record, uid: str, container: str) -> Record:
        """Give a StatefulSet predecessor's record to its successor (same name, new uid)."""
        body = held_for(record, uid, node=self.node, containerID=container)
        API_WRITES.labels("update_record").inc()
        updated = await self.client.replace(IPALLOCATION, dict(body))
        self.cache.apply_local(updated)
        return as_record(updated)
