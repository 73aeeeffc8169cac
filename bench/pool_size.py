"""Pools of any size: allocation and release latency (p50/p99) and the agent's CPU per allocation in a
/24, a /16 and a /8 IPv4 pool, a /64 IPv6 pool and a /48 (whose address count overflows 64 bits:
upstream's saturated ``totalIPCount``), each empty and, where it fits, 90 % allocated with the free
addresses scattered (every tenth free: the most fragmented free space). The /24 at 0 % is the baseline.

Then the agent's and the controller's memory with 10k and ~59k records, and how long a restarted
agent takes to be ready, and to make its first allocation from the pool holding them, for both
``--record-watch`` designs.

A real agent process (and controller) against a real kube-apiserver + etcd on loopback
(``spiderpool_lab.envtest``; no lab needed). The script calls the agent's socket as the CNI
plugin does, one request at a time (latency, not throughput: ``ipam_storm.py`` measures that).

    python bench/pool_size.py [--allocations 200] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import pct, say
from bench.controller_load import bounded, metric, ready, rss_mib
from tests.stack import unix_request

from spiderpool.api import crds
from spiderpool.api.objects import new_record
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.client import Client
from spiderpool.k8s.kinds import IPALLOCATION
from spiderpool_lab import build, procs
from spiderpool_lab.envtest import ApiServer

NS = "bench"
#: name -> (family, subnet, whether 90 % of it can be allocated here)
POOLS: dict[str, tuple[int, str, bool]] = {
    "v4-24": (4, "10.100.0.0/24", True),
    "v4-16": (4, "10.101.0.0/16", True),
    "v4-8": (4, "11.0.0.0/8", False),
    "v6-64": (6, "fd00:64::/64", False),
    "v6-48": (6, "fd00:48::/48", False),
}
NODES = {4: "ps-v4", 6: "ps-v6"}


def pool_body(name: str, family: int, subnet: str) -> dict[str, Any]:
    net = ipaddress.ip_network(subnet)
    first, last = net.network_address + 1, net.broadcast_address - (1 if family == 4 else 0)
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"ipVersion": family, "subnet": subnet, "ips": [f"{first}-{last}"]},
    }


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, server: ApiServer, work: Path) -> None:
        self.server, self.work = server, work
        self.agents: dict[int, subprocess.Popen[bytes]] = {}
        self.serial = 0

    def kubectl(self, *args: str, text: str | None = None) -> str:
        out = subprocess.run(
            [str(build.binary("kubectl")), f"--kubeconfig={self.server.kubeconfig}", *args],
            input=text,
            text=True,
            capture_output=True,
            check=True,
        )
        return out.stdout

    def socket(self, family: int) -> str:
        return str(self.work / f"agent-{family}.sock")

    def start_agent(self, family: int, record_watch: str = "pools") -> float:
        """Start the agent serving ``family``; seconds until its socket answers healthy."""
        argv = [
            sys.executable,
            "-m",
            "spiderpool",
            "agent",
            f"--kubeconfig={self.server.kubeconfig}",
            f"--node-name={NODES[family]}",
            f"--socket={self.socket(family)}",
            f"--cni-bin-dir={self.work / f'bin-{family}'}",
            "--metrics-bind=127.0.0.1",
            f"--metrics-port={procs.free_port()}",
            "--log-level=WARNING",
            f"--record-watch={record_watch}",
            "--disable-ipv6" if family == 4 else "--disable-ipv4",
        ]
        began = time.monotonic()
        with (self.work / f"agent-{family}.log").open("ab") as fh:
            self.agents[family] = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        procs.wait_for(
            lambda: unix_request(self.socket(family), "GET", "/v1/ipam/healthy")[0] == 200,
            timeout=600,
            what=f"the IPv{family} agent",
            interval=0.05,
        )
        return time.monotonic() - began

    def stop_agent(self, family: int) -> None:
        proc = self.agents.pop(family)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def pods(self, pool: str, family: int, n: int) -> list[dict[str, Any]]:
        ann = {"ipam.spidernet.io/ippool": json.dumps({f"ipv{family}": [pool]})}
        items = []
        for _ in range(n):
            self.serial += 1
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"p{self.serial:06d}", "namespace": NS, "annotations": ann},
                    "spec": {"nodeName": NODES[family], "containers": [{"name": "c", "image": "x"}]},
                }
            )
        listed = json.dumps({"kind": "List", "apiVersion": "v1", "items": items})
        out = self.kubectl("create", "-o", "json", "-f", "-", text=listed)
        made, at, decoder = [], 0, json.JSONDecoder()  # (one JSON object per pod, one after another)
        while out[at:].strip():
            obj, end = decoder.raw_decode(out[at:].lstrip())
            at = len(out) - len(out[at:].lstrip()) + end
            made.extend(obj.get("items", [obj]))
        return made

    def call(self, family: int, method: str, pod: dict[str, Any]) -> tuple[float, bool]:
        meta = pod["metadata"]
        body = {
            "containerID": f"c-{meta['uid']}",
            "ifName": "eth0",
            "netNamespace": f"/var/run/netns/{meta['uid'][:8]}",
            "podNamespace": NS,
            "podName": meta["name"],
            "podUID": meta["uid"],
        }
        t = time.perf_counter()
        status, _ = unix_request(self.socket(family), method, "/v1/ipam/ip", body, timeout=300)
        return time.perf_counter() - t, status == 200

    def measure(self, pool: str, family: int, n: int) -> dict[str, Any]:
        """``n`` allocations one at a time, then (their pods deleted) ``n`` releases one at a time."""
        pods = self.pods(pool, family, n)
        agent = self.agents[family].pid
        self.call(family, "POST", pods[0])  # (the first one opens the pool's watch: timed apart below)
        cpu0 = cpu_s(agent)
        adds = [self.call(family, "POST", p) for p in pods[1:]]
        add_cpu = cpu_s(agent) - cpu0
        self.kubectl("delete", "pods", "-n", NS, "--grace-period=0", "--force", *[p["metadata"]["name"] for p in pods])
        cpu0 = cpu_s(agent)
        dels = [self.call(family, "DELETE", p) for p in pods]
        del_cpu = cpu_s(agent) - cpu0
        ok = [t for t, good in adds if good]
        rel = [t for t, good in dels if good]
        return {
            "allocations": len(adds),
            "failed": len(adds) - len(ok),
            "add_ms": {"p50": round(1000 * pct(ok, 0.5), 2), "p99": round(1000 * pct(ok, 0.99), 2)},
            "release_ms": {"p50": round(1000 * pct(rel, 0.5), 2), "p99": round(1000 * pct(rel, 0.99), 2)},
            "release_failed": len(dels) - len(rel),
            "agent_cpu_ms_per_allocation": round(1000 * add_cpu / max(1, len(adds)), 2),
            "agent_cpu_ms_per_release": round(1000 * del_cpu / max(1, len(dels)), 2),
        }

    async def fill(self, pool: str, subnet: str, upto: int, already: int) -> int:
        """Records for every address of ``pool`` but each tenth, from the start, until ``upto`` are held
        (held by a pod of another node, as a busy cluster's would be); returns how many are held."""
        net = ipaddress.ip_network(subnet)
        first = int(net.network_address) + 1
        offsets = [o for o in range(net.num_addresses - 2) if o % 10 != 9][already:upto]
        client = Client.from_kubeconfig(str(self.server.kubeconfig), field_manager="bench")
        try:

            async def one(i: int) -> None:
                ip = str(ipaddress.ip_address(first + offsets[i]))
                spec = {
                    "ip": ip, "pool": pool, "ipVersion": 4, "namespace": NS, "pod": f"filler-{i}",
                    "podUID": f"filler-{i}", "interface": "eth0", "node": "elsewhere", "containerID": "c",
                    "cleanGateway": False, "ownerKind": "", "ownerName": "",
                }  # fmt: skip
                await client.create(IPALLOCATION, dict(new_record(record_name(ip), spec)))  # type: ignore[arg-type]

            t = time.monotonic()
            await bounded(len(offsets), 64, one)
            say(f"  {len(offsets)} records into {pool} in {time.monotonic() - t:.0f} s")
        finally:
            await client.close()
        return already + len(offsets)

    def controller_rss(self, label: str) -> float:
        """Start the controller, wait until it has judged every record once, its RSS then (MiB)."""
        health, metrics, hook = procs.free_port(), procs.free_port(), procs.free_port()
        argv = [
            sys.executable, "-m", "spiderpool", "controller", f"--kubeconfig={self.server.kubeconfig}",
            "--namespace=default", "--identity=bench", f"--webhook-url=https://127.0.0.1:{hook}",
            "--webhook-bind=127.0.0.1", f"--webhook-port={hook}", "--health-bind=127.0.0.1",
            f"--health-port={health}", f"--metrics-port={metrics}", "--gc-interval=600",
            f"--cni-conf-dir={self.work}",
        ]  # fmt: skip
        with (self.work / f"controller-{label}.log").open("ab") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        try:
            procs.wait_for(lambda: ready(health), timeout=600, what="the controller")
            scans = "spiderpool_controller_gc_scan_duration_seconds_count"
            procs.wait_for(lambda: (metric(metrics, scans) or 0) >= 1, timeout=900, what="a GC scan")
            return round(rss_mib(proc.pid), 1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allocations", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    server = ApiServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="bench-pool-size-"))
    bench = Bench(server, work)
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "pools": [], "memory": []}
    try:
        for text in crds.render_all().values():
            bench.kubectl("apply", "--server-side", "-f", "-", text=text)
        bench.kubectl("create", "namespace", NS)
        nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in (*NODES.values(), "elsewhere")]
        bench.kubectl("apply", "-f", "-", text=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        for name, (family, subnet, _) in POOLS.items():
            bench.kubectl("apply", "-f", "-", text=json.dumps(pool_body(name, family, subnet)))
        for family in NODES:
            bench.start_agent(family)
        agent_rss0 = rss_mib(bench.agents[4].pid)
        for name, (family, subnet, _) in POOLS.items():
            row = {"pool": name, "subnet": subnet, "allocated": "0 %", **bench.measure(name, family, args.allocations)}
            result["pools"].append(row)
            say(f"{name} 0 %: {row}")
        # 90 % allocated, the free addresses scattered; the 16 at 10k records on the way for memory
        for name, (family, subnet, fits) in POOLS.items():
            if not fits:
                continue
            size = ipaddress.ip_network(subnet).num_addresses - 2
            target = int(size * 0.9)
            held = 0
            if name == "v4-16":
                held = asyncio.run(bench.fill(name, subnet, 10000, 0))
                bench.measure(name, family, 5)  # (the agent has the 10k records now)
                result["memory"].append(
                    {
                        "records": held,
                        "agent_rss_mib": round(rss_mib(bench.agents[4].pid), 1),
                        "controller_rss_mib": bench.controller_rss("10k"),
                    }
                )
                say(f"memory: {result['memory'][-1]}")
            held = asyncio.run(bench.fill(name, subnet, target, held))
            n = min(args.allocations, (size - held) // 2)
            row = {"pool": name, "subnet": subnet, "allocated": "90 %", **bench.measure(name, family, n)}
            result["pools"].append(row)
            say(f"{name} 90 %: {row}")
            if name == "v4-16":
                result["memory"].append(
                    {
                        "records": held,
                        "agent_rss_mib": round(rss_mib(bench.agents[4].pid), 1),
                        "controller_rss_mib": bench.controller_rss("90"),
                    }
                )
                say(f"memory: {result['memory'][-1]}")
        result["memory"].insert(0, {"records": 0, "agent_rss_mib": round(agent_rss0, 1)})
        # a restarted agent with ~59k records in the cluster (none of them its node's)
        restarts = []
        for mode in ("all", "pools"):
            bench.stop_agent(4)
            ready_s = bench.start_agent(4, mode)
            pod = bench.pods("v4-16", 4, 1)[0]
            first_s, ok = bench.call(4, "POST", pod)
            restarts.append(
                {
                    "record_watch": mode,
                    "ready_s": round(ready_s, 2),
                    "first_allocation_from_the_big_pool_s": round(first_s, 2),
                    "ok": ok,
                    "agent_rss_mib": round(rss_mib(bench.agents[4].pid), 1),
                }
            )
            say(f"restart: {restarts[-1]}")
        result["restart"] = restarts
    finally:
        for family in list(bench.agents):
            bench.stop_agent(family)
        server.close()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
