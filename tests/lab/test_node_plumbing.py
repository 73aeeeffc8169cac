"""The lab's nodes are real nodes, and spiderpool runs on them as it ships: the image built from the
Dockerfile, the controller Deployment reading the API in-cluster and serving the webhooks through
its Service, the agent DaemonSet installing the plugins into the node's /opt/cni/bin; and what an
admin does from a shell (kubectl logs, exec, port-forward, cp) works from the machine."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
from pathlib import Path

from spiderpool_lab import build, procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, pool_manifest
from tests.stack import NS, Agents, Controllers

HOSTNET_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "plumbing", "namespace": "default", "labels": {"app": "plumbing"}},
    "spec": {
        "hostNetwork": True,
        "nodeName": "node1",
        "containers": [{"name": "c", "image": "lab.local/tools:1", "command": ["sleep", "infinity"]}],
    },
}


def _kubectl(lab: Lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(build.binary("kubectl")), f"--kubeconfig={lab.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_nodes_are_real_nodes(lab: Lab) -> None:
    for node in get_json(lab, "nodes")["items"]:
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.37.2"
        assert info["containerRuntimeVersion"] == "containerd://2.4.2"
        assert info["osImage"] == "Debian GNU/Linux 12 (bookworm)"
    version = _kubectl(lab, "version", "-o", "json")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == "v1.37.2"


def test_spiderpool_runs_as_it_ships(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    # the agent's log, through the kubelet
    agent = agents.on("node1")
    logs = _kubectl(lab, "logs", "-n", NS, agent)
    assert logs.returncode == 0, logs.stderr
    assert "serving node=node1" in logs.stdout
    assert "plugins installed dir=/opt/cni/bin" in logs.stdout
    # ... which put the plugins into the node's own /opt/cni/bin (a hostPath)
    bin_dir = lab.node("node1").cni_bin_dir
    assert {"spiderpool", "veth", "coordinator"} <= {p.name for p in bin_dir.iterdir()}
    # the image holds the product and its plugin relay, and no lab code
    probe = "import importlib.util as u; print(u.find_spec('spiderpool') is not None, u.find_spec('spiderpool_lab'))"
    found = _kubectl(lab, "exec", "-n", NS, agent, "--", "python3", "-c", probe)
    assert found.stdout.split() == ["True", "None"], found.stdout + found.stderr
    relay = _kubectl(lab, "exec", "-n", NS, agent, "--", "ls", "/opt/spiderpool/cni")
    assert relay.stdout.split() == ["spiderpool-relay"], relay.stdout + relay.stderr
    assert all((bin_dir / p).resolve() == bin_dir / ".spiderpool" / "spiderpool-relay" for p in ("spiderpool", "veth"))

    # the controller reads and writes the API in-cluster (its ServiceAccount): it holds the Lease
    lease = get_json(lab, "lease", "-n", NS, "spiderpool-controller")
    assert controllers.leader() in controllers.names()
    renewed = datetime.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    assert (datetime.datetime.now(datetime.UTC) - renewed).total_seconds() < 30
    # ... and its webhook, reached through its Service, rejects what only it can reject
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("plumb-a", "10.130.0.0/16", ["10.130.0.1-10.130.0.9"]))
    try:
        overlap = pool_manifest("plumb-b", "10.130.0.0/16", ["10.130.0.5"])
        out = lab.kubectl("apply", "--dry-run=server", "-f", "-", input_text=overlap, check=False)

        def refused() -> bool:
            # (the webhook judges against its watch of the pools: plumb-a reaches it a moment after
            # its create returns, so the first try may come before it)
            nonlocal out
            out = lab.kubectl("apply", "--dry-run=server", "-f", "-", input_text=overlap, check=False)
            return out.returncode != 0

        def why() -> str:
            apiserver = [ln for ln in procs.tail(lab.logs / "kube-apiserver.log", 400).splitlines() if "webhook" in ln]
            logs = lab.kubectl("logs", "-n", NS, "-l", "app.kubernetes.io/name=spiderpool-controller", "--prefix")
            return "\n".join([out.stdout, *apiserver[-10:], logs.stdout[-3000:]])

        procs.wait_for(refused, timeout=15, what="the webhook to refuse an overlapping pool", detail=why)
        assert 'admission webhook "spiderippool.spiderpool.spidernet.io" denied the request' in out.stderr
        assert 'already belong to SpiderIPPool "plumb-a"' in out.stderr
        hooks = get_json(lab, "validatingwebhookconfiguration", "spiderpool-controller")["webhooks"]
        assert {h["clientConfig"]["service"]["name"] for h in hooks} == {"spiderpool-controller"}
    finally:
        lab.kubectl("delete", "spiderippool", "plumb-a", "--wait=true", "--timeout=60s")


def test_a_pod_uses_the_kubernetes_service_and_kubectl_reaches_pods(lab: Lab, tmp_path: Path) -> None:
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(HOSTNET_POD))
    try:
        lab.kubectl("wait", "--for=condition=Ready", "pod/plumbing", "--timeout=60s")
        # in-cluster API access: the kubernetes Service (kube-proxy on the node) with the pod's token
        script = (
            "curl -sS --max-time 5 --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
            ' -H "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)"'
            " https://kubernetes.default.svc.cluster.local:443/version --resolve"
            " kubernetes.default.svc.cluster.local:443:10.96.0.1"
        )
        out = _kubectl(lab, "exec", "plumbing", "--", "sh", "-c", script)
        assert json.loads(out.stdout)["gitVersion"] == "v1.37.2", out.stdout + out.stderr
        # kubectl cp, both ways
        (tmp_path / "up.txt").write_text("to the pod\n")
        assert _kubectl(lab, "cp", str(tmp_path / "up.txt"), "default/plumbing:/tmp/up.txt").returncode == 0
        assert _kubectl(lab, "exec", "plumbing", "--", "cat", "/tmp/up.txt").stdout == "to the pod\n"
        assert _kubectl(lab, "cp", "default/plumbing:/tmp/up.txt", str(tmp_path / "down.txt")).returncode == 0
        assert (tmp_path / "down.txt").read_text() == "to the pod\n"
        # kubectl port-forward: loopback of the machine to a port in the pod
        server = _kubectl(lab, "exec", "plumbing", "--", "sh", "-c", "python3 -m http.server 8099 >/dev/null 2>&1 &")
        assert server.returncode == 0
        local = procs.free_port()
        forward = subprocess.Popen(
            [
                str(build.binary("kubectl")),
                f"--kubeconfig={lab.kubeconfig}",
                "port-forward",
                "pod/plumbing",
                f"{local}:8099",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def answers() -> bool:
                try:
                    with socket.create_connection(("127.0.0.1", local), timeout=2) as s:
                        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        return s.recv(64).startswith(b"HTTP/1.0 200")
                except OSError:
                    return False

            procs.wait_for(answers, timeout=30, what="the pod's server through kubectl port-forward")
        finally:
            forward.terminate()
            forward.wait(timeout=10)
    finally:
        lab.kubectl("delete", "pod", "plumbing", "--grace-period=1", "--wait=false")
    procs.wait_for(lambda: not get_json(lab, "pods", "-l", "app=plumbing")["items"], timeout=60, what="the pod to go")
