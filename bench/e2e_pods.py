"""End to end, in the shape of upstream Spiderpool's published benchmark: real pods on the lab's real
nodes (kubelet, containerd, runc), every pool exactly as large as the pod count (1:1), for three
chains in the same invocation:

- ``macvlan + spiderpool + veth`` (the walkthrough's chain; one SpiderIPPool of exactly N addresses);
- ``macvlan + whereabouts`` (its kubernetes backend, one range of exactly N addresses);
- ``macvlan + host-local`` (the floor: per-node ranges of N / nodes addresses, no coordination).

Every chain runs as one Deployment per node (pinned there, N / nodes replicas): host-local needs a
range per node, so all three get the same shape. Each goes through Multus, the nodes' CNI, as in the
walkthrough; the pods pick their chain with ``v1.multus-cni.io/default-network``. Timed per chain:

- create: from the first Deployment's create to all N pods Running;
- rebuild: from deleting all N pods to N new pods Running (with a 1:1 pool, only as fast as the
  old pods' addresses come back);
- delete: from deleting the Deployments to every address released (spiderpool: the pool's
  ``allocatedIPCount`` at 0; Whereabouts: no allocation left in its IPPool; host-local: no
  reservation file left on any node).

Then upstream's subnet case: 30 Deployments of 2 replicas from a 150-address SpiderSubnet with
``ipam.spidernet.io/ippool-ip-number: "5"`` (each gets an auto-pool of 5), timed from create to all
Running, from scaling every Deployment to 5 (every auto-pool full) to all Running, and from delete to
every auto-pool gone and the subnet's count back at 0.

Pods are followed through one list-and-watch of the namespace; pools are read through the API.

    python bench/e2e_pods.py [--nodes 3] [--pods 300] [--rounds 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, say, spiderpool_down, spiderpool_up, wait_absent  # noqa: E402

from spiderpool_lab import install, procs, topology  # noqa: E402
from spiderpool_lab.cluster import Lab  # noqa: E402

NS = "bench-e2e"
POOL = "bench-e2e-pool"
SUBNET = "bench-e2e-subnet"
SPIDERPOOL, WHEREABOUTS, HOST_LOCAL = "macvlan + spiderpool + veth", "macvlan + whereabouts", "macvlan + host-local"
CHAINS = {SPIDERPOOL: "sp", WHEREABOUTS: "wb", HOST_LOCAL: "hl"}
SPIDERPOOL_FIRST = ipaddress.ip_address("172.18.160.1")
WHEREABOUTS_RANGE = ipaddress.ip_network("172.18.168.0/21")
HOST_LOCAL_BASE = 176  # node i's range lies in 172.18.(176 + i).0/24
SUBNET_FIRST = ipaddress.ip_address("172.18.190.1")
WB_POOLS = "/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/kube-system/ippools"
TIMEOUT = 1800.0
GW = "172.18.0.1"


class Pods:
    """The namespace's pods, kept current by list-and-watch (relisting when a watch ends)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.items: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.synced = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        if not self.synced.wait(60):
            raise TimeoutError("the pod watch never listed")

    def _run(self) -> None:
        while True:
            try:
                self._list_and_watch()
            except (OSError, http.client.HTTPException, ValueError) as e:
                say(f"pod watch ended ({e}); listing again")
                time.sleep(1)  # back-off before relisting, not synchronisation

    def _list_and_watch(self) -> None:
        code, listed = self.lab.api("GET", f"/api/v1/namespaces/{NS}/pods")
        if code != 200:
            raise ValueError(f"list pods: {code}")
        with self.cond:
            self.items = {p["metadata"]["name"]: p for p in listed["items"]}
            self.cond.notify_all()
        self.synced.set()
        port = int(self.lab.state()["ports"]["apiserver"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.lab._client_ssl(), timeout=3600)
        rv = listed["metadata"]["resourceVersion"]
        conn.request("GET", f"/api/v1/namespaces/{NS}/pods?watch=1&allowWatchBookmarks=false&resourceVersion={rv}")
        resp = conn.getresponse()
        while line := resp.readline():
            event = json.loads(line)
            obj = event["object"]
            if event["type"] == "ERROR":
                raise ValueError(f"watch error: {obj.get('message')}")
            with self.cond:
                if event["type"] == "DELETED":
                    self.items.pop(obj["metadata"]["name"], None)
                else:
                    self.items[obj["metadata"]["name"]] = obj
                self.cond.notify_all()

    def select(self, prefix: str) -> list[dict[str, Any]]:
        with self.cond:
            return [p for n, p in self.items.items() if n.startswith(prefix)]

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not within {timeout:.0f}s")
                self.cond.wait(min(left, 1.0))


def running(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    containers = status.get("containerStatuses") or []
    return (
        status.get("phase") == "Running"
        and bool(status.get("podIP"))
        and bool(containers)
        and all("running" in c.get("state", {}) for c in containers)
        and "deletionTimestamp" not in pod["metadata"]
    )


def nad(name: str, plugins: list[dict[str, Any]]) -> dict[str, Any]:
    config = {"cniVersion": "0.3.1", "name": name, "plugins": plugins}
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"config": json.dumps(config)},
    }


