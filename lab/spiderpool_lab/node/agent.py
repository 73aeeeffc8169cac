"""The lab node agent: stands in for the kubelet and the container runtime, nothing else.

It runs inside its node's network namespace and:
- registers the Node (capacity, addresses), keeps its Lease and Ready condition fresh;
- for each pod bound to the node, creates a network namespace, runs the node's CNI chain exactly
  as a runtime does, starts an HTTP responder for the declared containerPorts, runs readiness
  probes from the node namespace, and reports phase, IPs and readiness in the pod status;
- when a pod goes away, runs CNI DEL, stops the responder, removes the namespace and finishes
  the pod's graceful deletion.

Sandboxes are recorded on disk, so a restarted agent adopts the running ones and tears down
those whose pod is gone, as a kubelet does after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node, Pod
from lightkube.types import PatchType

from spiderpool_lab import netns, procs
from spiderpool_lab.node import cni
from spiderpool_lab.node.probes import Probe, probe_from_spec

log = logging.getLogger("spiderpool_lab.node")

LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
RESYNC_SECONDS = 15
POD_IFNAME = "eth0"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _m(obj: Pod) -> ObjectMeta:
    """The metadata of an object read from the API (always present there)."""
    assert obj.metadata is not None
    return obj.metadata


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Sandbox:
    """A pod's network sandbox, persisted as ``<sandboxes_dir>/<pod uid>.json``."""

    uid: str
    namespace: str
    name: str
    container_id: str
    netns: str
    created: float
    host_network: bool = False
    network: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    ips: list[str] = field(default_factory=list)
    responder_pid: int | None = None
    ready_network: bool = False

    def save(self, directory: Path) -> None:
        tmp = directory / f".{self.uid}.tmp"
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        tmp.replace(directory / f"{self.uid}.json")

    @classmethod
    def load(cls, path: Path) -> Sandbox:
        return cls(**json.loads(path.read_text()))


@dataclass
class PodRuntime:
    """What the agent tracks for a pod it runs."""

    probes: dict[str, Probe] = field(default_factory=dict)
    ready: dict[str, bool] = field(default_factory=dict)
    started_at: str = field(default_factory=_now)
    status_sent: str = ""


