"""The reconcilers' work queue, in the manner of client-go's rate-limited queue.

Keys (kind, name) wait to be looked at again. A burst of events coalesces into one pass that
handles each key once. A key whose handling fails, on *any* exception, comes back after its own
exponential back-off (``base_delay`` doubling up to ``max_delay``, jittered) while the other keys
carry on; its first success forgets the failures. ``add_after`` schedules a key for later (a grace
period ending). Nothing is dropped: a key that keeps failing is retried at ``max_delay``, and
every failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from spiderpool.k8s.client import ApiError
from spiderpool.k8s.retry import TRANSIENT, Backoff, wait_event

log = logging.getLogger(__name__)

Key = tuple[str, str]

FAILURES = Counter("spiderpool_controller_reconcile_errors", "Reconciles that failed and were requeued", ["queue"])
DEPTH = Gauge("spiderpool_controller_workqueue_depth", "Keys waiting in a work queue (now or later)", ["queue"])


class WorkQueue:
    def __init__(self, name: str, batch_seconds: float, *, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        self.name = name
        self.batch_seconds = batch_seconds
        self.base_delay, self.max_delay = base_delay, max_delay
        self.pending: set[Key] = set()
        #: key -> when it is due (monotonic clock)
        self.later: dict[Key, float] = {}
        #: key -> its back-off since its last success
        self.failing: dict[Key, Backoff] = {}
        self.wake = asyncio.Event()

    def add(self, *keys: Key) -> None:
        self.pending.update(keys)
        self._depth()
        self.wake.set()

    def add_after(self, key: Key, seconds: float) -> None:
        """Handle ``key`` in ``seconds`` (or sooner, if it is added or due earlier meanwhile)."""
        due = time.monotonic() + max(0.0, seconds)
        self.later[key] = min(due, self.later.get(key, due))
        self._depth()
        self.wake.set()

    def _depth(self) -> None:
        DEPTH.labels(self.name).set(len(self.pending) + len(self.later))

    def _due(self) -> float | None:
        """Seconds until the next delayed key is due (None: none is waiting)."""
        if not self.later:
            return None
        return max(0.0, min(self.later.values()) - time.monotonic())

    def _take_due(self) -> None:
        now = time.monotonic()
        for key, due in list(self.later.items()):
            if due <= now:
                del self.later[key]
                self.pending.add(key)

    async def run(self, handle: Callable[[str, str], Awaitable[None]]) -> None:
        """Forever: wait for keys, let a burst settle, then ``handle(kind, key)`` for each, sorted."""
        while True:
            if not self.pending:
                await wait_event(self.wake, self._due())
            self.wake.clear()
            await asyncio.sleep(self.batch_seconds)  # coalesce a burst of events into one pass
            self._take_due()
            batch, self.pending = self.pending, set()
            for key in sorted(batch):
                self.later.pop(key, None)  # handled now: an earlier schedule is moot
                try:
                    await handle(*key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(key, exc)
                else:
                    self.failing.pop(key, None)
            self._depth()

    def _failed(self, key: Key, exc: Exception) -> None:
        backoff = self.failing.setdefault(key, Backoff(self.base_delay, self.max_delay))
        delay = backoff.next()
        FAILURES.labels(self.name).inc()
        kind, name = key
        if isinstance(exc, (ApiError, *TRANSIENT)):  # the API's trouble, not ours: no traceback
            log.warning("%s reconcile failed kind=%s key=%s retry_in=%.1fs error=%s", self.name, kind, name, delay, exc)
        else:  # a bug, most likely: the traceback, and still a retry
            log.error("%s reconcile crashed kind=%s key=%s retry_in=%.1fs", self.name, kind, name, delay, exc_info=exc)
        self.add_after(key, delay)
