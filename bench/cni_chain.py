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
ADD: into a fresh network namespace, for a pod that exists. DEL: after the pods are deleted, as a
runtime tears a deleted pod's sandbox down (the addresses are released). Prints p50/p99 per chain and
the ratios to the baseline.

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
NODE = "bench-chain"  # pods bound to a node without a kubelet: only this script runs their sandboxes
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
    ap.add_argument("--inner", choices=("add", "del"), help=argparse.SUPPRESS)
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
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(node))
    ann = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})}
    names = [f"p{i:03d}-{c}" for i in range(n) for c in sorted(NEEDS_POD)]
    items = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "annotations": ann},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
        for name in names
    ]
    lab.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    listed = json.loads(lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in listed}

    work = Path(tempfile.mkdtemp(prefix="spiderpool-chain-"))
    samples = []
    for i in range(n):
        sample = {}
        for c, label in enumerate(CHAINS):
            pod = f"p{i:03d}-{c}" if c in NEEDS_POD else f"hl{i:03d}-{c}"
            sample[label] = {
                "pod": pod,
                "uid": uids.get(pod, f"hl-{i}"),
                "container_id": secrets.token_hex(32),
                "netns": f"{lab.prefix}-pod-chain{c}{i:03d}",
            }
        samples.append(sample)
    spec = {
        "chains": chains(work),
        "samples": samples,
        "bin_dir": str(lab.node("node1").cni_bin_dir),
        "cache_dir": str(work / "cache"),
        "out": str(work / "out.json"),
    }
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec))

    def phase(name: str) -> dict[str, list[float]]:
        argv = lab.exec_argv("node1", [sys.executable, __file__, "--inner", name, "--spec", str(spec_file)])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"{name} phase failed:\n{out.stderr[-3000:]}")
        timings: dict[str, list[float]] = json.loads((work / "out.json").read_text())
        return timings

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
        say(f"ADD: {n} samples of each chain, interleaved")
        m0 = agent_seconds()
        adds = phase("add")
        m1 = agent_seconds()
        say("deleting the pods, then DEL for every sandbox")
        lab.kubectl("delete", "pods", "--all", "-n", NS, "--grace-period=0", "--force", check=False)
        procs.wait_for(
            lambda: not json.loads(lab.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"],
            timeout=120,
            what="the pods gone",
        )
        m2 = agent_seconds()
        dels = phase("del")
        m3 = agent_seconds()
        left = [
            r
            for r in json.loads(lab.kubectl("get", "spideripallocations", "-o", "json").stdout)["items"]
            if r["spec"]["pool"] == POOL
        ]
    finally:
        for sample in samples:
            for s in sample.values():
                netns.delete(s["netns"])
        lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=300s", check=False)
        lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=120s", check=False)
        lab.kubectl("delete", "node", NODE, check=False)
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
