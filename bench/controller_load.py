"""spiderpool-controller with many records and pods: how long a (re)started controller takes to be
ready, to lead, to have every pool's status right and to have judged every record once (GC), and its
memory, at a tenth of the size (the baseline) and at full size, in one invocation.

A real controller process against a real kube-apiserver + etcd on loopback (``spiderpool_lab.envtest``,
no lab needed). Full size: 5,000 pods on 10 nodes (Node objects; nothing runs them), each with four
NICs, so 20,000 records in 20 pools of 1,000. The baseline: 500 pods, 2,000 records, made first.
Each size is measured at a first start and after a SIGKILL and restart.

    python bench/controller_load.py [--pods 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import say

from spiderpool.api import crds
from spiderpool.api.objects import new_record
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import IPALLOCATION, IPPOOL, NAMESPACE, NODE, POD
from spiderpool_lab import build, procs
from spiderpool_lab.envtest import ApiServer

NICS = 4
NODES = 10
PER_POOL = 1000
BASE = ipaddress.ip_address("10.90.0.1")


async def bounded(n: int, inflight: int, one: Any) -> None:
    sem = asyncio.Semaphore(inflight)

    async def run(i: int) -> None:
        async with sem:
            for attempt in range(5):
                try:
                    await one(i)
                    return
                except ApiError as exc:
                    if exc.code == 409:
                        return  # made by an earlier try
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(run(i) for i in range(n)))


async def populate(kubeconfig: Path, first_pod: int, pods: int) -> None:
    """Pods ``first_pod`` .. ``first_pod + pods`` and their NICS records each (pools made as needed)."""
    client = Client.from_kubeconfig(str(kubeconfig), field_manager="bench")
    try:
        for i in range(NODES):
            with contextlib.suppress(ApiError):
                await client.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node{i}"}})
        with_ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}
        with contextlib.suppress(ApiError):
            await client.create(NAMESPACE, with_ns)
        last_record = (first_pod + pods) * NICS
        for p in range(first_pod * NICS // PER_POOL, (last_record + PER_POOL - 1) // PER_POOL):
            start = BASE + p * PER_POOL
            pool = {
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderIPPool",
                "metadata": {"name": f"bench-{p}"},
                "spec": {"ipVersion": 4, "subnet": "10.64.0.0/10", "ips": [f"{start}-{start + PER_POOL - 1}"]},
            }
            with contextlib.suppress(ApiError):
                await client.create(IPPOOL, pool)
        uids: dict[int, str] = {}

        async def pod(i: int) -> None:
            i += first_pod
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i:05d}", "namespace": "bench"},
                "spec": {"nodeName": f"node{i % NODES}", "containers": [{"name": "c", "image": "x"}]},
            }
            uids[i] = (await client.create(POD, body))["metadata"]["uid"]

        t = time.monotonic()
        await bounded(pods, 32, pod)
        say(f"{pods} pods in {time.monotonic() - t:.0f} s")

        async def record(k: int) -> None:
            i, nic = first_pod + k // NICS, k % NICS
            n = i * NICS + nic
            ip = str(BASE + n)
            spec = {
                "ip": ip,
                "pool": f"bench-{n // PER_POOL}",
                "ipVersion": 4,
                "namespace": "bench",
                "pod": f"p{i:05d}",
                "podUID": uids[i],
                "interface": "eth0" if nic == 0 else f"net{nic}",
                "node": f"node{i % NODES}",
                "containerID": f"c{i}",
                "cleanGateway": False,
                "ownerKind": "",
                "ownerName": "",
            }
            await client.create(IPALLOCATION, dict(new_record(record_name(ip), spec)))  # type: ignore[arg-type]

        t = time.monotonic()
        await bounded(pods * NICS, 64, record)
        say(f"{pods * NICS} records in {time.monotonic() - t:.0f} s")
    finally:
        await client.close()


def metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
    except OSError:
        return False


def pools_right(server: ApiServer, want: int) -> bool:
    out = subprocess.run(
        [str(build.binary("kubectl")), f"--kubeconfig={server.kubeconfig}", "get", "spiderippools", "-o", "json"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return False
    counts = [int((p.get("status") or {}).get("allocatedIPCount") or 0) for p in json.loads(out.stdout)["items"]]
    return sum(counts) == want


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_once(server: ApiServer, work: Path, records: int, label: str) -> dict[str, Any]:
    """Start the controller; the times it took to be ready, lead, write every pool's status and
    judge every record, and its memory then; then SIGKILL it."""
    health, metrics, hook = procs.free_port(), procs.free_port(), procs.free_port()
    argv = [
        sys.executable,
        "-m",
        "spiderpool",
        "controller",
        f"--kubeconfig={server.kubeconfig}",
        "--namespace=default",
        "--identity=bench",
        "--lease-duration=5",
        "--renew-deadline=3",
        "--retry-period=1",
        f"--webhook-url=https://127.0.0.1:{hook}",
        "--webhook-bind=127.0.0.1",
        f"--webhook-port={hook}",
        "--health-bind=127.0.0.1",
        f"--health-port={health}",
        f"--metrics-port={metrics}",
        "--gc-interval=600",
        f"--cni-conf-dir={work}",
    ]
    log = work / f"controller-{label}.log"
    began = time.monotonic()
    with log.open("ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    times: dict[str, float] = {}
    scanned = "spiderpool_controller_gc_scan_duration_seconds_count"
    steps = {
        "ready": lambda: ready(health),
        "leading": lambda: metric(metrics, "spiderpool_controller_is_leader") == 1.0,
        "pool status right": lambda: pools_right(server, records),
        "GC judged every record": lambda: (metric(metrics, scanned) or 0) >= 1,
    }
    try:
        for name, cond in steps.items():
            procs.wait_for(cond, timeout=900, what=f"{label}: {name}", interval=0.2, detail=lambda: procs.tail(log))
            times[name] = round(time.monotonic() - began, 1)
        # (a scan's mean: pod events wake GC too, so the count of scans differs between sizes)
        total = metric(metrics, "spiderpool_controller_gc_scan_duration_seconds_sum") or 0.0
        count = metric(metrics, scanned) or 1.0
        return {
            **times,
            "gc_scan_s": round(total / count, 3),
            "gc_scans": int(count),
            "rss_mib": round(rss_mib(proc.pid)),
        }
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def measure(server: ApiServer, work: Path, records: int, label: str) -> dict[str, Any]:
    """A first start, and a start after a SIGKILL (the Lease still held by the dead one)."""
    out: dict[str, Any] = {"size": label, "records": records}
    for start in ("first start", "after SIGKILL"):
        out[start] = start_once(server, work, records, label)
        say(f"{label}, {start}: {out[start]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pods", type=int, default=5000)
    args = ap.parse_args()
    server = ApiServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="bench-controller-load-"))
    try:
        for text in crds.render_all().values():
            subprocess.run(
                [
                    str(build.binary("kubectl")),
                    f"--kubeconfig={server.kubeconfig}",
                    "apply",
                    "--server-side",
                    "-f",
                    "-",
                ],
                input=text,
                text=True,
                check=True,
                capture_output=True,
            )
        small = args.pods // 10
        asyncio.run(populate(server.kubeconfig, 0, small))
        rows = [measure(server, work, small * NICS, "a tenth")]
        asyncio.run(populate(server.kubeconfig, small, args.pods - small))
        rows.append(measure(server, work, args.pods * NICS, "full"))
        for key in ("first start", "after SIGKILL"):
            a, b = rows[0][key], rows[1][key]
            say(
                f"{key}: full / a tenth: pool status {b['pool status right'] / max(a['pool status right'], 0.1):.1f}x,"
                f" a GC scan {b['gc_scan_s'] / max(a['gc_scan_s'], 0.001):.1f}x, RSS {b['rss_mib'] / a['rss_mib']:.1f}x"
            )
        print(json.dumps(rows, indent=1))
    finally:
        server.close()


if __name__ == "__main__":
    main()