class NodeAgent:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.name: str = conf["name"]
        self.prefix: str = conf["prefix"]
        self.lab_id: str = conf["lab_id"]
        self.sandboxes_dir = Path(conf["sandboxes_dir"])
        self.conf_dir = Path(conf["cni_conf_dir"])
        self.bin_dirs = (str(conf["cni_bin_dir"]),)
        self.cache_dir = Path(conf["cni_cache_dir"])
        self.client = AsyncClient(config=KubeConfig.from_file(conf["kubeconfig"]), field_manager="lab-node")
        self.pods: dict[str, Pod] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self.runtime: dict[str, PodRuntime] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.dirty: set[str] = set()
        self.failures: dict[str, int] = {}
        self.synced = asyncio.Event()
        self.stopping = asyncio.Event()

    # ------------------------------------------------------------ node object
    async def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "spiderpool.io/lab-node": "true",
        }
        node = Node(metadata=ObjectMeta(name=self.name, labels=labels))
        try:
            await self.client.create(node)
            log.info("node registered name=%s", self.name)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        await self.client.patch(Node, self.name, {"metadata": {"labels": labels}})
        await self.report_node_status()

    async def report_node_status(self) -> None:
        now = _now()
        cap = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        addresses = [
            # Two InternalIPs share the merge key "type": replace the list instead of merging it.
            {"$patch": "replace"},
            {"type": "InternalIP", "address": self.conf["ip4"]},
            {"type": "InternalIP", "address": self.conf["ip6"]},
            {"type": "Hostname", "address": self.name},
        ]
        status = {
            "capacity": cap,
            "allocatable": cap,
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": self.lab_id,
                "systemUUID": self.name,
                "bootID": self.lab_id,
                "kernelVersion": os.uname().release,
                "osImage": "spiderpool lab node",
                "containerRuntimeVersion": "lab://0.1.0",
                "kubeletVersion": "lab",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "lab node agent is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self.conf.get("ready_since", now),
                },
                *(
                    {
                        "type": t,
                        "status": "False",
                        "reason": r,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": self.conf.get("ready_since", now),
                    }
                    for t, r in (
                        ("MemoryPressure", "KubeletHasSufficientMemory"),
                        ("DiskPressure", "KubeletHasNoDiskPressure"),
                        ("PIDPressure", "KubeletHasSufficientPID"),
                    )
                ),
            ],
        }
        self.conf.setdefault("ready_since", now)
        await self.client.patch(Node.Status, self.name, {"status": status})

    async def renew_lease(self) -> None:
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            await self.client.patch(
                Lease, self.name, {"spec": spec}, namespace="kube-node-lease", patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            await self.client.create(
                cast(
                    Lease,
                    Lease.from_dict({"metadata": {"name": self.name, "namespace": "kube-node-lease"}, "spec": spec}),
                )
            )

    async def heartbeat_loop(self) -> None:
        beats = 0
        while not self.stopping.is_set():
            try:
                await self.renew_lease()
                if beats % 3 == 0:
                    await self.report_node_status()
            except Exception as exc:  # keep beating; the apiserver may be restarting
                log.warning("heartbeat failed error=%s", exc)
            beats += 1
            await self._sleep(HEARTBEAT_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        # Wakes early on shutdown; this is a period, not a synchronisation.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # ---------------------------------------------------------------- pods
    def kick(self, uid: str) -> None:
        """Schedule a reconcile of one pod; reconciles of the same pod never overlap."""
        self.dirty.add(uid)
        task = self.workers.get(uid)
        if task is None or task.done():
            self.workers[uid] = asyncio.create_task(self._worker(uid), name=f"pod-{uid}")

    async def _worker(self, uid: str) -> None:
        while uid in self.dirty and not self.stopping.is_set():
            self.dirty.discard(uid)
            try:
                await self.reconcile(uid)
                self.failures.pop(uid, None)
            except Exception as exc:
                n = self.failures.get(uid, 0) + 1
                self.failures[uid] = n
                delay = min(30.0, 0.5 * 2**n)
                log.warning("pod reconcile failed uid=%s attempt=%d retry_in=%.1fs error=%s", uid, n, delay, exc)
                asyncio.get_running_loop().call_later(delay, self.kick, uid)

    async def watch_pods(self) -> None:
        fields: dict[str, Any] = {"spec.nodeName": self.name}
        while not self.stopping.is_set():
            try:
                async for kind, pod in self.client.watch(Pod, namespace="*", fields=fields):
                    uid = str(_m(pod).uid)
                    if kind == "DELETED":
                        self.pods.pop(uid, None)
                    else:
                        self.pods[uid] = pod
                    self.kick(uid)
            except Exception as exc:
                log.warning("pod watch broke, re-listing error=%s", exc)
                await self._sleep(1)

    async def resync_loop(self) -> None:
        """Periodic full list: catches deletions missed while a watch was down, and orphans."""
        fields: dict[str, Any] = {"spec.nodeName": self.name}
        while not self.stopping.is_set():
            try:
                current = {str(_m(p).uid): p async for p in self.client.list(Pod, namespace="*", fields=fields)}
                for uid in set(self.pods) - set(current):
                    self.pods.pop(uid, None)
                    self.kick(uid)
                for uid, pod in current.items():
                    self.pods[uid] = pod
                for uid in set(self.sandboxes) - set(current):
                    self.kick(uid)
                self.synced.set()
            except Exception as exc:
                log.warning("resync failed error=%s", exc)
            await self._sleep(RESYNC_SECONDS)

    async def reconcile(self, uid: str) -> None:
        pod = self.pods.get(uid)
        sandbox = self.sandboxes.get(uid)
        gone = (
            pod is None
            or _m(pod).deletionTimestamp is not None
            or (pod.status is not None and pod.status.phase in ("Succeeded", "Failed"))
        )
        if gone:
            if pod is None and sandbox is not None and not self.synced.is_set():
                return  # not sure yet that the pod is gone: wait for the first full list
            if sandbox is not None:
                await self.teardown(sandbox)
            self.runtime.pop(uid, None)
            if pod is not None and _m(pod).deletionTimestamp is not None:
                await self.finish_deletion(pod)
            return
        assert pod is not None
        if sandbox is not None and not sandbox.ready_network:
            await self.teardown(sandbox)  # half made by a failed or interrupted ADD: undo, then retry
            sandbox = None
        if sandbox is None:
            await self.report_pending(pod)
            sandbox = await self.create_sandbox(pod)
        elif sandbox.responder_pid and not procs.alive(sandbox.responder_pid):
            await self.start_responder(pod, sandbox)
        rt = self.runtime.setdefault(uid, PodRuntime())
        self.sync_probes(pod, rt)
        await self.report_running(pod, sandbox, rt)

    async def create_sandbox(self, pod: Pod) -> Sandbox:
        uid = str(_m(pod).uid)
        ns, name = str(_m(pod).namespace), str(_m(pod).name)
        host_network = bool(pod.spec and pod.spec.hostNetwork)
        container_id = secrets.token_hex(32)
        sb = Sandbox(
            uid=uid,
            namespace=ns,
            name=name,
            container_id=container_id,
            netns=self.conf["netns"] if host_network else f"{self.prefix}-pod-{container_id[:12]}",
            created=time.time(),
            host_network=host_network,
        )
        if host_network:
            sb.ips = [self.conf["ip4"]]
            sb.ready_network = True
            sb.save(self.sandboxes_dir)
            self.sandboxes[uid] = sb
            return sb
        net = cni.load_default(self.conf_dir)
        if net is None:
            raise await self._sandbox_failed(pod, f"network plugin not ready: no CNI configuration in {self.conf_dir}")
        sb.network = net.raw
        await asyncio.to_thread(netns.add, sb.netns)
        sb.save(self.sandboxes_dir)  # recorded before ADD so a crash never leaks the namespace
        self.sandboxes[uid] = sb
        rt = self._cni_runtime(sb)
        try:
            result = await cni.add(net, rt)
        except cni.CniError as exc:
            try:
                await self.teardown(sb)
            except cni.CniError as del_exc:  # the record stays; the next reconcile retries the DEL
                log.warning("cleanup after failed ADD failed pod=%s/%s error=%s", ns, name, del_exc)
            raise await self._sandbox_failed(
                pod,
                f'failed to set up sandbox {container_id[:12]} network for pod "{name}": networkPlugin cni '
                f'failed to set up pod "{name}_{ns}" network: {exc}',
            ) from exc
        sb.result = result
        sb.ips = cni.pod_ips(result, POD_IFNAME)
        sb.ready_network = True
        sb.save(self.sandboxes_dir)
        log.info("sandbox up pod=%s/%s netns=%s ips=%s", ns, name, sb.netns, ",".join(sb.ips))
        await self.start_responder(pod, sb)
        return sb

    def _cni_runtime(self, sb: Sandbox) -> cni.Runtime:
        return cni.Runtime(
            container_id=sb.container_id,
            netns=netns.path(sb.netns),
            ifname=POD_IFNAME,
            args=(
                ("K8S_POD_NAMESPACE", sb.namespace),
                ("K8S_POD_NAME", sb.name),
                ("K8S_POD_INFRA_CONTAINER_ID", sb.container_id),
                ("K8S_POD_UID", sb.uid),
            ),
            bin_dirs=self.bin_dirs,
            cache_dir=self.cache_dir,
        )

    async def _sandbox_failed(self, pod: Pod, message: str) -> RuntimeError:
        log.warning("sandbox failed pod=%s/%s error=%s", _m(pod).namespace, _m(pod).name, message)
        await self.event(pod, "Warning", "FailedCreatePodSandBox", message)
        return RuntimeError(message)

    async def start_responder(self, pod: Pod, sb: Sandbox) -> None:
        ports = sorted(
            {
                int(p.containerPort)
                for c in (pod.spec.containers if pod.spec else [])
                for p in (c.ports or [])
                if (p.protocol or "TCP") == "TCP"
            }
        )
        if not ports or sb.host_network:
            return
        argv = [sys.executable, "-m", "spiderpool_lab.node.responder", f"--pod={sb.namespace}/{sb.name}"]
        argv += [f"--port={p}" for p in ports]
        log_file = Path(self.conf["log_dir"]) / "responders.log"
        sb.responder_pid = procs.start(argv, lab_id=self.lab_id, log=log_file, netns=sb.netns)
        sb.save(self.sandboxes_dir)

    async def teardown(self, sb: Sandbox) -> None:
        if sb.responder_pid:
            await asyncio.to_thread(procs.stop, [sb.responder_pid])
        if not sb.host_network:
            if sb.network is not None:
                net = cni.NetworkList.from_dict(sb.network, "sandbox record")
                try:
                    await cni.delete(net, self._cni_runtime(sb))
                except cni.CniError as exc:
                    # A runtime retries DEL until it succeeds; so do we (the record stays).
                    log.warning("CNI DEL failed pod=%s/%s error=%s", sb.namespace, sb.name, exc)
                    raise
            await asyncio.to_thread(netns.delete, sb.netns)
        (self.sandboxes_dir / f"{sb.uid}.json").unlink(missing_ok=True)
        self.sandboxes.pop(sb.uid, None)
        log.info("sandbox down pod=%s/%s netns=%s", sb.namespace, sb.name, sb.netns)

    async def finish_deletion(self, pod: Pod) -> None:
        ns, name = str(_m(pod).namespace), str(_m(pod).name)
        try:
            current = await self.client.get(Pod, name, namespace=ns)
            if _m(current).uid != _m(pod).uid:
                return
            await self.client.delete(Pod, name, namespace=ns, grace_period=0)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    # ----------------------------------------------------------- reporting
    async def event(self, pod: Pod, kind: str, reason: str, message: str) -> None:
        now = _now()
        ev = cast(
            Event,
            Event.from_dict(
                {
                    "metadata": {"generateName": f"{_m(pod).name}.", "namespace": _m(pod).namespace},
                    "involvedObject": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "namespace": _m(pod).namespace,
                        "name": _m(pod).name,
                        "uid": _m(pod).uid,
                    },
                    "reason": reason,
                    "message": message[:1024],
                    "type": kind,
                    "source": {"component": "kubelet", "host": self.name},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                }
            ),
        )
        try:
            await self.client.create(ev)
        except ApiError as exc:
            log.warning("event not recorded reason=%s error=%s", reason, exc)

    def _container_statuses(self, pod: Pod, state: dict[str, Any], ready: dict[str, bool]) -> list[dict[str, Any]]:
        out = []
        for c in pod.spec.containers if pod.spec else []:
            status: dict[str, Any] = {
                "name": c.name,
                "image": c.image or "",
                "imageID": "",
                "ready": ready.get(c.name, False),
                "restartCount": 0,
                "state": state,
            }
            if "running" in state:
                status["started"] = True
                status["containerID"] = f"lab://{_m(pod).uid}-{c.name}"
            out.append(status)
        return out

    async def report_pending(self, pod: Pod) -> None:
        if pod.status is not None and pod.status.phase == "Pending" and pod.status.hostIP:
            return
        waiting = {"waiting": {"reason": "ContainerCreating"}}
        status = {
            "phase": "Pending",
            "hostIP": self.conf["ip4"],
            "hostIPs": [{"ip": self.conf["ip4"]}, {"ip": self.conf["ip6"]}],
            "startTime": _now(),
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": self._container_statuses(pod, waiting, {}),
        }
        await self._patch_status(pod, status)

    async def report_running(self, pod: Pod, sb: Sandbox, rt: PodRuntime) -> None:
        names = [c.name for c in (pod.spec.containers if pod.spec else [])]
        ready = {n: rt.ready.get(n, n not in rt.probes) for n in names}
        all_ready = "True" if all(ready.values()) else "False"
        now = _now()
        status = {
            "phase": "Running",
            "hostIP": self.conf["ip4"],
            "hostIPs": [{"ip": self.conf["ip4"]}, {"ip": self.conf["ip6"]}],
            "podIP": sb.ips[0] if sb.ips else None,
            "podIPs": [{"ip": ip} for ip in sb.ips],
            "conditions": [
                {"type": t, "status": s, "lastTransitionTime": now}
                for t, s in (
                    ("PodReadyToStartContainers", "True"),
                    ("Initialized", "True"),
                    ("ContainersReady", all_ready),
                    ("Ready", all_ready),
                    ("PodScheduled", "True"),
                )
            ],
            "containerStatuses": self._container_statuses(pod, {"running": {"startedAt": rt.started_at}}, ready),
        }
        fingerprint = json.dumps([sb.ips, ready, str(pod.status.phase if pod.status else "")], sort_keys=True)
        if fingerprint == rt.status_sent:
            return
        await self._patch_status(pod, status)
        rt.status_sent = fingerprint

    async def _patch_status(self, pod: Pod, status: dict[str, Any]) -> None:
        try:
            await self.client.patch(Pod.Status, str(_m(pod).name), {"status": status}, namespace=str(_m(pod).namespace))
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    # -------------------------------------------------------------- probes
    def sync_probes(self, pod: Pod, rt: PodRuntime) -> None:
        for c in pod.spec.containers if pod.spec else []:
            if c.readinessProbe is not None and c.name not in rt.probes:
                probe = probe_from_spec(c.readinessProbe, c.ports or [])
                if probe is not None:
                    rt.probes[c.name] = probe

    async def probe_loop(self) -> None:
        while not self.stopping.is_set():
            for uid, rt in list(self.runtime.items()):
                sb = self.sandboxes.get(uid)
                if sb is None or not sb.ips:
                    continue
                changed = False
                for cname, probe in rt.probes.items():
                    if not probe.due():
                        continue
                    ok = await probe.run(sb.ips[0])
                    if probe.update(ok) != rt.ready.get(cname):
                        rt.ready[cname] = probe.ready
                        changed = True
                if changed:
                    self.kick(uid)
            await self._sleep(0.5)

    # ---------------------------------------------------------------- main
    def load_sandboxes(self) -> None:
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        for path in self.sandboxes_dir.glob("*.json"):
            try:
                sb = Sandbox.load(path)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable sandbox record path=%s error=%s", path, exc)
                continue
            self.sandboxes[sb.uid] = sb
        if self.sandboxes:
            log.info("adopting %d sandbox(es) from a previous run", len(self.sandboxes))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.load_sandboxes()
        while True:
            try:
                await self.register()
                break
            except Exception as exc:
                log.warning("node registration failed, retrying error=%s", exc)
                await self._sleep(1)
                if self.stopping.is_set():
                    return
        tasks = [
            asyncio.create_task(self.heartbeat_loop()),
            asyncio.create_task(self.watch_pods()),
            asyncio.create_task(self.resync_loop()),
            asyncio.create_task(self.probe_loop()),
        ]
        await self.stopping.wait()
        for t in tasks + list(self.workers.values()):
            t.cancel()
        await asyncio.gather(*tasks, *self.workers.values(), return_exceptions=True)
        await self.client.close()
        log.info("node agent stopped")


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: python -m spiderpool_lab.node NODE_JSON")
    conf = json.loads(Path(args[0]).read_text())
    logging.basicConfig(
        level=os.environ.get("SPIDERPOOL_LAB_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s %(levelname)s node={conf['name']} %(message)s",
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(NodeAgent(conf).run())
