"""Leader election on a coordination.k8s.io Lease, with client-go's semantics.

A candidate takes the Lease when it is free or its holder has not renewed it within
``leaseDurationSeconds``; every write carries the resourceVersion it read, so two candidates can
never both win. The leader renews every ``retry_period``; if it cannot renew within
``renew_deadline`` it steps down. On a clean shutdown it releases the Lease so a standby takes
over at once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import Counter, Gauge

from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import LEASE
from spiderpool.k8s.retry import Backoff, wait_event

log = logging.getLogger(__name__)

IS_LEADER = Gauge("spiderpool_controller_is_leader", "1 while this replica holds the leader Lease")
WORK_RESTARTS = Counter(
    "spiderpool_controller_leader_work_restarts", "Times the leader's work ended while it led, and was started again"
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _fmt(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: Client,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        self.client = client
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.is_leader = False
        self._observed: tuple[str, str] | None = None
        self._observed_at = _now()

    async def _get(self) -> dict[str, Any] | None:
        try:
            return await self.client.get(LEASE, self.name, self.namespace)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def try_acquire_or_renew(self) -> bool:
        now = _now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": _fmt(now),
        }
        current = await self._get()
        if current is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": _fmt(now), "leaseTransitions": 0},
            }
            try:
                await self.client.create(LEASE, body)
                return True
            except ApiError as exc:
                if exc.code == 409:
                    return False
                raise
        cur = current.get("spec", {})
        holder = cur.get("holderIdentity") or ""
        duration = float(cur.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity:
            # Judge expiry by our own clock since we first saw this renewal (immune to clock skew).
            record = (holder, str(cur.get("renewTime")))
            if record != self._observed:
                self._observed, self._observed_at = record, now
                return False
            if (now - self._observed_at).total_seconds() < duration:
                return False
        new_spec = dict(cur)
        new_spec.update(spec)
        if holder != self.identity:
            new_spec["acquireTime"] = _fmt(now)
            new_spec["leaseTransitions"] = int(cur.get("leaseTransitions") or 0) + 1
        current["spec"] = new_spec
        try:
            await self.client.replace(LEASE, current)  # carries the resourceVersion read: compare-and-swap
        except ApiError as exc:
            if exc.code == 409:
                return False
            raise
        return True

    async def run(self, on_started: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event) -> None:
        """Campaign until ``stop``; run ``on_started`` (as a task) while leading.

        The work is supervised: should it end while we lead (it is meant to run until cancelled),
        it is logged, counted in ``spiderpool_controller_leader_work_restarts_total`` and started
        again after a back-off, at the latest by the next renewal. A leader never sits on the
        Lease with its work dead."""
        work: asyncio.Task[None] | None = None
        last_renew = 0.0
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.retry_period / 2, self.lease_duration)
        restart_at = started_at = 0.0
        try:
            while not stop.is_set():
                try:
                    async with asyncio.timeout(self.retry_period * 2):  # (not wait_for: retry.wait_event)
                        ok = await self.try_acquire_or_renew()
                except Exception as exc:
                    log.warning("lease update failed lease=%s/%s error=%s", self.namespace, self.name, exc)
                    ok = False
                if ok:
                    last_renew = loop.time()
                    if not self.is_leader:
                        self.is_leader = True
                        IS_LEADER.set(1)
                        log.info("became leader lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
                        work, started_at = asyncio.create_task(on_started(), name="leader-work"), loop.time()
                        backoff.reset()
                    elif work is not None and work.done():
                        if not restart_at:
                            _report_end(work)
                            if loop.time() - started_at > 2 * self.lease_duration:
                                backoff.reset()  # it ran a good while: not a crash loop
                            restart_at = loop.time() + backoff.next()
                        if loop.time() >= restart_at:
                            WORK_RESTARTS.inc()
                            log.warning("restarting the leader's work lease=%s/%s", self.namespace, self.name)
                            work, started_at = asyncio.create_task(on_started(), name="leader-work"), loop.time()
                            restart_at = 0.0
                elif self.is_leader and loop.time() - last_renew > self.renew_deadline:
                    log.warning("lost leadership lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
                    self.is_leader = False
                    IS_LEADER.set(0)
                    if work is not None:
                        work.cancel()
                        work = None
                await wait_event(stop, self.retry_period)
        finally:
            if work is not None:
                work.cancel()
            if self.is_leader:
                await self.release()

    async def release(self) -> None:
        """Give the Lease up so a standby can take it without waiting for expiry."""
        self.is_leader = False
        IS_LEADER.set(0)
        try:
            current = await self._get()
            if current is None or current.get("spec", {}).get("holderIdentity") != self.identity:
                return
            current["spec"]["holderIdentity"] = ""
            current["spec"]["leaseDurationSeconds"] = 1
            await self.client.replace(LEASE, current)
            log.info("released leadership lease=%s/%s", self.namespace, self.name)
        except Exception as exc:
            log.warning("could not release lease error=%s", exc)


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        log.error("the leader's work was cancelled while leading; it is started again")
    elif task.exception() is not None:
        exc = task.exception()
        log.error("the leader's work failed while leading; it is started again", exc_info=exc)
    else:
        log.error("the leader's work ended while leading; it is started again")
