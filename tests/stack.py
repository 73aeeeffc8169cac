"""The Spiderpool stack in the lab, installed as users install it: ``helm upgrade --install`` of
the chart (controller Deployment, agent DaemonSet, RBAC, webhooks, the init Job) from the
project's image, with the tests' settings (short GC and leader-election times) as values.

A crash is what it is in a cluster: a signal to the container's process (found through the node's
containerd), after which the kubelet restarts the container."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

from spiderpool_lab import helm, images, procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json

free_port = procs.free_port
NS = "kube-system"

RELEASE = "spiderpool"
#: the controller's flags on the tests' time scale (garbage collection; a deleted pool's grace
#: before its finalizer comes off, 10 s by default: the tests delete many pools and wait for them,
#: and tests/inproc/test_agent.py tests the grace itself)
CONTROLLER_ARGS = [
    "--gc-quarantine=10",
    "--gc-stale-lease=15",
    "--gc-min-age=15",
    "--pool-finalizer-grace=2",
    # the webhook configurations' CA bundle is checked this often (30 s by default)
    "--webhook-check-interval=5",
]


#: node affinity for what must run on the lab's real nodes (their kubelets label them), not on the
#: Node objects the tests make for agents of their own
LAB_NODES_ONLY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "lab.spiderpool.spidernet.io/node", "operator": "Exists"}]}
            ]
        }
    }
}


def values() -> dict[str, Any]:
    """The chart's values for the tests (both IP families on: the tests use IPv6 too)."""
    # the image's build key: a rebuilt image (same tag) rolls the pods
    image_key = {"lab.spiderpool.spidernet.io/image": images.built()["spiderpool"].key}
    return {
        "ipam": {"gc": {"gcAll": {"intervalInSecond": 5}}},
        "spiderpoolController": {
            "leaderElection": {"leaseDurationSeconds": 8, "renewDeadlineSeconds": 5, "retryPeriodSeconds": 1},
            "extraArgs": CONTROLLER_ARGS,
            "podAnnotations": image_key,
        },
        "spiderpoolAgent": {
            # longer than the kubelet's back-off between sandbox attempts, ~10-15 s: the retry must find it held
            "ipConflictQuarantineSeconds": 30,
            "podAnnotations": image_key,
            # the lab's nodes only: the tests add Node objects that no kubelet runs (their own agents serve them)
            "affinity": LAB_NODES_ONLY,
        },
    }


def helm_install(lab: Lab, extra: dict[str, Any] | None = None, *flags: str) -> str:
    """``helm upgrade --install`` of the chart with the tests' values (and ``extra`` over them);
    returns Helm's output."""
    merged = _merge(values(), extra or {})
    out = helm.run(
        lab,
        "upgrade",
        "--install",
        RELEASE,
        str(helm.chart_path()),
        "--namespace",
        NS,
        "--wait",
        "--timeout",
        "5m",
        "--values",
        "-",
        *flags,
        input_text=json.dumps(merged),
    )
    return out.stdout


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _pods(lab: Lab, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(lab, "pods", "-n", NS, "-l", f"app.kubernetes.io/name={app}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses", []))


def install(lab: Lab) -> None:
    helm_install(lab)


def _describe(lab: Lab, app: str) -> str:
    out = lab.kubectl("get", "pods,events", "-n", NS, "-o", "wide", check=False).stdout
    logs = lab.kubectl("logs", "-n", NS, "-l", f"app.kubernetes.io/name={app}", "--tail=20", check=False)
    return out + logs.stdout + logs.stderr


@dataclass
class _Component:
    lab: Lab
    app: str
    container: str

    def pods(self) -> list[dict[str, Any]]:
        return _pods(self.lab, self.app)

    def pod(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.pods() if p["metadata"]["name"] == name), None)

    def _signal(self, name: str, sig: int) -> int:
        """Signal the container's process; return its restart count before."""
        pod = self.pod(name)
        if pod is None:
            raise AssertionError(f"no {self.app} pod {name}")
        before = _restarts(pod)
        pid = self.lab.container_pid(pod["spec"]["nodeName"], NS, name, self.container)
        if pid is None:
            raise AssertionError(f"{name}: no running container {self.container}")
        os.kill(pid, sig)
        procs.wait_for(lambda: not procs.alive(pid), timeout=30, what=f"{name}'s process to end")
        return before

    def wait_ready(self, name: str, restarts_above: int = -1, timeout: float = 120) -> None:
        def ready() -> bool:
            pod = self.pod(name)
            return pod is not None and _ready(pod) and _restarts(pod) > restarts_above

        procs.wait_for(
            ready, timeout=timeout, what=f"{self.app} {name} ready", detail=lambda: _describe(self.lab, self.app)
        )


