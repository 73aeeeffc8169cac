"""A watch-fed, in-memory cache of one resource type (objects as plain dicts, keyed by name or ns/name).

Reads cost no API call. A listener is told of every change (kind of object, key), so reconcilers
and indexes can follow the cache without a second watch.

Writes this process makes are applied at once (``apply_local``), before their watch event. Then a
watch event can arrive late, older than what is cached: it is judged by resourceVersion and never
undoes a newer local write. (resourceVersions are compared as the integers etcd makes them; one
that is not an integer is never judged stale.) A local delete leaves a tombstone until the
watch's own DELETED event (or the next list) settles it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import Kind
from spiderpool.k8s.retry import Backoff

log = logging.getLogger(__name__)

#: (kind, key, object); on deletion the object is the last one seen and the key is gone from the cache
Listener = Callable[[str, str, dict[str, Any]], None]

#: local deletes remembered until their watch event comes (a bound, should events be lost)
TOMBSTONES = 4096


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def _rv(obj: dict[str, Any] | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def older(obj: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """``obj`` is an earlier version than ``than`` (by resourceVersion)."""
    a, b = _rv(obj), _rv(than)
    return a is not None and b is not None and a < b


class WatchCache:
    def __init__(
        self,
        client: Client,
        res: Kind,
        kind: str = "",
        *,
        namespace: str | None = None,
        fields: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        backoff: Backoff | None = None,
        items: dict[str, dict[str, Any]] | None = None,
        listeners: list[Listener] | None = None,
    ) -> None:
        """``namespace`` None or "*" watches a namespaced kind in every namespace; ``fields`` is a
        field selector, ``labels`` a label selector (equality). ``items`` and ``listeners`` may be
        shared with other caches of the same kind whose selectors match other objects (``ScopedCache``)."""
        self.client, self.res, self.kind = client, res, kind or res.name
        self.namespace = None if namespace in (None, "*") else namespace
        self.fields = ",".join(f"{k}={v}" for k, v in (fields or {}).items())
        self.labels = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        self._label_eq = dict(labels or {})
        self._shared = items is not None
        self.items: dict[str, dict[str, Any]] = {} if items is None else items
        self.synced = asyncio.Event()
        self.listeners: list[Listener] = [] if listeners is None else listeners
        self.backoff = backoff or Backoff(0.5, 30.0)
        #: key -> the last version we deleted ourselves
        self._tombstones: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: the watch is open, so what happens reaches the cache within moments; False from the first
        #: failure until the watch is open again (meanwhile the cache may miss writes, ours included)
        self.live = False

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)

    def owns(self, obj: dict[str, Any]) -> bool:
        """``obj`` is one of this cache's (its labels match the selector)."""
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self._label_eq.items())

    def _opened(self) -> None:
        self.live = True

    def _set(self, obj: dict[str, Any]) -> None:
        # managedFields are most of a small object's size and nothing here reads them: not kept
        # (an agent's RSS per 10k records, docs/benchmarks.md)
        obj.get("metadata", {}).pop("managedFields", None)
        key = key_of(obj)
        if older(obj, self.items.get(key)):
            return  # a late event: we hold a newer version already
        gone = self._tombstones.get(key)
        if gone is not None:
            if not older(gone, obj):
                return  # a late event of what we deleted
            del self._tombstones[key]  # created again since
        self.items[key] = obj
        self._notify(key, obj)

    def _drop(self, key: str, last: dict[str, Any] | None = None) -> None:
        if last is not None and older(last, self.items.get(key)):
            return  # the deletion of an earlier incarnation; the cached one was created after it
        self._tombstones.pop(key, None)
        old = self.items.pop(key, None)
        if old is not None:
            self._notify(key, old)

    def _notify(self, key: str, obj: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(self.kind, key, obj)

    def apply_local(self, obj: dict[str, Any] | None, *, key: str | None = None) -> None:
        """Record a write this process made, before its watch event arrives: ``obj`` as the
        server answered it, or None and ``key`` for a delete."""
        if obj is not None:
            self._set(obj)
            return
        if key is None:
            return
        old = self.items.pop(key, None)
        if old is not None:
            self._tombstones[key] = old
            self._tombstones.move_to_end(key)
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)
            self._notify(key, old)

    async def _relist(self) -> str:
        items, rv = await self.client.list(self.res, self.namespace, fields=self.fields, labels=self.labels)
        fresh = {key_of(d): d for d in items}
        listed = {"metadata": {"resourceVersion": rv}}
        self._tombstones.clear()  # the list is the truth now
        for key in set(self.items) - set(fresh):
            if self._shared and not self.owns(self.items[key]):
                continue  # another cache's, sharing these items
            if older(listed, self.items[key]):
                continue  # written by us after the list was taken
            self._drop(key)
        for d in fresh.values():
            self._set(d)
        self.synced.set()
        return rv

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion; resume a watch the server ended where
        it ended, re-list on 410 Gone, and back off (jittered, growing) on every failure."""
        rv = ""
        while True:
            try:
                if not rv:
                    rv = await self._relist()
                events = self.client.watch(
                    self.res,
                    self.namespace,
                    resource_version=rv,
                    fields=self.fields,
                    labels=self.labels,
                    on_open=self._opened,
                )
                async for event, obj in events:
                    if event == "DELETED":
                        self._drop(key_of(obj), obj)
                    elif event != "BOOKMARK":
                        self._set(obj)
                    # (after the event is applied: a watch resumed from here misses nothing)
                    rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                    self.backoff.reset()
                # the server closed the watch (its timeout): resume from where it ended
                continue
            except asyncio.CancelledError:
                self.live = False
                raise
            except ApiError as exc:
                self.live = False
                if exc.code == 410:  # our resourceVersion is too old: a re-list is the cure
                    rv = ""
                    if self.backoff.failures == 0:
                        self.backoff.next()  # a first 410 re-lists at once; repeated ones back off
                        continue
                else:
                    log.warning("watch broke kind=%s error=%s", self.kind, exc)
            except Exception as exc:
                self.live = False
                # (the connection, most often: resumed from the last resourceVersion seen)
                log.warning("watch broke kind=%s error=%r", self.kind, exc)
            await asyncio.sleep(self.backoff.next())


class ScopedCache:
    """The objects of one kind whose label ``label`` has one of the values asked for: one watch per
    value (``serve``), opened on demand, their objects in one set of items. Readers use it as a
    ``WatchCache``.

    Why: the agents' record watch. With one watch of every record, every agent decodes every
    allocation in the cluster, and the agents' CPU per allocation grows with the number of nodes.
    Watching only the pools it allocates from (and those its node's pods hold addresses in), an
    agent's cost follows the pools it serves (docs/benchmarks.md, "watch fan-out").
    """

    def __init__(
        self,
        client: Client,
        res: Kind,
        *,
        label: str,
        discover: Callable[[], Awaitable[list[str]]],
        backoff: Backoff | None = None,
    ) -> None:
        """``discover`` names the values to serve from the start (run once, retried until it answers)."""
        self.client, self.res, self.kind, self.label = client, res, res.name, label
        self.discover = discover
        self.items: dict[str, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.synced = asyncio.Event()
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.parts: dict[str, WatchCache] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def live(self) -> bool:
        return all(p.live for p in self.parts.values())

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)

    def served(self) -> list[str]:
        return sorted(self.parts)

    async def serve(self, value: str) -> None:
        """Watch the objects labelled ``value`` (if not yet), and return once they are in the items."""
        part = self.parts.get(value)
        if part is None:
            part = WatchCache(
                self.client,
                self.res,
                self.kind,
                labels={self.label: value},
                items=self.items,
                listeners=self.listeners,
            )
            self.parts[value] = part
            self._tasks[value] = asyncio.create_task(part.run(), name=f"watch {self.kind} {self.label}={value}")
            log.debug("watch opened kind=%s %s=%s", self.kind, self.label, value)
        await part.synced.wait()

    def unserve(self, value: str) -> None:
        """Stop watching ``value`` (its objects leave the items)."""
        part = self.parts.pop(value, None)
        task = self._tasks.pop(value, None)
        if task is not None:
            task.cancel()
        if part is None:
            return
        for key in [k for k, obj in self.items.items() if part.owns(obj)]:
            part._drop(key)

    def _part_of(self, obj: dict[str, Any] | None) -> WatchCache | None:
        labels = (obj or {}).get("metadata", {}).get("labels") or {}
        value = labels.get(self.label)
        return self.parts.get(value) if isinstance(value, str) else None

    def apply_local(self, obj: dict[str, Any] | None, *, key: str | None = None) -> None:
        part = self._part_of(obj if obj is not None else self.items.get(key or ""))
        if part is not None:
            part.apply_local(obj, key=key)
            return
        # (an object of a value not served, read on purpose: kept until its value is served)
        if obj is not None:
            k = key_of(obj)
            if not older(obj, self.items.get(k)):
                self.items[k] = obj
                for listener in self.listeners:
                    listener(self.kind, k, obj)
        elif key is not None and (old := self.items.pop(key, None)) is not None:
            for listener in self.listeners:
                listener(self.kind, key, old)

    async def run(self) -> None:
        try:
            while True:
                try:
                    values = await self.discover()
                    break
                except Exception as exc:
                    log.warning("scope discovery failed kind=%s error=%r", self.kind, exc)
                    await asyncio.sleep(self.backoff.next())
            await asyncio.gather(*(self.serve(v) for v in values))
            self.synced.set()
            await asyncio.Event().wait()  # the parts run as tasks of their own
        finally:
            for task in self._tasks.values():
                task.cancel()
