"""A loop that waits for an event must stop when it is cancelled, even if the event is set in the
same instant: Python 3.11's ``asyncio.wait_for`` returns instead (the cancel is lost), which once
left a leader's GC task running after it was cancelled, so the leader never restarted it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spiderpool.k8s.retry import pause, wait_event

SRC = Path(__file__).resolve().parents[2] / "src" / "spiderpool"


async def _cancel_as_the_event_is_set() -> asyncio.Task[bool]:
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 10))
    for _ in range(3):  # (let the task reach its wait)
        await asyncio.sleep(0)
    event.set()
    task.cancel()
    return task


def test_a_cancel_that_arrives_as_the_event_is_set_is_not_lost() -> None:
    async def scenario() -> None:
        task = await _cancel_as_the_event_is_set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_wait_event_reports_set_or_timed_out() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        event = asyncio.Event()
        timed_out = await wait_event(event, 0.01)
        event.set()
        return timed_out, await wait_event(event, 10), await pause(10, event)

    assert asyncio.run(scenario()) == (False, True, True)


def test_no_product_code_waits_with_wait_for() -> None:
    users = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "asyncio.wait_for(" in p.read_text()]
    assert users == [], f"use retry.wait_event or asyncio.timeout instead of asyncio.wait_for in {users}"