def networks(lab: Lab, pods: int) -> list[dict[str, Any]]:
    """One NAD per chain (host-local: one per node, each with its own range)."""
    macvlan = {"type": "macvlan", "master": "eth0", "mode": "bridge"}
    last_wb = WHEREABOUTS_RANGE.network_address + pods
    out = [
        nad(
            "e2e-sp",
            [{**macvlan, "ipam": {"type": "spiderpool"}}, {"type": "veth", "service_cidr": [topology.SERVICE_CIDR]}],
        ),
        nad(
            "e2e-wb",
            [
                {
                    **macvlan,
                    "ipam": {
                        "type": "whereabouts",
                        "range": str(WHEREABOUTS_RANGE),
                        "range_start": str(WHEREABOUTS_RANGE.network_address + 1),
                        "range_end": str(last_wb),
                        "gateway": topology.UNDERLAYS[0].gateway4,
                        "kubernetes": {"kubeconfig": install.WHEREABOUTS_KUBECONFIG},
                    },
                }
            ],
        ),
    ]
    per_node = pods // len(lab.nodes())
    for node in lab.nodes():
        ipam = lab.macvlan_conflist(node.name)["plugins"][0]["ipam"]
        ipam["ranges"][0][0]["rangeStart"] = f"172.18.{HOST_LOCAL_BASE + node.index}.1"
        ipam["ranges"][0][0]["rangeEnd"] = f"172.18.{HOST_LOCAL_BASE + node.index}.{per_node}"
        out.append(nad(f"e2e-hl-{node.name}", [{**macvlan, "ipam": ipam}]))
    return out


def deployment(name: str, replicas: int, network: str, annotations: dict[str, str], node: str | None) -> str:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {
                        "labels": {"app": name},
                        "annotations": {"v1.multus-cni.io/default-network": f"{NS}/{network}", **annotations},
                    },
                    "spec": spec,
                },
            },
        }
    )


def create(lab: Lab, manifest: str) -> None:
    code, reply = lab.api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", json.loads(manifest))
    if code != 201:
        raise RuntimeError(f"create deployment: {code} {reply}")


def delete_pods(lab: Lab, apps: list[str]) -> None:
    """Delete the apps' pods as an admin does (``kubectl delete pods -l``), without waiting."""
    lab.kubectl("delete", "pods", "-n", NS, "-l", f"app in ({','.join(apps)})", "--wait=false")


