"""The Spiderpool stack in the lab: CRDs, controller replicas, one agent per node (as lab processes)."""

from __future__ import annotations

import http.client
import socket
import sys
from dataclasses import dataclass, field

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json

free_port = procs.free_port


def _http_ok(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@dataclass
class Controllers:
    """Replicas of spiderpool-controller run as lab processes (the way a hostNetwork Deployment would)."""

    lab: Lab
    webhook_port: int
    lease_duration: int = 8
    health_ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def key(self, name: str) -> str:
        return f"spiderpool-controller/{name}"

    def start(self, name: str) -> None:
        health, metrics = free_port(), free_port()
        self.health_ports[name] = health
        self.metrics_ports[name] = metrics
        self.lab.start_process(
            self.key(name),
            [
                sys.executable,
                "-m",
                "spiderpool",
                "controller",
                f"--kubeconfig={self.lab.controller_kubeconfig}",
                f"--identity={name}",
                "--webhook-bind=127.0.0.1",
                f"--webhook-port={self.webhook_port}",
                f"--webhook-url=https://127.0.0.1:{self.webhook_port}",
                "--health-bind=127.0.0.1",
                f"--health-port={health}",
                f"--metrics-port={metrics}",
                f"--lease-duration={self.lease_duration}",
                "--renew-deadline=5",
                "--retry-period=1",
                # garbage collection on a test's time scale
                "--gc-interval=5",
                "--gc-quarantine=10",
                "--gc-stale-lease=15",
                "--gc-min-age=15",
            ],
        )
        procs.wait_for(
            lambda: _http_ok(health, "/readyz"),
            timeout=60,
            what=f"controller {name} ready",
            detail=lambda: procs.tail(self.lab.logs / f"spiderpool-controller-{name}.log"),
        )

    def stop(self, name: str, *, kill: bool = False) -> None:
        self.lab.stop_process(self.key(name), kill=kill)

    def alive(self, name: str) -> bool:
        return self.lab.process_alive(self.key(name))

    def leader(self) -> str:
        lease = get_json(self.lab, "lease", "-n", "kube-system", "spiderpool-controller")
        return str(lease["spec"].get("holderIdentity") or "")

    def scrape(self, name: str) -> str:
        """The replica's Prometheus metrics page."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_ports[name], timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text


@dataclass
class Agents:
    """spiderpool-agent on every lab node, in the node's network namespace (as a hostNetwork DaemonSet)."""

    lab: Lab

    def socket(self, node: str) -> str:
        return str(self.lab.node(node).dir / "run" / "spidernet" / "spiderpool.sock")

    def start(self, node: str) -> None:
        info = self.lab.node(node)
        self.lab.start_process(
            f"spiderpool-agent/{node}",
            [
                sys.executable,
                "-m",
                "spiderpool",
                "agent",
                f"--kubeconfig={self.lab.kubeconfig}",
                f"--node-name={node}",
                f"--socket={self.socket(node)}",
                "--ip-conflict-quarantine=10",
                f"--cni-bin-dir={info.cni_bin_dir}",
                "--metrics-bind=127.0.0.1",
                "--metrics-port=5711",
            ],
            netns_name=info.netns,
        )
        procs.wait_for(
            lambda: unix_request(self.socket(node), "GET", "/v1/ipam/healthy")[0] == 200,
            timeout=60,
            what=f"spiderpool-agent on {node} healthy",
            detail=lambda: procs.tail(self.lab.logs / f"spiderpool-agent-{node}.log"),
        )

    def stop(self, node: str, *, kill: bool = False) -> None:
        self.lab.stop_process(f"spiderpool-agent/{node}", kill=kill)


def unix_request(path: str, method: str, url: str, body: object = None, timeout: float = 30) -> tuple[int, object]:
    """One HTTP request to an agent's unix socket (what the CNI plugin does), from the test process."""
    import json

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
