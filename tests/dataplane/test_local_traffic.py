"""Services with ``externalTrafficPolicy: Local``: kube-proxy keeps the client's address, so the
pod's answer must go back through the node that translated the request (docs/dataplane.md, "Replies
to what the node delivered"). A client on the LAN and a client on another node reach a one-NIC and a
two-NIC pod through the nodePort of the pod's node, and see their own address at the pod; the
``Cluster`` policy, pod to pod, clusterIP, hairpin and the probes keep working. IPv6 is checked
through the same kind of translation on the node (the lab's Service CIDR is IPv4 only)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from spiderpool_lab import netns, procs, topology
from spiderpool_lab.cluster import Lab
from tests.dataplane.conftest import use_multus
from tests.dataplane.test_multinic import net1_nad
from tests.dataplane.test_veth import conflist
from tests.helpers import get_json, in_netns, pool_manifest, wait_gone, wait_running
from tests.ipam.conftest import wait_no_records
from tests.stack import Agents

NS = "lt"
POOLS = {
    "p-lt4": pool_manifest("p-lt4", "172.18.0.0/16", ["172.18.110.1-172.18.110.9"]),
    "p-lt6": pool_manifest("p-lt6", "fd00:172:18::/64", ["fd00:172:18::110:1-fd00:172:18::110:9"]),
    "p-lt1": pool_manifest("p-lt1", "172.19.0.0/16", ["172.19.110.1-172.19.110.9"], gateway="172.19.0.1"),
}
#: the LAN client: the switch's address on the first underlay
LAN_CLIENT = "172.18.0.1"
LAN_CLIENT6 = "fd00:172:18::1"
#: the port node1 translates to the pod's IPv6 address, as kube-proxy does for a Local nodePort
V6_PORT = 30977
Obj = dict[str, Any]


def pod(name: str, two_nics: bool, pools: tuple[str, str, str] = ("p-lt4", "p-lt6", "p-lt1"), ns: str = NS) -> Obj:
    """A pod on node1 with eth0 (dual-stack, from the first two pools) and, if ``two_nics``, net1
    (macvlan on eth1, from the third)."""
    v4, v6, net1 = pools
    ann: dict[str, str] = {}
    if two_nics:
        ann["k8s.v1.cni.cncf.io/networks"] = "macvlan-net1"
        ann["ipam.spidernet.io/ippools"] = json.dumps(
            [
                {"interface": "eth0", "ipv4": [v4], "ipv6": [v6]},
                {"interface": "net1", "ipv4": [net1], "cleangateway": True},
            ]
        )
    else:
        ann["ipam.spidernet.io/ippool"] = json.dumps({"ipv4": [v4], "ipv6": [v6]})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}, "annotations": ann},
        "spec": {
            "nodeName": "node1",
            "containers": [
                {
                    "name": "c",
                    "image": "registry.invalid/app:1",
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 80}, "periodSeconds": 2},
                }
            ],
        },
    }


def service(name: str, policy: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": policy,
            "selector": {"app": name},
            "ports": [{"port": 80, "targetPort": 80}],
        },
    }


@pytest.fixture
def multus(agents: Agents) -> Iterator[Agents]:
    use_multus(agents.lab, conflist())
    yield agents
    agents.lab.reset_cni_config()


def from_switch(lab: Lab, argv: list[str]) -> subprocess.CompletedProcess[str]:
    switch = topology.switch_netns(lab.prefix)
    return subprocess.run(netns.exec_argv(switch, argv), capture_output=True, text=True, timeout=60)


def answered(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


def node_addresses(lab: Lab, node: str) -> list[str]:
    links = json.loads(in_netns(lab, node, "ip", "-j", "addr").stdout)
    return [str(a["local"]) for link in links for a in link["addr_info"]]


def get(lab: Lab, client: str, url: str) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sS", "--max-time", "5", "--retry", "2", "--retry-all-errors", url]
    return from_switch(lab, argv) if client == "lan" else in_netns(lab, client, *argv)


def test_nodeport_local_answers_other_hosts(multus: Agents) -> None:
    lab = multus.lab
    node1, node2 = lab.node("node1"), lab.node("node2")
    for manifest in POOLS.values():
        lab.kubectl("apply", "-f", "-", input_text=manifest)
    lab.kubectl("create", "namespace", NS)
    dnat = [
        "ip6tables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", str(node1.ip6), "--dport", str(V6_PORT),
        "-j", "DNAT", "--to-destination",
    ]  # fmt: skip
    v6_target = ""
    try:
        nad = json.loads(net1_nad())
        nad["metadata"]["namespace"] = NS
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(nad))
        for name, two in (("one-nic", False), ("two-nic", True)):
            lab.kubectl("apply", "-f", "-", input_text=json.dumps(pod(name, two)))
            lab.kubectl("apply", "-f", "-", input_text=json.dumps(service(name, "Local")))
        for name in ("one-nic", "two-nic"):
            (p,) = wait_running(lab, NS, f"app={name}", 1)
            procs.wait_for(
                lambda name=name: all(
                    c["type"] != "Ready" or c["status"] == "True"
                    for c in get_json(lab, "pod", "-n", NS, name)["status"].get("conditions") or []
                ),
                timeout=60,
                what=f"{name} Ready by its node's probe",
            )
            pod_ip = p["status"]["podIP"]
            port = get_json(lab, "service", "-n", NS, name)["spec"]["ports"][0]["nodePort"]
            url = f"http://{node1.ip4}:{port}/"
            # kube-proxy may take a moment to program the new Service's rules
            procs.wait_for(
                lambda url=url: get(lab, "lan", url).returncode == 0,
                timeout=60,
                what=f"the LAN client -> {url} ({name}, externalTrafficPolicy: Local)",
                detail=lambda url=url, name=name: (
                    get(lab, "lan", url).stderr + in_netns(lab, f"{NS}/{name}", "ip", "route", "get", LAN_CLIENT).stdout
                ),
            )
            # the client's own address reaches the pod (what Local is for), from the LAN and another node
            for client, source in (("lan", LAN_CLIENT), ("node2", str(node2.ip4))):
                reply = answered(get(lab, client, url))
                assert (reply["pod"], reply["client"]) == (f"{NS}/{name}", source), reply
            # the rules that do it, as an admin would look for them
            rules = in_netns(lab, f"{NS}/{name}", "ip", "rule").stdout
            assert "fwmark 0x20000/0x20000 lookup 500" in rules, rules
            table = json.loads(in_netns(lab, f"{NS}/{name}", "ip", "-j", "route", "show", "table", "500").stdout)
            (default,) = [r for r in table if r["dst"] == "default"]
            assert default["dev"] == "veth0", table
            assert default["gateway"] in node_addresses(lab, "node1"), table
            # ... and nothing else moved: the pod's own traffic to the LAN still leaves by eth0
            assert " dev eth0 " in in_netns(lab, f"{NS}/{name}", "ip", "route", "get", LAN_CLIENT).stdout
            # Cluster policy, the node's own nodePort, clusterIP, hairpin (the pod to its own Service)
            lab.kubectl("patch", "service", "-n", NS, name, "-p", '{"spec":{"externalTrafficPolicy":"Cluster"}}')
            for node in (node1, node2):
                other = f"http://{node.ip4}:{port}/"
                procs.wait_for(
                    lambda other=other: get(lab, "lan", other).returncode == 0,
                    timeout=60,
                    what=f"the LAN client -> {other} ({name}, externalTrafficPolicy: Cluster)",
                )
                assert answered(get(lab, "node1", other))["pod"] == f"{NS}/{name}"
            cluster_ip = get_json(lab, "service", "-n", NS, name)["spec"]["clusterIP"]
            for client in ("node1", "node2", f"{NS}/{name}"):
                assert answered(get(lab, client, f"http://{cluster_ip}/"))["pod"] == f"{NS}/{name}", client
            assert answered(get(lab, "node2", f"http://{pod_ip}/"))["client"] == str(node2.ip4)

        # IPv6: node1 translates a port to the pod's IPv6 address and keeps the client's, as Local does
        (p,) = wait_running(lab, NS, "app=two-nic", 1)
        v6_target = next(x["ip"] for x in p["status"]["podIPs"] if ":" in x["ip"])
        out = in_netns(lab, "node1", *dnat, f"[{v6_target}]:80")
        assert out.returncode == 0, out.stderr
        url6 = f"http://[{node1.ip6}]:{V6_PORT}/"
        reply = answered(from_switch(lab, ["curl", "-sS", "--max-time", "5", "--retry", "2", url6]))
        assert (reply["pod"], reply["client"]) == (f"{NS}/two-nic", LAN_CLIENT6), reply
    finally:
        if v6_target:
            in_netns(lab, "node1", *[("-D" if a == "-A" else a) for a in dnat], f"[{v6_target}]:80")
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    for name in ("one-nic", "two-nic"):
        wait_gone(lab, NS, f"app={name}")
    wait_no_records(lab, NS, timeout=120)
    for pool in POOLS:
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")
