"""The agent's allocator, release and endpoint writer against a real apiserver (no nodes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from spiderpool.agent.ipam import IPAM
from spiderpool.agent.records import pool_scoped
from spiderpool.agent.settings import Settings
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.status import StatusReconciler
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.cache import ScopedCache, WatchCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import ENDPOINT, IPALLOCATION, IPPOOL, RESERVEDIP, SUBNET
from spiderpool.k8s.kinds import POD as POD_KIND
from tests.inproc.conftest import create_record, eventually, gone, make_pod, pool_body, record_spec, unique

NODE = "node1"


@contextlib.asynccontextmanager
async def agent(client: Client, *, watch: bool = True, reuse_cooldown: float = 0.0) -> AsyncIterator[IPAM]:
    """An agent's IP service on its own caches, its records watched per pool served as the agent
    does. ``watch=False``: the caches (every record) are listed once and then follow nothing (an
    agent whose watch lags, as far as the test needs it to)."""
    pools, reserved = WatchCache(client, IPPOOL), WatchCache(client, RESERVEDIP)
    records: WatchCache | ScopedCache = pool_scoped(client, NODE) if watch else WatchCache(client, IPALLOCATION)
    ipam = IPAM(
        client,
        Settings(node=NODE, reuse_cooldown=reuse_cooldown),
        pools=pools,
        reserved=reserved,
        records=records,
        subnets=WatchCache(client, SUBNET),
    )
    tasks = []
    for c in ipam.caches:
        if watch:
            tasks.append(asyncio.create_task(c.run()))
        else:
            assert isinstance(c, WatchCache)
            await c._relist()
    await eventually(ipam.ready, within=30, what="the agent's caches")
    try:
        yield ipam
    finally:
        ipam.endpoints.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def add(pod: dict[str, Any], ifname: str = "eth0", **extra: Any) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "podNamespace": meta["namespace"],
        "podName": meta["name"],
        "podUID": meta["uid"],
        "ifName": ifname,
        "containerID": f"c-{meta['uid'][:8]}",
        **extra,
    }


async def test_allocate_writes_a_record_and_an_endpoint_and_release_removes_both(
    client: Client, namespace: str
) -> None:
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.61.0.0/24", ["10.61.0.10-10.61.0.12"], gateway="10.61.0.1"))
    pod = await make_pod(client, namespace, "web")
    async with agent(client) as ipam:
        reply = await ipam.allocator.allocate(add(pod, defaultIPv4IPPool=[pool]))
        assert [ip["address"] for ip in reply["ips"]] == ["10.61.0.10/24"]
        assert reply["routes"] == [{"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.61.0.1"}]
        record = await client.get(IPALLOCATION, record_name("10.61.0.10"))
        assert record["spec"]["podUID"] == pod["metadata"]["uid"]
        assert record["metadata"]["labels"]["ipam.spidernet.io/pod-uid"] == pod["metadata"]["uid"]
        # a repeated ADD gets the same address, and nothing more is allocated
        again = await ipam.allocator.allocate(add(pod, defaultIPv4IPPool=[pool]))
        assert again["ips"] == reply["ips"]
        await ipam.endpoints.flush()
        endpoint = await client.get(ENDPOINT, "web", namespace)
        assert endpoint["status"]["current"]["ips"] == [
            {
                "interface": "eth0",
                "cleanGateway": False,
                "ipv4": "10.61.0.10/24",
                "ipv4Pool": pool,
                "ipv4Gateway": "10.61.0.1",
            }
        ]
        assert endpoint["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]

        await client.delete(POD_KIND, "web", namespace)
        released = await ipam.releaser.release(add(pod))
        assert released["released"] == ["10.61.0.10"]
        assert await gone(client, IPALLOCATION, record_name("10.61.0.10"))
        await ipam.endpoints.flush()
        assert await gone(client, ENDPOINT, "web", namespace)
        assert len(ipam.locks) == 0  # no lock left behind per pod


async def test_a_del_with_a_stale_cache_never_deletes_another_pods_record(client: Client, namespace: str) -> None:
    """The race of the issue, forced: the record is released and re-created for another pod under
    the agent's feet; the agent's cache still shows the first pod's."""
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.62.0.0/24", ["10.62.0.10"]))
    first = await make_pod(client, namespace, "first")
    async with agent(client, watch=False) as ipam:
        ip = "10.62.0.10"
        spec = record_spec(ip, pool, namespace, "first", first["metadata"]["uid"])
        created = await create_record(client, spec)
        ipam.records.cache.apply_local(created)  # what the agent's cache last saw
        # under its feet: released, and taken by another pod (same name: the IP)
        await client.delete(IPALLOCATION, record_name(ip))
        await create_record(client, record_spec(ip, pool, namespace, "second", "uid-of-second", containerID="c2"))
        await client.delete(POD_KIND, "first", namespace)

        result = await ipam.releaser.release(add(first))
        assert result["released"] == []
        kept = await client.get(IPALLOCATION, record_name(ip))
        assert kept["spec"]["podUID"] == "uid-of-second", "the other pod's record was deleted"

        # and a record the cache does not know at all is read before it is deleted
        ipam.records.cache.apply_local(None, key=record_name(ip))
        assert not await ipam.records.delete(ip, first["metadata"]["uid"])
        assert not await gone(client, IPALLOCATION, record_name(ip))


