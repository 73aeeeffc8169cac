"""Pods on the walkthrough's chain (macvlan + ``"ipam": {"type": "spiderpool"}``) get addresses from the
right pool for every precedence tier and filter; dual-stack and two-NIC pods; routes in the pod."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import event_messages, in_netns, pool_manifest, wait_gone, wait_running
from tests.ipam.conftest import endpoint, macvlan_spiderpool, use_cni, wait_no_records
from tests.stack import Agents

POOLS = {
    "p-default": ("172.18.60.1-172.18.60.20", {"default": True}),
    "p-netconf": ("172.18.61.1-172.18.61.20", {}),
    "p-ns": ("172.18.62.1-172.18.62.20", {}),
    "p-pod": ("172.18.63.1-172.18.63.20", {"routes": [{"dst": "10.99.0.0/16", "gw": "172.18.0.254"}]}),
    "p-ippools": ("172.18.64.1-172.18.64.20", {}),
    "p-node1": ("172.18.65.1-172.18.65.20", {"nodeName": ["node1"]}),
    "p-nsaff": ("172.18.66.1-172.18.66.20", {"namespaceAffinity": {"matchLabels": {"team": "blue"}}}),
    "p-podaff": ("172.18.67.1-172.18.67.20", {"podAffinity": {"matchLabels": {"app": "special"}}}),
    "p-disabled": ("172.18.68.1-172.18.68.20", {"disable": True}),
    "p-net1": ("172.18.69.1-172.18.69.20", {"multusName": ["kube-system/macvlan-net1"]}),
}
V6 = ("p-v6", "fd00:172:18::100-fd00:172:18::1ff")


def _in_pool(ip: str, pool: str) -> bool:
    first, last = POOLS[pool][0].split("-")
    return int(ipaddress.ip_address(first)) <= int(ipaddress.ip_address(ip)) <= int(ipaddress.ip_address(last))


@dataclass
class Case:
    id: str
    expect: str
    pod_annotations: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)
    node: str | None = None
    ns_labels: dict[str, str] = field(default_factory=dict)
    ns_annotations: dict[str, str] = field(default_factory=dict)
    netconf: dict[str, Any] = field(default_factory=dict)


def ippool(*names: str) -> dict[str, str]:
    return {"ipam.spidernet.io/ippool": json.dumps({"ipv4": list(names)})}


NS_DEFAULT = {"ipam.spidernet.io/default-ipv4-ippool": '["p-ns"]'}
CASES = [
    Case("cluster-default", "p-default"),
    Case("netconf-default", "p-netconf", netconf={"default_ipv4_ippool": ["p-netconf"]}),
    Case("namespace-over-netconf", "p-ns", ns_annotations=NS_DEFAULT, netconf={"default_ipv4_ippool": ["p-netconf"]}),
    Case("pod-ippool-over-namespace", "p-pod", pod_annotations=ippool("p-pod"), ns_annotations=NS_DEFAULT),
    Case(
        "pod-ippools-over-ippool",
        "p-ippools",
        pod_annotations={**ippool("p-pod"), "ipam.spidernet.io/ippools": '[{"interface":"eth0","ipv4":["p-ippools"]}]'},
    ),
    Case("node-filter-passes-on-node1", "p-node1", pod_annotations=ippool("p-default", "p-node1"), node="node1"),
    Case("node-filter-rejects-on-node2", "p-default", pod_annotations=ippool("p-node1", "p-default"), node="node2"),
    Case(
        "namespace-affinity-matches",
        "p-nsaff",
        pod_annotations=ippool("p-nsaff", "p-default"),
        ns_labels={"team": "blue"},
    ),
    Case("namespace-affinity-rejects", "p-default", pod_annotations=ippool("p-nsaff", "p-default")),
    Case(
        "pod-affinity-matches",
        "p-podaff",
        pod_annotations=ippool("p-default", "p-podaff"),
        pod_labels={"app": "special"},
    ),
    Case("disabled-pool-skipped", "p-default", pod_annotations=ippool("p-disabled", "p-default")),
    Case("wildcard-with-affinity-filter", "p-pod", pod_annotations=ippool("p-pod*")),
    Case("multus-name-filter-rejects-eth0", "p-default", pod_annotations=ippool("p-net1", "p-default")),
]


@pytest.fixture(scope="module")
def pools(agents: Agents) -> Iterator[Lab]:
    lab = agents.lab
    for name, (ips, spec) in POOLS.items():
        lab.kubectl("apply", "-f", "-", input_text=pool_manifest(name, "172.18.0.0/16", [ips], **spec))
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(V6[0], "fd00:172:18::/64", [V6[1]]))
    yield lab
    wait_no_records(lab)  # every pod of these tests is gone, so the pools can go
    lab.kubectl("delete", "spiderippool", *POOLS, V6[0], "--wait=true", "--timeout=60s")


def _pod(name: str, ns: str, case: Case) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
    if case.node:
        spec["nodeName"] = case.node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"case": name, **case.pod_labels},
            "annotations": case.pod_annotations,
        },
        "spec": spec,
    }


def test_precedence_and_filters(pools: Lab, stack: Agents) -> None:
    lab = pools
    failures = []
    for i, case in enumerate(CASES):
        ns = f"prec-{i}"
        use_cni(lab, macvlan_spiderpool(**case.netconf))
        lab.kubectl(
            "apply",
            "-f",
            "-",
            input_text=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns, "labels": case.ns_labels, "annotations": case.ns_annotations},
                }
            ),
        )
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_pod(case.id, ns, case)))
        (pod,) = wait_running(lab, ns, f"case={case.id}", 1, timeout=60)
        ip = pod["status"]["podIP"]
        if not _in_pool(ip, case.expect):
            failures.append(f"{case.id}: got {ip}, expected an address of {case.expect}")
        lab.kubectl("delete", "namespace", ns, "--wait=false")
    use_cni(lab, macvlan_spiderpool())
    assert not failures, "\n".join(failures)
    wait_no_records(lab)


def test_dual_stack_pod_with_routes(pools: Lab, stack: Agents) -> None:
    lab = pools
    ann = {
        "ipam.spidernet.io/ippool": json.dumps({"ipv4": ["p-pod"], "ipv6": [V6[0]]}),
        "ipam.spidernet.io/routes": json.dumps([{"dst": "10.98.0.0/16", "gw": "172.18.0.253"}]),
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(_pod("dual", "default", Case("dual", "", ann))))
    (pod,) = wait_running(lab, "default", "case=dual", 1)
    v4, v6 = [p["ip"] for p in pod["status"]["podIPs"]]
    assert _in_pool(v4, "p-pod")
    assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd00:172:18::/64")
    routes4 = in_netns(lab, "default/dual", "ip", "-4", "route").stdout
    assert "default via 172.18.0.1 dev eth0" in routes4
    assert "10.99.0.0/16 via 172.18.0.254 dev eth0" in routes4  # the pool's route
    assert "10.98.0.0/16 via 172.18.0.253 dev eth0" in routes4  # the pod annotation's route
    assert "default via fd00:172:18::1 dev eth0" in in_netns(lab, "default/dual", "ip", "-6", "route").stdout
    addrs = in_netns(lab, "default/dual", "ip", "-br", "addr", "show", "eth0").stdout
    assert f"{v4}/16" in addrs
    assert f"{v6}/64" in addrs
    current = endpoint(lab, "default", "dual")
    assert current["ips"][0]["ipv4Pool"] == "p-pod"
    assert current["ips"][0]["ipv6Pool"] == V6[0]
    lab.kubectl("delete", "pod", "dual", "--wait=false")
    wait_gone(lab, "default", "case=dual")
    wait_no_records(lab)


NAD = {
    "apiVersion": "k8s.cni.cncf.io/v1",
    "kind": "NetworkAttachmentDefinition",
    "metadata": {"name": "macvlan-net1", "namespace": "kube-system"},
    "spec": {"config": json.dumps(macvlan_spiderpool("macvlan-net1", default_ipv4_ippool=["p-net1"]))},
}


def test_two_nic_pod_through_multus(pools: Lab, stack: Agents) -> None:
    from importlib import resources

    lab = pools
    crd = resources.files("spiderpool_lab").joinpath("manifests/network-attachment-definition-crd.yaml").read_text()
    lab.kubectl("apply", "-f", "-", input_text=crd)
    lab.kubectl(
        "wait", "--for=condition=Established", "crd/network-attachment-definitions.k8s.cni.cncf.io", "--timeout=60s"
    )
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(NAD))
    for node in lab.nodes():
        lab.clear_cni_config(node.name)
        lab.write_cni_config(node.name, "00-multus.conf", lab.multus_conf(node.name, macvlan_spiderpool()))
    # No pod pool annotation: eth0 takes the cluster default pool, net1 its NAD's default_ipv4_ippool
    # (which passes the pool's multusName filter only on net1's network).
    ann = {"k8s.v1.cni.cncf.io/networks": "kube-system/macvlan-net1"}
    try:
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_pod("twonic", "default", Case("twonic", "", ann))))
        (pod,) = wait_running(lab, "default", "case=twonic", 1)
        assert _in_pool(pod["status"]["podIP"], "p-default")
        net1 = json.loads(in_netns(lab, "default/twonic", "ip", "-j", "addr", "show", "net1").stdout)[0]
        v4 = [a["local"] for a in net1["addr_info"] if a["family"] == "inet"]
        assert len(v4) == 1
        assert _in_pool(v4[0], "p-net1")  # passed the multusName filter for net1's network
        current = endpoint(lab, "default", "twonic", nics=2)
        assert {e["interface"]: e["ipv4Pool"] for e in current["ips"]} == {"eth0": "p-default", "net1": "p-net1"}
    finally:
        lab.kubectl("delete", "pod", "twonic", "--ignore-not-found", "--wait=false")
        wait_gone(lab, "default", "case=twonic")
        use_cni(lab, macvlan_spiderpool())
    wait_no_records(lab)


def test_multus_name_mismatch_in_upstreams_words(pools: Lab, stack: Agents) -> None:
    """A pool whose multusName is another network is refused on eth0 with upstream's phrase (users'
    alerts match it), in the pod's event."""
    lab = pools
    ns = "prec-multus"
    lab.kubectl("create", "namespace", ns)
    phrase = (
        "the spec.multusName [kube-system/macvlan-net1] in the IPPool p-net1 used by the Pod interface eth0"
        " is not matched"
    )
    found: list[str] = []

    def refused() -> bool:
        nonlocal found
        found = event_messages(lab, ns, reason="IPAllocationFailed")
        return any(phrase in m for m in found)

    try:
        body = _pod("wrongnet", ns, Case("wrongnet", "", ippool("p-net1")))
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
        procs.wait_for(refused, timeout=90, what="the refusal in upstream's words", detail=lambda: "\n".join(found))
    finally:
        lab.kubectl("delete", "namespace", ns, "--wait=false")
    wait_gone(lab, ns, "case=wrongnet")
    wait_no_records(lab, ns)
