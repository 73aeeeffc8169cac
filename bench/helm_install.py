"""The Helm chart on the lab's real nodes (2 nodes):

1. install until Ready: ``helm install --wait`` with the walkthrough's flags (its post-install Job
   included) until the controllers and an agent on every node are Ready; baseline: ``kubectl
   apply -f deploy/spiderpool.yaml`` (the same objects, rendered by the chart) until Ready;
2. after that fresh install, the walkthrough's Deployment (its SpiderSubnet, NAD and 2 replicas)
   until Running;
3. an upgrade under load: a Deployment scaled from 0 to 30 while ``helm upgrade`` rolls the agents
   and controllers; the failed CNI ADDs (retried by the runtime) and the longest time a pod waited
   for its IP (creation to sandbox ready). Baseline: the same scale-up with no upgrade.

    python bench/helm_install.py [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, say  # noqa: E402

from spiderpool_lab import demo, helm, install, procs  # noqa: E402
from spiderpool_lab.cluster import Lab  # noqa: E402

NS = "bench-helm"
POOL = "bench-helm-pool"
LOAD = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: load, namespace: {NS}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: load}}}}
  template:
    metadata:
      labels: {{app: load}}
      annotations: {{ipam.spidernet.io/ippool: '{{"ipv4": ["{POOL}"]}}'}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: c, image: registry.invalid/app:1}}]
"""


def _ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _pods(lab: Lab, namespace: str) -> list[dict[str, Any]]:
    out = lab.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False)
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"] if out.returncode == 0 else []
    return items


def _uninstall_all(lab: Lab) -> None:
    install.uninstall_spiderpool(lab)
    manifest = (ROOT / helm.MANIFEST).read_text()
    lab.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", input_text=manifest, check=False)
    procs.wait_for(
        lambda: not [p for p in _pods(lab, "kube-system") if "spiderpool" in p["metadata"]["name"]],
        timeout=180,
        what="spiderpool's pods to go",
    )


def install_times(lab: Lab) -> tuple[float, float]:
    """(kubectl apply until Ready, helm install until Ready), each after a full removal."""
    _uninstall_all(lab)
    started = time.monotonic()
    lab.kubectl("apply", "-f", "-", input_text=(ROOT / helm.MANIFEST).read_text())
    install.wait_spiderpool(lab, timeout=300)

    def job_done() -> bool:
        job = json.loads(lab.kubectl("get", "job", "-n", "kube-system", "spiderpool-init", "-o", "json").stdout)
        conditions = job.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions)

    procs.wait_for(job_done, timeout=300, what="the init Job (kubectl apply)")
    kubectl_s = time.monotonic() - started
    _uninstall_all(lab)
    lab.kubectl("delete", "job", "-n", "kube-system", "spiderpool-init", "--ignore-not-found", "--wait=true")
    started = time.monotonic()
    chart = str(helm.chart_path())
    helm.run(lab, "install", install.RELEASE, chart, "--namespace", "kube-system", *install.WALKTHROUGH_FLAGS, "--wait")
    install.wait_spiderpool(lab, timeout=300)
    return kubectl_s, time.monotonic() - started


def walkthrough_time(lab: Lab) -> float:
    """The walkthrough's objects after a fresh install, until its 2 pods are Running."""
    lab.reset_cni_config()
    install.multus(lab)
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(demo.NAD))
    lab.kubectl("apply", "-f", "-", input_text=demo.SUBNET)
    started = time.monotonic()
    lab.kubectl("apply", "-n", demo.NS, "-f", "-", input_text=demo.DEPLOYMENT)
    procs.wait_for(
        lambda: len([p for p in _pods(lab, demo.NS) if p["status"].get("phase") == "Running"]) == 2,
        timeout=300,
        what="the walkthrough's 2 pods Running",
    )
    took = time.monotonic() - started
    lab.kubectl("delete", "-n", demo.NS, "deployment", demo.APP, "--wait=true")
    procs.wait_for(lambda: not _pods(lab, demo.NS), timeout=120, what="the walkthrough's pods to go")
    lab.kubectl("delete", "spidersubnet", "subnet-test", "--wait=true", check=False)
    install.remove_multus(lab)
    lab.reset_cni_config()
    return took


