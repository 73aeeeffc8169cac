"""A pod cannot take an address its annotations have no right to: a pool bound to another
namespace, an address another pod holds, a route through a gateway outside its subnets. (A reserved
address: tests/ipam/test_lifecycle_and_errors.py, the SpiderReservedIP case.) Each attempt leaves
the pod without the address, says why in its events, and takes nothing from anybody."""

from __future__ import annotations

import json
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import apply, get_json, in_netns, pool_manifest, wait_running
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents

OWNER, INTRUDER = "claims-owner", "claims-intruder"


def _pod(name: str, namespace: str, annotations: dict[str, str], node: str = "node1") -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}, "annotations": annotations},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
            },
        }
    )


def _ippool(pool: str) -> dict[str, str]:
    return {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [pool]})}


def _failures(lab: Lab, namespace: str, name: str) -> list[str]:
    events: list[dict[str, Any]] = get_json(lab, "events", "-n", namespace)["items"]
    return [
        str(e["message"])
        for e in events
        if e["involvedObject"].get("name") == name and e.get("reason") == "IPAllocationFailed"
    ]


def test_annotations_cannot_claim_what_their_pod_has_no_right_to(stack: Agents) -> None:
    lab = stack.lab
    apply(lab, pool_manifest("p-claim-ns", "172.18.0.0/16", ["172.18.92.1-172.18.92.9"], namespaceName=[OWNER]))
    apply(lab, pool_manifest("p-claim-one", "172.18.0.0/16", ["172.18.92.20"]))
    apply(lab, pool_manifest("p-claim-open", "172.18.0.0/16", ["172.18.92.30-172.18.92.39"]))
    for ns in (OWNER, INTRUDER):
        lab.kubectl("create", "namespace", ns)
    try:
        # the owner's pods: one holds the only address of p-claim-one, one is in p-claim-ns's namespace
        lab.kubectl("apply", "-f", "-", input_text=_pod("holder", OWNER, _ippool("p-claim-one")))
        lab.kubectl("apply", "-f", "-", input_text=_pod("member", OWNER, _ippool("p-claim-ns")))
        owners: dict[str, str] = {}
        for name in ("holder", "member"):
            (pod,) = wait_running(lab, OWNER, f"app={name}", 1)
            owners[name] = pod["status"]["podIP"]
        assert owners["holder"] == "172.18.92.20"
        # the intruder's: the other namespace's pool, the held address, a route through a stranger
        route = '[{"dst": "10.55.0.0/16", "gw": "10.66.0.1"}, {"dst": "10.56.0.0/16", "gw": "172.18.0.1"}]'
        lab.kubectl("apply", "-f", "-", input_text=_pod("ns-pool", INTRUDER, _ippool("p-claim-ns")))
        lab.kubectl("apply", "-f", "-", input_text=_pod("taker", INTRUDER, _ippool("p-claim-one")))
        lab.kubectl(
            "apply",
            "-f",
            "-",
            input_text=_pod("router", INTRUDER, {**_ippool("p-claim-open"), "ipam.spidernet.io/routes": route}),
        )
        expected = {
            "ns-pool": f"p-claim-ns: namespaceName does not include namespace {INTRUDER}",
            "taker": "p-claim-one: all IP addresses used out",
        }

        def refused() -> bool:
            return all(any(text in m for m in _failures(lab, INTRUDER, n)) for n, text in expected.items())

        procs.wait_for(
            refused,
            timeout=90,
            what="both claims refused with their reasons",
            detail=lambda: json.dumps({n: _failures(lab, INTRUDER, n) for n in expected}, indent=1),
        )
        (router,) = wait_running(lab, INTRUDER, "app=router", 1)
        routes = in_netns(lab, f"{INTRUDER}/router", "ip", "-4", "route").stdout
        assert "10.56.0.0/16 via 172.18.0.1" in routes, routes
        assert "10.55.0.0/16" not in routes, routes
        assert "10.66.0.1" not in routes, routes
        # nothing was taken from the owners, and the intruders hold nothing of theirs
        held = {r["spec"]["ip"]: (r["spec"]["namespace"], r["spec"]["pod"]) for r in records(lab)}
        assert held["172.18.92.20"] == (OWNER, "holder")
        assert held[owners["member"]] == (OWNER, "member")
        assert not [ip for ip, (ns, pod) in held.items() if ns == INTRUDER and pod != "router"]
        assert router["status"]["podIP"].startswith("172.18.92.3")
    finally:
        for ns in (OWNER, INTRUDER):
            lab.kubectl("delete", "namespace", ns, "--wait=false")
    for ns in (OWNER, INTRUDER):
        wait_no_records(lab, ns, timeout=120)
    lab.kubectl("delete", "spiderippool", "p-claim-ns", "p-claim-one", "p-claim-open", "--wait=true", "--timeout=60s")
