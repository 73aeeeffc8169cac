"""The upstream-style consistency check of the IPAM state, as a user would run it with kubectl:
every record's pod exists with that UID and that IP; pool and subnet counts equal the records;
no IP in two pools."""

from __future__ import annotations

import json
from typing import Any

from spiderpool.ipam.gc import statefulset_wants
from spiderpool.ipam.ranges import IPSet, RangeError
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json


def _ips(obj: dict[str, Any]) -> IPSet | None:
    spec = obj.get("spec", {})
    family = int(spec.get("ipVersion") or (6 if ":" in str(spec.get("subnet", "")) else 4))
    try:
        return IPSet.parse(family, spec.get("ips") or []).difference(IPSet.parse(family, spec.get("excludeIPs") or []))
    except RangeError:
        return None


def _pod_ips(pod: dict[str, Any]) -> set[str]:
    out = {str(p.get("ip")) for p in pod.get("status", {}).get("podIPs") or []}
    raw = (pod["metadata"].get("annotations") or {}).get("k8s.v1.cni.cncf.io/network-status")
    if raw:
        try:
            for net in json.loads(raw):
                out.update(str(ip) for ip in net.get("ips") or [])
        except ValueError:
            pass
    return out


def problems(lab: Lab) -> list[str]:
    records = get_json(lab, "spideripallocations")["items"]
    all_pods = get_json(lab, "pods", "--all-namespaces")["items"]
    pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in all_pods}
    sts = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s
        for s in get_json(lab, "statefulsets", "--all-namespaces")["items"]
    }
    pools = {p["metadata"]["name"]: p for p in get_json(lab, "spiderippools")["items"]}
    subnets = get_json(lab, "spidersubnets")["items"]
    out = []
    per_pool: dict[str, int] = {}
    for r in records:
        spec = r["spec"]
        if spec.get("quarantineUntil"):
            continue  # held for nobody, by design (and not counted in the pool's status)
        per_pool[spec["pool"]] = per_pool.get(spec["pool"], 0) + 1
        pod = pods.get((spec["namespace"], spec["pod"]))
        if pod is None or pod["metadata"]["uid"] != spec["podUID"]:
            owner = sts.get((spec["namespace"], spec.get("ownerName") or ""))
            if spec.get("ownerKind") == "StatefulSet" and statefulset_wants(owner, spec["pod"]):
                continue  # waiting for its successor
            out.append(f"record {spec['ip']}: pod {spec['namespace']}/{spec['pod']} uid {spec['podUID']} is gone")
        elif pod["metadata"].get("deletionTimestamp"):
            continue  # being torn down; its DEL releases it
        elif pod.get("status", {}).get("podIP") and spec["ip"] not in _pod_ips(pod):
            out.append(f"record {spec['ip']}: pod {spec['namespace']}/{spec['pod']} has {sorted(_pod_ips(pod))}")
    for name, pool in pools.items():
        count = pool.get("status", {}).get("allocatedIPCount") or 0
        if count != per_pool.get(name, 0):
            out.append(f"pool {name}: allocatedIPCount {count}, records {per_pool.get(name, 0)}")
    by_cidr: dict[str, list[tuple[str, IPSet]]] = {}
    for name, pool in pools.items():
        ips = _ips(pool)
        if ips is not None:
            by_cidr.setdefault(str(pool["spec"]["subnet"]), []).append((name, ips))
    for group in by_cidr.values():
        for i, (a, ia) in enumerate(group):
            for b, ib in group[i + 1 :]:
                if ia.overlaps(ib):
                    out.append(f"pools {a} and {b} share {ia.intersection(ib).to_ranges()}")
    for subnet in subnets:
        held = IPSet(4 if ":" not in str(subnet["spec"]["subnet"]) else 6)
        for _, ips in by_cidr.get(str(subnet["spec"]["subnet"]), []):
            held = held.union(ips)
        usable = _ips(subnet)
        want = held.intersection(usable).count() if usable is not None else 0
        have = subnet.get("status", {}).get("allocatedIPCount") or 0
        if have != want:
            out.append(f"subnet {subnet['metadata']['name']}: allocatedIPCount {have}, its pools hold {want}")
    return out
