"""A second, private lab: `up` is idempotent, an agent restart adopts pods, and `down` leaves nothing."""

from __future__ import annotations

import copy
from pathlib import Path

from spiderpool_lab import netns, procs, topology
from spiderpool_lab.cluster import Lab
from tests.helpers import apply, get_json, wait_running

PODS = """
apiVersion: v1
kind: Pod
metadata:
  name: served
  namespace: default
  labels: {app: probe, served: "yes"}
spec:
  containers:
  - name: main
    image: registry.invalid/app:1
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {port: http, path: /healthz}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: unserved
  namespace: default
  labels: {app: probe, served: "no"}
spec:
  containers:
  - name: main
    image: registry.invalid/app:1
    ports: [{containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
"""

# ptp gives the node a route to its pods, so the node agent's probes can reach them.
PTP = {
    "cniVersion": "1.0.0",
    "name": "lab-ptp",
    "plugins": [{"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}],
}


def _ready(lab: Lab, name: str) -> str:
    pod = get_json(lab, "pod", "-n", "default", name)
    return {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready", "")


def test_private_lab_up_twice_restart_and_down(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", prefix="splabt")
    try:
        lab.up(nodes=2, cni="none")
        pids = dict(lab.state()["procs"])
        lab.up(nodes=2, cni="none")  # idempotent: nothing restarted
        assert lab.state()["procs"] == pids
        # Fewer nodes: node2 goes away entirely (processes, namespace, Node object).
        lab.up(nodes=1, cni="none")
        assert lab.state()["nodes"] == ["node1"]
        assert not procs.alive(pids["node/node2"])
        assert not netns.exists("splabt-node2")
        assert lab.api("GET", "/api/v1/nodes/node2")[0] == 404

        ptp = copy.deepcopy(PTP)
        ptp["plugins"][0]["ipam"]["dataDir"] = str(lab.node("node1").var_lib_cni / "networks")
        lab.write_cni_config("node1", "10-ptp.conflist", ptp)
        apply(lab, PODS)
        wait_running(lab, "default", "app=probe", 2)
        # The HTTP probe reaches the responder from the node namespace; the TCP probe finds no listener.
        procs.wait_for(lambda: _ready(lab, "served") == "True", timeout=60, what="pod 'served' Ready")
        assert _ready(lab, "unserved") == "False"
        uid = get_json(lab, "pod", "-n", "default", "served")["metadata"]["uid"]

        # Kill the node agent; `up` restarts it and the new agent adopts the sandbox, no new ADD.
        netns_before = set(topology.lab_namespaces(lab.prefix))
        procs.stop([lab.state()["procs"]["node/node1"]])
        lab.up(nodes=1, cni="none")
        wait_running(lab, "default", "app=probe", 2)
        assert get_json(lab, "pod", "-n", "default", "served")["metadata"]["uid"] == uid
        procs.wait_for(lambda: _ready(lab, "served") == "True", timeout=60, what="pod 'served' Ready again")
        assert set(topology.lab_namespaces(lab.prefix)) == netns_before
        lab_id = lab.state()["lab_id"]
    finally:
        lab.down()

    assert topology.lab_namespaces("splabt") == []
    assert procs.marked(lab_id) == []
    assert not [n for n in netns.names() if n.startswith("splabt-")]
    assert not (tmp_path / "lab" / "state.json").exists()
    assert (tmp_path / "lab" / "logs" / "kube-apiserver.log").exists()
