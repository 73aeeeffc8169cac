"""spiderpool-controller as its Deployment runs it: the walkthrough's SpiderSubnet, leader failover
with webhooks answering throughout (a crashed replica is restarted by the kubelet), deletion
protection, metrics."""

from __future__ import annotations

import json
import threading
import time

from spiderpool_lab import demo, procs
from spiderpool_lab.cluster import Lab
from tests.helpers import allocation_record, delete_walkthrough_subnet, get_json, pool_manifest
from tests.stack import Controllers

# The walkthrough's SpiderSubnet with its indentation fixed.
WALKTHROUGH_SUBNET = demo.SUBNET

#: how long the kubelet and the endpoints take to stop sending requests to a crashed replica
CRASH_NOTICED = 5.0

# Only the validating webhook can reject this one (two pools sharing IPs).
OVERLAP = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderIPPool",
    "metadata": {"name": "failover-b"},
    "spec": {"subnet": "10.120.0.0/16", "ips": ["10.120.0.5"]},
}


def test_walkthrough_subnet_applies_and_lists_counts(controllers: Controllers) -> None:
    lab = controllers.lab
    lab.kubectl("apply", "-f", "-", input_text=WALKTHROUGH_SUBNET)
    try:

        def listed() -> bool:
            out = lab.kubectl("get", "spidersubnet", "subnet-test", "--no-headers").stdout.split()
            return out[:5] == ["subnet-test", "4", "172.18.0.0/16", "0", "10"]

        procs.wait_for(
            listed,
            timeout=30,
            what="subnet-test listed with its counts",
            detail=lambda: lab.kubectl("get", "spidersubnet").stdout,
        )
        header = lab.kubectl("get", "spidersubnet").stdout.splitlines()[0].split()
        assert header == ["NAME", "VERSION", "SUBNET", "ALLOCATED-IP-COUNT", "TOTAL-IP-COUNT", "AGE"]
    finally:
        delete_walkthrough_subnet(lab)


def _dry_run_rejected(lab: Lab) -> tuple[bool, str]:
    out = lab.kubectl("create", "--dry-run=server", "-f", "-", input_text=json.dumps(OVERLAP), check=False)
    return out.returncode != 0 and "already belong to" in out.stderr, out.stdout + out.stderr


