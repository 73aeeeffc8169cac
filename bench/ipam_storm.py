"""IPAM storm: 1000 allocations from 10 agents at once into one pool of exactly 1000 IPs.

Runs against the lab's real kube-apiserver. Each agent serves a Node object of its own ("bench-N",
no kubelet: this script plays the runtime and calls the agents' sockets directly, as the CNI plugin
does). Reports allocations per second, API writes and conflicts per allocation, latency at the agent,
and, in the same run, the exec latency of the installed ``spiderpool`` plugin against the reference
``host-local`` plugin (the floor for an exec'd IPAM plugin).

    python bench/ipam_storm.py [--agents 10] [--ips 1000] [--inflight 10] [--plugin-samples 100]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, pct, say, wait_absent  # noqa: E402
from tests.stack import free_port, unix_request  # noqa: E402

from spiderpool_lab import build, paths, procs  # noqa: E402

T = TypeVar("T")

NS = "bench"
POOL = "bench-pool"
PLUGIN_POOL = "bench-plugin-pool"
FIRST = ipaddress.ip_address("172.18.200.1")


def metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--ips", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=10, help="concurrent requests per agent")
    ap.add_argument("--plugin-samples", type=int, default=100)
    args = ap.parse_args()

    lab = lab_with_crds()
    last = ipaddress.ip_address(int(FIRST) + args.ips - 1)
    pool = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": POOL},
        "spec": {"subnet": "172.18.0.0/16", "ipVersion": 4, "ips": [f"{FIRST}-{last}"], "gateway": "172.18.0.1"},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(pool))
    plugin_pool = {
        **pool,
        "metadata": {"name": PLUGIN_POOL},
        "spec": {**pool["spec"], "ips": [f"172.18.210.1-172.18.210.{args.plugin_samples}"]},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(plugin_pool))
    nodes = [f"bench-{i + 1}" for i in range(args.agents)]
    per_node = args.ips // args.agents
    say(f"creating {args.agents} nodes and {per_node * args.agents} pods")
    wait_absent(lab, ("namespace", NS))
    lab.kubectl("create", "namespace", NS)
    items: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in nodes]
    ann = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})}
    items += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{n}-p{j:04d}", "namespace": NS, "annotations": ann},
            "spec": {"nodeName": n, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
        for n in nodes
        for j in range(per_node)
    ]
    plugin_ann = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [PLUGIN_POOL]})}
    items += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"plug-{j:04d}",
                "namespace": NS,
                "labels": {"plugin": "yes"},
                "annotations": plugin_ann,
            },
            "spec": {"nodeName": nodes[0], "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
        for j in range(args.plugin_samples)
    ]
    lab.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    everything = json.loads(lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
    pods = [p for p in everything if not p["metadata"].get("labels", {}).get("plugin")]
    plugin_pods = [p for p in everything if p["metadata"].get("labels", {}).get("plugin")]
    work = Path(tempfile.mkdtemp(prefix="spiderpool-bench-"))
    sockets: dict[str, str] = {}
    metrics: dict[str, int] = {}
    try:
        for n in nodes:
            sockets[n], metrics[n] = str(work / f"{n}.sock"), free_port()
            lab.start_process(
                f"bench-agent/{n}",
                [
                    sys.executable,
                    "-m",
                    "spiderpool",
                    "agent",
                    f"--kubeconfig={lab.kubeconfig}",
                    f"--node-name={n}",
                    f"--socket={sockets[n]}",
                    f"--cni-bin-dir={work / n / 'bin'}",
                    "--metrics-bind=127.0.0.1",
                    f"--metrics-port={metrics[n]}",
                    "--log-level=WARNING",
                ],
            )
        for n in nodes:
            procs.wait_for(
                lambda n=n: unix_request(sockets[n], "GET", "/v1/ipam/healthy")[0] == 200,
                timeout=120,
                what=f"agent {n}",
            )
        say(f"storm: {len(pods)} allocations, {args.agents} agents x {args.inflight} in flight")

        def allocate(pod: dict[str, Any]) -> tuple[float, int]:
            meta = pod["metadata"]
            body = {
                "containerID": f"c-{meta['uid']}",
                "ifName": "eth0",
                "netNamespace": "/x",
                "podNamespace": NS,
                "podName": meta["name"],
                "podUID": meta["uid"],
            }
            t = time.perf_counter()
            status, _ = unix_request(sockets[pod["spec"]["nodeName"]], "POST", "/v1/ipam/ip", body, timeout=120)
            return time.perf_counter() - t, status

        cpu_before = cpu_seconds()
        started = time.perf_counter()
        results = per_agent(pods, allocate, args.inflight)
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds()
        cpu = {k: round(cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0), 2) for k in cpu_after}
        ok = [lat for lat, status in results if status == 200]
        scraped = {n: urllib.request.urlopen(f"http://127.0.0.1:{metrics[n]}/metrics").read().decode() for n in nodes}
        conflicts = sum(metric_sum(t, "spiderpool_ipam_allocation_conflict_counts_total") for t in scraped.values())
        writes = sum(metric_sum(t, "spiderpool_ipam_api_writes_total") for t in scraped.values())
        recs = json.loads(lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
        mine = [r for r in recs if r["spec"]["pool"] == POOL]
        ips = [r["spec"]["ip"] for r in mine]
        by_pod: dict[str, int] = {}
        for r in mine:
            by_pod[r["spec"]["pod"]] = by_pod.get(r["spec"]["pod"], 0) + 1

        # The SpiderEndpoints are written after the replies; measure how long they trail, and take the
        # plugin samples once they are written, so those measure an ADD, not the storm's tail.
        def pending() -> float:
            return sum(
                metric_sum(
                    urllib.request.urlopen(f"http://127.0.0.1:{metrics[n]}/metrics").read().decode(),
                    "spiderpool_ipam_endpoint_sync_pending",
                )
                for n in nodes
            )

        procs.wait_for(lambda: pending() == 0, timeout=300, interval=0.05, what="endpoint writes")
        endpoints_done = time.perf_counter() - started
        endpoints = json.loads(lab.kubectl("get", "spiderendpoints", "-n", NS, "-o", "json").stdout)["items"]

        say(f"plugin exec latency, {args.plugin_samples} fresh ADDs each (spiderpool through its agent; host-local)")
        plugin_lat, hostlocal_lat = plugin_samples(work, sockets[nodes[0]], plugin_pods)

        # Release everything, as the runtime would once the pods are gone (one delete-collection call).
        lab.kubectl("delete", "--raw", f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0")
        procs.wait_for(
            lambda: not json.loads(lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"],
            timeout=300,
            what="pods deleted",
        )

        def release(pod: dict[str, Any]) -> int:
            meta = pod["metadata"]
            body = {
                "containerID": f"c-{meta['uid']}",
                "ifName": "eth0",
                "podNamespace": NS,
                "podName": meta["name"],
                "podUID": meta["uid"],
            }
            return unix_request(sockets[pod["spec"]["nodeName"]], "DELETE", "/v1/ipam/ip", body, timeout=120)[0]

        released = per_agent(pods + plugin_pods, release, args.inflight)
        left = [
            r
            for r in json.loads(lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
            if r["spec"]["pool"] in (POOL, PLUGIN_POOL)
        ]
    finally:
        for n in nodes:
            lab.stop_process(f"bench-agent/{n}")
        lab.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        lab.kubectl("delete", "node", *nodes, check=False)
        lab.kubectl("delete", "spiderippool", POOL, PLUGIN_POOL, "--wait=false", check=False)

    result = {
        "allocations": len(pods),
        "succeeded": len(ok),
        "wall_seconds": round(wall, 2),
        "cpu_seconds_during_storm": cpu,
        "endpoints_written": len(endpoints),
        "endpoints_written_after_seconds": round(endpoints_done, 2),
        "allocations_per_second": round(len(ok) / wall, 1),
        "agent_latency_ms": {"p50": round(pct(ok, 0.5) * 1000, 1), "p99": round(pct(ok, 0.99) * 1000, 1)},
        "conflicts_per_allocation": round(conflicts / max(1, len(ok)), 4),
        "api_writes_per_allocation": round(writes / max(1, len(ok)), 2),
        "duplicates": len(ips) - len(set(ips)),
        "pods_with_more_than_one_ip": sum(1 for v in by_pod.values() if v > 1),
        "records_after_release": len(left),
        "release_failures": sum(1 for s in released if s != 200),
        "plugin_add_ms": {"p50": round(pct(plugin_lat, 0.5) * 1000, 1), "p99": round(pct(plugin_lat, 0.99) * 1000, 1)},
        "host_local_add_ms": {
            "p50": round(pct(hostlocal_lat, 0.5) * 1000, 1),
            "p99": round(pct(hostlocal_lat, 0.99) * 1000, 1),
        },
        "plugin_over_host_local_p50": round(pct(plugin_lat, 0.5) / pct(hostlocal_lat, 0.5), 2),
    }
    print(json.dumps(result, indent=2))


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the lab's processes, grouped (where the storm's time goes)."""
    groups = {  # first match wins
        "kube-apiserver": "/kube-apiserver ",
        "etcd": "/etcd ",
        "agents": "-m spiderpool agent",
        "other lab processes": f"{paths.cache_dir()}/",
        "lab nodes (kubelet, containerd)": "-m spiderpool_lab.",
    }
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys([*groups, "bench client (this script)"], 0.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(pid) == os.getpid():
            out["bench client (this script)"] += used
            continue
        for group, needle in groups.items():
            if needle in cmd:
                out[group] += used
                break
    return out


def per_agent(pods: list[dict[str, Any]], call: Callable[[dict[str, Any]], T], inflight: int) -> list[T]:
    """Run ``call`` for every pod with exactly ``inflight`` calls at a time per node (agent), all
    agents at once: the load of nodes that each start many pods together."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    pools = [ThreadPoolExecutor(max_workers=inflight) for _ in by_node]
    try:
        futures = [
            ex.submit(call, pod) for ex, node_pods in zip(pools, by_node.values(), strict=True) for pod in node_pods
        ]
        return [f.result() for f in futures]
    finally:
        for ex in pools:
            ex.shutdown()


def plugin_samples(work: Path, sock: str, pods: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Exec the installed spiderpool plugin for fresh ADDs (one per pod), and host-local for as many fresh
    ADDs, one after the other, as a runtime would exec them."""
    plugin = next(work.glob("bench-1/bin/spiderpool"))
    host_local = build.binary("host-local")
    conf = {
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "macvlan",
        "ipam": {"type": "spiderpool", "ipam_unix_socket_path": sock},
    }
    hl_conf = {
        "cniVersion": "1.0.0",
        "name": "bench-hl",
        "type": "macvlan",
        "ipam": {"type": "host-local", "dataDir": str(work / "host-local"), "ranges": [[{"subnet": "10.250.0.0/16"}]]},
    }
    plugin_lat, hl_lat = [], []
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    for i, pod in enumerate(pods):
        meta = pod["metadata"]
        env = {
            **base,
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"c-{meta['uid']}",
            "CNI_NETNS": "/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(plugin.parent),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={meta['name']};K8S_POD_UID={meta['uid']}",
        }
        t = time.perf_counter()
        out = subprocess.run([str(plugin)], input=json.dumps(conf), capture_output=True, text=True, env=env)
        plugin_lat.append(time.perf_counter() - t)
        if out.returncode != 0:
            raise RuntimeError(f"plugin ADD failed: {out.stdout}")
        env_hl = {**env, "CNI_CONTAINERID": f"hl-{i}", "CNI_PATH": str(host_local.parent)}
        t = time.perf_counter()
        out = subprocess.run([str(host_local)], input=json.dumps(hl_conf), capture_output=True, text=True, env=env_hl)
        hl_lat.append(time.perf_counter() - t)
        if out.returncode != 0:
            raise RuntimeError(f"host-local ADD failed: {out.stdout}")
    return plugin_lat, hl_lat


if __name__ == "__main__":
    main()
