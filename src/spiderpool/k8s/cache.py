"""A watch-fed, in-memory cache of one resource type (objects as plain dicts, keyed by name or ns/name).

Reads cost no API call. A listener is told of every change (kind of object, key), so reconcilers
and indexes can follow the cache without a second watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lightkube import AsyncClient

log = logging.getLogger(__name__)

#: (kind, key, object); on deletion the object is the last one seen and the key is gone from the cache
Listener = Callable[[str, str, dict[str, Any]], None]


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class WatchCache:
    def __init__(
        self,
        client: AsyncClient,
        res: Any,
        kind: str,
        *,
        namespace: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        """``namespace="*"`` watches a namespaced kind in every namespace; ``fields`` is a field selector."""
        self.client, self.res, self.kind, self.namespace, self.fields = client, res, kind, namespace, fields
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

    async def run(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.namespace:
            kwargs["namespace"] = self.namespace
        if self.fields:
            kwargs["fields"] = self.fields
        while True:
            try:
                fresh: dict[str, dict[str, Any]] = {}
                async for obj in self.client.list(self.res, **kwargs):
                    d = obj.to_dict()
                    fresh[key_of(d)] = d
                for key in set(self.items) - set(fresh):
                    self._drop(key)
                for d in fresh.values():
                    self._set(d)
                self.synced.set()
                async for event, obj in self.client.watch(self.res, **kwargs):
                    d = obj.to_dict()
                    if event == "DELETED":
                        self._drop(key_of(d))
                    else:
                        self._set(d)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch broke kind=%s error=%s", self.kind, exc)
                await asyncio.sleep(1)  # back off before re-listing
