"""The reconcilers' queue: keys to look at again, where a burst of events coalesces into one pass
that handles each key once, and a key whose pass failed on an API error comes back in the next."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]


class BatchQueue:
    def __init__(
        self, name: str, batch_seconds: float, retry_on: tuple[type[Exception], ...], retry_pause: float = 0.0
    ) -> None:
        self.name = name
        self.batch_seconds = batch_seconds
        self.retry_on = retry_on
        self.retry_pause = retry_pause  # after a failed key, before the rest of the pass (API overloaded?)
        self.pending: set[Key] = set()
        self.wake = asyncio.Event()

    def add(self, *keys: Key) -> None:
        self.pending.update(keys)
        self.wake.set()

    async def run(self, handle: Callable[[str, str], Awaitable[None]]) -> None:
        """Forever: wait for keys, let a burst settle, then ``handle(kind, key)`` for each, sorted."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(self.batch_seconds)  # coalesce a burst of events into one pass
            batch, self.pending = self.pending, set()
            for kind, key in sorted(batch):
                try:
                    await handle(kind, key)
                except self.retry_on as exc:
                    log.warning("%s reconcile failed kind=%s key=%s error=%s", self.name, kind, key, exc)
                    self.add((kind, key))
                    await asyncio.sleep(self.retry_pause)
                except Exception:
                    log.exception("%s reconcile crashed kind=%s key=%s", self.name, kind, key)