async def test_a_pool_deleted_under_a_lagging_agent_keeps_its_finalizer_while_it_holds_an_ip(
    client: Client, namespace: str
) -> None:
    """An agent whose cache has not seen the deletion allocates from the pool right after it: the
    pool must not lose its finalizer (and vanish) under that record."""
    grace = 3.0
    cache = ObjectCache(client)
    status = StatusReconciler(client, cache, finalizer_grace=grace)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(status.run())]
    pool = unique("pool")
    try:
        await client.create(IPPOOL, pool_body(pool, "10.63.0.0/24", ["10.63.0.10-10.63.0.11"]))

        async def finalized() -> bool:
            return "spiderpool.spidernet.io" in ((await client.get(IPPOOL, pool))["metadata"].get("finalizers") or [])

        await eventually(finalized, within=30, what="the controller to add the pool's finalizer")
        pod = await make_pod(client, namespace, "late")
        async with agent(client, watch=False) as ipam:  # it listed the pool alive, and then saw nothing
            await client.delete(IPPOOL, pool)
            # the controller has seen the deletion of the empty pool, and judged it
            await eventually(lambda: pool in status._empty_since, within=30, what="the controller to see the deletion")
            reply = await ipam.allocator.allocate(add(pod, defaultIPv4IPPool=[pool]))
            assert reply["ips"][0]["ipPool"] == pool

            async def counted() -> bool:
                return int(((await client.get(IPPOOL, pool)).get("status") or {}).get("allocatedIPCount") or 0) == 1

            await eventually(counted, within=30, what="the controller to count the record")
            loop = asyncio.get_running_loop()
            past_grace = loop.time() + grace + 2
            while loop.time() < past_grace:  # (a negative check: the grace passes, the pool stays)
                current = await client.get(IPPOOL, pool)
                assert current["metadata"].get("finalizers"), "the finalizer came off while the pool holds an IP"
                await asyncio.sleep(0.2)

            await client.delete(POD_KIND, "late", namespace)
            assert (await ipam.releaser.release(add(pod)))["released"] == ["10.63.0.10"]
            await eventually(lambda: gone(client, IPPOOL, pool), within=30, what="the empty pool to go")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_create_retried_by_the_client_is_recognised_as_ours(client: Client, namespace: str) -> None:
    """A create whose first try was carried out but answered nothing (the connection broke) comes
    back 409 on the retry: the record is ours, not another allocator's."""
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.64.0.0/24", ["10.64.0.10"]))
    pod = await make_pod(client, namespace, "retried")
    async with agent(client) as ipam:
        spec = record_spec("10.64.0.10", pool, namespace, "retried", pod["metadata"]["uid"])
        await create_record(client, spec)
        real = client.create

        async def answered_409_after_a_retry(kind: Any, obj: dict[str, Any]) -> dict[str, Any]:
            try:
                return await real(kind, obj)
            except ApiError as exc:
                exc.attempts = 2
                raise

        client.create = answered_409_after_a_retry  # type: ignore[method-assign]
        try:
            assert await ipam.records.create(spec)
            other = record_spec("10.64.0.10", pool, namespace, "retried", "someone-else")
            assert not await ipam.records.create(other)
        finally:
            client.create = real  # type: ignore[method-assign]