class Controllers(_Component):
    """spiderpool-controller's Deployment (2 replicas, one per node)."""

    lease_duration = 8

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab, "spiderpool-controller", "controller")
        self._restarts: dict[str, int] = {}

    def names(self) -> list[str]:
        return sorted(p["metadata"]["name"] for p in self.pods())

    def wait_all(self, count: int = 2, timeout: float = 180) -> None:
        procs.wait_for(
            lambda: len(self.pods()) == count and all(_ready(p) for p in self.pods()),
            timeout=timeout,
            what=f"{count} spiderpool-controller replicas ready",
            detail=lambda: _describe(self.lab, self.app),
        )

    def holder(self) -> str:
        """The Lease's holder identity: '<pod>_<random per start>' (a restarted container is a new one)."""
        lease = get_json(self.lab, "lease", "-n", NS, "spiderpool-controller")
        return str(lease["spec"].get("holderIdentity") or "")

    def leader(self) -> str:
        """The pod holding the Lease."""
        return self.holder().split("_", 1)[0]

    def other(self, name: str) -> str:
        (found,) = [n for n in self.names() if n != name]
        return found

    def stop(self, name: str, *, kill: bool = False) -> None:
        """SIGKILL (a crash: no Lease release) or SIGTERM (graceful) to a replica; the kubelet restarts it."""
        self._restarts[name] = self._signal(name, signal.SIGKILL if kill else signal.SIGTERM)

    def start(self, name: str) -> None:
        """Wait for a stopped replica to be back (restarted by the kubelet) and ready."""
        self.wait_ready(name, self._restarts.pop(name, -1))

    def stop_all(self) -> None:
        self.lab.kubectl("scale", "-n", NS, "deployment/spiderpool-controller", "--replicas=0")
        procs.wait_for(lambda: not self.pods(), timeout=60, what="no spiderpool-controller pod")

    def start_all(self) -> None:
        self.lab.kubectl("scale", "-n", NS, "deployment/spiderpool-controller", "--replicas=2")
        self.wait_all()

    def running(self) -> bool:
        return any(_ready(p) for p in self.pods())

    def scrape(self, name: str) -> str:
        """The replica's Prometheus metrics page (on its node's host network)."""
        pod = self.pod(name)
        assert pod is not None, name
        argv = self.lab.exec_argv(
            pod["spec"]["nodeName"], ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:5721/metrics"]
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


class Agents(_Component):
    """spiderpool-agent's DaemonSet: one per node."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab, "spiderpool-agent", "agent")
        self._restarts: dict[str, int] = {}

    def pods(self) -> list[dict[str, Any]]:
        return [p for p in super().pods() if p["spec"].get("nodeName") in {n.name for n in self.lab.nodes()}]

    def on(self, node: str) -> str:
        (found,) = [p["metadata"]["name"] for p in self.pods() if p["spec"].get("nodeName") == node]
        return found

    def scrape(self, node: str) -> str:
        """The node's agent's Prometheus metrics page (on the node's host network)."""
        argv = self.lab.exec_argv(node, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:5711/metrics"])
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout

    def socket(self, node: str) -> str:
        """The agent's socket (the plugin's /var/run/spidernet/spiderpool.sock on that node)."""
        return str(self.lab.node(node).dir / "run" / "spidernet" / "spiderpool.sock")

    def wait_all(self, timeout: float = 180) -> None:
        nodes = {n.name for n in self.lab.nodes()}

        def ready() -> bool:
            pods = self.pods()
            return {p["spec"].get("nodeName") for p in pods if _ready(p)} >= nodes and all(
                unix_request(self.socket(n), "GET", "/v1/ipam/healthy")[0] == 200 for n in nodes
            )

        procs.wait_for(
            ready,
            timeout=timeout,
            what="spiderpool-agent ready on every node",
            detail=lambda: _describe(self.lab, self.app),
        )

    def stop(self, node: str, *, kill: bool = False) -> None:
        name = self.on(node)
        self._restarts[node] = self._signal(name, signal.SIGKILL if kill else signal.SIGTERM)

    def start(self, node: str) -> None:
        self.wait_ready(self.on(node), self._restarts.pop(node, -1))
        procs.wait_for(
            lambda: unix_request(self.socket(node), "GET", "/v1/ipam/healthy")[0] == 200,
            timeout=60,
            what=f"spiderpool-agent on {node} healthy",
        )


def unix_request(path: str, method: str, url: str, body: object = None, timeout: float = 30) -> tuple[int, object]:
    """One HTTP request to an agent's unix socket (what the CNI plugin does), from the test process."""
    payload = json.dumps(body).encode() if body is not None else b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(
                f"{method} {url} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
    except OSError as exc:
        return 0, str(exc)
    head, _, data = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, "connection closed without a reply"
    try:
        return status, json.loads(data) if data.strip() else None
    except ValueError:
        return status, data.decode(errors="replace")
