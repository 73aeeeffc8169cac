"""Small helpers the integration tests share: reading objects and waiting on conditions."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab


def get_json(lab: Lab, *args: str) -> Any:
    return json.loads(lab.kubectl("get", *args, "-o", "json").stdout)


def pods(lab: Lab, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(lab, "pods", "-n", namespace, "-l", selector)["items"]
    return items


def wait_running(lab: Lab, namespace: str, selector: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Wait until exactly ``count`` pods match and all are Running with an IP; return them."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal found
        found = pods(lab, namespace, selector)
        return len(found) == count and all(
            p["status"].get("phase") == "Running" and p["status"].get("podIP") for p in found
        )

    procs.wait_for(
        ready,
        timeout=timeout,
        what=f"{count} Running pod(s) {selector} in {namespace}",
        detail=lambda: _describe(lab, namespace),
    )
    return found


def _describe(lab: Lab, namespace: str) -> str:
    out = lab.kubectl("get", "pods,events", "-n", namespace, "-o", "wide", check=False)
    return out.stdout + out.stderr


def wait_gone(lab: Lab, namespace: str, selector: str, timeout: float = 120) -> None:
    procs.wait_for(
        lambda: not pods(lab, namespace, selector),
        timeout=timeout,
        what=f"pods {selector} in {namespace} to be deleted",
        detail=lambda: lab.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout,
    )


def in_netns(lab: Lab, target: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command on a node (``node1``: its network and mount namespaces) or in a pod (``ns/name``:
    ``kubectl exec``)."""
    return subprocess.run(lab.exec_argv(target, list(argv)), capture_output=True, text=True, timeout=timeout)


def apply(lab: Lab, manifest: str) -> None:
    lab.kubectl("apply", "-f", "-", input_text=manifest)


def allocation_record(ip: str, pool: str, *, pod: str = "app-0", namespace: str = "default", uid: str = "u-1") -> str:
    """A SpiderIPAllocation manifest: the record an agent writes when it hands ``ip`` out of ``pool``."""
    from spiderpool.ipam.allocate import record_name

    family = 6 if ":" in ip else 4
    return json.dumps(
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPAllocation",
            "metadata": {"name": record_name(ip)},
            "spec": {
                "ip": ip,
                "pool": pool,
                "ipVersion": family,
                "namespace": namespace,
                "pod": pod,
                "podUID": uid,
                "interface": "eth0",
            },
        }
    )


def pool_manifest(name: str, subnet: str, ips: list[str], **spec: Any) -> str:
    """A SpiderIPPool manifest; lab underlay pools get the lab gateway unless one is given."""
    gateway = {"172.18.0.0/16": "172.18.0.1", "fd00:172:18::/64": "fd00:172:18::1"}.get(subnet)
    body: dict[str, Any] = {"subnet": subnet, "ips": ips, **spec}
    if gateway and "gateway" not in spec:
        body["gateway"] = gateway
    return json.dumps(
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def pool_pod(name: str, namespace: str, pool: str, node: str, ipv6_pool: str | None = None) -> str:
    """A bare pod on ``node`` that takes its IPv4 address from ``pool`` (and its IPv6 one from
    ``ipv6_pool``, if given; label app=<name>)."""
    choice = {"ipv4": [pool], **({"ipv6": [ipv6_pool]} if ipv6_pool else {})}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app": name},
                "annotations": {"ipam.spidernet.io/ippool": json.dumps(choice)},
            },
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
    )
