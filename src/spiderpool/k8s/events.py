"""Kubernetes Events, with repeats aggregated the way client-go's recorder does.

The same event (same object, type, reason and message, from the same component) posted again
does not create a second Event: the first one's ``count`` goes up and its ``lastTimestamp`` moves
on, with one PATCH. A runtime that retries a failing CNI ADD every few seconds so leaves one Event
reading "x40 over 10m", not forty. The memory of what was posted is bounded (least recently used
first out); an Event deleted meanwhile (their TTL is an hour by default) is created again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import EVENT
from spiderpool.k8s.retry import TRANSIENT

log = logging.getLogger(__name__)

#: how many distinct events are remembered for aggregation (client-go keeps 4096 too)
CACHE_SIZE = 4096
MESSAGE_MAX = 1024


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    lock: asyncio.Lock


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, client: Client, component: str, host: str = "", cache_size: int = CACHE_SIZE) -> None:
        self.client, self.component, self.host = client, component, host
        self.cache_size = cache_size
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()

    async def emit(self, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """Post (or count once more) an event about ``involved`` (an object reference: kind,
        namespace, name, uid, apiVersion). Failures are logged, never raised: an event is a report."""
        message = message[:MESSAGE_MAX]
        key = (
            str(involved.get("kind")),
            str(involved.get("namespace", "")),
            str(involved.get("name")),
            str(involved.get("uid", "")),
            event_type,
            reason,
            message,
        )
        seen = self._seen.get(key)
        if seen is None:
            seen = _Seen("", str(involved.get("namespace") or "default"), 0, asyncio.Lock())
            self._seen[key] = seen
            while len(self._seen) > self.cache_size:
                self._seen.popitem(last=False)
        self._seen.move_to_end(key)
        async with seen.lock:  # one write per event at a time, so counts never go backwards
            try:
                if seen.name and await self._bump(seen):
                    return
                await self._create(seen, involved, event_type, reason, message)
            except ApiError as exc:
                log.warning("event not recorded reason=%s error=%s", reason, exc)
            except TRANSIENT as exc:
                log.warning("event not recorded reason=%s error=%r", reason, exc)

    async def _bump(self, seen: _Seen) -> bool:
        try:
            await self.client.patch(
                EVENT, seen.name, {"count": seen.count + 1, "lastTimestamp": _now()}, seen.namespace
            )
        except ApiError as exc:
            if exc.code == 404:  # expired (or deleted): start a new one
                return False
            raise
        seen.count += 1
        return True

    async def _create(self, seen: _Seen, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        now = _now()
        name = str(involved.get("name") or "object")
        source: dict[str, str] = {"component": self.component}
        if self.host:
            source["host"] = self.host
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name[:200]}.", "namespace": seen.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.host or self.component,
        }
        created = await self.client.create(EVENT, body)
        seen.name, seen.count = str(created["metadata"]["name"]), 1
