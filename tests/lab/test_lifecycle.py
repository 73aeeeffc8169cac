"""A second, private lab: `up` is idempotent, a restarted kubelet adopts its pods, and `down`
leaves nothing behind: no process, namespace, cgroup, mount or host path, and the machine's
sysctls as they were."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

from spiderpool_lab import netns, noderuntime, procs, topology
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
    ports: [{name: http, containerPort: 80}]
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
    ports: [{containerPort: 80}]
    readinessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
"""

# ptp gives the node a route to its pods, so the kubelet's probes can reach them.
PTP = {
    "cniVersion": "1.0.0",
    "name": "lab-ptp",
    "plugins": [{"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}],
}

#: what kubelet and containerd write unless their node has a mount namespace of its own
HOST_PATHS = (
    "/etc/cni",
    "/opt/cni",
    "/etc/containerd",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/run/spidernet",
    "/var/lib/containers",
    "/etc/containers/networks",
)


def _ready(lab: Lab, name: str) -> str:
    pod = get_json(lab, "pod", "-n", "default", name)
    return {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready", "")


def _cgroups(prefix: str) -> list[str]:
    return sorted(str(p) for p in noderuntime.CGROUP_ROOT.glob(f"*/{prefix}-*") if p.is_dir())


def test_private_lab_up_twice_restart_and_down(tmp_path: Path) -> None:
    existed = {p for p in HOST_PATHS if Path(p).exists()}
    sysctls = noderuntime.read_sysctls()
    lab = Lab(tmp_path / "lab", prefix="splabt")
    try:
        lab.up(nodes=2, cni="none")
        pids = dict(lab.state()["procs"])
        lab.up(nodes=2, cni="none")  # idempotent: nothing restarted
        assert lab.state()["procs"] == pids
        # Fewer nodes: node2 goes away entirely (processes, namespace, cgroups, Node object).
        lab.up(nodes=1, cni="none")
        assert lab.state()["nodes"] == ["node1"]
        for key in ("kubelet/node2", "containerd/node2", "mountns/node2", "kube-proxy/node2"):
            assert not procs.alive(pids[key]), key
        assert not netns.exists("splabt-node2")
        assert not [c for c in _cgroups("splabt") if c.endswith("splabt-node2")]
        assert lab.api("GET", "/api/v1/nodes/node2")[0] == 404
        assert noderuntime.read_sysctls() == sysctls, "kubelet's sysctls were not put back"

        ptp = copy.deepcopy(PTP)
        lab.write_cni_config("node1", "10-ptp.conflist", ptp)
        apply(lab, PODS)
        wait_running(lab, "default", "app=probe", 2)
        # The kubelet's HTTP probe reaches the pod's server; its TCP probe finds no listener.
        procs.wait_for(lambda: _ready(lab, "served") == "True", timeout=60, what="pod 'served' Ready")
        assert _ready(lab, "unserved") == "False"
        before = get_json(lab, "pod", "-n", "default", "served")

        # SIGKILL the kubelet; `up` starts it again and it adopts the running pod: no new sandbox.
        kubelet = lab.state()["procs"]["kubelet/node1"]
        os.kill(kubelet, signal.SIGKILL)
        procs.wait_for(lambda: not procs.alive(kubelet), timeout=10, what="the kubelet to die")
        lab.up(nodes=1, cni="none")
        wait_running(lab, "default", "app=probe", 2)
        after = get_json(lab, "pod", "-n", "default", "served")
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["status"]["podIP"] == before["status"]["podIP"]
        assert (
            after["status"]["containerStatuses"][0]["containerID"]
            == before["status"]["containerStatuses"][0]["containerID"]
        )
        procs.wait_for(lambda: _ready(lab, "served") == "True", timeout=60, what="pod 'served' Ready again")
        events = get_json(lab, "events", "-n", "default", "--field-selector", "involvedObject.name=served")["items"]
        assert not [e for e in events if e.get("reason") == "SandboxChanged"], "the pod's sandbox was re-created"
        lab_id = lab.state()["lab_id"]
    finally:
        lab.down()

    assert topology.lab_namespaces("splabt") == []
    assert procs.marked(lab_id) == []
    assert _cgroups("splabt") == []
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(tmp_path) in line]
    assert {p for p in HOST_PATHS if Path(p).exists()} == existed, "down left host paths behind"
    assert noderuntime.read_sysctls() == sysctls
    assert not (tmp_path / "lab" / "state.json").exists()
    assert (tmp_path / "lab" / "logs" / "kube-apiserver.log").exists()
