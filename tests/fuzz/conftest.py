"""Fuzzing through the real components: an agent of its own (a real ``spiderpool-agent`` process
on a node with no kubelet, ``fuzz-node``, in a network namespace of its own on the lab LAN, so no
generated request can touch a real node's or the machine's network), the plugins it installs, the
lab's apiserver and the installed controllers' webhooks.

After the module: the agent is the same process (no restart), its log holds no traceback and no
request it failed on a bug, and no record is left that a rejected request made."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from spiderpool.agent.install import install_plugins
from spiderpool.cni import relay
from spiderpool_lab import procs, topology
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, pool_manifest
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents, free_port, unix_request

NODE = "fuzz-node"
NS = "fuzz"
POOL = "p-fuzz"
#: a namespace on the lab LAN for the agent (the lab removes it with everything else on ``down``)
NETNS_INDEX = 20
#: pods on fuzz-node that hold a pool annotation: requests naming them can succeed
PODS = ("fz-0", "fz-1", "fz-2")

#: hypothesis settings for inputs that cost a process or an API call: reproducible in CI
LAB = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

COUNTS: dict[str, int] = {}


def count(kind: str) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + 1


@dataclass
class FuzzAgent:
    lab: Lab
    socket: Path
    bin_dir: Path
    log: Path
    pid: int
    pods: dict[str, dict[str, Any]]
    #: the plugins installed as the static relay (``bin_dir``: as Python scripts)
    relay_dir: Path
    #: (pod uid, interface) of every ADD that succeeded: the only records allowed to exist
    holders: set[tuple[str, str]] = field(default_factory=set)

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        return unix_request(str(self.socket), method, path, body)

    def raw(self, method: str, path: str, payload: bytes) -> tuple[int, bytes]:
        """A request with any bytes as its body (the plugin's own framing), status and raw reply."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.socket))
            s.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def records(self) -> list[dict[str, Any]]:
        return [r for r in records(self.lab) if r["spec"].get("node") == NODE]

    def leaked(self) -> list[str]:
        """Records of this agent that no successful ADD accounts for."""
        return [
            f"{r['spec']['ip']} {r['spec']['namespace']}/{r['spec']['pod']} {r['spec']['interface']}"
            for r in self.records()
            if (r["spec"]["podUID"], r["spec"]["interface"]) not in self.holders
        ]


def assert_cni_error(reply: object) -> None:
    """A CNI error as the spec words it: an integer code and a message (no bug's words in it)."""
    assert isinstance(reply, dict), reply
    assert isinstance(reply.get("code"), int), reply
    assert isinstance(reply.get("msg"), str), reply
    assert reply["msg"], reply
    assert "internal error" not in reply["msg"], reply
    assert "please report" not in reply["msg"], reply


def _pod(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
    }


@pytest.fixture(scope="package")
def fuzz_agent(agents: Agents, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzAgent]:
    lab = agents.lab
    work = tmp_path_factory.mktemp("fuzz-agent")
    netns_name = topology.ensure_node(lab.prefix, NETNS_INDEX)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(node))
    lab.kubectl("create", "namespace", NS)
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.95.1-172.18.95.80"]))
    choice = json.dumps({"ipv4": [POOL]})
    for name in PODS:
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_pod(name, {"ipam.spidernet.io/ippool": choice})))
    sock = work / "agent.sock"
    key = f"spiderpool-agent/{NODE}"
    argv = [
        sys.executable,
        "-m",
        "spiderpool",
        "agent",
        f"--kubeconfig={lab.node_kubeconfig}",
        f"--node-name={NODE}",
        f"--socket={sock}",
        f"--cni-bin-dir={work / 'bin'}",
        "--metrics-bind=127.0.0.1",
        f"--metrics-port={free_port()}",
    ]
    log = lab.logs / f"spiderpool-agent-{NODE}.log"
    start = log.stat().st_size if log.exists() else 0  # (the log of an earlier run is appended to)
    pid = lab.start_process(key, argv, netns_name=netns_name)
    procs.wait_for(
        lambda: unix_request(str(sock), "GET", "/v1/ipam/healthy")[0] == 200,
        timeout=60,
        what="the fuzz agent healthy",
        detail=lambda: procs.tail(log),
    )
    pods = {p["metadata"]["name"]: p for p in get_json(lab, "pods", "-n", NS)["items"]}
    # the other installed form, beside the scripts the agent installed: the static relay, which
    # hands each call to this agent (the Python plugin then runs in the agent)
    relay_dir = work / "relay-bin"
    install_plugins(
        relay_dir, python="/nonexistent", socket_path=str(sock), relay=relay.build(work / "spiderpool-relay")
    )
    agent = FuzzAgent(lab, sock, work / "bin", log, pid, pods, relay_dir)
    try:
        yield agent
        assert procs.alive(pid), f"the fuzz agent died:\n{procs.tail(log)}"
        with log.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        assert "Traceback" not in text, procs.tail(log, 60)
        assert "request failed" not in text, procs.tail(log, 60)
        assert not agent.leaked(), agent.leaked()
    finally:
        # (no kubelet runs fuzz-node's pods to confirm a graceful end: they go at once)
        lab.kubectl("delete", "pods", "--all", "-n", NS, "--grace-period=0", "--force", check=False)
        lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s", check=False)
        for r in agent.records():
            body = {"containerID": r["spec"].get("containerID") or "x", "ifName": r["spec"]["interface"]}
            agent.request("DELETE", "/v1/ipam/ip", {**body, "podUID": r["spec"]["podUID"]})
        wait_no_records(lab, NS)
        lab.stop_process(key)
        lab.kubectl("delete", "node", NODE, "--wait=false", check=False)
        lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s", check=False)
        topology.remove_node(lab.prefix, topology.node_name(NETNS_INDEX))
        (lab.logs / "fuzz-counts.json").write_text(json.dumps(COUNTS, sort_keys=True))
        print("fuzzing through the lab, inputs per kind: " + json.dumps(COUNTS, sort_keys=True))
