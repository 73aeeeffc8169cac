"""IPAM storm, side by side: the same allocations, from the same nodes, with the same concurrency, for
spiderpool, Whereabouts and host-local, and the raw-create ceiling, interleaved over several rounds.

Runs against the lab's real kube-apiserver and etcd. Pods are API objects on Nodes of their own
("bench-N", no kubelet): this script plays the runtime and execs each IPAM plugin with the stdin and
``CNI_*`` environment a runtime's main plugin (macvlan) passes it, ``--inflight`` at a time per node.

- ``spiderpool``: its plugin, installed by one agent per bench node, asking that agent's socket;
  one SpiderIPPool of exactly ``--ips`` addresses.
- ``spiderpool-agent``: the same requests sent to the agents' sockets directly (no exec): the
  allocation path alone, which the raw ceiling bounds.
- ``whereabouts``: its plugin (the lab's build of v0.9.2, its CRDs applied), kubernetes backend,
  one range of exactly ``--ips`` addresses.
- ``host-local``: the floor for an exec'd IPAM plugin: per-node ranges, a file write, no coordination.
- ``raw``: the physical ceiling: creates of SpiderIPAllocation objects of the same size as the
  agents write, with the same concurrency and no IPAM logic (every spiderpool allocation makes one).

Per system and round: allocations/s, ADD latency p50/p99, API writes and conflicts (409s) per
allocation (from the apiserver's own counters), CPU seconds per component, failures, duplicates;
then every allocation is released (DEL), and what is left is counted.

    python bench/ipam_storm.py [--nodes 10] [--ips 1000] [--inflight 10] [--rounds 3] \
        [--systems raw,spiderpool,whereabouts,host-local] [--sequential 100] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, pct, say, wait_absent  # noqa: E402
from tests.stack import free_port, unix_request  # noqa: E402

from spiderpool.api.objects import new_record  # noqa: E402
from spiderpool.ipam.allocate import record_name  # noqa: E402
from spiderpool.k8s import kinds  # noqa: E402
from spiderpool.k8s.client import Client  # noqa: E402
from spiderpool_lab import build, install, paths, procs  # noqa: E402
from spiderpool_lab.cluster import Lab  # noqa: E402

NS = "bench"
POOL = "bench-pool"
SEQ_POOL = "bench-seq-pool"
SEQ_FIRST = ipaddress.ip_address("10.23.0.1")
WB_SEQ_NET = ipaddress.ip_network("10.24.0.0/16")
#: the agents' default --ip-reuse-cooldown: a storm into the same full-size pool waits it out first
COOLDOWN = 5.0
RAW_POOL = "bench-raw"
# Each system's addresses (records only: nothing is configured on a link), a /16 each.
SP_NET = ipaddress.ip_network("10.20.0.0/16")
SP_FIRST = SP_NET.network_address + 1
WB_NET = ipaddress.ip_network("10.21.0.0/16")
RAW_FIRST = ipaddress.ip_address("10.22.0.1")
SYSTEMS = ("raw", "spiderpool-agent", "spiderpool", "whereabouts", "host-local")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
#: one ADD or DEL: (seconds, the failure or None, the addresses returned)
Outcome = tuple[float, str | None, list[str]]
Call = Callable[[dict[str, Any]], Outcome]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--ips", type=int, default=1000, help="allocations per storm = addresses in each pool")
    ap.add_argument("--inflight", type=int, default=10, help="concurrent ADDs per node")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sequential", type=int, default=100, help="ADDs one at a time after each storm (0: none)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        ap.error(f"--systems: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.ips > 60000 or args.ips // args.nodes > 250:
        ap.error("--ips: at most 60000, and 250 per node (host-local has a /24 per node)")

    lab = lab_with_crds()
    bench = Storm(lab, nodes=args.nodes, ips=args.ips, inflight=args.inflight, sequential=args.sequential)
    runs: list[dict[str, Any]] = []
    try:
        bench.setup(systems)
        for r in range(args.rounds):
            for system in systems:
                say(f"round {r + 1}/{args.rounds}: {system}")
                run = bench.storm(system, r)
                runs.append(run)
                say(
                    f"  {run['allocations_per_second']} alloc/s, p50 {run['add_ms']['p50']} ms, "
                    f"{run['failures']} failed, {run['duplicates']} duplicates"
                )
                for reason, count in run["failure_reasons"].items():
                    say(f"    {count} x {reason}")
    finally:
        bench.teardown()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "nodes": args.nodes,
        "allocations": args.ips,
        "inflight_per_node": args.inflight,
        "runs": runs,
        "median": summary(runs, systems),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


class Storm:
    def __init__(
        self,
        lab: Lab,
        *,
        nodes: int,
        ips: int,
        inflight: int,
        sequential: int,
        idle_agents: int = 0,
        record_watch: str = "pools",
    ) -> None:
        """``idle_agents``: more nodes, each with its agent, that get no pods (a bigger cluster);
        ``record_watch``: the agents' ``--record-watch``."""
        self.lab = lab
        self.record_watch = record_watch
        self.idle = [f"bench-idle-{i + 1}" for i in range(idle_agents)]
        self.sequential = sequential
        self.inflight = inflight
        self.ips = ips
        self.nodes = [f"bench-{i + 1}" for i in range(nodes)]
        self.per_node = ips // nodes
        self.work = Path(tempfile.mkdtemp(prefix="spiderpool-bench-"))
        self.sockets: dict[str, str] = {}
        self.pods: list[dict[str, Any]] = []
        self.seq_pods: list[dict[str, Any]] = []
        self.released_at: dict[str, float] = {}
        self.agents = False

    # ------------------------------------------------------------------ setup

    def setup(self, systems: list[str]) -> None:
        lab = self.lab
        last = ipaddress.ip_address(int(SP_FIRST) + self.ips - 1)
        pool = {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {"name": POOL},
            "spec": {"subnet": str(SP_NET), "ipVersion": 4, "ips": [f"{SP_FIRST}-{last}"]},
        }
        wait_absent(lab, ("namespace", NS), ("spiderippool", POOL))
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(pool))
        if self.sequential:
            seq_last = ipaddress.ip_address(int(SEQ_FIRST) + self.sequential - 1)
            seq = {
                **pool,
                "metadata": {"name": SEQ_POOL},
                "spec": {"subnet": "10.23.0.0/16", "ipVersion": 4, "ips": [f"{SEQ_FIRST}-{seq_last}"]},
            }
            lab.kubectl("apply", "-f", "-", input_text=json.dumps(seq))
        if "whereabouts" in systems:
            say("Whereabouts: its CRDs and DaemonSet, as its README installs it")
            install.whereabouts(lab)
        say(f"creating {len(self.nodes)} nodes")
        lab.kubectl("create", "namespace", NS)
        nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in self.nodes + self.idle]
        lab.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        if {"spiderpool", "spiderpool-agent"} & set(systems):
            self._start_agents()

    def _make_pods(self) -> None:
        """A fresh set of pods for one storm (and the sequential samples): the runtime DELs an
        allocation once its pod is gone, and spiderpool keeps the addresses of a live pod on DEL."""
        ann = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})}
        seq_ann = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [SEQ_POOL]})}
        items = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{n}-p{j:04d}", "namespace": NS, "annotations": ann},
                "spec": {"nodeName": n, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
            }
            for n in self.nodes
            for j in range(self.per_node)
        ] + [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"seq-{j:04d}", "namespace": NS, "labels": {"seq": "yes"}, "annotations": seq_ann},
                "spec": {"nodeName": self.nodes[0], "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
            }
            for j in range(self.sequential)
        ]
        self.lab.kubectl(
            "create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )
        everything = json.loads(self.lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
        self.pods = [p for p in everything if not p["metadata"].get("labels", {}).get("seq")]
        self.seq_pods = [p for p in everything if p["metadata"].get("labels", {}).get("seq")]

    def _drop_pods(self) -> None:
        """Delete every pod at once (no kubelet: they go at once) and wait until they are gone."""
        self.lab.kubectl("delete", "--raw", f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0")
        procs.wait_for(
            lambda: not json.loads(self.lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"],
            timeout=300,
            what="the pods to be deleted",
        )

    def _start_agents(self) -> None:
        for n in self.nodes + self.idle:
            self.sockets[n] = str(self.work / f"{n}.sock")
            self.lab.start_process(
                f"bench-agent/{n}",
                [
                    sys.executable,
                    "-m",
                    "spiderpool",
                    "agent",
                    f"--kubeconfig={self.lab.kubeconfig}",
                    f"--node-name={n}",
                    f"--socket={self.sockets[n]}",
                    f"--cni-bin-dir={self.work / n / 'bin'}",
                    "--metrics-bind=127.0.0.1",
                    f"--metrics-port={free_port()}",
                    "--log-level=WARNING",
                    f"--record-watch={self.record_watch}",
                ],
            )
        self.agents = True
        for n in self.nodes + self.idle:
            procs.wait_for(
                lambda n=n: (
                    unix_request(self.sockets[n], "GET", "/v1/ipam/healthy")[0] == 200
                    and (self.work / n / "bin" / "spiderpool").exists()
                ),
                timeout=120,
                what=f"agent {n} and its plugin",
            )

    def teardown(self) -> None:
        lab = self.lab
        if self.agents:
            for n in self.nodes + self.idle:
                lab.stop_process(f"bench-agent/{n}")
        lab.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        lab.kubectl("delete", "node", *self.nodes, *self.idle, check=False)
        lab.kubectl("delete", "spiderippool", POOL, SEQ_POOL, "--wait=false", check=False)
        raw = json.loads(lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
        names = [r["metadata"]["name"] for r in raw if r["spec"]["pool"] == RAW_POOL]
        if names:
            lab.kubectl("delete", "spideripallocations", *names, "--wait=false", check=False)
        shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------------ one storm

    def storm(self, system: str, round_: int) -> dict[str, Any]:
        tag = f"{system[:2]}{round_}"
        self._make_pods()
        add: Call | _RawCalls
        delete: Call | _RawCalls
        if system == "raw":
            add, delete = self._raw()
        elif system == "spiderpool-agent":
            add, delete = self._socket("POST", tag), self._socket("DELETE", tag)
        else:
            conf, env_of = self._plugin(system, round_)
            add = lambda pod: self._exec(conf, env_of(pod, "ADD", tag))  # noqa: E731
            delete = lambda pod: self._exec(conf, env_of(pod, "DEL", tag))  # noqa: E731
        if system.startswith("spiderpool") and self.released_at:
            # (the same pool, just released: its addresses cool down before they are handed out again)
            time.sleep(max(0.0, self.released_at["spiderpool"] + COOLDOWN + 0.5 - time.monotonic()))
        before = self._counters()
        started = time.perf_counter()
        results = per_node(self.pods, add, self.inflight)
        wall = time.perf_counter() - started
        after = self._counters()
        ok = [r for r in results if r[1] is None]
        ips = [ip for r in ok for ip in r[2]]
        failures: dict[str, int] = {}
        for r in results:
            if r[1] is not None:
                failures[r[1]] = failures.get(r[1], 0) + 1
        sequential, sequential_del = self._sequential(system, round_)
        self._drop_pods()
        release_started = time.perf_counter()
        released = per_node(self.pods, delete, self.inflight)
        release_wall = time.perf_counter() - release_started
        sequential_del()
        if system.startswith("spiderpool"):
            self.released_at["spiderpool"] = time.monotonic()
        return {
            "system": system,
            "round": round_ + 1,
            "allocations": len(results),
            "succeeded": len(ok),
            "failures": len(results) - len(ok),
            "failure_reasons": dict(sorted(failures.items(), key=lambda kv: -kv[1])[:5]),
            "duplicates": len(ips) - len(set(ips)),
            "wall_s": round(wall, 2),
            "allocations_per_second": round(len(ok) / wall, 1),
            "add_ms": {"p50": ms(pct([r[0] for r in ok], 0.5)), "p99": ms(pct([r[0] for r in ok], 0.99))},
            # (every ADD's latency, for the CDFs bench/plot.py draws)
            "add_ms_samples": sorted(ms(r[0]) for r in ok),
            "api_writes_per_allocation": round(
                (sum(after["writes"].values()) - sum(before["writes"].values())) / max(1, len(ok)), 2
            ),
            "api_writes_by_resource": {
                k: int(v - before["writes"].get(k, 0))
                for k, v in sorted(after["writes"].items())
                if v - before["writes"].get(k, 0) > 0
            },
            "conflicts_per_allocation": round((after["conflicts"] - before["conflicts"]) / max(1, len(ok)), 3),
            "cpu_s": {k: round(after["cpu"][k] - before["cpu"].get(k, 0.0), 2) for k in after["cpu"]},
            "release_s": round(release_wall, 2),
            "sequential_add_ms": sequential,
            "release_failures": sum(1 for r in released if r[1] is not None),
            "left_after_release": self._left(system),
        }

    def _sequential(self, system: str, round_: int) -> tuple[dict[str, float] | None, Callable[[], None]]:
        """``--sequential`` fresh ADDs one after the other: the plugin's own latency without the storm
        around it, as a runtime starting one pod sees it. Returns them, and what DELs them (once
        their pods are gone)."""
        if system in ("raw", "spiderpool-agent") or not self.sequential:
            return None, lambda: None
        conf, env_of = self._plugin(system, round_, sequential=True)
        tag = f"sq{system[:2]}{round_}"
        pods = self.seq_pods
        took = []
        for pod in pods:
            seconds, error, _ = self._exec(conf, env_of(pod, "ADD", tag))
            if error is None:
                took.append(seconds)

        def release() -> None:
            for pod in pods:
                self._exec(conf, env_of(pod, "DEL", tag))

        if not took:
            return None, release
        return {"p50": ms(pct(took, 0.5)), "p99": ms(pct(took, 0.99)), "failed": len(pods) - len(took)}, release

    def _plugin(
        self, system: str, round_: int, *, sequential: bool = False
    ) -> tuple[dict[str, Any], Callable[[dict[str, Any], str, str], dict[str, str]]]:
        """The IPAM plugin's stdin (as macvlan passes it on) and the environment of one exec."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        ipam: dict[str, Any]
        if system == "spiderpool":
            binary = str(self.work / self.nodes[0] / "bin" / "spiderpool")
            ipam = {"type": "spiderpool"}
        elif system == "whereabouts":
            binary = str(build.binary("whereabouts"))
            # the flat file its DaemonSet writes on each node (kubernetes backend), here naming the
            # lab's loopback kubeconfig: this script runs outside the nodes
            flat = self.work / "whereabouts.conf"
            flat.write_text(
                json.dumps({"datastore": "kubernetes", "kubernetes": {"kubeconfig": str(self.lab.kubeconfig)}})
            )
            net = WB_SEQ_NET if sequential else WB_NET
            last = ipaddress.ip_address(int(net.network_address) + (self.sequential if sequential else self.ips))
            ipam = {
                "type": "whereabouts",
                "range": str(net),
                "range_start": str(net.network_address + 1),
                "range_end": str(last),
                "kubernetes": {"kubeconfig": str(self.lab.kubeconfig)},
                "configuration_path": str(flat),
            }
        else:
            binary = str(build.binary("host-local"))
            data = self.work / f"host-local-{round_}{'-seq' if sequential else ''}"
            ipam = {"type": "host-local", "dataDir": str(data)}
        conf = {"cniVersion": "1.0.0", "name": f"bench-{system}", "type": "macvlan", "master": "eth0", "ipam": ipam}
        node_index = {n: i for i, n in enumerate(self.nodes)}

        def env_of(pod: dict[str, Any], command: str, tag: str) -> dict[str, str]:
            meta = pod["metadata"]
            node = pod["spec"]["nodeName"]
            return {
                **base,
                "BENCH_BINARY": binary,
                "BENCH_NODE": node,
                "BENCH_NODE_INDEX": str(node_index[node]),
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": f"{tag}-{meta['uid']}",
                "CNI_NETNS": f"/var/run/netns/{tag}-{meta['uid'][:8]}",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": str(Path(binary).parent),
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={meta['name']};"
                f"K8S_POD_INFRA_CONTAINER_ID={tag}-{meta['uid']};K8S_POD_UID={meta['uid']}",
            }

        return conf, env_of

    def _exec(self, conf: dict[str, Any], env: dict[str, str]) -> Outcome:
        """One exec of the IPAM plugin; (seconds, error or None, the addresses it returned)."""
        binary = env.pop("BENCH_BINARY")
        node, index = env.pop("BENCH_NODE"), int(env.pop("BENCH_NODE_INDEX"))
        ipam = dict(conf["ipam"])
        if ipam["type"] == "spiderpool":
            ipam["ipam_unix_socket_path"] = self.sockets[node]
        elif ipam["type"] == "host-local":  # each node its own range, as host-local is deployed
            ipam["ranges"] = [[{"subnet": f"10.250.{index}.0/24", "rangeStart": f"10.250.{index}.1"}]]
            ipam["dataDir"] = f"{ipam['dataDir']}/{node}"
        t = time.perf_counter()
        out = subprocess.run(
            [binary], input=json.dumps({**conf, "ipam": ipam}), capture_output=True, text=True, env=env
        )
        took = time.perf_counter() - t
        if out.returncode != 0:
            return took, _reason(out.stdout or out.stderr), []
        if env["CNI_COMMAND"] != "ADD":
            return took, None, []
        try:
            ips = [i["address"].split("/")[0] for i in json.loads(out.stdout).get("ips", [])]
        except (ValueError, KeyError, AttributeError):
            return took, "unparsable result", []
        return took, None if ips else "no address in the result", ips

    def _socket(self, method: str, tag: str) -> Call:
        """The agent's socket called directly, with the request the plugin sends: spiderpool's
        allocation path without the plugin's exec (what the raw ceiling compares with)."""

        def call(pod: dict[str, Any]) -> Outcome:
            meta = pod["metadata"]
            body = {
                "containerID": f"{tag}-{meta['uid']}",
                "ifName": "eth0",
                "netNamespace": f"/var/run/netns/{tag}-{meta['uid'][:8]}",
                "podNamespace": NS,
                "podName": meta["name"],
                "podUID": meta["uid"],
            }
            t = time.perf_counter()
            status, reply = unix_request(
                self.sockets[pod["spec"]["nodeName"]], method, "/v1/ipam/ip", body, timeout=120
            )
            took = time.perf_counter() - t
            if status != 200:
                return took, _reason(json.dumps(reply) if not isinstance(reply, str) else reply), []
            if method != "POST":
                return took, None, []
            ips = [str(i["address"]).split("/")[0] for i in (reply or {}).get("ips", [])]  # type: ignore[union-attr]
            return took, None if ips else "no address in the reply", ips

        return call

    def _raw(self) -> tuple[_RawCalls, _RawCalls]:
        """Creates (and deletes) of SpiderIPAllocation objects as the agents write them, one aiohttp
        client per node, exactly as the agents do."""
        index = {p["metadata"]["uid"]: i for i, p in enumerate(self.pods)}

        def record(pod: dict[str, Any]) -> dict[str, Any]:
            ip = str(ipaddress.ip_address(int(RAW_FIRST) + index[pod["metadata"]["uid"]]))
            meta = pod["metadata"]
            return dict(
                new_record(
                    record_name(ip),
                    {
                        "ip": ip,
                        "pool": RAW_POOL,
                        "ipVersion": 4,
                        "namespace": NS,
                        "pod": meta["name"],
                        "podUID": meta["uid"],
                        "interface": "eth0",
                        "node": pod["spec"]["nodeName"],
                        "containerID": f"raw-{meta['uid']}",
                        "cleanGateway": False,
                        "ownerKind": "Pod",
                        "ownerName": meta["name"],
                    },
                )
            )

        return _RawCalls(self, record, "create"), _RawCalls(self, record, "delete")

    def _counters(self) -> dict[str, Any]:
        text = self.lab.kubectl("get", "--raw", "/metrics").stdout
        writes: dict[str, float] = {}
        conflicts = 0.0
        for m in re.finditer(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("code") == "409":
                conflicts += float(m.group(2))
            if labels.get("verb") in WRITE_VERBS:
                key = labels.get("resource", "?")
                writes[key] = writes.get(key, 0.0) + float(m.group(2))
        return {"writes": writes, "conflicts": conflicts, "cpu": cpu_seconds()}

    def _left(self, system: str) -> int:
        if system in ("spiderpool", "spiderpool-agent", "raw"):
            recs = json.loads(self.lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
            pools = (RAW_POOL,) if system == "raw" else (POOL, SEQ_POOL)
            return sum(1 for r in recs if r["spec"]["pool"] in pools and r["spec"].get("podUID"))
        if system == "whereabouts":
            pools = json.loads(self.lab.kubectl("get", "ippools.whereabouts.cni.cncf.io", "-A", "-o", "json").stdout)
            return sum(len(p["spec"].get("allocations") or {}) for p in pools["items"])
        return sum(1 for f in self.work.glob("host-local-*/*/*/*") if re.fullmatch(r"[0-9.]+", f.name))


class _RawCalls:
    """What ``per_node`` runs for the raw system: one API call per pod, on an event loop per node."""

    def __init__(self, storm: Storm, record: Callable[[dict[str, Any]], dict[str, Any]], verb: str) -> None:
        self.storm, self.record, self.verb = storm, record, verb


def per_node(
    pods: list[dict[str, Any]],
    call: Call | _RawCalls,
    inflight: int,
) -> list[Outcome]:
    """Run ``call`` for every pod, exactly ``inflight`` at a time per node, all nodes at once (the
    load of nodes that each start many pods together)."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    if isinstance(call, _RawCalls):
        with ThreadPoolExecutor(max_workers=len(by_node)) as ex:
            parts = list(ex.map(lambda item: _raw_node(call, item[0], item[1], inflight), by_node.items()))
        return [r for part in parts for r in part]
    pools = [ThreadPoolExecutor(max_workers=inflight) for _ in by_node]
    try:
        futures = [
            ex.submit(call, pod) for ex, node_pods in zip(pools, by_node.values(), strict=True) for pod in node_pods
        ]
        return [f.result() for f in futures]
    finally:
        for ex in pools:
            ex.shutdown()


def _raw_node(call: _RawCalls, node: str, pods: list[dict[str, Any]], inflight: int) -> list[Outcome]:
    """One node's raw calls on an event loop of its own, ``inflight`` at a time (as an agent)."""

    async def run() -> list[Outcome]:
        client = Client.from_kubeconfig(str(call.storm.lab.kubeconfig), field_manager="bench")
        gate = asyncio.Semaphore(inflight)

        async def one(pod: dict[str, Any]) -> Outcome:
            rec = call.record(pod)
            async with gate:
                t = time.perf_counter()
                try:
                    if call.verb == "create":
                        await client.create(kinds.IPALLOCATION, rec)
                    else:
                        await client.delete(kinds.IPALLOCATION, rec["metadata"]["name"])
                except Exception as exc:  # a failure is counted, not fatal
                    return time.perf_counter() - t, type(exc).__name__, []
                return time.perf_counter() - t, None, [rec["spec"]["ip"]] if call.verb == "create" else []

        try:
            return list(await asyncio.gather(*(one(p) for p in pods)))
        finally:
            await client.close()

    return asyncio.run(run())


def _reason(text: str) -> str:
    """A failure's reason, short enough to count (numbers and names stripped)."""
    try:
        doc = json.loads(text)
        text = str(doc.get("msg") or doc.get("message") or doc.get("error") or doc.get("details") or text)
    except (ValueError, AttributeError):
        pass
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)*", "N", text.strip().splitlines()[-1] if text.strip() else "")
    return text[:120] or "failed without a message"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the lab's processes, grouped, and by the plugin execs (this script's
    waited-for children)."""
    groups = {  # first match wins
        "kube-apiserver": "/kube-apiserver ",
        "etcd": "/etcd ",
        "spiderpool agents": "-m spiderpool agent",
        "whereabouts ip-control-loop": "/ip-control-loop",
        "other lab processes": f"{paths.cache_dir()}/",
        "lab nodes (kubelet, containerd)": "-m spiderpool_lab.",
    }
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys([*groups, "plugin execs", "bench client (this script)"], 0.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(pid) == os.getpid():
            out["bench client (this script)"] += used
            continue
        for group, needle in groups.items():
            if needle in cmd:
                out[group] += used
                break
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["plugin execs"] = children.ru_utime + children.ru_stime
    return out


def summary(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, dict[str, Any]]:
    """Per system, the median of each figure over the rounds."""
    out: dict[str, dict[str, Any]] = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        if not mine:
            continue

        def med(get: Callable[[dict[str, Any]], float], mine: list[dict[str, Any]] = mine) -> float:
            return round(statistics.median(get(r) for r in mine), 3)

        out[system] = {
            "allocations_per_second": med(lambda r: r["allocations_per_second"]),
            "add_ms_p50": med(lambda r: r["add_ms"]["p50"]),
            "add_ms_p99": med(lambda r: r["add_ms"]["p99"]),
            "api_writes_per_allocation": med(lambda r: r["api_writes_per_allocation"]),
            "conflicts_per_allocation": med(lambda r: r["conflicts_per_allocation"]),
            "cpu_s_total": med(lambda r: sum(r["cpu_s"].values())),
            "failures": sum(r["failures"] for r in mine),
            "duplicates": sum(r["duplicates"] for r in mine),
            "left_after_release": sum(r["left_after_release"] for r in mine),
            "sequential_add_ms_p50": med(lambda r: (r["sequential_add_ms"] or {}).get("p50", 0.0)),
        }
    return out


if __name__ == "__main__":
    main()
