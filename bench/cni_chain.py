"""The whole CNI chain per pod: what spiderpool and veth add to a macvlan pod's network set-up.

Runs on the lab's node1, in its network namespace, with the reference plugins and the ones
spiderpool-agent installed there, exactly as the node's runtime execs them (one process per plugin,
``prevResult`` passed along). Three chains, their samples interleaved so they share the machine's
noise:
- baseline: macvlan + host-local (the reference IPAM: a file write);
- macvlan + spiderpool (the agent allocates through the API);
- macvlan + spiderpool + veth (the walkthrough's chain: also the veth pair, routes and neighbours);
- host-local alone and spiderpool alone: the IPAM plugin exec'd by itself (its exec and its IPAM
  work, no interface), the ratio of the two printed at the end.
ADD: into a fresh network namespace, for a pod that exists, bound to node1 as a real pod is (its
agent finds it in its watch cache) but never run by its kubelet (see ``RUNTIME_CLASS``). DEL: after
the pods are deleted, as a runtime tears a deleted pod's sandbox down (the addresses are released).
Prints p50/p99 per chain and the ratios to the baseline.

    python bench/cni_chain.py [--samples 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import lab_with_crds, pct, say, spiderpool_down, spiderpool_up, wait_absent  # noqa: E402

from spiderpool_lab import cniexec as cni  # noqa: E402
from spiderpool_lab import netns, procs, topology  # noqa: E402

NS = "bench-chain"
#: the pods are bound to node1, as a real pod is to the node whose runtime execs its plugins (so the
#: agent finds them in its watch cache, not by a GET), with a RuntimeClass no containerd serves: the
#: kubelet's sandbox fails before any network set-up, so only this script runs their CNI calls
NODE = "node1"
RUNTIME_CLASS = "bench-chain-none"
#: samples whose pods exist at once (3 pods each; node1 admits 110 pods, its agent and others included)
BATCH = 25
POOL = "bench-chain-pool"
CHAINS = (
    "macvlan + host-local",
    "macvlan + spiderpool",
    "macvlan + spiderpool + veth",
    "host-local alone",
    "spiderpool alone",
)
#: the chains whose pods must exist (spiderpool allocates for a pod)
NEEDS_POD = frozenset({1, 2, 4})
#: the IPAM plugins exec'd by themselves (the runtime's exec of each, and its IPAM work only)
ALONE = ("host-local alone", "spiderpool alone")


def chains(work: Path) -> dict[str, dict[str, Any]]:
    macvlan = {"type": "macvlan", "master": "eth0", "mode": "bridge"}
    host_local = {
        "type": "host-local",
        "dataDir": str(work / "host-local"),
        "ranges": [[{"subnet": "172.18.0.0/16", "rangeStart": "172.18.222.1", "rangeEnd": "172.18.222.250"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "172.18.0.1"}],
    }
    host_local_alone = {
        **host_local,
        "dataDir": str(work / "host-local-alone"),
        "ranges": [[{"subnet": "172.18.0.0/16", "rangeStart": "172.18.224.1", "rangeEnd": "172.18.224.250"}]],
    }
    veth = {"type": "veth", "service_cidr": [topology.SERVICE_CIDR]}
    plugins = (
        [{**macvlan, "ipam": host_local}],
        [{**macvlan, "ipam": {"type": "spiderpool"}}],
        [{**macvlan, "ipam": {"type": "spiderpool"}}, veth],
        [{"type": "host-local", "ipam": host_local_alone}],
        [{"type": "spiderpool", "ipam": {"type": "spiderpool"}}],
    )
    return {
        label: {"cniVersion": "0.4.0", "name": f"chain{i}", "plugins": p}
        for i, (label, p) in enumerate(zip(CHAINS, plugins, strict=True))
    }


# ------------------------------------------------------------------ inside node1's namespace
def inner(phase: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    if phase == "clean":  # (the namespaces live in node1's mount namespace: deleted from there)
        for sample in spec["samples"]:
            for s in sample.values():
                netns.delete(s["netns"])
        Path(spec["out"]).write_text("{}")
        return
    nets = {label: cni.NetworkList.from_dict(conf, label) for label, conf in spec["chains"].items()}
    timings: dict[str, list[float]] = {label: [] for label in nets}

    async def run() -> None:
        for sample in spec["samples"]:
            for label, net in nets.items():
                s = sample[label]
                rt = cni.Runtime(
                    container_id=s["container_id"],
                    netns=netns.path(s["netns"]),
                    ifname="eth0",
                    args=(("K8S_POD_NAMESPACE", NS), ("K8S_POD_NAME", s["pod"]), ("K8S_POD_UID", s["uid"])),
                    bin_dirs=(spec["bin_dir"],),
                    cache_dir=Path(spec["cache_dir"]),
                )
                if phase == "add":
                    netns.add(s["netns"])
                    t = time.perf_counter()
                    await cni.add(net, rt)
                else:
                    t = time.perf_counter()
                    await cni.delete(net, rt)
                timings[label].append(time.perf_counter() - t)
                if phase == "del":
                    netns.delete(s["netns"])

    asyncio.run(run())
    Path(spec["out"]).write_text(json.dumps(timings))


# ------------------------------------------------------------------ outside: the cluster side
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--inner", choices=("add", "del", "clean"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.inner, args.spec)
        return
    n = args.samples

    say("installing CRDs and spiderpool")
    lab = lab_with_crds()
    installed = spiderpool_up(lab)
    wait_absent(lab, ("namespace", NS), ("spiderippool", POOL))
    pool = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": POOL},
        "spec": {"subnet": "172.18.0.0/16", "ips": ["172.18.223.1-172.18.223.250"], "gateway": "172.18.0.1"},
    }
    procs.wait_for(  # the webhook may need a moment after the controller starts
        lambda: lab.kubectl("apply", "-f", "-", input_text=json.dumps(pool), check=False).returncode == 0,
        timeout=60,
        what="the pool accepted",
    )
    lab.kubectl("create", "namespace", NS)
    runtime_class = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": RUNTIME_CLASS},
        "handler": RUNTIME_CLASS,
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(runtime_class))
    ann = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})}

    def create_pods(first: int, last: int) -> dict[str, str]:
        """The pods of samples first..last-1 (node1 admits at most 110 pods: they exist a batch at a
        time); their uids by name."""
        names = [f"p{i:03d}-{c}" for i in range(first, last) for c in sorted(NEEDS_POD)]
        items = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "annotations": ann},
                "spec": {
                    "nodeName": NODE,
                    "runtimeClassName": RUNTIME_CLASS,
                    "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
                },
            }
            for name in names
        ]
        lab.kubectl("create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        listed = json.loads(lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in listed}

    def settled(pods: set[str]) -> None:
        """Wait for the kubelet's first try at each pod's sandbox (refused: no runtime for its class),
        so that the burst of those tries and their events is not measured; its retries back off
        (10 s, then longer)."""

        def tried() -> bool:
            events = json.loads(
                lab.kubectl(
                    "get", "events", "-n", NS, "--field-selector=reason=FailedCreatePodSandBox", "-o", "json"
                ).stdout
            )["items"]
            return pods <= {e["involvedObject"]["name"] for e in events}

        procs.wait_for(tried, timeout=120, what="the kubelet's first sandbox try for each pod")

    def delete_pods() -> None:
        lab.kubectl("delete", "pods", "--all", "-n", NS, "--grace-period=0", "--force", check=False)
        procs.wait_for(
            lambda: not json.loads(lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"],
            timeout=120,
            what="the pods gone",
        )

    work = Path(tempfile.mkdtemp(prefix="spiderpool-chain-"))
    samples: list[dict[str, dict[str, str]]] = []
    for i in range(n):
        sample = {}
        for c, label in enumerate(CHAINS):
            pod = f"p{i:03d}-{c}" if c in NEEDS_POD else f"hl{i:03d}-{c}"
            sample[label] = {
                "pod": pod,
                "uid": f"hl-{i}",  # (a pod's uid once it is created)
                "container_id": secrets.token_hex(32),
                "netns": f"{lab.prefix}-pod-chain{c}{i:03d}",
            }
        samples.append(sample)
    ours = {s["container_id"] for sample in samples for s in sample.values()}

    def phase(name: str, batch: list[dict[str, dict[str, str]]]) -> dict[str, list[float]]:
        spec = {
            "chains": chains(work),
            "samples": batch,
            "bin_dir": str(lab.node("node1").cni_bin_dir),
            "cache_dir": str(work / "cache"),
            "out": str(work / "out.json"),
        }
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(spec))
        argv = lab.exec_argv("node1", [sys.executable, __file__, "--inner", name, "--spec", str(spec_file)])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"{name} phase failed:\n{out.stderr[-3000:]}")
        timings: dict[str, list[float]] = json.loads((work / "out.json").read_text())
        return timings

    def add_phase() -> dict[str, list[float]]:
        """ADD for every sample, BATCH samples' pods at a time."""
        adds: dict[str, list[float]] = {label: [] for label in CHAINS}
        for first in range(0, n, BATCH):
            batch = samples[first : first + BATCH]
            uids = create_pods(first, first + len(batch))
            settled(set(uids))
            for sample in batch:
                for s in sample.values():
                    s["uid"] = uids.get(s["pod"], s["uid"])
            for label, times in phase("add", batch).items():
                adds[label] += times
            foreign = [
                r["metadata"]["name"]
                for r in json.loads(lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
                if r["spec"]["pool"] == POOL and r["spec"].get("containerID") not in ours
            ]
            if foreign:  # the kubelet ran a sandbox after all: those ADDs were not this script's
                raise RuntimeError(f"records of sandboxes this script did not run: {foreign}")
            if first + BATCH < n:
                delete_pods()
        return adds

    def agent_seconds() -> dict[str, float]:
        """node1's agent: total seconds and count of allocations and releases (to split the plugin's
        time between the agent and the rest)."""
        argv = lab.exec_argv("node1", ["curl", "-s", "http://127.0.0.1:5711/metrics"])
        text = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        out = {}
        for what in ("allocation", "release"):
            for part in ("sum", "count"):
                m = re.search(rf"^spiderpool_ipam_{what}_duration_seconds_{part} ([0-9.e+-]+)$", text, re.M)
                out[f"{what}_{part}"] = float(m.group(1)) if m else 0.0
        return out

    def agent_ms(before: dict[str, float], after: dict[str, float], what: str) -> float:
        count = after[f"{what}_count"] - before[f"{what}_count"]
        return round((after[f"{what}_sum"] - before[f"{what}_sum"]) / max(1.0, count) * 1000, 1)

    try:
        say(f"ADD: {n} samples of each chain, interleaved, {BATCH} samples' pods at a time")
        m0 = agent_seconds()
        adds = add_phase()
        m1 = agent_seconds()
        say("deleting the pods, then DEL for every sandbox")
        delete_pods()
        m2 = agent_seconds()
        dels = phase("del", samples)
        m3 = agent_seconds()
        left = [
            r
            for r in json.loads(lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
            if r["spec"]["pool"] == POOL
        ]
    finally:
        phase("clean", samples)
        lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=300s", check=False)
        lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=120s", check=False)
        lab.kubectl("delete", "runtimeclass", RUNTIME_CLASS, check=False)
        spiderpool_down(lab, installed)

    base = CHAINS[0]
    result: dict[str, Any] = {
        "samples": n,
        "records_left_after_del": len(left),
        "agent_mean_ms": {"allocation": agent_ms(m0, m1, "allocation"), "release": agent_ms(m2, m3, "release")},
    }
    for label in CHAINS:
        result[label] = {
            "add_ms": {"p50": round(pct(adds[label], 0.5) * 1000, 1), "p99": round(pct(adds[label], 0.99) * 1000, 1)},
            "del_ms": {"p50": round(pct(dels[label], 0.5) * 1000, 1), "p99": round(pct(dels[label], 0.99) * 1000, 1)},
            "add_over_baseline_p50": round(statistics.median(adds[label]) / statistics.median(adds[base]), 2),
            "del_over_baseline_p50": round(statistics.median(dels[label]) / statistics.median(dels[base]), 2),
        }
    # the plugin against the reference IPAM, each exec'd alone (what issue 29's goal compares)
    hl, sp = ALONE
    result["spiderpool alone over host-local alone"] = {
        "add_p50": round(statistics.median(adds[sp]) / statistics.median(adds[hl]), 2),
        "del_p50": round(statistics.median(dels[sp]) / statistics.median(dels[hl]), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
