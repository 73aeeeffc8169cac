"""One agent under 1,000 concurrent requests on its socket, against its own floor, in one invocation.

A real ``spiderpool-agent`` process (for a node with no kubelet) against a real kube-apiserver + etcd
on loopback (``spiderpool_lab.envtest``: no lab, no root needed), 100 pods with ten NICs each:

- the floor: 1,000 concurrent ``GET /v1/ipam/healthy`` (the socket and the HTTP server, no API call);
- unloaded: 100 ADDs one at a time (each a record create; an eleventh NIC of each pod);
- loaded: the 1,000 ADDs at once, then the 1,000 DELs at once (the pods deleted first).

Prints p50/p99/max per phase, the ratios to the floor and to the unloaded ADD, the failures (must be
0) and the agent's RSS before, at its peak and after.

    python bench/agent_load.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import pct, say

from spiderpool.api import crds
from spiderpool_lab import build, procs
from spiderpool_lab.envtest import ApiServer

PODS, NICS = 100, 10
NODE = "bench-node"


def request(sock: str, method: str, path: str, body: object = None) -> tuple[int, float]:
    payload = json.dumps(body).encode() if body is not None else b""
    began = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(300)
        s.connect(sock)
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    return int(raw.split(b" ", 2)[1]), time.monotonic() - began


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def kubectl(server: ApiServer, *args: str, input_text: str | None = None) -> str:
    out = subprocess.run(
        [str(build.binary("kubectl")), f"--kubeconfig={server.kubeconfig}", *args],
        input=input_text,
        text=True,
        check=True,
        capture_output=True,
    )
    return out.stdout


def kubectl_apply(server: ApiServer, objects: list[dict[str, Any]]) -> None:
    kubectl(server, "apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def concurrent(jobs: list[Any], one: Any) -> list[tuple[int, float]]:
    gate = threading.Barrier(len(jobs))

    def run(job: Any) -> tuple[int, float]:
        gate.wait()
        return one(job)  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def line(name: str, results: list[tuple[int, float]], floor: float | None = None) -> dict[str, Any]:
    took = [t for _, t in results]
    failed = sum(1 for s, _ in results if s != 200)
    row = {
        "phase": name,
        "n": len(results),
        "failed": failed,
        "p50_ms": round(pct(took, 0.5) * 1000, 1),
        "p99_ms": round(pct(took, 0.99) * 1000, 1),
        "max_ms": round(max(took) * 1000, 1),
    }
    extra = f", p99 {row['p99_ms'] / floor:.1f}x the floor's" if floor else ""
    say(f"{name}: {row['n']} requests, {failed} failed, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms{extra}")
    return row


def one_round(server: ApiServer, work: Path, r: int) -> dict[str, Any]:
    ns = f"load{r}"
    kubectl_apply(server, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"p{i:03d}",
                "namespace": ns,
                "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [f"bench-pool{r}"]})},
            },
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]},
        }
        for i in range(PODS)
    ]
    pool = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": f"bench-pool{r}"},
        "spec": {"subnet": f"10.{80 + r}.0.0/16", "ips": [f"10.{80 + r}.1.1-10.{80 + r}.8.250"]},
    }
    kubectl_apply(server, [pool, *pods])
    listed = json.loads(kubectl(server, "get", "pods", "-n", ns, "-o", "json"))
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in listed["items"]}
    sock = str(work / f"agent{r}.sock")
    log = work / f"agent{r}.log"
    with log.open("ab") as fh:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spiderpool",
                "agent",
                f"--kubeconfig={server.kubeconfig}",
                f"--node-name={NODE}",
                f"--socket={sock}",
                f"--cni-bin-dir={work / f'bin{r}'}",
                "--metrics-bind=127.0.0.1",
                f"--metrics-port={procs.free_port()}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        procs.wait_for(
            lambda: Path(sock).exists() and request(sock, "GET", "/v1/ipam/healthy")[0] == 200,
            timeout=60,
            what="the agent healthy",
            detail=lambda: procs.tail(log),
        )
        jobs = [(name, nic) for name in uids for nic in range(NICS)]

        def body(job: tuple[str, int]) -> dict[str, Any]:
            name, nic = job
            return {
                "containerID": f"c-{uids[name]}",
                "ifName": "eth0" if nic == 0 else f"net{nic}",
                "netNamespace": "/run/netns/none",
                "podNamespace": ns,
                "podName": name,
                "podUID": uids[name],
            }

        rss0, _ = rss_mib(agent.pid)
        health = concurrent(jobs, lambda j: request(sock, "GET", "/v1/ipam/healthy"))
        floor = line("floor: 1000 concurrent health checks", health)
        # unloaded: an eleventh NIC of each pod, one at a time
        extra = [(name, NICS) for name in uids]
        serial = [request(sock, "POST", "/v1/ipam/ip", body(j)) for j in extra]
        unloaded = line("unloaded: 100 ADDs one at a time", serial)
        loaded = line(
            "loaded: 1000 concurrent ADDs",
            concurrent(jobs, lambda j: request(sock, "POST", "/v1/ipam/ip", body(j))),
            floor["p99_ms"],
        )
        rss1, peak = rss_mib(agent.pid)
        kubectl(server, "delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force")
        released = line(
            "1100 concurrent DELs",
            concurrent(jobs + extra, lambda j: request(sock, "DELETE", "/v1/ipam/ip", body(j))),
            floor["p99_ms"],
        )
        rss2, peak = rss_mib(agent.pid)
        say(f"agent RSS: {rss0:.0f} MiB before, {rss1:.0f} after the ADDs, {rss2:.0f} after the DELs, peak {peak:.0f}")
        return {
            "phases": [floor, unloaded, loaded, released],
            "loaded_p99_over_floor_p99": round(loaded["p99_ms"] / floor["p99_ms"], 1),
            "loaded_p50_over_unloaded_p50": round(loaded["p50_ms"] / unloaded["p50_ms"], 1),
            "rss_mib": {
                "before": round(rss0),
                "after_adds": round(rss1),
                "after_dels": round(rss2),
                "peak": round(peak),
            },
        }
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    server = ApiServer()
    server.start()
    try:
        for text in crds.render_all().values():
            kubectl(server, "apply", "--server-side", "-f", "-", input_text=text)
        kubectl_apply(server, [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}])
        work = Path(tempfile.mkdtemp(prefix="bench-agent-load-"))
        rounds = []
        for r in range(args.rounds):
            say(f"round {r + 1} of {args.rounds}")
            rounds.append(one_round(server, work, r))
        print(json.dumps(rounds, indent=1))
    finally:
        server.close()


if __name__ == "__main__":
    main()
