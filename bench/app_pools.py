"""Auto-pools against hand-made pools: what the SpiderSubnet convenience costs an application.

Runs on the lab's 2 real nodes with the whole stack (spiderpool-controller, an agent per node, the CNI
chain macvlan + spiderpool + veth run by the nodes' containerd). Two Deployments of the same
size, in the same invocation:
- baseline: ``ipam.spidernet.io/ippool`` naming a SpiderIPPool made beforehand by hand;
- auto: ``ipam.spidernet.io/subnet`` naming a SpiderSubnet (the controller creates and sizes the pool,
  the agent waits for it).
For each: seconds from ``kubectl apply`` to every pod Running with its IP (and, for auto, to the pool's
creation), from ``kubectl scale`` to 2x, and from ``kubectl delete`` to every IP released (auto: and the
pool deleted, the subnet's count back where it was). Prints the ratios auto / baseline.

    python bench/app_pools.py [--replicas 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, say, spiderpool_down, spiderpool_up, wait_absent  # noqa: E402

from spiderpool_lab import procs, topology  # noqa: E402
from spiderpool_lab.cluster import Lab  # noqa: E402

NS = "bench-apps"
POOL, SUBNET = "bench-manual", "bench-subnet"


def get(lab: Lab, *args: str) -> Any:
    return json.loads(lab.kubectl("get", *args, "-o", "json").stdout)


def deployment(name: str, replicas: int, annotations: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
    )


def running(lab: Lab, app: str) -> int:
    pods = get(lab, "pods", "-n", NS, "-l", f"app={app}")["items"]
    return sum(1 for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP"))


def records(lab: Lab, app: str) -> int:
    return sum(1 for r in get(lab, "spideripallocations")["items"] if r["spec"]["pod"].startswith(f"{app}-"))


def auto_pools(lab: Lab, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(lab, "spiderippools")["items"]
    return [p for p in items if p["metadata"]["name"].startswith(f"auto4-{app}-")]


def timed(what: str, condition: Any, timeout: float = 300) -> float:
    started = time.perf_counter()
    procs.wait_for(condition, timeout=timeout, interval=0.1, what=what)
    return time.perf_counter() - started


def one_round(lab: Lab, n: int, r: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, template_annotations in (
        ("baseline", {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})}),
        ("auto", {"ipam.spidernet.io/subnet": json.dumps({"ipv4": [SUBNET]})}),
    ):
        app = f"{kind}-r{r}"
        t: dict[str, float] = {}
        held = get(lab, "spidersubnet", SUBNET).get("status", {}).get("allocatedIPCount") or 0
        started = time.perf_counter()
        lab.kubectl("apply", "-f", "-", input_text=deployment(app, n, template_annotations))
        if kind == "auto":
            t["pool_created"] = timed("the auto-pool", lambda app=app: bool(auto_pools(lab, app)))
        procs.wait_for(lambda app=app: running(lab, app) == n, timeout=300, interval=0.1, what=f"{n} pods of {app}")
        t["create_all_running"] = time.perf_counter() - started
        lab.kubectl("scale", "-n", NS, f"deployment/{app}", f"--replicas={2 * n}")
        t["scale_2x_all_running"] = timed(f"{2 * n} pods of {app}", lambda app=app: running(lab, app) == 2 * n)
        started = time.perf_counter()
        lab.kubectl("delete", "-n", NS, f"deployment/{app}", "--wait=false")

        def released(app: str = app, kind: str = kind, held: int = held) -> bool:
            if records(lab, app):
                return False
            if kind == "baseline":
                return True
            subnet = get(lab, "spidersubnet", SUBNET)
            return not auto_pools(lab, app) and (subnet.get("status", {}).get("allocatedIPCount") or 0) == held

        procs.wait_for(released, timeout=300, interval=0.1, what=f"{app}'s IPs released")
        t["delete_all_released"] = time.perf_counter() - started
        procs.wait_for(
            lambda app=app: not get(lab, "pods", "-n", NS, "-l", f"app={app}")["items"],
            timeout=300,
            what=f"{app}'s pods gone",
        )
        out[kind] = t
        say(f"round {r} {kind}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.replicas

    say("installing CRDs, the CNI chain and spiderpool")
    lab = lab_with_crds()
    conflist = {
        "cniVersion": "0.3.1",
        "name": "macvlan-conf",
        "plugins": [
            {"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool"}},
            {"type": "veth", "service_cidr": [topology.SERVICE_CIDR]},
        ],
    }
    for node in lab.nodes():
        lab.clear_cni_config(node.name)
        lab.write_cni_config(node.name, "10-spiderpool.conflist", conflist)
    installed = spiderpool_up(lab)
    procs.wait_for(
        lambda: lab.kubectl("get", "spiderippools", check=False).returncode == 0, timeout=60, what="the CRDs"
    )
    size = 2 * n + 2
    pool = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": POOL},
        "spec": {"subnet": "172.18.0.0/16", "ips": [f"172.18.90.1-172.18.90.{size}"], "gateway": "172.18.0.1"},
    }
    subnet = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": SUBNET},
        # the hand-made pool lies in the subnet too: a pool of a SpiderSubnet's CIDR must be inside it
        "spec": {
            "subnet": "172.18.0.0/16",
            "ips": [f"172.18.90.1-172.18.90.{size}", f"172.18.91.1-172.18.91.{size + 2}"],
            "gateway": "172.18.0.1",
        },
    }
    wait_absent(lab, ("namespace", NS), ("spiderippool", POOL), ("spidersubnet", SUBNET))
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        for manifest in (subnet, pool):  # the webhook may need a moment after the controller starts
            procs.wait_for(
                lambda m=manifest: (
                    lab.kubectl("apply", "-f", "-", input_text=json.dumps(m), check=False).returncode == 0
                ),
                timeout=60,
                what=f"{manifest['kind']} accepted",
            )
        lab.kubectl("create", "namespace", NS)
        say(f"{args.rounds} rounds: a Deployment of {n} replicas, scaled to {2 * n}, deleted; baseline then auto")
        for r in range(1, args.rounds + 1):
            rounds.append(one_round(lab, n, r))
    finally:
        # the pool and subnet go once their IPs are free, which needs the controller and agents: wait
        lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=300s", check=False)
        lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=120s", check=False)
        lab.kubectl("delete", "spidersubnet", SUBNET, "--wait=true", "--timeout=120s", check=False)
        lab.reset_cni_config()
        spiderpool_down(lab, installed)

    result: dict[str, Any] = {"replicas": n, "rounds": args.rounds}
    for kind in ("baseline", "auto"):
        keys = rounds[0][kind].keys()
        result[kind] = {k: round(statistics.median(x[kind][k] for x in rounds), 2) for k in keys}
    result["auto_over_baseline"] = {
        k: round(result["auto"][k] / result["baseline"][k], 2) for k in result["baseline"] if result["baseline"][k] > 0
    }
    result["all_rounds"] = rounds
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