def poll(what: str, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    procs.wait_for(condition, timeout=timeout, interval=0.2, what=what)


def held(lab: Lab, chain: str) -> int:
    """Addresses the chain's IPAM still holds, as that IPAM records them."""
    if chain == SPIDERPOOL:
        code, pool = lab.api("GET", f"/apis/spiderpool.spidernet.io/v2beta1/spiderippools/{POOL}")
        assert code == 200, pool
        return int(pool.get("status", {}).get("allocatedIPCount") or 0)
    if chain == WHEREABOUTS:
        code, pools = lab.api("GET", WB_POOLS)
        assert code == 200, pools
        return sum(
            len(p["spec"].get("allocations") or {})
            for p in pools["items"]
            if _in_range(str(p["spec"].get("range", "")))
        )
    count = 0
    for node in lab.nodes():
        for network in (node.var_lib_cni / "networks").glob("e2e-hl-*"):
            count += sum(1 for f in network.iterdir() if f.name[0].isdigit())
    return count


def _in_range(cidr: str) -> bool:
    """Whether a Whereabouts IPPool's range is this benchmark's (it may write it as a range or a CIDR)."""
    try:
        return ipaddress.ip_network(cidr.split("-")[0], strict=False).overlaps(WHEREABOUTS_RANGE)
    except ValueError:
        return True  # unknown form: count it rather than report a release that did not happen


def quiet(lab: Lab, pods: Pods) -> None:
    """Wait until every pod of the namespace is gone and the nodes have torn their sandboxes down."""
    pods.wait("the pods to go", lambda: not pods.items)
    poll(
        "the pods' network namespaces to go",
        lambda: not [f for n in lab.nodes() for f in (n.dir / "run" / "netns").iterdir()],
    )


def chain_round(lab: Lab, pods: Pods, chain: str, n: int, limit: float) -> dict[str, float | None]:
    """Create, rebuild and delete one chain's pods; a phase that does not finish within ``limit``
    seconds is recorded as None with how many pods were Running then, and the rebuild is skipped."""
    key = CHAINS[chain]
    nodes = lab.nodes()
    per_node = n // len(nodes)
    annotations = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})} if chain == SPIDERPOOL else {}
    names = [f"{key}-{node.name}" for node in nodes]

    def count(exclude: frozenset[str] = frozenset()) -> int:
        return sum(1 for p in pods.select(f"{key}-") if running(p) and p["metadata"]["name"] not in exclude)

    def phase(name: str, started: float, exclude: frozenset[str] = frozenset()) -> bool:
        try:
            pods.wait(f"{n} pods of {chain} Running ({name})", lambda: count(exclude) == n, timeout=limit)
        except TimeoutError:
            t[f"{name}_s"] = None
            t[f"{name}_running_at_limit"] = count(exclude)
            say(f"  {chain}: {name}: only {count(exclude)}/{n} Running after {limit:.0f}s")
            return False
        t[f"{name}_s"] = time.monotonic() - started
        say(f"  {chain}: {name}: {n} pods Running in {t[f'{name}_s']:.1f}s")
        return True

    t: dict[str, float | None] = {}
    started = time.monotonic()
    for node, name in zip(nodes, names, strict=True):
        network = f"e2e-hl-{node.name}" if chain == HOST_LOCAL else f"e2e-{key}"
        create(lab, deployment(name, per_node, network, annotations, node.name))
    if phase("create", started):
        old = frozenset(p["metadata"]["name"] for p in pods.select(f"{key}-"))
        started = time.monotonic()
        delete_pods(lab, names)
        phase("rebuild", started, old)

    started = time.monotonic()
    for name in names:
        code, reply = lab.api("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/{name}")
        if code not in (200, 202):
            raise RuntimeError(f"delete deployment {name}: {code} {reply}")
    try:
        poll(f"every address of {chain} released", lambda: held(lab, chain) == 0, timeout=limit)
        t["delete_s"] = time.monotonic() - started
        say(f"  {chain}: every address released in {t['delete_s']:.1f}s")
    except TimeoutError:
        t["delete_s"], t["delete_held_at_limit"] = None, held(lab, chain)
        say(f"  {chain}: {t['delete_held_at_limit']} addresses still held {limit:.0f}s after the delete")
    quiet(lab, pods)
    return t


def subnet_case(lab: Lab, pods: Pods, apps: int = 30, replicas: int = 2, per_pool: int = 5) -> dict[str, float]:
    annotations = {
        "ipam.spidernet.io/subnet": json.dumps({"ipv4": [SUBNET]}),
        "ipam.spidernet.io/ippool-ip-number": str(per_pool),
    }
    names = [f"sub-{i:02d}" for i in range(apps)]

    def count_running() -> int:
        return sum(1 for p in pods.select("sub-") if running(p))

    def auto_pools() -> int:
        code, listed = lab.api("GET", "/apis/spiderpool.spidernet.io/v2beta1/spiderippools")
        assert code == 200, listed
        return sum(1 for p in listed["items"] if p["metadata"]["name"].startswith("auto4-sub-"))

    def subnet_count() -> int:
        code, subnet = lab.api("GET", f"/apis/spiderpool.spidernet.io/v2beta1/spidersubnets/{SUBNET}")
        assert code == 200, subnet
        return int(subnet.get("status", {}).get("allocatedIPCount") or 0)

    t: dict[str, float] = {}
    started = time.monotonic()
    for name in names:
        create(lab, deployment(name, replicas, "e2e-sp", annotations, None))
    pods.wait(f"{apps * replicas} pods Running", lambda: count_running() == apps * replicas)
    t["create_s"] = time.monotonic() - started
    t["auto_pools"] = auto_pools()
    say(f"  subnet: {apps} x {replicas} Running in {t['create_s']:.1f}s ({t['auto_pools']:.0f} auto-pools)")

    started = time.monotonic()
    for name in names:
        lab.kubectl("scale", "-n", NS, f"deployment/{name}", f"--replicas={per_pool}")
    pods.wait(f"{apps * per_pool} pods Running", lambda: count_running() == apps * per_pool)
    t["scale_s"] = time.monotonic() - started
    say(f"  subnet: scaled to {apps} x {per_pool} Running in {t['scale_s']:.1f}s")

    started = time.monotonic()
    for name in names:
        code, reply = lab.api("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/{name}")
        if code not in (200, 202):
            raise RuntimeError(f"delete deployment {name}: {code} {reply}")
    poll("every auto-pool gone, the subnet's count at 0", lambda: auto_pools() == 0 and subnet_count() == 0)
    t["delete_s"] = time.monotonic() - started
    say(f"  subnet: every auto-pool gone in {t['delete_s']:.1f}s")
    quiet(lab, pods)
    return t


