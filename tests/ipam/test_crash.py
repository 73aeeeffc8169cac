"""SIGKILL an agent in the middle of 200 concurrent allocations: after a restart and the runtime's
retries, every pod holds exactly one IP, no IP is held twice, and once the pods are gone none is held."""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, pool_manifest
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents, free_port, unix_request

PODS = 200
NS = "crash"
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


def _req(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "containerID": f"ctr-{meta['uid']}",
        "ifName": "eth0",
        "netNamespace": "/run/netns/none",
        "podNamespace": NS,
        "podName": meta["name"],
        "podUID": meta["uid"],
    }


def test_sigkill_mid_storm_leaves_no_duplicate_and_no_leak(stack: Agents, tmp_path: Path) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-crash", "172.18.0.0/16", ["172.18.80.1-172.18.81.250"]))
    lab.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}
        ),
    )
    lab.kubectl("create", "namespace", NS)
    ann = {"ipam.spidernet.io/ippool": '{"ipv4": ["p-crash"]}'}
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i:03d}", "namespace": NS, "annotations": ann},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
        for i in range(PODS)
    ]
    lab.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    pods = get_json(lab, "pods", "-n", NS)["items"]
    assert len(pods) == PODS
    sock = tmp_path / "agent.sock"
    _start_agent(lab, sock)

    done: list[str] = []
    killed = threading.Event()

    def allocate(pod: dict[str, Any]) -> tuple[str, int]:
        status, _ = unix_request(str(sock), "POST", "/v1/ipam/ip", _req(pod), timeout=60)
        if status == 200:
            done.append(pod["metadata"]["name"])
            if len(done) >= PODS // 4 and not killed.is_set():
                killed.set()
                lab.stop_process(f"spiderpool-agent/{NODE}", kill=True)  # SIGKILL, mid-storm
        return pod["metadata"]["name"], status

    try:
        with ThreadPoolExecutor(max_workers=PODS) as pool:
            results = dict(pool.map(allocate, pods))
        assert killed.is_set()
        failed = [p for p in pods if results[p["metadata"]["name"]] != 200]
        assert failed, "the kill interrupted nothing"
        print(f"SIGKILL after {len(done)} replies; {len(failed)} of {PODS} allocations interrupted")

        _start_agent(lab, sock)
        # The runtime's reaction to a failed ADD: DEL, then ADD again.
        for pod in failed:
            assert unix_request(str(sock), "DELETE", "/v1/ipam/ip", _req(pod))[0] == 200
            status, body = unix_request(str(sock), "POST", "/v1/ipam/ip", _req(pod))
            assert status == 200, body

        uids = {p["metadata"]["uid"] for p in pods}
        held = [r["spec"] for r in records(lab) if r["spec"]["podUID"] in uids]
        per_pod = Counter(h["pod"] for h in held)
        assert len(held) == PODS, f"{len(held)} records for {PODS} pods"
        assert set(per_pod.values()) == {1}, [p for p, n in per_pod.items() if n != 1]
        assert len({h["ip"] for h in held}) == PODS
        # Every pod's endpoint names the very IP its record holds (endpoints are written just after replying).
        want = {h["pod"]: f"{h['ip']}/16" for h in held}

        def endpoints_agree() -> bool:
            items = get_json(lab, "spiderendpoints", "-n", NS)["items"]
            have = {e["metadata"]["name"]: e["status"]["current"]["ips"][0].get("ipv4") for e in items}
            return have == want

        procs.wait_for(endpoints_agree, timeout=60, what="every endpoint to match its pod's record")
    finally:
        # The pods go; the runtime's DEL for each releases everything.
        lab.kubectl("delete", "pods", "--all", "-n", NS, "--grace-period=0", "--force", "--wait=true")
        if not lab.process_alive(f"spiderpool-agent/{NODE}"):
            _start_agent(lab, sock)
        for pod in pods:
            unix_request(str(sock), "DELETE", "/v1/ipam/ip", _req(pod))
        lab.stop_process(f"spiderpool-agent/{NODE}")
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        lab.kubectl("delete", "node", NODE)
    wait_no_records(lab, NS)
    lab.kubectl("delete", "spiderippool", "p-crash", "--wait=true", "--timeout=60s")
