"""Back-off with jitter, and a pause that ends early when the process is asked to stop.

Every loop of ours that talks to the API waits through these: a failure never spins, and a
shutdown never waits out a long back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

T = TypeVar("T")


class Backoff:
    """Exponential delays with "equal jitter" (half fixed, half random): successive failures wait
    ``base``, ``2*base``, ... up to ``cap``; many clients failing at once spread out."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self.failures = 0

    def peek(self) -> float:
        """The delay the next failure would wait, without jitter."""
        return float(min(self.cap, self.base * 2**self.failures))

    def next(self) -> float:
        delay = self.peek()
        self.failures += 1
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self.failures = 0


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass (None: no limit); whether it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it loses a cancellation that arrives as the event is
    set (it returns the result instead of raising), and the loop around it then runs on, cancelled
    in vain; a leader whose GC task was cancelled so never saw it end. ``asyncio.timeout`` keeps it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile; True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    return await wait_event(stop, seconds)


#: what a call to the API raises when the API, not the call, is the trouble
TRANSIENT: tuple[type[BaseException], ...] = (OSError, TimeoutError, aiohttp.ClientError)


async def until(
    attempt: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    log: logging.Logger,
    stop: asyncio.Event | None = None,
    deadline: float | None = None,
    backoff: Backoff | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> T | None:
    """Call ``attempt`` until it returns something other than None, backing off between calls.

    An exception in ``errors`` (plus connection errors and timeouts) is logged and retried; any
    other propagates. Returns None when ``stop`` is set or the ``deadline`` (monotonic) passes.
    """
    backoff = backoff or Backoff(1.0, 30.0)
    loop = asyncio.get_running_loop()
    while True:
        try:
            result = await attempt()
            if result is not None:
                return result
            log.warning("waiting: %s", what)
        except (*TRANSIENT, *errors) as exc:
            log.warning("retrying: %s error=%s", what, exc)
        delay = backoff.next()
        if deadline is not None:
            if loop.time() >= deadline:
                return None
            delay = min(delay, max(0.0, deadline - loop.time()))
        if await pause(delay, stop):
            return None
