"""Garbage collection: IPs of force-deleted pods, of pods on a node that stopped without notice, and
of records whose pod never existed are taken back; while they are in quarantine nobody gets them."""

from __future__ import annotations

import json
import re

from spiderpool.ipam.allocate import record_name
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import (
    allocation_record,
    event_messages,
    get_json,
    in_netns,
    pods,
    pool_manifest,
    pool_pod,
    spiderpool_json,
    wait_running,
)
from tests.ipam.conftest import records, wait_no_records
from tests.stack import CONTROLLER_ARGS, Agents, Controllers, helm_install, unix_request

NS = "gc"
POOL = "p-gc"
IPS = ["172.18.72.1", "172.18.72.2", "172.18.72.3"]
LATER = "2099-01-01T00:00:00Z"


def pod(name: str, node: str) -> str:
    return pool_pod(name, NS, POOL, node)


def held(lab: Lab, pool: str = POOL) -> dict[str, dict[str, object]]:
    return {r["spec"]["ip"]: r["spec"] for r in records(lab) if r["spec"]["pool"] == pool}


def stack_metrics(lab: Lab, node: str = "node2") -> str:
    return in_netns(lab, node, "curl", "-s", "http://127.0.0.1:5711/metrics").stdout


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
        lab.stop_process("kubelet/node2")
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
        # the pod whose address went because its node is lost says so
        lost = event_messages(lab, NS, name="stranded", reason="IPReleasedNodeLost")
        assert lost, "no IPReleasedNodeLost event on the stranded pod"
        assert "its node node2 has not renewed its Lease" in lost[0], lost
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


def test_del_ends_the_quarantine_of_a_force_deleted_pod(stack: Agents, controllers: Controllers) -> None:
    """The GC quarantines a force-deleted pod's address because its sandbox may still run; when the
    runtime's DEL for that sandbox arrives, the address is free at once. An address quarantined because
    another host uses it stays quarantined."""
    lab = stack.lab
    pool, ns = "p-gcq", "gcq"
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(pool, "172.18.0.0/16", ["172.18.73.1-172.18.73.2"]))
    lab.kubectl("create", "namespace", ns)
    stopped, ip = False, ""
    try:
        lab.kubectl("apply", "-f", "-", input_text=pool_pod("forced", ns, pool, "node2"))
        (forced,) = wait_running(lab, ns, "app=forced", 1)
        ip = forced["status"]["podIP"]
        (record,) = [r for r in records(lab) if r["spec"]["ip"] == ip]
        container = record["spec"]["containerID"]
        # the other address: quarantined for a conflict on the LAN, for the same sandbox
        other = next(x for x in ("172.18.73.1", "172.18.73.2") if x != ip)
        conflict = json.loads(allocation_record(other, pool, pod="forced", namespace=ns, uid=""))
        conflict["spec"].update(containerID=container, quarantineUntil=LATER, releaseReason="ip_conflict")
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(conflict))

        lab.stop_process("kubelet/node2")  # no kubelet: nothing tears the sandbox down for now
        stopped = True
        lab.kubectl("delete", "pod", "-n", ns, "forced", "--force", "--grace-period=0")
        procs.wait_for(
            lambda: bool(held(lab, pool).get(ip, {}).get("quarantineUntil")),
            timeout=90,
            what="the GC to quarantine the force-deleted pod's address",
        )
        # make the quarantine long, so only the DEL can end it within this test
        lab.kubectl(
            "patch",
            "spideripallocation",
            record["metadata"]["name"],
            "--type=merge",
            "-p",
            json.dumps({"spec": {"quarantineUntil": LATER}}),
        )
        # `kubectl spiderpool who-has`: quarantined, until when and why
        found = spiderpool_json(lab, "who-has", ip)
        assert (found["state"], found["releaseReason"]) == ("quarantined", "pod_deleted"), found
        assert (found["pod"], found["quarantineUntil"]) == ("forced", LATER), found
        found = spiderpool_json(lab, "who-has", other)
        assert (found["state"], found["releaseReason"]) == ("quarantined", "ip_conflict"), found
        before = metric(stack_metrics(lab), "spiderpool_ipam_released_ip_counts_total", "quarantine_ended_by_del")
        body = {
            "containerID": container,
            "ifName": "eth0",
            "netNamespace": "",
            "podNamespace": ns,
            "podName": "forced",
            "podUID": forced["metadata"]["uid"],
        }
        status, reply = unix_request(stack.socket("node2"), "DELETE", "/v1/ipam/ip", body)
        assert status == 200, reply
        assert ip not in held(lab, pool), "the DEL did not end the quarantine"
        assert held(lab, pool)[other]["releaseReason"] == "ip_conflict"
        after = metric(stack_metrics(lab), "spiderpool_ipam_released_ip_counts_total", "quarantine_ended_by_del")
        assert after == before + 1
    finally:
        if stopped:
            lab.up(nodes=2)
        for planted in ("172.18.73.1", "172.18.73.2"):
            if planted != ip:
                lab.kubectl("delete", "spideripallocation", record_name(planted), "--ignore-not-found")
        lab.kubectl("delete", "namespace", ns, "--wait=false")
    wait_no_records(lab, ns, timeout=120)
    procs.wait_for(lambda: not held(lab, pool), timeout=60, what=f"{pool} to hold nothing")
    lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")


def test_zombie_on_not_ready_node_releases_sooner_when_chosen(stack: Agents, controllers: Controllers) -> None:
    """``ipam.gc.statelessPod.zombieOnNotReadyNode: true``: a deleted pod on a node whose kubelet
    stopped loses its address once the node is NotReady and the pod's grace period is over, without
    waiting for the node to be lost (here 10 minutes away), and an event on the pod says so."""
    lab = stack.lab
    args = [a for a in CONTROLLER_ARGS if not a.startswith("--gc-stale-lease")] + ["--gc-stale-lease=600"]
    chosen = {
        "ipam": {"gc": {"statelessPod": {"zombieOnNotReadyNode": True}}},
        "spiderpoolController": {"extraArgs": args},
    }
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.72.1-172.18.72.3"]))
    lab.kubectl("create", "namespace", NS)
    stopped = False
    try:
        helm_install(lab, chosen)
        controllers.wait_all()
        body = json.loads(pod("zombie", "node2"))
        body["spec"]["terminationGracePeriodSeconds"] = 1
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
        (zombie,) = wait_running(lab, NS, "app=zombie", 1)
        ip = zombie["status"]["podIP"]
        lab.stop_process("kubelet/node2")
        stopped = True
        lab.kubectl("delete", "pod", "-n", NS, "zombie", "--wait=false")
        procs.wait_for(
            lambda: ip not in held(lab),
            timeout=180,
            what=f"{ip} released once node2 is NotReady",
            detail=lambda: json.dumps([held(lab), get_json(lab, "nodes", "node2")["status"]["conditions"]]),
        )
        (event,) = event_messages(lab, NS, name="zombie", reason="IPReleasedNodeLost")
        assert f"IP {ip} of interface eth0 (pool {POOL}) released: its node node2 is NotReady" in event, event
        assert "zombieOnNotReadyNode" in event
    finally:
        if stopped:
            lab.up(nodes=2)
        helm_install(lab)
        controllers.wait_all()
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_no_records(lab, NS, timeout=120)
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s")
