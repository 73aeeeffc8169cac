"""The API client's cost on the hot path: our client (retries, back-off, preconditions) against a
bare aiohttp session sending the same requests (the baseline), in the same invocation.

Against a real kube-apiserver + etcd on loopback (``spiderpool_lab.envtest``, no lab needed): N
ConfigMap creates with 10 in flight, then N deletes, per client. Prints the client process's CPU
time per request (what the agent's allocation path pays) and the wall time, and their ratios.

    python bench/api_client.py [--requests 400] [--inflight 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import say

from spiderpool.k8s import config
from spiderpool.k8s.client import Client
from spiderpool.k8s.kinds import Kind
from spiderpool_lab.envtest import ApiServer

CONFIGMAP = Kind("", "v1", "configmaps", True, "ConfigMap")


def body(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}


async def bounded(n: int, inflight: int, one: Callable[[int], Awaitable[None]]) -> None:
    sem = asyncio.Semaphore(inflight)

    async def run(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(n)))


async def ours(kubeconfig: Path, tag: str, n: int, inflight: int) -> tuple[float, float]:
    client = Client.from_kubeconfig(str(kubeconfig), field_manager="bench")
    try:
        await client.get(Kind("", "v1", "namespaces", False), "default")  # warm the connection
        cpu, wall = time.process_time(), time.monotonic()

        async def create(i: int) -> None:
            await client.create(CONFIGMAP, body(f"{tag}-{i}"))

        async def delete(i: int) -> None:
            await client.delete(CONFIGMAP, f"{tag}-{i}", "default", preconditions={})

        await bounded(n, inflight, create)
        await bounded(n, inflight, delete)
        return time.process_time() - cpu, time.monotonic() - wall
    finally:
        await client.close()


async def bare(kubeconfig: Path, tag: str, n: int, inflight: int) -> tuple[float, float]:
    """The baseline: one aiohttp session, one request per call, no retry, no error type."""
    creds = config.load(str(kubeconfig))
    connector = aiohttp.TCPConnector(ssl=creds.ssl or False, limit=64)
    async with aiohttp.ClientSession(creds.server, connector=connector) as session:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        async with session.get("/api/v1/namespaces/default", headers=headers) as resp:
            await resp.read()
        cpu, wall = time.process_time(), time.monotonic()
        path = CONFIGMAP.path("default")

        async def create(i: int) -> None:
            async with session.post(path, data=json.dumps(body(f"{tag}-{i}")), headers=headers) as resp:
                json.loads(await resp.read())
                assert resp.status == 201, resp.status

        async def delete(i: int) -> None:
            async with session.delete(f"{path}/{tag}-{i}", headers=headers) as resp:
                json.loads(await resp.read())
                assert resp.status == 200, resp.status

        await bounded(n, inflight, create)
        await bounded(n, inflight, delete)
        return time.process_time() - cpu, time.monotonic() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--inflight", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    say("starting kube-apiserver + etcd on loopback")
    server = ApiServer().start()
    try:
        rows = []
        for r in range(args.rounds):
            # alternate the order, so neither side always meets a warmer apiserver
            order = [("bare", bare), ("ours", ours)] if r % 2 == 0 else [("ours", ours), ("bare", bare)]
            got = {}
            for name, fn in order:
                got[name] = asyncio.run(fn(server.kubeconfig, f"{name}-{r}", args.requests, args.inflight))
                say(f"round {r + 1}: {name} cpu={got[name][0]:.2f}s wall={got[name][1]:.2f}s")
            rows.append(got)
    finally:
        server.close()
    per = 2 * args.requests
    print(f"\n{per} requests per client per round ({args.requests} creates + deletes), {args.inflight} in flight\n")
    print("| round | bare aiohttp: CPU per request / wall | our client: CPU per request / wall | CPU | wall |")
    print("|---|---|---|---|---|")
    for r, got in enumerate(rows, 1):
        (bc, bw), (oc, ow) = got["bare"], got["ours"]
        print(
            f"| {r} | {bc / per * 1000:.3f} ms / {bw:.2f} s | {oc / per * 1000:.3f} ms / {ow:.2f} s"
            f" | {oc / bc:.2f}x | {ow / bw:.2f}x |"
        )


if __name__ == "__main__":
    main()