def test_leader_failover_and_webhook_answers_throughout(controllers: Controllers) -> None:
    lab = controllers.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("failover-a", "10.120.0.0/16", ["10.120.0.1-10.120.0.9"]))
    procs.wait_for(lambda: _dry_run_rejected(lab)[0], timeout=30, what="webhook sees failover-a")
    leader = controllers.leader()
    standby = controllers.other(leader)

    answers: list[tuple[float, bool, str]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            ok, out = _dry_run_rejected(lab)
            answers.append((time.monotonic(), ok, out))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        dead = controllers.holder()
        killed_at = time.monotonic()
        controllers.stop(leader, kill=True)  # a crash: no Lease release
        # Taken by a live process once the Lease expires: usually the standby, but the kubelet
        # restarts the killed container at once, and that new process (a new identity) may win.
        procs.wait_for(
            lambda: controllers.holder() not in ("", dead),
            timeout=controllers.lease_duration + 10,
            what=f"a live replica ({standby}, or {leader} restarted) to take the Lease from {dead}",
            detail=lambda: controllers.lab.kubectl("get", "lease,pods", "-n", "kube-system", "-o", "wide").stdout,
        )
        took = time.monotonic() - killed_at
        # a few more answers from the new leader alone
        procs.wait_for(
            lambda: sum(1 for t, _, _ in answers if t > killed_at + took) >= 3,
            timeout=30,
            what="answers after the handover",
        )
    finally:
        stop.set()
        prober.join()
        controllers.start(leader)  # the kubelet restarts it: back to two replicas for the other tests
    assert took <= controllers.lease_duration + 2 * 1.0, f"handover took {took:.1f}s"
    during = [a for a in answers if a[0] >= killed_at]
    assert during, "no admission request was made during the failover"
    # The apiserver dials a Service endpoint: until the kubelet has seen the crash and the endpoint
    # is gone (a second or two), a request sent to the dead replica is not answered, and with
    # failurePolicy Ignore it is admitted. Nothing else may go unanswered: not during the Lease
    # handover, not after it.
    missed = [t - killed_at for t, ok, _ in during if not ok]
    print(
        f"handover after SIGKILL: {took:.1f}s; {len(during) - len(missed)} of {len(during)} webhook-only"
        f" admissions answered meanwhile; missed at +{', +'.join(f'{m:.1f}' for m in missed) or '-'}s"
    )
    late = [m for m in missed if m > CRASH_NOTICED]
    assert not late, f"requests unanswered {late}s after the crash (the endpoint should be gone after {CRASH_NOTICED}s)"
    lab.kubectl("delete", "spiderippool", "failover-a", "--wait=true", "--timeout=60s")


def test_pool_with_allocations_stays_terminating_until_released(controllers: Controllers) -> None:
    lab = controllers.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("busy", "10.121.0.0/16", ["10.121.0.1-10.121.0.9"]))
    lab.kubectl("apply", "-f", "-", input_text=allocation_record("10.121.0.3", "busy", pod="web-0", uid="u-9"))
    procs.wait_for(
        lambda: get_json(lab, "spiderippool", "busy").get("status", {}).get("allocatedIPCount") == 1,
        timeout=30,
        what="allocatedIPCount 1",
    )
    lab.kubectl("delete", "spiderippool", "busy", "--wait=false")
    # Held by the finalizer while the IP is allocated (give the controller ample time to misbehave).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        pool = get_json(lab, "spiderippool", "busy")
        assert pool["metadata"].get("deletionTimestamp")
        assert pool["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]
        time.sleep(0.5)  # sampling a state that must hold, not waiting for one
    lab.kubectl("delete", "spideripallocation", "10.121.0.3", "--ignore-not-found")
    procs.wait_for(
        lambda: not lab.kubectl("get", "spiderippool", "busy", "--ignore-not-found", "-o", "name").stdout.strip(),
        timeout=30,
        what="the released pool to be deleted",
    )


def test_metrics_and_health(controllers: Controllers) -> None:
    leader = controllers.leader()
    text = controllers.scrape(leader)
    assert "spiderpool_controller_is_leader 1.0" in text
    assert "spiderpool_controller_admission_requests_total" in text
    other = controllers.other(leader)
    assert "spiderpool_controller_is_leader 0.0" in controllers.scrape(other)


def test_graceful_stop_hands_over_without_waiting_for_expiry(controllers: Controllers) -> None:
    leader = controllers.leader()
    standby = controllers.other(leader)
    started = time.monotonic()
    controllers.stop(leader)  # SIGTERM: the Lease is released on the way out
    try:
        procs.wait_for(
            lambda: controllers.leader() == standby,
            timeout=controllers.lease_duration,
            what=f"{standby} to lead after a graceful stop",
        )
        # A released Lease is taken on the standby's next retry, well before the lease would expire.
        assert time.monotonic() - started < controllers.lease_duration - 2
    finally:
        controllers.start(leader)


def test_subnet_deletion_waits_for_its_pools_and_their_ips(controllers: Controllers) -> None:
    lab = controllers.lab
    lab.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps(
            {
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderSubnet",
                "metadata": {"name": "del-subnet"},
                "spec": {"subnet": "10.122.0.0/16", "ips": ["10.122.0.1-10.122.0.20"]},
            }
        ),
    )
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("del-pool", "10.122.0.0/16", ["10.122.0.1-10.122.0.5"]))
    pool = get_json(lab, "spiderippool", "del-pool")
    assert pool["metadata"]["labels"]["ipam.spidernet.io/owner-spider-subnet"] == "del-subnet"
    lab.kubectl("apply", "-f", "-", input_text=allocation_record("10.122.0.2", "del-pool", pod="x"))
    procs.wait_for(
        lambda: get_json(lab, "spiderippool", "del-pool").get("status", {}).get("allocatedIPCount") == 1,
        timeout=30,
        what="del-pool to count its allocation",
    )
    lab.kubectl("delete", "spidersubnet", "del-subnet", "--wait=false")
    # The controller deletes the subnet's pool; the pool waits for its IP, the subnet for its pool.
    procs.wait_for(
        lambda: bool(get_json(lab, "spiderippool", "del-pool")["metadata"].get("deletionTimestamp")),
        timeout=30,
        what="the owned pool to be deleted with its subnet",
    )
    assert get_json(lab, "spidersubnet", "del-subnet")["metadata"].get("deletionTimestamp")
    lab.kubectl("delete", "spideripallocation", "10.122.0.2", "--ignore-not-found")

    def both_gone() -> bool:
        out = lab.kubectl("get", "spidersubnet/del-subnet", "spiderippool/del-pool", "--ignore-not-found", "-o", "name")
        return not out.stdout.strip()

    procs.wait_for(both_gone, timeout=30, what="subnet and pool to be gone once the IP is released")