async def test_a_retried_add_while_the_watch_is_down_finds_what_the_pod_holds(client: Client, namespace: str) -> None:
    """The fault matrix's partition row found it: a create carried out whose answer was lost, the
    watch down, and the runtime's retry got a second address (the first stayed with the pod). With
    the records watch not open (or a create in doubt) an ADD reads what the pod holds first."""
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.65.0.0/24", ["10.65.0.10-10.65.0.11"]))
    pod = await make_pod(client, namespace, "partitioned")
    async with agent(client, watch=False) as ipam:  # listed once, then blind: as while cut off
        assert not ipam.records.cache.live
        # the first try: stored by the apiserver, its answer lost on the way back
        await create_record(client, record_spec("10.65.0.10", pool, namespace, "partitioned", pod["metadata"]["uid"]))
        reply = await ipam.allocator.allocate(add(pod, defaultIPv4IPPool=[pool]))
        assert [ip["address"] for ip in reply["ips"]] == ["10.65.0.10/24"]
        assert await gone(client, IPALLOCATION, record_name("10.65.0.11")), "a second address was allocated"
        # a create with no answer puts the pod's NIC in doubt: looked up in the API at its next ADD
        ipam.records.doubts.add((pod["metadata"]["uid"], "net1"))
        await create_record(
            client, record_spec("10.65.0.11", pool, namespace, "partitioned", pod["metadata"]["uid"], interface="net1")
        )
        again = await ipam.allocator.allocate(add(pod, "net1", defaultIPv4IPPool=[pool]))
        assert [ip["address"] for ip in again["ips"]] == ["10.65.0.11/24"]
        assert not ipam.records.doubts


async def test_a_released_address_cools_down_before_it_is_handed_out_again(client: Client, namespace: str) -> None:
    """The fault matrix's force-delete row found it: the runtime's DEL frees the address before the
    link carrying it is gone, and the next pod got it while the old link still answered for it. A
    released address waits (here 2 s) unless nothing else is free."""
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.66.0.0/24", ["10.66.0.10-10.66.0.11"]))
    first, second, third = [await make_pod(client, namespace, n) for n in ("c-1", "c-2", "c-3")]
    async with agent(client, reuse_cooldown=2.0) as ipam:
        held = (await ipam.allocator.allocate(add(first, defaultIPv4IPPool=[pool])))["ips"][0]["address"]
        await client.delete(POD_KIND, "c-1", namespace)
        await ipam.releaser.release(add(first))
        # the other free address, not the one just released
        got = (await ipam.allocator.allocate(add(second, defaultIPv4IPPool=[pool])))["ips"][0]["address"]
        assert got != held
        # nothing else free: the third pod waits for the cooldown and gets it
        loop = asyncio.get_running_loop()
        began = loop.time()
        last = (await ipam.allocator.allocate(add(third, defaultIPv4IPPool=[pool])))["ips"][0]["address"]
        assert last == held
        assert loop.time() - began > 0.5


