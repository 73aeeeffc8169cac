"""The controller's loops recover: GC across an apiserver restart, the leader's supervised work,
the work queue's retries. Against a real apiserver on loopback (no nodes)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from prometheus_client import REGISTRY

from spiderpool.controller import leader
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.gc import GarbageCollector
from spiderpool.controller.main import Controller, parse_args
from spiderpool.controller.workqueue import WorkQueue
from spiderpool.ipam import gc
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.client import Client
from spiderpool.k8s.kinds import IPALLOCATION
from spiderpool.k8s.retry import Backoff
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import create_record, eventually, gone, record_spec, unique


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def plant(client: Client, ip: str, *, pod: str, quarantine_until: str = "") -> None:
    """A record for a pod that does not exist."""
    if quarantine_until:
        spec = record_spec(
            ip, "nowhere", "default", pod, "", quarantineUntil=quarantine_until, releaseReason="pod_deleted"
        )
    else:
        spec = record_spec(ip, "nowhere", "default", pod, f"uid-{pod}")
    await create_record(client, spec)


async def test_gc_keeps_working_after_the_apiserver_restarts_under_it(apiserver: ApiServer, client: Client) -> None:
    cache = ObjectCache(client)
    collector = GarbageCollector(client, cache, gc.Settings(quarantine=1.0, min_age=0.0), scan_interval=5.0)
    # (the watches' back-off, up to 30 s as client-go's reflector, shortened: what is tested is that
    # GC recovers, not how long the back-off grows while the apiserver is away)
    for watch in (cache.record_cache, collector.pods, collector.nodes, collector.leases, collector.statefulsets):
        watch.backoff = Backoff(0.2, 2.0)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(collector.run())]
    try:
        # a quarantine that ends while the apiserver is down: GC's release of it meets a dead API
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
        await plant(client, "10.70.0.1", pod="before", quarantine_until=soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
        await eventually(lambda: record_name("10.70.0.1") in cache.records, within=30, what="GC to see the record")
        errors = metric("spiderpool_controller_gc_errors_total", stage="record")
        apiserver.stop_apiserver()
        try:
            await eventually(
                lambda: metric("spiderpool_controller_gc_errors_total", stage="record") > errors,
                within=60,
                what="GC to try the release while the apiserver is down",
            )
        finally:
            await asyncio.to_thread(apiserver.start_apiserver)
        assert not tasks[1].done(), f"GC ended: {tasks[1]}"
        await plant(client, "10.70.0.2", pod="after")
        for ip in ("10.70.0.1", "10.70.0.2"):
            await eventually(
                lambda ip=ip: gone(client, IPALLOCATION, record_name(ip)), within=90, what=f"GC to release {ip}"
            )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_killing_the_leaders_gc_task_restarts_it(apiserver: ApiServer, client: Client) -> None:
    args = parse_args(
        [
            f"--kubeconfig={apiserver.kubeconfig}",
            "--namespace=default",
            f"--lease-name={unique('lease')}",
            "--identity=inproc",
            "--gc-min-age=0",
            "--gc-quarantine=1",
            "--gc-interval=5",  # (a planted record is found by the periodic scan: no pod event wakes GC)
        ]
    )
    ctl = Controller(args)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(ctl.cache.run()), asyncio.create_task(ctl.elector.run(ctl.leading, stop))]

    def gc_task() -> asyncio.Task[Any] | None:
        return next((t for t in asyncio.all_tasks() if t.get_name() == "gc" and not t.done()), None)

    try:
        await eventually(lambda: gc_task() is not None, within=60, what="the leader to start GC")
        first = gc_task()
        assert first is not None
        restarts = metric("spiderpool_controller_leader_work_restarts_total")
        first.cancel()
        # (a renewal period plus the back-off, a few seconds; the bound is generous because this lane
        # runs beside the lab's tests on a busy machine)
        await eventually(lambda: gc_task() not in (None, first), within=60, what="GC to be started again")
        assert metric("spiderpool_controller_leader_work_restarts_total") == restarts + 1
        assert ctl.elector.is_leader
        # and it does its work
        await plant(client, "10.71.0.1", pod="vanished")
        await eventually(lambda: gone(client, IPALLOCATION, record_name("10.71.0.1")), within=60, what="GC to release")
    finally:
        stop.set()
        await asyncio.wait_for(tasks[1], 30)
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctl.client.close()
    assert not leader.IS_LEADER._value.get()  # released on the way out


async def test_a_reconciler_that_raises_any_error_is_retried_and_its_key_handled() -> None:
    queue = WorkQueue("test", 0.01, base_delay=0.05, max_delay=0.2)
    calls: list[tuple[str, str]] = []

    async def handle(kind: str, key: str) -> None:
        calls.append((kind, key))
        if calls.count((kind, key)) < 3:
            raise ValueError("a bug, not an API error")

    failures = metric("spiderpool_controller_reconcile_errors_total", queue="test")
    runner = asyncio.create_task(queue.run(handle))
    try:
        queue.add(("Pool", "a"), ("Pool", "b"))
        await eventually(
            lambda: calls.count(("Pool", "a")) == 3 and calls.count(("Pool", "b")) == 3, within=10, what="retries"
        )
        assert metric("spiderpool_controller_reconcile_errors_total", queue="test") == failures + 4
        assert not queue.failing  # forgotten once handled
        queue.add_after(("Pool", "c"), 0.3)
        await eventually(lambda: ("Pool", "c") in calls, within=10, what="a key added for later")
        assert not runner.done()
    finally:
        runner.cancel()
