"""In-process tests of the product's stateful parts against a real kube-apiserver + etcd on
loopback, with no nodes (the envtest approach): no root, seconds to start."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest

from spiderpool.api.objects import RecordSpec, new_record
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import IPALLOCATION, NAMESPACE, POD
from spiderpool_lab.envtest import ApiServer

_names = itertools.count(1)


@pytest.fixture(scope="session")
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer()
    try:
        server.start()
    except Exception as exc:  # fail, never skip: the message carries the apiserver's log tail
        server.close()
        pytest.fail(f"the loopback apiserver did not start: {exc}", pytrace=False)
    yield server
    server.close()


@pytest.fixture
async def client(apiserver: ApiServer) -> AsyncIterator[Client]:
    c = Client.from_kubeconfig(str(apiserver.kubeconfig), field_manager="spiderpool-test")
    yield c
    await c.close()


def unique(prefix: str) -> str:
    """A name no other test of the session uses (they share one apiserver)."""
    return f"{prefix}-{next(_names)}"


@pytest.fixture
async def namespace(client: Client) -> str:
    name = unique("ns")
    await client.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


async def make_pod(client: Client, namespace: str, name: str, node: str = "node1", **meta: Any) -> dict[str, Any]:
    """A pod bound to ``node`` (no kubelet runs it: it stays Pending, which is alive)."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }
    return await client.create(POD, body)


def record_spec(ip: str, pool: str, namespace: str, pod: str, uid: str, **extra: Any) -> RecordSpec:
    """A record's spec as an agent on node1 writes it."""
    spec: RecordSpec = {
        "ip": ip, "pool": pool, "ipVersion": 4, "namespace": namespace, "pod": pod, "podUID": uid,
        "interface": "eth0", "node": "node1", "containerID": "c1", "cleanGateway": False,
        "ownerKind": "", "ownerName": "",
    }  # fmt: skip
    return cast(RecordSpec, {**spec, **extra})


async def create_record(client: Client, spec: RecordSpec) -> dict[str, Any]:
    return await client.create(IPALLOCATION, dict(new_record(record_name(spec["ip"]), spec)))


def pool_body(name: str, subnet: str, ips: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"ipVersion": 4, "subnet": subnet, "ips": ips, **spec},
    }


async def gone(client: Client, kind: Any, name: str, namespace: str | None = None) -> bool:
    try:
        await client.get(kind, name, namespace)
    except ApiError as exc:
        if exc.code == 404:
            return True
        raise
    return False


async def eventually(condition: Any, *, within: float, what: str, interval: float = 0.1) -> None:
    """Poll an async (or plain) condition until it holds, within a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
