"""A watch-fed, in-memory cache of one resource type (objects as plain dicts, keyed by name or ns/name).

Reads cost no API call. A listener is told of every change (kind of object, key), so reconcilers
and indexes can follow the cache without a second watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from spiderpool.k8s.rest import ApiError, Kind, Rest

log = logging.getLogger(__name__)

#: (kind, key, object); on deletion the object is the last one seen and the key is gone from the cache
Listener = Callable[[str, str, dict[str, Any]], None]


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class WatchCache:
    def __init__(
        self,
        rest: Rest,
        res: Kind | Any,
        kind: str,
        *,
        namespace: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        """``res`` is a Kind or a lightkube resource class; ``namespace`` None or "*" watches a namespaced
        kind in every namespace; ``fields`` is a field selector."""
        self.rest, self.kind = rest, kind
        self.res = res if isinstance(res, Kind) else Kind.of(res)
        self.namespace = None if namespace in (None, "*") else namespace
        self.fields = ",".join(f"{k}={v}" for k, v in (fields or {}).items())
        self.items: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.listeners: list[Listener] = []

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)

    def _set(self, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        self.items[key] = obj
        self._notify(key, obj)

    def _drop(self, key: str) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self._notify(key, old)

    def _notify(self, key: str, obj: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(self.kind, key, obj)

    def apply_local(self, obj: dict[str, Any] | None, *, key: str | None = None) -> None:
        """Record a write this process made, before its watch event arrives."""
        if obj is None and key is not None:
            self._drop(key)
        elif obj is not None:
            self._set(obj)

    async def _relist(self) -> str:
        items, rv = await self.rest.list(self.res, self.namespace, fields=self.fields)
        fresh = {key_of(d): d for d in items}
        for key in set(self.items) - set(fresh):
            self._drop(key)
        for d in fresh.values():
            self._set(d)
        self.synced.set()
        return rv

    async def run(self) -> None:
        rv = ""
        while True:
            try:
                if not rv:
                    rv = await self._relist()
                events = self.rest.watch(self.res, self.namespace, resource_version=rv, fields=self.fields)
                async for event, obj in events:
                    rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                    if event == "BOOKMARK":
                        continue
                    if event == "DELETED":
                        self._drop(key_of(obj))
                    else:
                        self._set(obj)
                # the server closed the watch (its timeout): resume from where it ended
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.code != 410:  # 410 Gone: our resourceVersion is too old, a re-list is the cure
                    log.warning("watch broke kind=%s error=%s", self.kind, exc)
                    await asyncio.sleep(1)
                rv = ""
            except Exception as exc:
                log.warning("watch broke kind=%s error=%s", self.kind, exc)
                await asyncio.sleep(1)  # back off before re-listing
                rv = ""
