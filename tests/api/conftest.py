"""spiderpool-controller in the lab: CRDs installed, two replicas sharing the webhook port."""

from __future__ import annotations

import http.client
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from spiderpool.api import crds
from spiderpool.lab import procs
from spiderpool.lab.cluster import Lab
from tests.helpers import get_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        health, metrics = _free_port(), _free_port()
        self.health_ports[name] = health
        self.metrics_ports[name] = metrics
        self.lab.start_process(
            self.key(name),
            [
                sys.executable,
                "-m",
                "spiderpool",
                "controller",
                f"--kubeconfig={self.lab.kubeconfig}",
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


@pytest.fixture(scope="session")
def crds_installed(lab: Lab) -> Lab:
    for text in crds.render_all().values():
        lab.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text)
    for crd in crds.CRDS:
        lab.kubectl("wait", "--for=condition=Established", f"crd/{crd.name}", "--timeout=60s")
    return lab


@pytest.fixture(scope="session")
def controllers(crds_installed: Lab) -> Iterator[Controllers]:
    ctl = Controllers(crds_installed, webhook_port=_free_port())
    ctl.start("controller-a")
    procs.wait_for(lambda: ctl.leader() == "controller-a", timeout=30, what="controller-a to lead")
    ctl.start("controller-b")
    yield ctl
    for name in ("controller-a", "controller-b"):
        ctl.stop(name)
