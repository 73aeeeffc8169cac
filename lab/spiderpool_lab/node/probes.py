"""Readiness probes, run from the node's network namespace as a kubelet runs them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Probe:
    kind: str  # "http" or "tcp"
    port: int
    path: str = "/"
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    ready: bool = False
    _next: float = field(default=0.0, repr=False)
    _ok_run: int = field(default=0, repr=False)
    _fail_run: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._next = time.monotonic() + self.initial_delay

    def due(self) -> bool:
        return time.monotonic() >= self._next

    async def run(self, ip: str) -> bool:
        self._next = time.monotonic() + self.period
        host = f"[{ip}]" if ":" in ip else ip
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, self.port), self.timeout)
        except (OSError, TimeoutError):
            return False
        try:
            if self.kind == "tcp":
                return True
            request = f"GET {self.path} HTTP/1.1\r\nHost: {host}:{self.port}\r\nUser-Agent: kube-probe/lab\r\n"
            writer.write((request + "Connection: close\r\n\r\n").encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            parts = line.split()
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
        except (OSError, TimeoutError, ValueError):
            return False
        finally:
            writer.close()

    def update(self, ok: bool) -> bool:
        """Fold one result in with the thresholds; return the readiness that follows."""
        if ok:
            self._ok_run, self._fail_run = self._ok_run + 1, 0
            if self._ok_run >= self.success_threshold:
                self.ready = True
        else:
            self._ok_run, self._fail_run = 0, self._fail_run + 1
            if self._fail_run >= self.failure_threshold:
                self.ready = False
        return self.ready


def _resolve_port(port: Any, container_ports: list[Any]) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        for p in container_ports:
            if p.name == port:
                return int(p.containerPort)
    return None


def probe_from_spec(spec: Any, container_ports: list[Any]) -> Probe | None:
    """Build a probe from a container's readinessProbe (httpGet and tcpSocket are supported)."""
    if spec.httpGet is not None:
        kind, port, path = "http", _resolve_port(spec.httpGet.port, container_ports), spec.httpGet.path or "/"
    elif spec.tcpSocket is not None:
        kind, port, path = "tcp", _resolve_port(spec.tcpSocket.port, container_ports), "/"
    else:
        return None
    if port is None:
        return None
    return Probe(
        kind=kind,
        port=port,
        path=path,
        initial_delay=float(spec.initialDelaySeconds or 0),
        period=float(max(1, spec.periodSeconds or 10)),
        timeout=float(max(1, spec.timeoutSeconds or 1)),
        success_threshold=int(spec.successThreshold or 1),
        failure_threshold=int(spec.failureThreshold or 3),
    )