class _Flaky:
    """The real client, but its first ``failures`` endpoint creates fail as an apiserver going down
    would (every other call goes through to the real API)."""

    def __init__(self, client: Client, failures: int) -> None:
        self._client, self.failures = client, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def create(self, kind: Any, body: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if kind is ENDPOINT and self.failures > 0:
            self.failures -= 1
            raise ApiError(503, "ServiceUnavailable", "the apiserver is going down")
        return await self._client.create(kind, body, *args, **kwargs)


async def test_a_failed_endpoint_write_is_tried_again_with_back_off(client: Client, namespace: str) -> None:
    """Found by the fault matrix: with the apiserver killed mid-burst, a pod's SpiderEndpoint write
    failed once and was never tried again (the pod ran, its endpoint stayed missing)."""
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.64.0.0/24", ["10.64.0.10-10.64.0.12"]))
    pod = await make_pod(client, namespace, "late")
    async with agent(client) as ipam:
        flaky = _Flaky(client, failures=2)
        ipam.endpoints.client = flaky  # type: ignore[assignment]
        reply = await ipam.allocator.allocate(add(pod, defaultIPv4IPPool=[pool]))
        (address,) = [ip["address"] for ip in reply["ips"]]  # (any free one: the walk starts at random)

        async def written() -> bool:
            try:
                endpoint = await client.get(ENDPOINT, "late", namespace)
            except ApiError:
                return False
            return bool(endpoint["status"]["current"]["ips"][0]["ipv4"] == address)

        # (retries after 1 s, then 2 s)
        await eventually(written, within=30, what="the endpoint written after two failed tries")
        assert flaky.failures == 0


async def test_an_agent_watches_the_records_of_the_pools_it_serves_and_finds_them_again_after_a_restart(
    client: Client, namespace: str
) -> None:
    """The watch fan-out: an agent decodes the records of the pools it allocates from (every node's,
    so it knows what is taken) and of those its node's pods hold addresses in, not every record."""
    mine, other = unique("pool"), unique("pool")
    await client.create(IPPOOL, pool_body(mine, "10.67.0.0/24", ["10.67.0.10-10.67.0.12"]))
    await client.create(IPPOOL, pool_body(other, "10.68.0.0/24", ["10.68.0.10-10.68.0.12"]))
    elsewhere = await make_pod(client, namespace, "elsewhere")
    uid = elsewhere["metadata"]["uid"]
    # another node's pods hold an address in each pool
    await create_record(client, record_spec("10.67.0.10", mine, namespace, "elsewhere", uid, node="node2"))
    await create_record(client, record_spec("10.68.0.10", other, namespace, "elsewhere", uid, node="node2"))
    pod = await make_pod(client, namespace, "web")
    async with agent(client) as ipam:
        assert isinstance(ipam.records.cache, ScopedCache)
        # (other tests' pools may be served: this node holds addresses there)
        assert mine not in ipam.records.cache.served()
        assert other not in ipam.records.cache.served()
        assert "10.67.0.10" not in ipam.records.used
        reply = await ipam.allocator.allocate(add(pod, defaultIPv4IPPool=[mine]))
        # the other node's 10.67.0.10 was known as taken: the next address
        assert [ip["address"] for ip in reply["ips"]] == ["10.67.0.11/24"]
        assert mine in ipam.records.cache.served()
        assert other not in ipam.records.cache.served()
        assert {"10.67.0.10", "10.67.0.11"} <= ipam.records.used
        assert "10.68.0.10" not in ipam.records.used  # nothing of the other pool
    async with agent(client) as ipam:  # restarted: it serves again the pool its pod holds an address in
        assert isinstance(ipam.records.cache, ScopedCache)
        assert mine in ipam.records.cache.served()
        assert other not in ipam.records.cache.served()
        assert [r["spec"]["ip"] for r in ipam.records.of(pod["metadata"]["uid"])] == ["10.67.0.11"]
        await force_delete(client, namespace, "web")
        await ipam.releaser.release(add(pod))
        assert await gone(client, IPALLOCATION, record_name("10.67.0.11"))


async def test_a_statefulset_pod_keeps_its_address_from_a_pool_the_agent_did_not_watch(
    client: Client, namespace: str
) -> None:
    """A StatefulSet pod re-created on this node finds its predecessor's record (written by another
    node's agent, in a pool this agent had no watch of) by its name label, and keeps the address."""
    pool = unique("pool")
    await client.create(IPPOOL, pool_body(pool, "10.69.0.0/24", ["10.69.0.10-10.69.0.12"]))
    owner = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "0000-sts", "controller": True}]
    old = await make_pod(client, namespace, "db-0", ownerReferences=owner)
    await create_record(
        client,
        record_spec(
            "10.69.0.12", pool, namespace, "db-0", old["metadata"]["uid"], node="node2",
            ownerKind="StatefulSet", ownerName="db",
        ),
    )  # fmt: skip
    await force_delete(client, namespace, "db-0")
    new = await make_pod(client, namespace, "db-0", ownerReferences=owner)
    async with agent(client) as ipam:
        reply = await ipam.allocator.allocate(add(new, defaultIPv4IPPool=[pool]))
        assert [ip["address"] for ip in reply["ips"]] == ["10.69.0.12/24"]
        record = await client.get(IPALLOCATION, record_name("10.69.0.12"))
        assert (record["spec"]["podUID"], record["spec"]["node"]) == (new["metadata"]["uid"], NODE)
        assert record["metadata"]["labels"]["ipam.spidernet.io/node"] == NODE


async def force_delete(client: Client, namespace: str, name: str) -> None:
    """Delete a pod at once (no kubelet runs it) and wait until it is gone."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
    await client.request("DELETE", POD_KIND.path(namespace, name), body)
    await eventually(lambda: gone(client, POD_KIND, name, namespace), within=30, what=f"pod {name} to go")
