"""Garbage collection: IPs of force-deleted pods, of pods on a node that stopped without notice, and
of records whose pod never existed are taken back; while they are in quarantine nobody gets them."""

from __future__ import annotations

import json
import re

from spiderpool.lab import procs
from spiderpool.lab.cluster import Lab
from tests.helpers import allocation_record, get_json, pods, pool_manifest, pool_pod, wait_running
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents, Controllers

NS = "gc"
POOL = "p-gc"
IPS = ["172.18.72.1", "172.18.72.2", "172.18.72.3"]


def pod(name: str, node: str) -> str:
    return pool_pod(name, NS, POOL, node)


def held(lab: Lab) -> dict[str, dict[str, object]]:
    return {r["spec"]["ip"]: r["spec"] for r in records(lab) if r["spec"]["pool"] == POOL}


def metric(text: str, name: str, reason: str) -> float:
    m = re.search(rf'^{name}{{reason="{reason}"}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_gc_takes_back_ips_and_quarantines_them(stack: Agents, controllers: Controllers) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.72.1-172.18.72.3"]))
    lab.kubectl("create", "namespace", NS)
    stopped = False
    try:
        lab.kubectl("apply", "-f", "-", input_text=pod("forced", "node2"))
        lab.kubectl("apply", "-f", "-", input_text=pod("stranded", "node2"))
        wait_running(lab, NS, "app=forced", 1)
        wait_running(lab, NS, "app=stranded", 1)
        free = next(ip for ip in IPS if ip not in held(lab))
        # a record for a pod that never existed
        ghost = allocation_record(free, POOL, pod="ghost", namespace=NS, uid="never")
        lab.kubectl("apply", "-f", "-", input_text=ghost)

        # node2 stops without notice: no kubelet to run CNI DEL, its Lease goes stale
        lab.stop_process("node/node2")
        stopped = True
        lab.kubectl("delete", "pod", "-n", NS, "forced", "--force", "--grace-period=0")
        lab.kubectl("delete", "pod", "-n", NS, "stranded", "--wait=false")
        assert len(held(lab)) == 3

        # a pod on the healthy node wants an IP from the full pool
        lab.kubectl("apply", "-f", "-", input_text=pod("newcomer", "node1"))

        reasons: dict[str, str] = {}

        def every_ip_quarantined_once() -> bool:
            for ip, spec in held(lab).items():
                if spec.get("quarantineUntil"):
                    if not reasons:  # the first: the pool has no free IP, so the newcomer has none
                        (waiting,) = pods(lab, NS, "app=newcomer")
                        assert not waiting["status"].get("podIP"), "a quarantined IP was handed out"
                    reasons[ip] = str(spec["releaseReason"])
            return len(reasons) == 3

        procs.wait_for(
            every_ip_quarantined_once,
            timeout=90,
            interval=0.2,
            what="the three IPs to be taken back into quarantine",
            detail=lambda: json.dumps(held(lab), indent=1),
        )
        assert sorted(reasons.values()) == ["node_lost", "pod_deleted", "pod_deleted"]
        # once a quarantine is over the IP goes to the pod that waited for it
        (newcomer,) = wait_running(lab, NS, "app=newcomer", 1, timeout=120)
        assert newcomer["status"]["podIP"] in IPS
        procs.wait_for(lambda: len(held(lab)) == 1, timeout=60, what="every other quarantine to end")
        assert held(lab)[newcomer["status"]["podIP"]]["podUID"] == newcomer["metadata"]["uid"]
        text = controllers.scrape(controllers.leader())
        assert metric(text, "spiderpool_controller_gc_quarantined_ips_total", "pod_deleted") >= 2
        assert metric(text, "spiderpool_controller_gc_quarantined_ips_total", "node_lost") >= 1
        assert metric(text, "spiderpool_controller_gc_released_ips_total", "quarantine_over") >= 2
    finally:
        if stopped:
            lab.up(nodes=2)  # node2 back: it tears down the sandboxes of the pods that went meanwhile
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_no_records(lab, NS, timeout=120)
    procs.wait_for(lambda: not held(lab), timeout=60, what=f"{POOL} to hold nothing")
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s")
    assert get_json(lab, "nodes", "node2")["metadata"]["name"] == "node2"
