"""Whereabouts, the peer the benchmarks compare with, installed as its users install it (its CRDs and
DaemonSet manifest, the lab's build of its image): real pods on both nodes get its addresses through
macvlan, and give them back."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from spiderpool_lab import install, procs
from spiderpool_lab.cluster import Lab
from tests.helpers import apply, get_json, in_netns, wait_gone, wait_running

NS = "lab-whereabouts"
RANGE = ipaddress.ip_network("172.18.150.0/24")
DEPLOYMENT = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: wb
  namespace: {NS}
spec:
  replicas: 4
  selector:
    matchLabels: {{app: wb}}
  template:
    metadata:
      labels: {{app: wb}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {{app: wb}}
      containers:
      - name: web
        image: registry.invalid/app:1
"""


def _conflist() -> dict[str, object]:
    """macvlan with Whereabouts' IPAM, as its README configures it (kubernetes backend, the
    kubeconfig its DaemonSet wrote on the node)."""
    return {
        "cniVersion": "0.3.1",
        "name": "lab-whereabouts",
        "plugins": [
            {
                "type": "macvlan",
                "master": "eth0",
                "mode": "bridge",
                "ipam": {
                    "type": "whereabouts",
                    "range": str(RANGE),
                    "range_start": "172.18.150.10",
                    "range_end": "172.18.150.19",
                    "kubernetes": {"kubeconfig": install.WHEREABOUTS_KUBECONFIG},
                },
            }
        ],
    }


def _allocations(lab: Lab) -> dict[str, dict[str, Any]]:
    pools = get_json(lab, "ippools.whereabouts.cni.cncf.io", "-n", "kube-system")["items"]
    found: dict[str, dict[str, Any]] = {}
    for pool in pools:
        found.update(pool["spec"].get("allocations") or {})
    return found


def test_whereabouts_gives_pods_on_both_nodes_distinct_addresses_and_takes_them_back(lab: Lab) -> None:
    install.whereabouts(lab)
    try:
        for node in lab.nodes():
            lab.clear_cni_config(node.name)
            lab.write_cni_config(node.name, "10-lab-whereabouts.conflist", _conflist())
        apply(lab, DEPLOYMENT)
        pods = wait_running(lab, NS, "app=wb", 4)
        ips = [pod["status"]["podIP"] for pod in pods]
        assert len(set(ips)) == 4, ips
        assert all(ipaddress.ip_address(ip) in RANGE for ip in ips), ips
        assert {pod["spec"]["nodeName"] for pod in pods} == {n.name for n in lab.nodes()}
        # Its IPPool records each pod by name, in the pool object of the range.
        refs = sorted(str(a["podref"]) for a in _allocations(lab).values())
        assert refs == sorted(f"{NS}/{pod['metadata']['name']}" for pod in pods)

        # Across the nodes, on the LAN.
        a, b = (next(p for p in pods if p["spec"]["nodeName"] == n.name) for n in lab.nodes())
        ping = in_netns(lab, f"{NS}/{a['metadata']['name']}", "ping", "-c", "1", "-W", "2", b["status"]["podIP"])
        assert ping.returncode == 0, ping.stdout + ping.stderr

        lab.kubectl("scale", "-n", NS, "deployment/wb", "--replicas=0")
        wait_gone(lab, NS, "app=wb")
        procs.wait_for(
            lambda: not _allocations(lab),
            timeout=60,
            what="Whereabouts to release every address",
            detail=lambda: json.dumps(_allocations(lab)),
        )
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        lab.reset_cni_config()
        install.remove_whereabouts(lab)
