"""The faults of the matrix: each is injected into a running storm (``inject``), undone the way the
world undoes it (``restore``: systemd restarts a killed apiserver, a node boots again, a cable is
plugged back; for a SIGKILLed pod the kubelet restarts it by itself), and may check or note what
it alone can see once the storm has converged (``after_converged``).

Nothing here helps the product recover: no pod is restarted by hand, no record touched."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spiderpool_lab import procs, topology
from spiderpool_lab.cluster import Lab
from tests import stack
from tests.faults.storm import Row
from tests.stack import Agents, Controllers

#: the node that loses things (node1 keeps the control plane's friends company)
VICTIM = "node2"
#: how long a lost node stays away and a pulled cable stays out (the issue's figure)
OUTAGE = 60.0
#: how long a killed control-plane process or node daemon stays down before systemd restarts it
RESTART_AFTER = 5.0


@dataclass
class Context:
    lab: Lab
    controllers: Controllers
    agents: Agents
    namespace: str


class Fault:
    name = ""
    what = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def inject(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        """Undo what the world undoes; return when that is done (not when the cluster has recovered)."""

    def after_converged(self, row: Row) -> None:
        """Extra checks and notes once the storm has converged."""

    def after_storm(self, row: Row) -> None:
        """Extra checks and notes once the storm has ended (its pods gone, its records released)."""

    def cleanup(self) -> None:
        """Put back what the fault changed beyond the storm (always called)."""


def _outage() -> None:
    # (the fault's own duration, not a wait for anything: the storm goes on meanwhile)
    time.sleep(OUTAGE)


class LeaderKilled(Fault):
    name, what = "controller-leader-sigkill", "SIGKILL of the leading controller"

    def inject(self) -> None:
        self.leader = self.ctx.controllers.leader()
        self.ctx.controllers.stop(self.leader, kill=True)

    def after_converged(self, row: Row) -> None:
        row.notes["leader_after"] = self.ctx.controllers.leader()


class BothControllersKilled(Fault):
    name, what = "controllers-both-sigkill", "SIGKILL of both controllers"

    def inject(self) -> None:
        for name in self.ctx.controllers.names():
            self.ctx.controllers.stop(name, kill=True)


class OneAgentKilled(Fault):
    name, what = "agent-one-sigkill", f"SIGKILL of the agent on {VICTIM}"

    def inject(self) -> None:
        self.ctx.agents.stop(VICTIM, kill=True)


class AllAgentsKilled(Fault):
    name, what = "agents-all-sigkill", "SIGKILL of every agent"

    def inject(self) -> None:
        for node in self.ctx.lab.nodes():
            self.ctx.agents.stop(node.name, kill=True)


class ProcessKilled(Fault):
    """SIGKILL of a lab process; systemd starts it again ``RESTART_AFTER`` later."""

    key = ""

    def inject(self) -> None:
        self.ctx.lab.stop_process(self.key, kill=True)

    def restore(self) -> None:
        time.sleep(RESTART_AFTER)  # (systemd's RestartSec: part of the fault, not a wait for anything)
        self.ctx.lab.heal()


class ApiserverKilled(ProcessKilled):
    name, what, key = "apiserver-sigkill", "SIGKILL of kube-apiserver, restarted 5 s later", "kube-apiserver"


class EtcdKilled(ProcessKilled):
    name, what, key = "etcd-sigkill", "SIGKILL of etcd, restarted 5 s later", "etcd"


class KubeletKilled(ProcessKilled):
    name, what, key = "kubelet-sigkill", f"SIGKILL of the kubelet on {VICTIM}, restarted 5 s later", f"kubelet/{VICTIM}"


class ContainerdKilled(ProcessKilled):
    name, what = "containerd-sigkill", f"SIGKILL of containerd on {VICTIM}, restarted 5 s later"
    key = f"containerd/{VICTIM}"


class NodeLost(Fault):
    name, what = "node-lost", f"{VICTIM} lost: every process killed, its pods force-deleted, back after 60 s"

    def inject(self) -> None:
        self.ctx.lab.crash_node(VICTIM)
        # what an admin (or a node-lifecycle tool) does for a node that is gone: force-delete its pods
        pods = self.ctx.lab.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{VICTIM}")[1]["items"]
        for pod in pods:
            meta = pod["metadata"]
            self.ctx.lab.api(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
            )
        self.force_deleted = len(pods)

    def restore(self) -> None:
        _outage()
        self.ctx.lab.heal()

    def after_converged(self, row: Row) -> None:
        row.notes["force_deleted_pods"] = self.force_deleted


class NodePartitioned(Fault):
    name, what = "node-partitioned", f"{VICTIM}'s LAN links down for 60 s, then up"

    def inject(self) -> None:
        topology.set_node_cables(self.ctx.lab.prefix, VICTIM, up=False)

    def restore(self) -> None:
        try:
            _outage()
        finally:
            topology.set_node_cables(self.ctx.lab.prefix, VICTIM, up=True)


class PodForceDeletedMidAdd(Fault):
    """Pods force-deleted while the runtime sets them up: every pod that is scheduled but not yet
    Running when it is seen, five in all, deleted with grace 0 (the ADD may be before, during or
    after its allocation; the note says how many already held a record)."""

    name, what = "pod-force-deleted-mid-add", "5 pods force-deleted while their sandbox is being set up"
    count = 5

    def inject(self) -> None:
        self.deleted: list[str] = []
        self.held = 0
        lab, ns = self.ctx.lab, self.ctx.namespace

        def catch() -> bool:
            """Force-delete the pods being set up now; done when five were."""
            pods = lab.api("GET", f"/api/v1/namespaces/{ns}/pods")[1]["items"]
            records = lab.api("GET", "/apis/spiderpool.spidernet.io/v2beta1/spideripallocations")[1]["items"]
            holders = {r["spec"]["podUID"] for r in records}
            for pod in pods:
                meta = pod["metadata"]
                creating = pod["spec"].get("nodeName") and not pod["status"].get("podIP")
                if len(self.deleted) < self.count and creating and not meta.get("deletionTimestamp"):
                    self.held += meta["uid"] in holders
                    lab.api(
                        "DELETE",
                        f"/api/v1/namespaces/{ns}/pods/{meta['name']}",
                        {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
                    )
                    self.deleted.append(meta["name"])
            return len(self.deleted) >= self.count

        # (the storm is a third up: the Deployment's replacements keep pods in flight to catch)
        procs.wait_for(catch, timeout=120, what=f"{self.count} pods caught while being set up", interval=0.1)

    def after_converged(self, row: Row) -> None:
        row.notes["force_deleted"] = len(self.deleted)
        row.notes["already_holding_a_record"] = self.held


class PluginRemoved(Fault):
    """upstream's G00003: the ``spiderpool`` plugin deleted from a node's CNI bin dir. Every ADD and
    DEL there fails until the agent notices and installs it again (within its check interval)."""

    name, what = "plugin-binary-removed", f"the spiderpool plugin deleted from {VICTIM}'s /opt/cni/bin"

    def inject(self) -> None:
        path = self.ctx.lab.node(VICTIM).cni_bin_dir / "spiderpool"
        os.unlink(path)
        self.removed_at = time.monotonic()

    def restore(self) -> None:
        path = self.ctx.lab.node(VICTIM).cni_bin_dir / "spiderpool"
        procs.wait_for(lambda: os.access(path, os.X_OK), timeout=60, what="the agent to put the plugin back")
        self.back_after = time.monotonic() - self.removed_at

    def after_converged(self, row: Row) -> None:
        row.notes["plugin_back_after_s"] = round(self.back_after, 1)


#: the FlowSchema and priority level that throttle spiderpool-agent (APF, limits set low)
APF = [
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": "faults-agent-throttle"},
        "spec": {
            "type": "Limited",
            "limited": {
                # (a "jail": no seat of its own, none borrowed; every request of the agents is refused)
                "nominalConcurrencyShares": 0,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    },
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": "faults-agent-throttle"},
        "spec": {
            "priorityLevelConfiguration": {"name": "faults-agent-throttle"},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": "spiderpool-agent", "namespace": "kube-system"},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                }
            ],
        },
    },
]


class ApiserverThrottles(Fault):
    """The apiserver answers the agents 429 (API Priority and Fairness: their requests in a priority
    level with no seat of its own and none to borrow, so one at a time at most, the others rejected
    at once) from mid-storm to its end: the ADDs and the DELs of the scale-down alike. The agents
    back off and honour Retry-After; allocations slow down and none fails for good."""

    name, what = "apiserver-429", "APF: the agents' requests one at a time, the rest answered 429, to the storm's end"

    def _retries(self) -> float:
        total = 0.0
        for node in self.ctx.lab.nodes():
            for line in self.ctx.agents.scrape(node.name).splitlines():
                if line.startswith('spiderpool_k8s_client_retries_total{reason="429"}'):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def inject(self) -> None:
        self.before = self._retries()
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": APF})
        self.ctx.lab.kubectl("apply", "-f", "-", input_text=manifest)
        # The apiserver takes the new FlowSchema up asynchronously: until it classifies the agents'
        # requests, they pass (a storm that ends meanwhile would then see no 429 at all)
        lab = self.ctx.lab
        _, schema = lab.api("GET", "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/faults-agent-throttle")
        agent = {"Impersonate-User": "system:serviceaccount:kube-system:spiderpool-agent"}

        def classified() -> bool:
            _, _, headers = lab.api_full("GET", "/api/v1/namespaces/kube-system", headers=agent)
            return headers.get("x-kubernetes-pf-flowschema-uid") == schema["metadata"]["uid"]

        procs.wait_for(classified, timeout=30, what="the apiserver to classify the agents' requests as throttled")

    def after_storm(self, row: Row) -> None:
        row.notes["agent_429_retries"] = int(self._retries() - self.before)
        assert row.notes["agent_429_retries"] > 0, "the agents were never answered 429"

    def cleanup(self) -> None:
        self.ctx.lab.kubectl(
            "delete", "flowschema,prioritylevelconfiguration", "faults-agent-throttle", "--ignore-not-found"
        )


def faketime_values(lab_file: str) -> dict[str, Any]:
    """Chart values that preload the machine's libfaketime into the agents, switched on per node by
    the file ``lab_file`` in its socket folder (absent: the real clock)."""
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not libs:
        raise AssertionError("libfaketime is missing: install the Debian package faketime (lab/install-deps.sh)")
    return {
        "spiderpoolAgent": {
            "extraEnv": [
                {"name": "LD_PRELOAD", "value": "/opt/faketime/libfaketime.so.1"},
                {"name": "FAKETIME_TIMESTAMP_FILE", "value": f"/var/run/spidernet/{lab_file}"},
            ],
            "extraVolumes": [{"name": "faketime", "hostPath": {"path": str(libs[0].parent), "type": "Directory"}}],
            "extraVolumeMounts": [{"name": "faketime", "mountPath": "/opt/faketime", "readOnly": True}],
        }
    }


class AgentClockSkew(Fault):
    """The agents roll (a DaemonSet update) and the one on the victim node comes back with its clock
    5 minutes behind (libfaketime, switched on by a file in that node's socket folder, read as the
    process starts): what it writes that GC judges is on the apiserver's clock all the same."""

    name, what = "agent-clock-skew", f"the agents rolled, {VICTIM}'s with its clock 5 minutes behind"
    skew = "-5m"

    def _file(self) -> Path:
        return self.ctx.lab.node(VICTIM).dir / "run" / "spidernet" / "faketime"

    def inject(self) -> None:
        self._file().write_text(self.skew + "\n")
        stack.helm_install(self.ctx.lab, faketime_values("faketime"))

    def after_converged(self, row: Row) -> None:
        offset = 0.0
        for line in self.ctx.agents.scrape(VICTIM).splitlines():
            if line.startswith("spiderpool_k8s_client_clock_offset_seconds "):
                offset = float(line.rsplit(" ", 1)[1])
        row.notes["agent_clock_offset_s"] = round(offset)
        assert 290 <= offset <= 310, f"the agent on {VICTIM} runs {offset:.0f} s off the apiserver, not 300 s"

    def cleanup(self) -> None:
        self._file().unlink(missing_ok=True)
        stack.install(self.ctx.lab)


FAULTS: list[type[Fault]] = [
    LeaderKilled,
    BothControllersKilled,
    OneAgentKilled,
    AllAgentsKilled,
    ApiserverKilled,
    EtcdKilled,
    KubeletKilled,
    ContainerdKilled,
    NodeLost,
    NodePartitioned,
    PodForceDeletedMidAdd,
    PluginRemoved,
    ApiserverThrottles,
    AgentClockSkew,
]