def apply_when_accepted(lab: Lab, manifest: dict[str, Any]) -> None:
    """Apply, retrying while the webhook is not yet serving (just after the controller starts)."""
    procs.wait_for(
        lambda: lab.kubectl("apply", "-f", "-", input_text=json.dumps(manifest), check=False).returncode == 0,
        timeout=60,
        what=f"{manifest['kind']} {manifest['metadata']['name']} accepted",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods", type=int, default=300, help="pods per chain = addresses in each chain's pool")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the three chains (the order turns)")
    ap.add_argument("--chains", default=",".join(CHAINS.values()), help="which chains: sp, wb, hl")
    ap.add_argument("--no-subnet", action="store_true", help="skip the subnet case")
    ap.add_argument("--limit", type=float, default=900, help="seconds a create or rebuild may take")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.pods % args.nodes:
        ap.error("--pods must be a multiple of --nodes (one Deployment per node)")

    say(f"the lab with {args.nodes} nodes, spiderpool, Whereabouts, Multus and the three chains")
    lab = lab_with_crds(nodes=args.nodes)
    installed = spiderpool_up(lab)
    lab.reset_cni_config()
    install.multus(lab)
    install.whereabouts(lab)
    wait_absent(lab, ("namespace", NS), ("spiderippool", POOL), ("spidersubnet", SUBNET))
    last = SPIDERPOOL_FIRST + args.pods - 1
    pool = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": POOL},
        "spec": {"subnet": "172.18.0.0/16", "ips": [f"{SPIDERPOOL_FIRST}-{last}"], "gateway": GW},
    }
    # (created once the pool is gone: a SpiderSubnet of the pool's CIDR would have to offer its IPs too)
    subnet_object = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": SUBNET},
        "spec": {"subnet": "172.18.0.0/16", "ips": [f"{SUBNET_FIRST}-{SUBNET_FIRST + 149}"], "gateway": GW},
    }
    apply_when_accepted(lab, pool)
    lab.kubectl("create", "namespace", NS)
    for network in networks(lab, args.pods):
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(network))
    pods = Pods(lab)
    rounds: list[dict[str, dict[str, float | None]]] = []
    subnet: dict[str, float] = {}
    try:
        for r in range(args.rounds):
            chosen = [c for c in CHAINS if CHAINS[c] in args.chains.split(",")]
            order = chosen if r % 2 == 0 else chosen[::-1]
            say(f"round {r + 1}/{args.rounds}: {args.pods} pods per chain over {args.nodes} nodes")
            rounds.append({chain: chain_round(lab, pods, chain, args.pods, args.limit) for chain in order})
        if not args.no_subnet:
            say("the subnet case: 30 Deployments x 2 from a 150-address SpiderSubnet, ippool-ip-number 5")
            lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=300s")
            apply_when_accepted(lab, subnet_object)
            subnet = subnet_case(lab, pods)
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=600s", check=False)
        for kind, name in (("spiderippool", POOL), ("spidersubnet", SUBNET)):
            lab.kubectl("delete", kind, name, "--wait=true", "--timeout=300s", check=False)
        install.remove_whereabouts(lab)
        install.remove_multus(lab)
        lab.reset_cni_config()
        spiderpool_down(lab, installed)

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "nodes": args.nodes,
        "pods": args.pods,
        "rounds": rounds,
        "subnet": subnet,
    }
    result["best_of_rounds"] = best_of(rounds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def best_of(rounds: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """Per chain run, the best time of each phase over the rounds; then each chain against spiderpool."""
    summary: dict[str, dict[str, float | None]] = {}
    for chain in CHAINS:
        if not any(chain in r for r in rounds):
            continue
        summary[chain] = {}
        for k in ("create_s", "rebuild_s", "delete_s"):
            done = [v for r in rounds if (v := r.get(chain, {}).get(k)) is not None]
            summary[chain][k] = round(min(done), 1) if done else None
    for chain in (WHEREABOUTS, HOST_LOCAL):
        if chain not in summary or SPIDERPOOL not in summary:
            continue
        ratios: dict[str, float | None] = {}
        for k, v in summary[chain].items():
            base = summary[SPIDERPOOL][k]
            ratios[k] = round(v / base, 2) if v is not None and base else None
        summary[f"{chain} / spiderpool"] = ratios
    return summary


if __name__ == "__main__":
    main()