def scale_up(lab: Lab, *, upgrade: bool) -> dict[str, float]:
    """Scale the load Deployment 0 -> 30 (with ``helm upgrade`` rolling the release, if asked)."""
    conflist = {
        "cniVersion": "0.3.1",
        "name": "macvlan-conf",
        "plugins": [{"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool"}}],
    }
    for node in lab.nodes():
        lab.clear_cni_config(node.name)
        lab.write_cni_config(node.name, "10-spiderpool.conflist", conflist)
    lab.kubectl("apply", "-f", "-", input_text=LOAD)
    error: list[BaseException] = []
    cpu = f"{100 + int(time.time()) % 50}m"  # a changed value every run: the agents and controllers roll

    def run_upgrade() -> None:
        try:
            helm.run(
                lab,
                "upgrade",
                install.RELEASE,
                str(helm.chart_path()),
                "--namespace",
                "kube-system",
                "--reuse-values",
                "--set",
                f"spiderpoolAgent.resources.requests.cpu={cpu}",
                "--set",
                f"spiderpoolController.resources.requests.cpu={cpu}",
                "--wait",
            )
        except BaseException as exc:  # reported below
            error.append(exc)

    thread = threading.Thread(target=run_upgrade)
    lab.kubectl("scale", "-n", NS, "deployment/load", "--replicas=30")
    if upgrade:
        thread.start()
    procs.wait_for(
        lambda: len([p for p in _pods(lab, NS) if p["status"].get("phase") == "Running"]) == 30,
        timeout=400,
        what="30 Running pods",
    )
    if upgrade:
        thread.join()
        if error:
            raise error[0]
    waits = []
    for p in _pods(lab, NS):
        ready = [
            c["lastTransitionTime"]
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodReadyToStartContainers" and c["status"] == "True"
        ]
        waits.append(_ts(ready[0]) - _ts(p["metadata"]["creationTimestamp"]))
    events = json.loads(lab.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
    failed = sum(int(e.get("count") or 1) for e in events if e.get("reason") == "FailedCreatePodSandBox")
    lab.kubectl("delete", "-n", NS, "deployment", "load", "--wait=true")
    procs.wait_for(lambda: not _pods(lab, NS), timeout=180, what="the load's pods to go")
    lab.kubectl("delete", "events", "-n", NS, "--all")
    lab.reset_cni_config()
    return {"failed_adds": failed, "longest_wait": max(waits), "median_wait": statistics.median(waits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    lab = lab_with_crds()
    results: dict[str, list[Any]] = {"kubectl": [], "helm": [], "walkthrough": [], "load": [], "load_upgrade": []}
    for run in range(1, args.runs + 1):
        say(f"run {run}/{args.runs}: install (kubectl apply, then helm install)")
        k, h = install_times(lab)
        results["kubectl"].append(k)
        results["helm"].append(h)
        say(f"  kubectl apply {k:.1f}s, helm install {h:.1f}s; the walkthrough's Deployment")
        results["walkthrough"].append(walkthrough_time(lab))
        lab.kubectl("create", "namespace", NS, check=False)
        lab.kubectl(
            "apply",
            "-f",
            "-",
            input_text=json.dumps(
                {
                    "apiVersion": "spiderpool.spidernet.io/v2beta1",
                    "kind": "SpiderIPPool",
                    "metadata": {"name": POOL},
                    "spec": {
                        "subnet": "172.18.0.0/16",
                        "ips": ["172.18.72.10-172.18.72.60"],
                        "gateway": "172.18.0.1",
                    },
                }
            ),
        )
        say("  scale 0 -> 30 without, then with, an upgrade rolling the release")
        results["load"].append(scale_up(lab, upgrade=False))
        results["load_upgrade"].append(scale_up(lab, upgrade=True))
        # (the walkthrough's SpiderSubnet of the next run covers this pool's CIDR: it must go first)
        lab.kubectl("delete", "spiderippool", POOL, "--wait=true")
    print(json.dumps(results, indent=1))
    med = statistics.median
    print("\n| measure | baseline | spiderpool | ratio |\n|---|---|---|---|")
    k, h = med(results["kubectl"]), med(results["helm"])
    print(f"| install until Ready (median of {args.runs}) | kubectl apply {k:.1f} s | helm install {h:.1f} s |", end="")
    print(f" {h / k:.2f} |")
    print(f"| walkthrough Deployment until Running | | {med(results['walkthrough']):.1f} s | |")
    for key, label in (("longest_wait", "longest wait for an IP"), ("median_wait", "median wait for an IP")):
        base = med([r[key] for r in results["load"]])
        up = med([r[key] for r in results["load_upgrade"]])
        print(f"| 30 pods: {label} | no upgrade {base:.1f} s | during helm upgrade {up:.1f} s | {up / base:.2f} |")
    fa = [r["failed_adds"] for r in results["load_upgrade"]]
    fb = [r["failed_adds"] for r in results["load"]]
    print(f"| 30 pods: failed CNI ADDs (retried) | no upgrade {fb} | during helm upgrade {fa} | |")


if __name__ == "__main__":
    main()
