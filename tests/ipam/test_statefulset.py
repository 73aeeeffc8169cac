"""StatefulSet pods keep their IPs across deletion and a move to another node; scaling down keeps the
removed ordinals' IPs only when the StatefulSet asks for it; deleting the StatefulSet frees them all."""

from __future__ import annotations

import json
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, pods, pool_manifest, wait_running
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents

NS = "sts"
POOL = "p-sts"
RETAIN = {"ipam.spidernet.io/ip-retention-policy": json.dumps({"whenScaled": "Retain"})}


def statefulset(replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": NS, "annotations": RETAIN},
            "spec": {
                "replicas": replicas,
                "serviceName": "db",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "db"},
                        "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})},
                    },
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
    )


def ips(lab: Lab, count: int) -> dict[str, str]:
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in wait_running(lab, NS, "app=db", count, timeout=180)}


def held(lab: Lab) -> dict[str, str]:
    return {r["spec"]["ip"]: r["spec"]["pod"] for r in records(lab) if r["spec"]["pool"] == POOL}


def replace_pod(lab: Lab, name: str) -> dict[str, Any]:
    old = get_json(lab, "pod", "-n", NS, name)["metadata"]["uid"]
    lab.kubectl("delete", "pod", "-n", NS, name)

    def back() -> bool:
        now = [p for p in pods(lab, NS, "app=db") if p["metadata"]["name"] == name]
        return bool(now and now[0]["metadata"]["uid"] != old and now[0]["status"].get("podIP"))

    procs.wait_for(back, timeout=120, what=f"{name} re-created with an IP")
    return dict(get_json(lab, "pod", "-n", NS, name))


def test_statefulset_ips_across_deletion_moves_and_scaling(stack: Agents) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.73.1-172.18.73.9"]))
    lab.kubectl("create", "namespace", NS)
    cordoned = ""
    try:
        lab.kubectl("apply", "-f", "-", input_text=statefulset(3))
        first = ips(lab, 3)
        assert len(set(first.values())) == 3

        assert replace_pod(lab, "db-0")["status"]["podIP"] == first["db-0"]
        # a move: db-1's node is cordoned, so its successor lands on the other node, with the same IP
        cordoned = get_json(lab, "pod", "-n", NS, "db-1")["spec"]["nodeName"]
        lab.kubectl("cordon", cordoned)
        moved = replace_pod(lab, "db-1")
        assert moved["spec"]["nodeName"] != cordoned
        assert moved["status"]["podIP"] == first["db-1"]
        lab.kubectl("uncordon", cordoned)
        cordoned = ""

        # scale 3 -> 1 -> 3 with retention: the removed ordinals' IPs wait for them
        lab.kubectl("scale", "-n", NS, "statefulset/db", "--replicas=1")
        ips(lab, 1)
        assert sorted(held(lab)) == sorted(first.values())
        lab.kubectl("scale", "-n", NS, "statefulset/db", "--replicas=3")
        assert ips(lab, 3) == first

        # without retention, scaling down frees the removed ordinals' IPs
        lab.kubectl("annotate", "-n", NS, "statefulset/db", "ipam.spidernet.io/ip-retention-policy-")
        lab.kubectl("scale", "-n", NS, "statefulset/db", "--replicas=1")
        ips(lab, 1)
        procs.wait_for(
            lambda: held(lab) == {first["db-0"]: "db-0"},
            timeout=60,
            what="the IPs of db-1 and db-2 to be released",
            detail=lambda: json.dumps(held(lab)),
        )
        lab.kubectl("delete", "statefulset", "-n", NS, "db", "--wait=true")
        procs.wait_for(lambda: not held(lab), timeout=90, what="every IP freed with the StatefulSet")
    finally:
        if cordoned:
            lab.kubectl("uncordon", cordoned)
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_no_records(lab, NS, timeout=120)
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s")
