"""The walkthrough's data plane: macvlan + spiderpool + veth. Pods reach each other, Services by
clusterIP, nodePorts from outside the nodes, and the node's readiness probes reach the pods; deleting
the pods leaves nothing on the nodes."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from spiderpool_lab import netns, procs, topology
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, in_netns, pods, pool_manifest, pool_pod, wait_gone, wait_running
from tests.ipam.conftest import use_cni, wait_no_records
from tests.stack import Agents

NS = "dp"
POOL = "p-dp"


def conflist() -> dict[str, Any]:
    """The walkthrough's NetworkAttachmentDefinition config without its service_cidr: the
    SpiderCoordinator's status (the cluster's ServiceCIDRs) gives the Service route. (The
    walkthrough's own tests keep its explicit service_cidr.)"""
    return {
        "cniVersion": "0.3.1",
        "name": "macvlan-conf",
        "plugins": [
            {"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool"}},
            {"type": "veth"},
        ],
    }


WEB = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations:
        ipam.spidernet.io/ippool: '{{"ipv4": ["{POOL}"]}}'
    spec:
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
          labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: web
        image: registry.invalid/app:1
        ports: [{{containerPort: 80}}]
        readinessProbe:
          httpGet: {{path: /ready, port: 80}}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 80}}]
