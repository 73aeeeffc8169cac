"""Pools and CNI configs shared by the IPAM tests: the walkthrough's macvlan + spiderpool chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.consistency import problems
from tests.helpers import get_json
from tests.stack import Agents


def macvlan_spiderpool(name: str = "macvlan-conf", version: str = "0.3.1", **ipam: Any) -> dict[str, Any]:
    """The walkthrough's NetworkAttachmentDefinition config (without the veth plugin)."""
    return {
        "cniVersion": version,
        "name": name,
        "plugins": [{"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool", **ipam}}],
    }


def use_cni(lab: Lab, conflist: dict[str, Any]) -> None:
    for node in lab.nodes():
        lab.clear_cni_config(node.name)
        lab.write_cni_config(node.name, "10-spiderpool.conflist", conflist)


def pool_counts(lab: Lab, name: str) -> tuple[int, int]:
    status = get_json(lab, "spiderippool", name).get("status", {})
    return int(status.get("allocatedIPCount") or 0), int(status.get("totalIPCount") or 0)


def records(lab: Lab) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(lab, "spideripallocations")["items"]
    return items


@pytest.fixture
def stack(agents: Agents) -> Iterator[Agents]:
    """Agents up and the nodes on macvlan + spiderpool; afterwards the nodes go back to the lab default,
    and the IPAM state must be consistent (tests/consistency.py)."""
    use_cni(agents.lab, macvlan_spiderpool())
    yield agents
    agents.lab.reset_cni_config()
    assert_consistent(agents.lab)


def assert_consistent(lab: Lab, timeout: float = 60) -> None:
    """Wait (bounded: status is written in batches) until the consistency check holds."""
    found: list[str] = []

    def ok() -> bool:
        nonlocal found
        found = problems(lab)
        return not found

    procs.wait_for(ok, timeout=timeout, what="a consistent IPAM state", detail=lambda: "\n".join(found))


def wait_no_records(lab: Lab, namespace: str | None = None, timeout: float = 60) -> None:
    def empty() -> bool:
        return not [r for r in records(lab) if namespace is None or r["spec"]["namespace"] == namespace]

    procs.wait_for(
        empty,
        timeout=timeout,
        what="allocation records to be released",
        detail=lambda: json.dumps([r["spec"] for r in records(lab)], indent=1)[:3000],
    )


def endpoint(lab: Lab, namespace: str, name: str, nics: int = 1, timeout: float = 30) -> dict[str, Any]:
    """The pod's SpiderEndpoint ``status.current`` once it lists ``nics`` interfaces (it is written just after
    the allocation reply)."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal found
        out = lab.kubectl("get", "spiderendpoint", "-n", namespace, name, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        found = json.loads(out.stdout).get("status", {}).get("current", {})
        return len(found.get("ips") or []) == nics

    procs.wait_for(ready, timeout=timeout, what=f"SpiderEndpoint {namespace}/{name} with {nics} interface(s)")
    return found
