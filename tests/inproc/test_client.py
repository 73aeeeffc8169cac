"""The API client's retries: what it does when the server is overloaded or failing, on a scripted
HTTP server on loopback (the policy of the client, not the behaviour of Kubernetes), and across a
real apiserver's restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from spiderpool.k8s.client import ApiError, Client, RetryPolicy
from spiderpool.k8s.config import Credentials
from spiderpool.k8s.kinds import NAMESPACE
from spiderpool_lab import procs
from spiderpool_lab.envtest import ApiServer


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[list[web.Response], list[float], str]]:
    """A server answering from a script (then 200 {}), recording when each request came."""
    script: list[web.Response] = []
    seen: list[float] = []

    async def answer(_: web.Request) -> web.Response:
        seen.append(time.monotonic())
        return script.pop(0) if script else web.json_response({"kind": "Namespace", "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = procs.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield script, seen, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _status(code: int, **headers: str) -> web.Response:
    return web.json_response(
        {"kind": "Status", "code": code, "reason": "X", "message": "busy"}, status=code, headers=headers
    )


async def test_429_waits_for_retry_after_and_5xx_are_retried(
    scripted: tuple[list[web.Response], list[float], str],
) -> None:
    script, seen, url = scripted
    client = Client(Credentials(url, None), field_manager="t", retry=RetryPolicy(attempts=4, base=0.01, cap=0.05))
    try:
        script += [_status(429, **{"Retry-After": "1"}), _status(503), _status(500)]
        assert (await client.get(NAMESPACE, "x"))["metadata"]["name"] == "x"
        assert len(seen) == 4
        assert seen[1] - seen[0] >= 1.0  # the server's Retry-After
        # bounded: a server that keeps failing is given up on after the policy's attempts
        seen.clear()
        script += [_status(503) for _ in range(4)]
        with pytest.raises(ApiError) as err:
            await client.get(NAMESPACE, "x")
        assert err.value.code == 503
        assert err.value.attempts == 4
        assert len(seen) == 4
        # a refusal is not retried
        seen.clear()
        script.append(_status(409))
        with pytest.raises(ApiError):
            await client.get(NAMESPACE, "x")
        assert len(seen) == 1
    finally:
        await client.close()


async def test_a_request_during_an_apiserver_restart_is_retried(apiserver: ApiServer) -> None:
    client = Client.from_kubeconfig(
        str(apiserver.kubeconfig), field_manager="t", retry=RetryPolicy(attempts=12, base=0.5, cap=4.0)
    )
    try:
        apiserver.stop_apiserver()
        restart = asyncio.create_task(asyncio.to_thread(apiserver.start_apiserver))
        try:
            got = await client.get(NAMESPACE, "default")  # connection refused, until it is back
        finally:
            await restart
        assert got["metadata"]["name"] == "default"
    finally:
        await client.close()
