"""Pod start on the lab's real nodes (kubelet, containerd, runc), from create to Running, for two CNI
chains in the same run, their pods interleaved so they share the machine's noise:

- baseline: macvlan + host-local (the reference IPAM: a file write on the node);
- the walkthrough's chain: macvlan + spiderpool + veth (an allocation through the API, the veth pair).

Both go through Multus (the nodes' CNI, as in the walkthrough): the pods pick their chain with
``v1.multus-cni.io/default-network``. Two shapes: pods one after the other (each created once the
previous one runs), and a burst of pods created at once. The time of a pod is from just before its
create request to the watch event that first shows it Running (all containers started), both taken
on this machine. Prints p50/p99 per chain and the ratios to the baseline.

    python bench/pod_start.py [--sequential 100] [--burst 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, pct, say, spiderpool_down, spiderpool_up, wait_absent  # noqa: E402

from spiderpool_lab import install, procs, topology  # noqa: E402
from spiderpool_lab.cluster import Lab  # noqa: E402

NS = "bench-start"
POOL = "bench-start-pool"
CHAINS = {"macvlan + host-local": "bench-hostlocal", "macvlan + spiderpool + veth": "bench-spiderpool"}


def nads(lab: Lab) -> list[dict[str, Any]]:
    macvlan = {"type": "macvlan", "master": "eth0", "mode": "bridge"}
    out = []
    for node in lab.nodes():  # host-local needs a range per node: one NAD each, named by node
        host_local = lab.macvlan_conflist(node.name)["plugins"][0]["ipam"]
        host_local["ranges"][0][0]["rangeStart"] = f"172.18.{110 + node.index}.1"
        host_local["ranges"][0][0]["rangeEnd"] = f"172.18.{110 + node.index}.250"
        out.append(_nad(f"bench-hostlocal-{node.name}", [{**macvlan, "ipam": host_local}]))
    veth = {"type": "veth", "service_cidr": [topology.SERVICE_CIDR]}
    out.append(_nad("bench-spiderpool", [{**macvlan, "ipam": {"type": "spiderpool"}}, veth]))
    return out


def _nad(name: str, plugins: list[dict[str, Any]]) -> dict[str, Any]:
    config = {"cniVersion": "0.3.1", "name": name, "plugins": plugins}
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"config": json.dumps(config)},
    }


def pod(name: str, chain: str, node: str) -> dict[str, Any]:
    network = CHAINS[chain] + (f"-{node}" if chain.endswith("host-local") else "")
    annotations = {"v1.multus-cni.io/default-network": f"{NS}/{network}"}
    if not chain.endswith("host-local"):
        annotations["ipam.spidernet.io/ippool"] = json.dumps({"ipv4": [POOL]})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"bench": "start"}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
        },
    }


class Watcher:
    """The first time each pod of the namespace is seen Running, from one watch stream."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.running: dict[str, float] = {}
        self.cond = threading.Condition()
        code, listed = lab.api("GET", f"/api/v1/namespaces/{NS}/pods")
        assert code == 200, listed
        self.rv = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        port = int(self.lab.state()["ports"]["apiserver"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.lab._client_ssl(), timeout=3600)
        conn.request("GET", f"/api/v1/namespaces/{NS}/pods?watch=1&resourceVersion={self.rv}")
        resp = conn.getresponse()
        while line := resp.readline():
            event = json.loads(line)
            obj = event.get("object", {})
            statuses = obj.get("status", {}).get("containerStatuses") or []
            if obj.get("status", {}).get("phase") == "Running" and all("running" in s["state"] for s in statuses):
                name = obj["metadata"]["name"]
                with self.cond:
                    self.running.setdefault(name, time.monotonic())
                    self.cond.notify_all()

    def wait(self, names: list[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.running for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pods not Running: {[n for n in names if n not in self.running]}")
                self.cond.wait(left)


def quiet(lab: Lab) -> None:
    """Delete the namespace's pods and wait until the nodes have torn their sandboxes down."""
    lab.kubectl("delete", "pods", "-n", NS, "--all", "--wait=true", "--timeout=600s")
    procs.wait_for(
        lambda: not [f for n in lab.nodes() for f in (n.dir / "run" / "netns").iterdir()],
        timeout=300,
        what="the pods' network namespaces to go",
    )


def create(lab: Lab, body: dict[str, Any]) -> float:
    started = time.monotonic()
    code, reply = lab.api("POST", f"/api/v1/namespaces/{NS}/pods", body)
    if code != 201:
        raise RuntimeError(f"create {body['metadata']['name']}: {code} {reply}")
    return started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequential", type=int, default=100, help="pods per chain, one after the other")
    ap.add_argument("--burst", type=int, default=20, help="pods per chain created at once")
    args = ap.parse_args()

    say("the lab, spiderpool, Multus and the two chains")
    lab = lab_with_crds()
    installed = spiderpool_up(lab)
    lab.reset_cni_config()
    install.multus(lab)
    wait_absent(lab, ("namespace", NS), ("spiderippool", POOL))
    pool = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": POOL},
        "spec": {"subnet": "172.18.0.0/16", "ips": ["172.18.120.1-172.18.123.250"], "gateway": "172.18.0.1"},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(pool))
    lab.kubectl("create", "namespace", NS)
    for nad in nads(lab):
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(nad))
    nodes = [n.name for n in lab.nodes()]
    watcher = Watcher(lab)
    seq: dict[str, list[float]] = {c: [] for c in CHAINS}
    burst: dict[str, list[float]] = {c: [] for c in CHAINS}
    burst_all: dict[str, list[float]] = {}
    try:
        say(f"{args.sequential} pods per chain, one after the other, interleaved")
        for i in range(args.sequential):
            for c, chain in enumerate(CHAINS):
                name = f"s{c}-{i:03d}"
                t = create(lab, pod(name, chain, nodes[i % len(nodes)]))
                watcher.wait([name])
                seq[chain].append(watcher.running[name] - t)
            if (i + 1) % 20 == 0:
                say(f"  {i + 1}/{args.sequential}")
        # (a node runs at most 110 pods: the sequential ones go before the bursts)
        say("deleting the sequential pods")
        quiet(lab)
        # two rounds, the chains in both orders: a burst right after another pays for its teardown
        for r, order in enumerate((list(CHAINS), list(CHAINS)[::-1])):
            for chain in order:
                c = list(CHAINS).index(chain)
                say(f"round {r + 1}: a burst of {args.burst} pods, {chain}")
                names = [f"b{r}{c}-{i:03d}" for i in range(args.burst)]
                starts = {n: create(lab, pod(n, chain, nodes[i % len(nodes)])) for i, n in enumerate(names)}
                watcher.wait(names)
                burst[chain] += [watcher.running[n] - starts[n] for n in names]
                burst_all.setdefault(chain, []).append(max(watcher.running[n] for n in names) - min(starts.values()))
                quiet(lab)
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=600s", check=False)
        procs.wait_for(
            lambda: (
                lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=120s", check=False).returncode
                == 0
            ),
            timeout=300,
            what="the pool deleted",
        )
        install.remove_multus(lab)
        lab.reset_cni_config()
        spiderpool_down(lab, installed)

    base = next(iter(CHAINS))
    result: dict[str, Any] = {"sequential": args.sequential, "burst": args.burst}
    for chain in CHAINS:
        result[chain] = {
            "sequential_ms": {"p50": round(pct(seq[chain], 0.5) * 1000), "p99": round(pct(seq[chain], 0.99) * 1000)},
            "burst_ms": {"p50": round(pct(burst[chain], 0.5) * 1000), "p99": round(pct(burst[chain], 0.99) * 1000)},
            "burst_all_running_s": [round(x, 2) for x in burst_all[chain]],
            "sequential_over_baseline_p50": round(statistics.median(seq[chain]) / statistics.median(seq[base]), 2),
            "burst_over_baseline_p50": round(statistics.median(burst[chain]) / statistics.median(burst[base]), 2),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
