"""The lab's kube-apiserver is the real one: CRDs, optimistic concurrency, and the lab's safety rules."""

from __future__ import annotations

import json
import subprocess

from spiderpool_lab import build, procs, topology
from spiderpool_lab.cluster import Lab
from tests.helpers import apply, in_netns

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.lab.spiderpool.io
spec:
  group: lab.spiderpool.io
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"""


def test_crd_and_stale_resource_version_conflict(lab: Lab) -> None:
    apply(lab, CRD)
    lab.kubectl("wait", "--for=condition=Established", "crd/widgets.lab.spiderpool.io", "--timeout=60s")
    base = "/apis/lab.spiderpool.io/v1/widgets"

    def created() -> bool:
        lab.api("DELETE", f"{base}/w1")
        code, _ = lab.api(
            "POST",
            base,
            {"apiVersion": "lab.spiderpool.io/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 1}},
        )
        return code == 201

    # Discovery of a fresh CRD can lag its Established condition by a moment.
    procs.wait_for(created, timeout=30, what="creating a Widget")
    code, obj = lab.api("GET", f"{base}/w1")
    assert code == 200
    stale = json.loads(json.dumps(obj))

    obj["spec"]["size"] = 2
    code, updated = lab.api("PUT", f"{base}/w1", obj)
    assert code == 200, updated
    assert updated["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]

    stale["spec"]["size"] = 3
    code, err = lab.api("PUT", f"{base}/w1", stale)
    assert code == 409, err
    assert err["reason"] == "Conflict"
    code, final = lab.api("GET", f"{base}/w1")
    assert final["spec"]["size"] == 2
    lab.api("DELETE", f"{base}/w1")


def test_no_lab_route_in_root_namespace(lab: Lab) -> None:
    assert topology.root_routes_to_lab() == []
    # Lab addresses exist only inside lab namespaces.
    root_addrs = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    for u in topology.UNDERLAYS:
        assert u.gateway4 not in root_addrs
        assert u.node_ip4(1) not in root_addrs


def test_apiserver_listens_on_loopback_only(lab: Lab) -> None:
    port = int(lab.state()["ports"]["apiserver"])
    listeners = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True, check=True)
    locals_ = {line.split()[3].rsplit(":", 1)[0] for line in listeners.stdout.splitlines() if line.strip()}
    assert locals_ == {"127.0.0.1"}, locals_


def test_a_node_reaches_the_apiserver_on_the_lan(lab: Lab) -> None:
    """Node components (kubelet, kube-proxy, Multus' plugin) use the apiserver's LAN address."""
    kubectl = str(build.binary("kubectl"))
    out = in_netns(lab, "node1", kubectl, f"--kubeconfig={lab.node_kubeconfig}", "get", "node", "node2", "-o", "name")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node/node2"


def test_nodes_ready_with_lease_and_addresses(lab: Lab) -> None:
    for node in lab.nodes():
        code, obj = lab.api("GET", f"/api/v1/nodes/{node.name}")
        assert code == 200
        ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
        assert ready
        assert ready[0]["status"] == "True"
        assert {"type": "InternalIP", "address": node.ip4} in obj["status"]["addresses"]
        # (the kubelet makes its Lease a moment after it registers: on a lab just up, wait for it)
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
        procs.wait_for(lambda path=path: lab.api("GET", path)[0] == 200, timeout=60, what=f"{node.name}'s Lease")
        code, lease = lab.api("GET", path)
        assert code == 200
        assert lease["spec"]["holderIdentity"] == node.name