"""


@pytest.fixture
def dataplane(agents: Agents) -> Iterator[Agents]:
    use_cni(agents.lab, conflist())
    yield agents
    agents.lab.reset_cni_config()


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def curl(lab: Lab, src: str, url: str) -> dict[str, Any]:
    out = in_netns(lab, src, "curl", "-sSf", "--max-time", "5", url)
    assert out.returncode == 0, f"{src} -> {url}: {out.stderr}"
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


def test_pods_services_nodeports_and_probes(dataplane: Agents) -> None:
    lab = dataplane.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.74.1-172.18.74.20"]))
    lab.kubectl("create", "namespace", NS)
    try:
        lab.kubectl("apply", "-f", "-", input_text=WEB)
        wait_running(lab, NS, "app=web", 3)
        # The node's HTTP readiness probe reaches its macvlan pods (through veth0): all Ready.
        procs.wait_for(
            lambda: all(ready(p) for p in pods(lab, NS, "app=web")) and len(pods(lab, NS, "app=web")) == 3,
            timeout=60,
            what="every pod Ready by its node's probe",
        )
        web = pods(lab, NS, "app=web")
        by_node: dict[str, list[dict[str, Any]]] = {}
        for p in web:
            by_node.setdefault(p["spec"]["nodeName"], []).append(p)
        two = next(n for n, ps in by_node.items() if len(ps) == 2)
        one = next(n for n, ps in by_node.items() if len(ps) == 1)
        a, b = by_node[two]
        (c,) = by_node[one]
        src = f"{NS}/{a['metadata']['name']}"

        # The pod's addresses and routes have the walkthrough's shape.
        addrs = {i["ifname"]: i for i in json.loads(in_netns(lab, src, "ip", "-j", "addr").stdout)}
        assert a["status"]["podIP"] in [x["local"] for x in addrs["eth0"]["addr_info"]]
        assert "veth0" in addrs
        assert not [x for x in addrs["veth0"]["addr_info"] if x["family"] == "inet"]
        routes = json.loads(in_netns(lab, src, "ip", "-j", "route").stdout)
        node_ip = lab.node(two).ip4
        assert {"dst": "default", "gateway": "172.18.0.1", "dev": "eth0"}.items() <= next(
            r for r in routes if r["dst"] == "default"
        ).items()
        assert [r for r in routes if r["dst"] == topology.SERVICE_CIDR and r["dev"] == "veth0"]
        assert [r for r in routes if r["dst"] == node_ip and r["dev"] == "veth0"]

        # Pod to pod by IP, same node and across nodes.
        for peer in (b, c):
            ping = in_netns(lab, src, "ping", "-c", "2", "-W", "2", peer["status"]["podIP"])
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
            assert curl(lab, src, f"http://{peer['status']['podIP']}/")["pod"] == f"{NS}/{peer['metadata']['name']}"

        # Pod to the Service's clusterIP, answered by pods on both nodes.
        svc = get_json(lab, "service", "-n", NS, "web")
        cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
        seen = {curl(lab, src, f"http://{cluster_ip}/")["pod"] for _ in range(12)}
        assert f"{NS}/{c['metadata']['name']}" in seen, f"no answer from the other node's pod: {seen}"

        # A nodePort from outside the nodes: a client on the lab bridge (the switch namespace).
        switch = topology.switch_netns(lab.prefix)
        for node in lab.nodes():
            argv = netns.exec_argv(switch, ["curl", "-sS", "--max-time", "5", f"http://{node.ip4}:{node_port}/"])
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["pod"].startswith(f"{NS}/web-"), out.stdout

        # Scale to 0: no veth, route, rule or permanent neighbour entry is left on the nodes.
        lab.kubectl("scale", "-n", NS, "deployment/web", "--replicas=0")
        wait_gone(lab, NS, "app=web")
        for node in lab.nodes():
            links = netns.ip_json(node.netns, ["link", "show", "type", "veth"])  # the node's eth0 is one too
            assert [str(x["ifname"]) for x in links if str(x["ifname"]).startswith("veth")] == []
            assert netns.ip_json(node.netns, ["route", "show", "table", "500"]) == []
            rules = netns.ip_json(node.netns, ["rule", "show"])
            assert not [r for r in rules if str(r.get("table")) == "500"], rules
            neigh = netns.ip_json(node.netns, ["neigh", "show", "nud", "permanent"])
            assert neigh == [], neigh
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_gone(lab, NS, "app=web")
    wait_no_records(lab, NS, timeout=120)
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s")


def test_dual_stack_through_veth(dataplane: Agents) -> None:
    """IPv6 beside IPv4: the node reaches its own macvlan pods over both families only through the veth
    (macvlan forbids the parent), pods reach each other over IPv6 on one node and across, and nothing
    of either family is left on the node afterwards."""
    lab = dataplane.lab
    ns = "dp6"
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-dp4", "172.18.0.0/16", ["172.18.80.1-172.18.80.9"]))
    v6 = pool_manifest("p-dp6", "fd00:172:18::/64", ["fd00:172:18::80:1-fd00:172:18::80:9"])
    lab.kubectl("apply", "-f", "-", input_text=v6)
    lab.kubectl("create", "namespace", ns)
    try:
        for name, node in (("a", "node1"), ("b", "node1"), ("c", "node2")):
            lab.kubectl("apply", "-f", "-", input_text=pool_pod(name, ns, "p-dp4", node, "p-dp6"))
        ips: dict[str, dict[int, str]] = {}
        for name in ("a", "b", "c"):
            (p,) = wait_running(lab, ns, f"app={name}", 1)
            ips[name] = {ipaddress.ip_address(x["ip"]).version: x["ip"] for x in p["status"]["podIPs"]}
            assert set(ips[name]) == {4, 6}, p["status"]["podIPs"]
        node1 = lab.node("node1")
        # the node to its own pod, both families: only possible through veth0 and table 500
        for family, flag in ((4, "-4"), (6, "-6")):
            ping = in_netns(lab, "node1", "ping", flag, "-c", "2", "-W", "2", ips["a"][family])
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        host_v6 = netns.ip_json(node1.netns, ["-6", "route", "show", "table", "500"])
        assert [r for r in host_v6 if r["dst"] == ips["a"][6]], host_v6
        pod_v6 = json.loads(in_netns(lab, f"{ns}/a", "ip", "-6", "-j", "route").stdout)
        assert [r for r in pod_v6 if r["dst"] == node1.ip6 and r["dev"] == "veth0"], pod_v6
        # pod to pod over IPv6: same node (macvlan bridge) and across nodes (the underlay)
        for peer in ("b", "c"):
            ping = in_netns(lab, f"{ns}/a", "ping", "-6", "-c", "2", "-W", "2", ips[peer][6])
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    finally:
        lab.kubectl("delete", "namespace", ns, "--wait=false")
    for name in ("a", "b", "c"):
        wait_gone(lab, ns, f"app={name}")
    for node in lab.nodes():
        for family in ("-4", "-6"):
            assert netns.ip_json(node.netns, [family, "route", "show", "table", "500"]) == []
            rules = netns.ip_json(node.netns, [family, "rule", "show"])
            assert not [r for r in rules if str(r.get("table")) == "500"], rules
    wait_no_records(lab, ns, timeout=120)
    for pool in ("p-dp4", "p-dp6"):
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")
