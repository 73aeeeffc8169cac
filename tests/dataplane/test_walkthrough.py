"""The reference walkthrough's set-up, as written, on the lab's real nodes: Multus installed by its own
DaemonSet, the NetworkAttachmentDefinition ``kube-system/macvlan-conf`` (macvlan + spiderpool + veth),
its SpiderSubnet and Deployment (image included: the lab's build of it serves nginx). The pods get
their fixed IPs from the auto-pool, reach each other on one node and across, the Service's
clusterIP (the image's server answers) and its nodePort, and leave nothing behind."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator

import pytest

from spiderpool_lab import demo, install, netns, procs, topology
from tests.helpers import (
    apply,
    delete_walkthrough_subnet,
    get_json,
    in_netns,
    spiderpool_cli,
    spiderpool_json,
    wait_gone,
    wait_running,
)
from tests.ipam.conftest import assert_consistent, wait_no_records
from tests.ipam.test_autopool import DEPLOYMENT, SUBNET, auto_pools
from tests.stack import Agents

NS = "wt"
APP = "custom-ippool-deploy"
FIRST, LAST = ipaddress.ip_address("172.18.30.131"), ipaddress.ip_address("172.18.30.140")

SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: {APP}, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: {APP}}}
  ports: [{{port: 80, targetPort: 80}}]
"""


@pytest.fixture
def walkthrough(agents: Agents) -> Iterator[Agents]:
    lab = agents.lab
    lab.reset_cni_config()  # the lab's macvlan: the cluster network Multus delegates to
    install.multus(lab)  # Multus' own DaemonSet manifest, with the lab's image
    apply(lab, json.dumps(demo.NAD))  # the pods name it as their default network
    yield agents
    install.remove_multus(lab)
    lab.reset_cni_config()
    lab.kubectl("delete", "network-attachment-definition", "-n", "kube-system", "macvlan-conf", check=False)


