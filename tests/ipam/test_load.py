"""1,000 concurrent requests on one agent's socket (100 pods with ten NICs each, every NIC's ADD at
once, as a runtime bringing up a node full of multi-NIC pods would): none is dropped, every pod
gets ten distinct addresses, the agent's memory stays bounded, and all of it goes back with 1,000
concurrent DELs. The latencies are printed; docs/reliability.md has them (bench/agent_load.py
measures them against a baseline)."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, pool_manifest
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents, free_port, unix_request

NODE = "ghost"  # a Node object with no kubelet: the test plays the runtime, calling the agent directly


def _start_agent(lab: Lab, sock: Path) -> None:
    lab.start_process(
        f"spiderpool-agent/{NODE}",
        [
            sys.executable,
            "-m",
            "spiderpool",
            "agent",
            f"--kubeconfig={lab.kubeconfig}",
            f"--node-name={NODE}",
            f"--socket={sock}",
            f"--cni-bin-dir={sock.parent / 'bin'}",
            "--metrics-bind=127.0.0.1",
            f"--metrics-port={free_port()}",
        ],
    )
    procs.wait_for(
        lambda: unix_request(str(sock), "GET", "/v1/ipam/healthy")[0] == 200,
        timeout=60,
        what="ghost agent healthy",
        detail=lambda: procs.tail(lab.logs / f"spiderpool-agent-{NODE}.log"),
    )


PODS, NICS = 100, 10
NS = "load"
#: far above what the agent needs (about 100 MiB here): a leak or an unbounded queue would pass it
RSS_BOUND_MIB = 512


def _force_delete_pods(lab: Lab) -> None:
    """Every pod of the namespace gone at once (no kubelet runs them to end them gracefully)."""
    options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
    lab.api("DELETE", f"/api/v1/namespaces/{NS}/pods", options)
    procs.wait_for(lambda: not get_json(lab, "pods", "-n", NS)["items"], timeout=60, what="the load pods gone")


def _rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_an_agent_holds_a_thousand_concurrent_requests(stack: Agents, tmp_path: Path) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-load", "172.18.0.0/16", ["172.18.84.1-172.18.88.250"]))
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(node))
    lab.kubectl("create", "namespace", NS)
    ann = {"ipam.spidernet.io/ippool": '{"ipv4": ["p-load"]}'}
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i:03d}", "namespace": NS, "annotations": ann},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
        for i in range(PODS)
    ]
    with ThreadPoolExecutor(max_workers=16) as pool:
        made = list(pool.map(lambda d: lab.api("POST", f"/api/v1/namespaces/{NS}/pods", d), docs))
    assert {code for code, _ in made} == {201}, made[:3]
    pods = [obj for _, obj in made]
    sock = tmp_path / "agent.sock"
    _start_agent(lab, sock)
    pid = int(lab.state()["procs"][f"spiderpool-agent/{NODE}"])
    start = threading.Barrier(PODS * NICS)

    def call(method: str, pod: dict[str, Any], nic: int) -> tuple[int, float, Any]:
        meta = pod["metadata"]
        body = {
            "containerID": f"ctr-{meta['uid']}",
            "ifName": "eth0" if nic == 0 else f"net{nic}",
            "netNamespace": "/run/netns/none",
            "podNamespace": NS,
            "podName": meta["name"],
            "podUID": meta["uid"],
        }
        start.wait()
        began = time.monotonic()
        status, reply = unix_request(str(sock), method, "/v1/ipam/ip", body, timeout=300)
        return status, time.monotonic() - began, reply

    try:
        rss_before, _ = _rss_mib(pid)
        jobs = [(p, n) for p in pods for n in range(NICS)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            added = list(pool.map(lambda j: call("POST", *j), jobs))
        rss_after, rss_peak = _rss_mib(pid)
        failed = [(s, r) for s, _, r in added if s != 200]
        assert not failed, f"{len(failed)} of {len(jobs)} dropped or refused, e.g. {failed[:3]}"
        held = [r["spec"] for r in records(lab) if r["spec"]["namespace"] == NS]
        assert len(held) == PODS * NICS
        assert len({h["ip"] for h in held}) == PODS * NICS
        assert set(Counter(h["podUID"] for h in held).values()) == {NICS}
        assert rss_peak < RSS_BOUND_MIB, f"the agent peaked at {rss_peak:.0f} MiB"
        took = sorted(t for _, t, _ in added)
        p50, p99 = statistics.median(took), took[int(len(took) * 0.99) - 1]
        # the pods go (no kubelet runs them: force), then the runtime's DELs come, all at once
        _force_delete_pods(lab)
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            start.reset()
            released = list(pool.map(lambda j: call("DELETE", *j), jobs))
        assert [s for s, _, _ in released if s != 200] == []
        # (what a DEL did not free, GC had quarantined first: it saw the pods go; gone after the quarantine)
        freed = sum(len(r.get("released") or []) for _, _, r in released)
        print(
            f"{len(jobs)} concurrent ADDs: all answered, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
            f" slowest {took[-1]:.1f} s; agent RSS {rss_before:.0f} MiB before, {rss_after:.0f} after,"
            f" peak {rss_peak:.0f}; {len(released)} concurrent DELs all answered, {freed} addresses freed by them"
        )
    finally:
        _force_delete_pods(lab)
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        for spec in [r["spec"] for r in records(lab) if r["spec"]["namespace"] == NS]:  # an interrupted run's
            body = {"containerID": spec.get("containerID") or "x", "ifName": spec["interface"]}
            unix_request(str(sock), "DELETE", "/v1/ipam/ip", {**body, "podUID": spec["podUID"]})
        lab.stop_process(f"spiderpool-agent/{NODE}")
        lab.kubectl("delete", "node", NODE)
    wait_no_records(lab, NS)
    lab.kubectl("delete", "spiderippool", "p-load", "--wait=true", "--timeout=60s")
