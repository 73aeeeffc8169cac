"""The storm the faults are injected into, and the checker that watches it.

A storm: a Deployment scales 0 -> N while a DaemonSet is created (a pod per node), both taking their
IPs from one pool sized to the pods plus a few; once it has converged it scales back to 0 and the
DaemonSet is deleted. A fault is injected once a quarter of the pods hold their address. The checker samples every
second, from a thread of its own, until the storm has ended and its records are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spiderpool.api.constants import LABEL_RECORD_POOL
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab, LabError
from tests.faults import invariants as inv
from tests.stack import LAB_NODES_ONLY

#: Deployment replicas at the storm's peak (the CI size; the DaemonSet adds one pod per node).
#: STORM_REPLICAS=60 runs the full size (the pool is sized from POOL_FIRST: replicas + nodes + spares).
REPLICAS = int(os.environ.get("STORM_REPLICAS", "12"))
SPARE_IPS = 4
POOL = "p-faults"
POOL_FIRST = "172.18.60.1"
NETWORK = "172.18.0.0/16"
APP = "storm"
#: the storm's pods, Deployment and DaemonSet alike (their IPs come from POOL)
TEMPLATE: dict[str, Any] = {
    "metadata": {
        "labels": {"storm": "1"},
        "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})},
    },
    "spec": {
        "terminationGracePeriodSeconds": 1,
        "tolerations": [{"operator": "Exists"}],
        "affinity": LAB_NODES_ONLY,
        "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
    },
}
#: longest wait for anything the storm waits on, generous: a fault may stall the cluster a while
DEADLINE = 300
#: how long records of gone pods may take to go: GC's quarantine (10 s in the tests), its scan (5 s),
#: the minimum record age (15 s), with room for a leader that just changed
GC_BOUND = 90


def deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": APP}},
            "template": {**TEMPLATE, "metadata": {**TEMPLATE["metadata"], "labels": {"app": APP, "storm": "1"}}},
        },
    }


def daemonset(namespace: str) -> dict[str, Any]:
    name = f"{APP}-ds"
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {**TEMPLATE, "metadata": {**TEMPLATE["metadata"], "labels": {"app": name, "storm": "1"}}},
        },
    }


class Checker:
    """Samples the storm every second; keeps the problems seen twice in a row, and when each was."""

    def __init__(self, lab: Lab, namespace: str, nodes: list[str]) -> None:
        self.lab, self.namespace, self.nodes = lab, namespace, nodes
        self.samples = 0
        self.unreadable = 0  # samples the API could not give (an apiserver or etcd down)
        self.problems: dict[str, float] = {}
        self.max_orphans = 0
        self.last: inv.Sample | None = None
        #: what the checker saw around each problem when it first counted it (for the row's report)
        self.diagnostics: list[dict[str, Any]] = []
        self._previous: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storm-checker", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.error is not None:
            raise AssertionError(f"the checker failed: {self.error!r}")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.check()
                self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def read_records(self) -> list[dict[str, Any]] | None:
        """The storm's records (None: the API could not say)."""
        selector = f"labelSelector={LABEL_RECORD_POOL}%3D{POOL}"
        try:
            code, records = self.lab.api("GET", f"/apis/spiderpool.spidernet.io/v2beta1/spideripallocations?{selector}")
        except (OSError, TimeoutError):
            return None
        if code != 200:
            return None
        return [r for r in records["items"] if r["spec"].get("namespace") == self.namespace]

    def read(self) -> inv.Sample | None:
        try:
            code, pods = self.lab.api("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        except (OSError, TimeoutError):
            return None
        records = self.read_records()
        if code != 200 or records is None:
            return None
        return inv.Sample(time.time(), pods["items"], records, {n: self._netns(n) for n in self.nodes})

    def _netns(self, node: str) -> dict[str, set[str]] | None:
        try:
            argv = [*self.lab.in_node(node), "ip", "-all", "netns", "exec", "ip", "-o", "-4", "addr", "show"]
        except LabError:
            return None  # the node is down: nothing runs there
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return inv.parse_netns_addresses(out.stdout)

    def _diagnose(self, sample: inv.Sample, problem: str) -> dict[str, Any]:
        """The pods, records and sandboxes that bear on a problem, read at once (the evidence a fix
        needs: the state is gone by the time a test fails)."""
        ips = set(re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", problem))
        out: dict[str, Any] = {"problem": problem, "at": time.strftime("%H:%M:%S", time.gmtime(sample.at))}
        out["pods"] = [
            {
                "name": p["metadata"]["name"],
                "uid": p["metadata"]["uid"],
                "node": p["spec"].get("nodeName"),
                "phase": p["status"].get("phase"),
                "ips": sorted(inv.pod_ips(p)),
                "deleting": bool(p["metadata"].get("deletionTimestamp")),
            }
            for p in sample.pods
            if inv.pod_ips(p) & ips or any(u in problem for u in (p["metadata"]["uid"], p["metadata"]["name"]))
        ]
        out["records"] = [r["spec"] for r in sample.records if r["spec"]["ip"] in ips or r["spec"]["podUID"] in problem]
        for node in self.nodes:
            try:
                run = self.lab.in_node(node)
            except LabError:
                continue
            listing = subprocess.run(
                [
                    *run,
                    "sh",
                    "-c",
                    'for n in $(ls /run/netns); do echo "$n $(ip -n $n -o -4 addr show | '
                    "grep -o 'inet [0-9.]*' | tr '\\n' ' ')\"; done",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            out[f"netns {node}"] = [line for line in listing.splitlines() if any(ip in line for ip in ips)]
        for app in ("spiderpool-agent", "spiderpool-controller"):
            selector = f"app.kubernetes.io/name={app}"
            logs = self.lab.kubectl("logs", "-n", "kube-system", "-l", selector, "--tail=400", "--prefix", check=False)
            out[f"{app} log"] = [line for line in logs.stdout.splitlines() if any(ip in line for ip in ips)][-20:]
        return out

    def check(self) -> inv.Sample | None:
        sample = self.read()
        if sample is None:
            self.unreadable += 1
            return None
        self.samples += 1
        found = inv.problems(sample, NETWORK)
        for problem in found & self._previous:
            if problem not in self.problems:
                self.problems[problem] = sample.at
                self.diagnostics.append(self._diagnose(sample, problem))
        self._previous = found
        self.max_orphans = max(self.max_orphans, len(inv.orphans(sample)))
        self.last = sample
        return sample


@dataclass
class Row:
    """One line of the matrix."""

    fault: str
    injected_at_running: int = 0
    converge_s: float = 0.0
    #: from the injection (for a fault that lasts, the fault's own duration is in it)
    total_s: float = 0.0
    failed_adds: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    leaks: int = 0
    leak_wait_s: float = 0.0
    human: str = "no"
    samples: int = 0
    unreadable: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Storm:
    def __init__(self, lab: Lab, namespace: str, replicas: int = REPLICAS) -> None:
        self.lab, self.namespace, self.replicas = lab, namespace, replicas
        self.nodes = [n.name for n in lab.nodes()]
        self.want = replicas + len(self.nodes)
        self.checker = Checker(lab, namespace, self.nodes)

    def _kubectl(self, *args: str, input_text: str | None = None) -> None:
        """kubectl, retried while the API is away (a fault may be under way)."""
        last = ""

        def done() -> bool:
            nonlocal last
            out = self.lab.kubectl(*args, input_text=input_text, check=False)
            last = out.stdout + out.stderr
            return out.returncode == 0

        procs.wait_for(done, timeout=DEADLINE, what=f"kubectl {' '.join(args)}", interval=1, detail=lambda: last)

    def _wait(self, condition: Callable[[inv.Sample], bool], what: str, timeout: float = DEADLINE) -> None:
        def ok() -> bool:
            sample = self.checker.last
            return sample is not None and condition(sample)

        procs.wait_for(ok, timeout=timeout, what=what, interval=0.5, detail=self._describe)

    def _endpoints_agree(self) -> bool:
        code, pods = self.lab.api("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        ecode, eps = self.lab.api(
            "GET", f"/apis/spiderpool.spidernet.io/v2beta1/namespaces/{self.namespace}/spiderendpoints"
        )
        if code != 200 or ecode != 200:
            return False
        have = {
            e["metadata"]["name"]: [
                str(n.get("ipv4", "")).split("/")[0] for n in e.get("status", {}).get("current", {}).get("ips") or []
            ]
            for e in eps["items"]
        }
        return all(have.get(p["metadata"]["name"]) == sorted(inv.pod_ips(p)) for p in pods["items"] if inv.running(p))

    def _records(self) -> list[dict[str, Any]]:
        found = self.checker.read_records()
        return found if found is not None else []

    def _describe(self) -> str:
        out = self.lab.kubectl("get", "pods,events", "-n", self.namespace, "-o", "wide", check=False)
        return out.stdout[-6000:] + "\nproblems: " + json.dumps(self.checker.problems, indent=1)

    def run(self, fault: Any) -> Row:
        row = Row(fault.name)
        self._kubectl("create", "namespace", self.namespace)
        self._kubectl("apply", "-f", "-", input_text=json.dumps(deployment(self.namespace)))
        self.checker.start()
        try:
            self._kubectl("scale", "-n", self.namespace, f"deployment/{APP}", f"--replicas={self.replicas}")
            self._kubectl("apply", "-f", "-", input_text=json.dumps(daemonset(self.namespace)))
            # mid-storm: once a quarter of the pods hold their address (the records are made by the
            # ADDs themselves; the pods' Running status lags them by seconds), most ADDs still to come
            trigger = max(1, self.want // 4)
            procs.wait_for(
                lambda: len(self._records()) >= trigger,
                timeout=DEADLINE,
                what=f"{trigger} of the storm's addresses allocated",
                interval=0.1,
                detail=self._describe,
            )
            row.notes["allocated_at_injection"] = len(self._records())
            last = self.checker.last
            row.injected_at_running = sum(inv.running(p) for p in last.pods) if last else 0
            injected = time.monotonic()
            fault.inject()
            fault.restore()
            restored = time.monotonic()
            self._wait(lambda s: inv.converged(s, self.want), f"{self.want} pods Running and recorded")
            row.converge_s = round(time.monotonic() - restored, 1)
            row.total_s = round(time.monotonic() - injected, 1)
            # the SpiderEndpoints (written just after each reply, re-derived by a restarted agent) agree
            procs.wait_for(
                self._endpoints_agree,
                timeout=60,
                what="every pod's SpiderEndpoint to name its IP",
                detail=lambda: self.lab.kubectl(
                    "get", "spiderendpoints,pods", "-n", self.namespace, "-o", "wide", check=False
                ).stdout[-6000:],
            )
            fault.after_converged(row)
            self._kubectl("scale", "-n", self.namespace, f"deployment/{APP}", "--replicas=0")
            self._kubectl("delete", "-n", self.namespace, f"daemonset/{APP}-ds", "--wait=false")
            self._wait(lambda s: not s.pods, "every storm pod gone")
            gone = time.monotonic()
            with contextlib.suppress(procs.WaitTimeout):  # (what is left is counted as leaks below)
                self._wait(lambda s: not s.records, "the storm's records released", timeout=GC_BOUND)
            row.leak_wait_s = round(time.monotonic() - gone, 1)
            fault.after_storm(row)
        finally:
            self.checker.stop()
        last = self.checker.last
        row.leaks = len(last.records) if last is not None else -1
        row.problems = sorted(self.checker.problems)
        row.duplicates = len(inv.duplicates(set(self.checker.problems)))
        row.samples, row.unreadable = self.checker.samples, self.checker.unreadable
        row.notes["max_orphan_records"] = self.checker.max_orphans
        if self.checker.diagnostics:
            row.notes["diagnostics"] = self.checker.diagnostics
        events = self.lab.kubectl("get", "events", "-n", self.namespace, "-o", "json", check=False).stdout
        items = json.loads(events)["items"] if events.strip() else []
        row.failed_adds = sum(int(e.get("count") or 1) for e in items if e.get("reason") == "FailedCreatePodSandBox")
        self.lab.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        return row
