"""Overlay mode: eth0 from a cluster CNI (the reference bridge plugin + host-local over each node's
pod CIDR, routed between nodes as Flannel's host-gw does), and macvlan + spiderpool + coordinator
as net1 through ``k8s.v1.cni.cncf.io/networks``. Also the SpiderCoordinator's status: discovered
CIDRs, ServiceCIDRs followed, NotReady failing an ADD with its reason."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from spiderpool_lab import netns, procs, topology
from spiderpool_lab.cluster import Lab
from tests.dataplane.conftest import use_multus
from tests.dataplane.test_multinic import tx_packets
from tests.dataplane.test_veth import curl
from tests.helpers import get_json, in_netns, pool_manifest, wait_gone, wait_running
from tests.ipam.conftest import wait_no_records
from tests.stack import Agents

NS = "ov"
POOL = "p-ov"
NAD = "macvlan-ov"
REQUESTS = 10


def nad() -> str:
    # No service_cidr, no cluster_cidr: the SpiderCoordinator's status gives both.
    config = {
        "cniVersion": "0.3.1",
        "name": NAD,
        "plugins": [
            {"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool"}},
            {"type": "coordinator"},
        ],
    }
    return json.dumps(
        {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": NAD, "namespace": NS},
            "spec": {"config": json.dumps(config)},
        }
    )


def pod(name: str, node: str, default_nic: str | None = None) -> str:
    annotations = {
        "k8s.v1.cni.cncf.io/networks": NAD,
        "ipam.spidernet.io/ippools": json.dumps([{"interface": "net1", "ipv4": [POOL]}]),
    }
    if default_nic:
        annotations["ipam.spidernet.io/default-route-nic"] = default_nic
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"app": name, "ov": "yes"},
                "annotations": annotations,
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "registry.invalid/app:1", "ports": [{"containerPort": 80}]}],
            },
        }
    )


def coordinator_status(lab: Lab) -> dict[str, Any]:
    return dict(get_json(lab, "spidercoordinator", "default").get("status") or {})


def wait_status(lab: Lab, what: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    procs.wait_for(
        lambda: check(coordinator_status(lab)), timeout=timeout, what=what, detail=lambda: str(coordinator_status(lab))
    )
    return coordinator_status(lab)


@pytest.fixture
def overlay(agents: Agents) -> Iterator[Agents]:
    lab = agents.lab
    use_multus(lab, lab.bridge_conflist)
    lab.kubectl("create", "namespace", NS)
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.61.1-172.18.61.20"]))
    lab.kubectl("apply", "-f", "-", input_text=nad())
    yield agents
    lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s")
    wait_no_records(lab, NS, timeout=120)
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s")
    lab.reset_cni_config()


def addresses(lab: Lab, target: str) -> dict[str, list[str]]:
    links = json.loads(in_netns(lab, target, "ip", "-j", "addr").stdout)
    return {str(x["ifname"]): [a["local"] for a in x["addr_info"] if a["family"] == "inet"] for x in links}


def routes(lab: Lab, target: str, *table: str) -> list[dict[str, Any]]:
    argv = ["ip", "-j", "route", "show", *(("table", *table) if table else ())]
    return list(json.loads(in_netns(lab, target, *argv).stdout))


def route(rs: list[dict[str, Any]], dst: str) -> dict[str, Any]:
    found = [r for r in rs if r["dst"] == dst]
    assert found, f"no route to {dst} in {rs}"
    return found[0]


def test_overlay_two_nics_routes_replies_and_cleanup(overlay: Agents) -> None:
    lab = overlay.lab
    try:
        # podCIDRType auto: the first CNI config (Multus delegating to bridge) means the node pod CIDRs
        status = wait_status(
            lab,
            "the SpiderCoordinator Synced with the lab's CIDRs",
            lambda s: s.get("phase") == "Synced" and s.get("overlayPodCIDR") == [topology.POD_CIDR],
        )
        assert topology.SERVICE_CIDR in status["serviceCIDR"], status

        for name, node, nic in (("ov-a", "node1", None), ("ov-b", "node2", None), ("ov-c", "node1", "net1")):
            lab.kubectl("apply", "-f", "-", input_text=pod(name, node, nic))
        for name in ("ov-a", "ov-b", "ov-c"):
            wait_running(lab, NS, f"app={name}", 1)
        a, b, c = (f"{NS}/ov-{x}" for x in "abc")
        cidrs = lab.pod_cidrs()
        addr = {t: addresses(lab, t) for t in (a, b, c)}
        overlay_ip = {t: addr[t]["eth0"][0] for t in (a, b, c)}
        underlay_ip = {t: addr[t]["net1"][0] for t in (a, b, c)}
        for t, node in ((a, "node1"), (b, "node2"), (c, "node1")):
            assert ipaddress.ip_address(overlay_ip[t]) in ipaddress.ip_network(cidrs[node]), (t, addr[t])
            assert underlay_ip[t].startswith("172.18.61."), (t, addr[t])
            assert "veth0" not in addr[t]  # eth0 is the cluster CNI's: no veth of ours
        gw1 = str(ipaddress.ip_network(cidrs["node1"])[1])  # the bridge's address: the pods' gateway

        # eth0 keeps the default route; the overlay and service CIDRs go via eth0; net1's routes and
        # replies are in table 101, eth0's replies in table 100.
        main = routes(lab, a)
        assert {"gateway": gw1, "dev": "eth0"}.items() <= route(main, "default").items()
        for cidr in (topology.POD_CIDR, topology.SERVICE_CIDR):
            assert {"gateway": gw1, "dev": "eth0"}.items() <= route(main, cidr).items(), main
        assert {"gateway": gw1, "dev": "eth0"}.items() <= route(main, lab.node("node1").ip4).items(), main
        t101 = routes(lab, a, "101")
        assert {"gateway": "172.18.0.1", "dev": "net1"}.items() <= route(t101, "default").items(), t101
        assert route(t101, "172.18.0.0/16")["dev"] == "net1"
        assert {"gateway": gw1, "dev": "eth0"}.items() <= route(t101, lab.node("node1").ip4).items(), t101
        assert {"gateway": gw1, "dev": "eth0"}.items() <= route(routes(lab, a, "100"), "default").items()
        rules = json.loads(in_netns(lab, a, "ip", "-j", "rule").stdout)
        by_src = {(r.get("src"), str(r.get("table"))) for r in rules}
        assert (underlay_ip[a], "101") in by_src, rules
        assert (overlay_ip[a], "100") in by_src, rules

        # net1 as the default-route NIC: eth0's routes move to table 100, the CIDRs stay on eth0.
        main_c = routes(lab, c)
        assert {"gateway": "172.18.0.1", "dev": "net1"}.items() <= route(main_c, "default").items(), main_c
        assert route(main_c, topology.SERVICE_CIDR)["dev"] == "eth0"
        assert route(main_c, topology.POD_CIDR)["dev"] == "eth0"
        assert route(routes(lab, c, "100"), "default")["dev"] == "eth0"

        # From a pod on the other node, by the overlay IP and by the underlay IP: each reply leaves
        # by the NIC its request came in on (the transmit counters of the answering pod's NICs).
        for target, nic, other in ((a, "eth0", "net1"), (a, "net1", "eth0"), (c, "eth0", "net1"), (c, "net1", "eth0")):
            ip = overlay_ip[target] if nic == "eth0" else underlay_ip[target]
            before = tx_packets(lab, target)
            for _ in range(REQUESTS):
                assert curl(lab, b, f"http://{ip}/")["pod"] == target
            after = tx_packets(lab, target)
            sent, stray = after[nic] - before[nic], after[other] - before[other]
            counts = f"{target} by {ip}: {nic} sent {sent}, {other} {stray}"
            assert sent >= 2 * REQUESTS, counts
            assert stray < REQUESTS, counts

        # The node reaches its pod through both NICs (net1's address through eth0's host end).
        for ip in (overlay_ip[a], underlay_ip[a], underlay_ip[c]):
            done = in_node(lab, "node1", ["curl", "-sSf", "--max-time", "5", f"http://{ip}/"])
            assert done.returncode == 0, f"node1 -> {ip}: {done.stderr}"
        host500 = netns.ip_json(lab.node("node1").netns, ["route", "show", "table", "500"])
        assert {r["dst"] for r in host500} >= {underlay_ip[a], underlay_ip[c]}, host500

        # A Service's clusterIP from the other node's pod.
        lab.kubectl(
            "apply",
            "-f",
            "-",
            input_text=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "ov-a", "namespace": NS},
                    "spec": {"selector": {"app": "ov-a"}, "ports": [{"port": 80, "targetPort": 80}]},
                }
            ),
        )
        cluster_ip = get_json(lab, "service", "-n", NS, "ov-a")["spec"]["clusterIP"]
        procs.wait_for(
            lambda: in_netns(lab, b, "curl", "-sSf", "--max-time", "3", f"http://{cluster_ip}/").returncode == 0,
            timeout=60,
            what=f"{b} -> the Service's clusterIP {cluster_ip}",
        )
        assert curl(lab, b, f"http://{cluster_ip}/")["pod"] == a

        # Deleting the pods leaves nothing of ours on the nodes.
        lab.kubectl("delete", "pod", "-n", NS, "-l", "ov=yes", "--wait=true", "--timeout=120s")
        wait_gone(lab, NS, "ov=yes")
        wait_no_records(lab, NS, timeout=120)
        for node in lab.nodes():
            assert netns.ip_json(node.netns, ["route", "show", "table", "500"]) == [], node.name
            rules = netns.ip_json(node.netns, ["rule", "show"])
            assert not [r for r in rules if str(r.get("table")) == "500"], (node.name, rules)
            neigh = netns.ip_json(node.netns, ["neigh", "show", "nud", "permanent"])
            assert neigh == [], (node.name, neigh)
    finally:
        lab.kubectl("delete", "service", "-n", NS, "ov-a", "--ignore-not-found")


def in_node(lab: Lab, node: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.exec_argv(node, argv), capture_output=True, text=True, timeout=60)


def test_coordinator_status_follows_servicecidrs_and_not_ready_fails_an_add(overlay: Agents) -> None:
    lab = overlay.lab
    wait_status(lab, "the SpiderCoordinator Synced", lambda s: s.get("phase") == "Synced")
    extra = "10.97.0.0/24"
    servicecidr = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": "ov-extra"},
        "spec": {"cidrs": [extra]},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(servicecidr))
    try:
        wait_status(lab, f"{extra} in status.serviceCIDR", lambda s: extra in (s.get("serviceCIDR") or []))
    finally:
        lab.kubectl("delete", "servicecidr", "ov-extra", "--wait=true", "--timeout=60s")
    status = wait_status(lab, f"{extra} out of status.serviceCIDR", lambda s: extra not in (s.get("serviceCIDR") or []))
    assert topology.SERVICE_CIDR in status["serviceCIDR"]

    # No source of the cluster's CIDRs at all: NotReady with a reason, and a new pod's ADD fails with it.
    lab.kubectl("delete", "configmap", "-n", "kube-system", "kubeadm-config")
    try:
        status = wait_status(lab, "the SpiderCoordinator NotReady", lambda s: s.get("phase") == "NotReady")
        reason = str(status.get("reason") or "")
        assert "kubeadm-config" in reason, status
        lab.kubectl("apply", "-f", "-", input_text=pod("ov-d", "node1"))

        def told() -> bool:
            events = get_json(lab, "events", "-n", NS, "--field-selector", "involvedObject.name=ov-d")["items"]
            return any(reason in str(e.get("message")) for e in events)

        procs.wait_for(told, timeout=90, what="an Event of ov-d with the SpiderCoordinator's reason")
        assert get_json(lab, "pod", "-n", NS, "ov-d")["status"]["phase"] == "Pending"
    finally:
        lab.ensure_kubeadm_config()
    wait_status(lab, "the SpiderCoordinator Synced again", lambda s: s.get("phase") == "Synced")
    # the kubelet's retry of the sandbox now succeeds
    wait_running(lab, NS, "app=ov-d", 1, timeout=180)