def test_walkthrough_deployment_on_the_veth_data_plane(walkthrough: Agents) -> None:
    lab = walkthrough.lab
    apply(lab, SUBNET)
    lab.kubectl("create", "namespace", NS)
    try:
        listing = lab.kubectl("get", "pods", "-A").stdout
        multus = [line for line in listing.splitlines() if "multus" in line.lower()]
        assert len(multus) == len(lab.nodes()), listing
        assert all(" Running " in line for line in multus), multus
        lab.kubectl("apply", "-n", NS, "-f", "-", input_text=DEPLOYMENT)
        apply(lab, SERVICE)
        # (a third replica, so that two pods share a node: the walkthrough pings both ways)
        lab.kubectl("scale", "-n", NS, f"deployment/{APP}", "--replicas=3")
        pods = wait_running(lab, NS, f"app={APP}", 3, timeout=180)
        for pod in pods:
            assert FIRST <= ipaddress.ip_address(pod["status"]["podIP"]) <= LAST
            assert pod["spec"]["containers"][0]["image"] == "ghcr.io/daocloud/dao-2048:v1.2.0"
        assert len(auto_pools(lab)) == 1
        by_node: dict[str, list[dict[str, object]]] = {}
        for pod in pods:
            by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
        a, neighbour = next(v for v in by_node.values() if len(v) >= 2)[:2]
        b = next(p for p in pods if p["spec"]["nodeName"] != a["spec"]["nodeName"])
        src = f"{NS}/{a['metadata']['name']}"
        node_ip = lab.node(a["spec"]["nodeName"]).ip4

        addrs = in_netns(lab, src, "ip", "a").stdout  # kubectl exec, as the walkthrough does
        assert f"inet {a['status']['podIP']}/16" in addrs, addrs
        assert "veth0" in addrs, addrs
        # `kubectl spiderpool why`: the walkthrough's ippool annotation names the SpiderSubnet, so the
        # application's auto-pool was chosen, and the address is the one on the pod's eth0
        auto = auto_pools(lab)[0]["metadata"]["name"]
        why = spiderpool_json(lab, "why", src)
        (nic,) = why["nics"]
        source = "pod annotation ipam.spidernet.io/ippool, naming SpiderSubnet subnet-test: an auto-pool"
        assert nic["chosenSource"] == source, why
        assert nic["autoPool"] == auto, why
        assert [(p["pool"], p["verdict"]) for p in nic["pools"]] == [(auto, "chosen")], why
        assert [i["ip"] for i in nic["ips"]] == [a["status"]["podIP"]], why
        assert why["application"] == f"Deployment {NS}/{APP}", why
        text = spiderpool_cli(lab, "why", a["metadata"]["name"], "-n", NS).stdout
        assert f"IP: {a['status']['podIP']} (IPv4) from {auto}" in text, text
        holder = spiderpool_json(lab, "who-has", a["status"]["podIP"])
        assert (holder["state"], holder["pod"], holder["pool"]) == ("allocated", a["metadata"]["name"], auto)

        routes = json.loads(in_netns(lab, src, "ip", "-j", "route").stdout)
        assert next(r for r in routes if r["dst"] == "default")["gateway"] == "172.18.0.1"
        assert [r for r in routes if r["dst"] == topology.SERVICE_CIDR and r["dev"] == "veth0"], routes
        assert [r for r in routes if r["dst"] == node_ip and r["dev"] == "veth0"], routes

        for peer in (b, neighbour):  # on the other node, and on the same one
            ping = in_netns(lab, src, "ping", "-c", "2", "-W", "2", peer["status"]["podIP"])
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        svc = get_json(lab, "service", "-n", NS, APP)
        url = f"http://{svc['spec']['clusterIP']}:80"
        procs.wait_for(
            lambda: in_netns(lab, src, "curl", "-sS", "-I", "--max-time", "5", url).stdout.startswith(
                "HTTP/1.1 200 OK"
            ),
            timeout=30,
            what=f"HTTP/1.1 200 OK from the Service at {url}",
        )
        assert "Server: nginx" in in_netns(lab, src, "curl", "-sS", "-I", "--max-time", "5", url).stdout
        switch = topology.switch_netns(lab.prefix)
        node_port = svc["spec"]["ports"][0]["nodePort"]
        argv = ["curl", "-sSf", "--max-time", "5", f"http://{lab.node('node1').ip4}:{node_port}/"]
        out = subprocess.run(netns.exec_argv(switch, argv), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert_consistent(lab)

        lab.kubectl("delete", "deployment", "-n", NS, APP, "--wait=true")
        wait_gone(lab, NS, f"app={APP}")
        procs.wait_for(lambda: not auto_pools(lab), timeout=60, what="the auto-pool to go")
        for node in lab.nodes():
            links = netns.ip_json(node.netns, ["link", "show", "type", "veth"])
            assert [str(x["ifname"]) for x in links if str(x["ifname"]).startswith("veth")] == []
            assert netns.ip_json(node.netns, ["route", "show", "table", "500"]) == []
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        wait_no_records(lab, NS, timeout=120)
        delete_walkthrough_subnet(lab)


SUBNET6 = """
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderSubnet
metadata: {name: subnet-test6}
spec:
  subnet: fd00:172:18::/64
  gateway: fd00:172:18::1
  ips: ["fd00:172:18::30:131-fd00:172:18::30:140"]
"""


def test_walkthrough_dual_stack(walkthrough: Agents) -> None:
    """The same walkthrough with both IP families on (the chart's default): the Deployment names an
    IPv4 and an IPv6 SpiderSubnet, its pods get one address of each from their auto-pools, and reach
    each other over both, and the Service."""
    lab = walkthrough.lab
    ns = "wt6"
    apply(lab, SUBNET)
    apply(lab, SUBNET6)
    deployment = DEPLOYMENT.replace(
        '"ipv4": ["subnet-test"]', '"ipv4": ["subnet-test"], "ipv6": ["subnet-test6"]'
    ).replace("ipam.spidernet.io/ippool:", "ipam.spidernet.io/subnet:")
    assert "subnet-test6" in deployment
    lab.kubectl("create", "namespace", ns)
    try:
        lab.kubectl("apply", "-n", ns, "-f", "-", input_text=deployment)
        apply(lab, SERVICE.replace(f"namespace: {NS}", f"namespace: {ns}"))
        pods = wait_running(lab, ns, f"app={APP}", 2, timeout=180)
        ips = []
        for pod in pods:
            by_family = {ipaddress.ip_address(x["ip"]).version: x["ip"] for x in pod["status"]["podIPs"]}
            assert set(by_family) == {4, 6}, pod["status"]["podIPs"]
            assert FIRST <= ipaddress.ip_address(by_family[4]) <= LAST
            assert ipaddress.ip_address(by_family[6]) in ipaddress.ip_network("fd00:172:18::/64")
            ips.append(by_family)
        a = f"{ns}/{pods[0]['metadata']['name']}"
        addrs = in_netns(lab, a, "ip", "a").stdout
        assert f"inet {ips[0][4]}/16" in addrs, addrs
        assert f"inet6 {ips[0][6]}/64" in addrs, addrs
        for flag, family in (("-4", 4), ("-6", 6)):
            ping = in_netns(lab, a, "ping", flag, "-c", "2", "-W", "2", ips[1][family])
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        svc = get_json(lab, "service", "-n", ns, APP)
        url = f"http://{svc['spec']['clusterIP']}:80"
        procs.wait_for(
            lambda: in_netns(lab, a, "curl", "-sS", "-I", "--max-time", "5", url).stdout.startswith("HTTP/1.1 200 OK"),
            timeout=30,
            what=f"HTTP/1.1 200 OK from the Service at {url}",
        )
        assert len(auto_pools(lab)) == 2  # one per family
        assert_consistent(lab)
    finally:
        lab.kubectl("delete", "namespace", ns, "--wait=true", check=False)
    wait_no_records(lab, ns, timeout=120)
    procs.wait_for(lambda: not auto_pools(lab), timeout=60, what="the auto-pools to go")
    for name in ("subnet-test", "subnet-test6"):
        lab.kubectl("delete", "spidersubnet", name, "--wait=true", "--timeout=60s")
