"""A Deployment on the reference macvlan + host-local CNI: scheduling, pod IPs, traffic, clean removal."""

from __future__ import annotations

import ipaddress
import json

from spiderpool_lab import netns, procs
from spiderpool_lab.cluster import Lab
from tests.helpers import apply, get_json, in_netns, wait_gone, wait_running

NS = "lab-macvlan"
DEPLOYMENT = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {NS}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {{app: web}}
      containers:
      - name: web
        image: registry.invalid/app:1
        ports:
        - containerPort: 80
"""


def test_deployment_runs_on_two_nodes_and_cleans_up(lab: Lab) -> None:
    lab.reset_cni_config()
    before = _netns_files(lab)
    results_before = {n.name: set((n.var_lib_cni / "results").glob("lab-macvlan-*")) for n in lab.nodes()}
    apply(lab, DEPLOYMENT)
    pods = wait_running(lab, NS, "app=web", 3)
    # Only this Deployment's sandboxes are judged: pods of earlier tests may still be terminating.
    ours = _netns_files(lab) - before
    assert len(ours) >= 3, ours

    # The real scheduler spread them over both nodes, and each got an address from its node's range.
    by_node: dict[str, list[dict[str, object]]] = {}
    for pod in pods:
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    assert sorted(len(v) for v in by_node.values()) == [1, 2], by_node.keys()
    for pod in pods:
        node = lab.node(pod["spec"]["nodeName"])
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip in ipaddress.ip_network(f"172.18.{100 + node.index}.0/24"), (pod["metadata"]["name"], ip)
        assert pod["status"]["hostIP"] == node.ip4
        assert pod["status"]["podIPs"] == [{"ip": str(ip)}]

    # The address is really on the pod's eth0, a macvlan on the node's eth0.
    first = pods[0]
    target = f"{NS}/{first['metadata']['name']}"
    addrs = json.loads(in_netns(lab, target, "ip", "-j", "addr", "show", "eth0").stdout)
    assert first["status"]["podIP"] in [a["local"] for a in addrs[0]["addr_info"]]
    assert addrs[0].get("link_type") == "ether"

    # Pod-to-pod across the two nodes: ping and HTTP to the declared containerPort.
    a = by_node["node1"][0]
    b = by_node["node2"][0]
    src = f"{NS}/{a['metadata']['name']}"
    ping = in_netns(lab, src, "ping", "-c", "2", "-W", "2", b["status"]["podIP"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert " 0% packet loss" in ping.stdout
    http = in_netns(lab, src, "curl", "-sS", "--max-time", "5", f"http://{b['status']['podIP']}:80/hello")
    assert http.returncode == 0, http.stderr
    reply = json.loads(http.stdout)
    assert reply["pod"] == f"{NS}/{b['metadata']['name']}"
    assert reply["client"] == a["status"]["podIP"]

    # Scale to 0: CNI DEL runs and nothing of the pods is left on the nodes.
    our_ips = [str(p["status"]["podIP"]) for p in pods]
    lab.kubectl("scale", "-n", NS, "deployment/web", "--replicas=0")
    wait_gone(lab, NS, "app=web")
    procs.wait_for(
        lambda: not ours & _netns_files(lab),
        timeout=90,
        what="the runtime to remove the pods' network namespaces",
        detail=lambda: f"left: {sorted(ours & _netns_files(lab))}",
    )
    for node in lab.nodes():
        macvlans = netns.ip_json(node.netns, ["link", "show", "type", "macvlan"])
        assert macvlans == [], f"{node.name} still has macvlan links: {macvlans}"
        # (only our pods' leases and result caches: a pod of an earlier test, or a sandbox a fault
        # row lost, may hold its own)
        leases = node.var_lib_cni / "networks" / "lab-macvlan"
        held = [ip for ip in our_ips if (leases / ip).exists()]
        assert held == [], f"host-local on {node.name} still holds {held}"
        cached = set((node.var_lib_cni / "results").glob("lab-macvlan-*")) - results_before[node.name]
        assert not cached, f"CNI result cache not removed: {sorted(cached)}"
    events = get_json(lab, "events", "-n", NS)["items"]
    assert not [e for e in events if e.get("reason") == "FailedCreatePodSandBox"], "unexpected sandbox failures"
    lab.kubectl("delete", "namespace", NS, "--wait=false")


def _netns_files(lab: Lab) -> set[str]:
    """The network namespaces the runtime holds on every node, as node/name."""
    return {f"{node.name}/{f.name}" for node in lab.nodes() for f in (node.dir / "run" / "netns").iterdir()}
