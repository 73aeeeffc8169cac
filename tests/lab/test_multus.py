"""Multus as the nodes' primary CNI: a NetworkAttachmentDefinition gives a pod a second interface."""

from __future__ import annotations

import ipaddress
import json
from importlib import resources

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import apply, get_json, in_netns, wait_gone, wait_running

NS = "lab-multus"
NAD_RANGE = "172.18.200.0/24"


def _nad(lab: Lab) -> str:
    config = {
        "cniVersion": "1.0.0",
        "name": "macvlan-net1",
        "plugins": [
            {
                "type": "macvlan",
                "master": "eth0",
                "mode": "bridge",
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(lab.dir / "multus-test-ipam"),
                    "ranges": [
                        [{"subnet": "172.18.0.0/16", "rangeStart": "172.18.200.10", "rangeEnd": "172.18.200.20"}]
                    ],
                },
            }
        ],
    }
    return f"""
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: macvlan-net1
  namespace: {NS}
spec:
  config: '{json.dumps(config)}'
"""


POD = f"""
apiVersion: v1
kind: Pod
metadata:
  name: two-nics
  namespace: {NS}
  labels: {{app: two-nics}}
  annotations:
    k8s.v1.cni.cncf.io/networks: macvlan-net1
spec:
  nodeName: node1
  containers:
  - name: main
    image: registry.invalid/app:1
"""


def test_multus_adds_second_interface(lab: Lab) -> None:
    crd = resources.files("spiderpool_lab").joinpath("manifests/network-attachment-definition-crd.yaml").read_text()
    apply(lab, crd)
    lab.kubectl(
        "wait", "--for=condition=Established", "crd/network-attachment-definitions.k8s.cni.cncf.io", "--timeout=60s"
    )
    lab.kubectl("create", "namespace", NS)
    apply(lab, _nad(lab))
    for node in lab.nodes():
        lab.clear_cni_config(node.name)
        lab.write_cni_config(node.name, "00-multus.conf", lab.multus_conf(node.name, lab.macvlan_conflist(node.name)))
    try:
        apply(lab, POD)
        (pod,) = wait_running(lab, NS, "app=two-nics", 1)
        target = f"{NS}/two-nics"

        links = {link["ifname"] for link in json.loads(in_netns(lab, target, "ip", "-j", "link").stdout)}
        assert {"eth0", "net1"} <= links
        net1 = json.loads(in_netns(lab, target, "ip", "-j", "addr", "show", "net1").stdout)[0]
        v4 = [a["local"] for a in net1["addr_info"] if a["family"] == "inet"]
        assert len(v4) == 1, v4
        assert ipaddress.ip_address(v4[0]) in ipaddress.ip_network(NAD_RANGE), v4
        # The pod IP is the default network's (eth0), as the runtime reports it.
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network("172.18.101.0/24")

        # Multus wrote the network-status annotation naming both attachments.
        def annotated() -> bool:
            ann = get_json(lab, "pod", "-n", NS, "two-nics")["metadata"].get("annotations", {})
            return "k8s.v1.cni.cncf.io/network-status" in ann

        procs.wait_for(annotated, timeout=30, what="network-status annotation")
        ann = get_json(lab, "pod", "-n", NS, "two-nics")["metadata"]["annotations"]
        status = json.loads(ann["k8s.v1.cni.cncf.io/network-status"])
        by_if = {s.get("interface"): s for s in status}
        assert by_if["net1"]["name"] == f"{NS}/macvlan-net1"
        assert by_if["net1"]["ips"] == v4
        assert by_if["eth0"]["default"] is True
        assert by_if["eth0"]["ips"] == [pod["status"]["podIP"]]

        lab.kubectl("delete", "pod", "-n", NS, "two-nics", "--wait=false")
        wait_gone(lab, NS, "app=two-nics")
        leftover = list((lab.dir / "multus-test-ipam" / "macvlan-net1").glob("172.*"))
        assert leftover == [], f"net1's address was not released: {leftover}"
    finally:
        lab.reset_cni_config()
        lab.kubectl("delete", "namespace", NS, "--wait=false", check=False)
