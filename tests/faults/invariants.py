"""What the fault matrix's checker judges in every sample, as pure functions of what it read: the
storm's pods and records from the API, and the addresses configured in the network namespaces of
every node's pods (the data plane, where a duplicate is a real outage).

The invariants:
- **no IP on two live pods**: by the pods' status, by the records (one record per IP, and no pod
  holds two for one interface), and on the wire (no address in two pod network namespaces);
- **every Running pod has exactly its NICs' IPs**: a record for its IP, in its name and UID;
- **the records match the pods**: a record of a live pod names the IP that pod has.

A problem counts only when it is seen in two samples in a row: each sample reads the pods and the
records one after the other, and an ADD or a release can fall between the two reads.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    at: float
    pods: list[dict[str, Any]]
    records: list[dict[str, Any]]
    #: node -> pod network namespace -> IPv4 addresses in it (None: the node could not be read)
    netns: dict[str, dict[str, set[str]] | None] = field(default_factory=dict)


def live(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and pod.get("status", {}).get("phase") in (
        "Pending",
        "Running",
    )


def running(pod: dict[str, Any]) -> bool:
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions") or []
    )
    return live(pod) and pod["status"].get("phase") == "Running" and ready and bool(pod["status"].get("podIP"))


def pod_ips(pod: dict[str, Any]) -> set[str]:
    return {str(p["ip"]) for p in pod.get("status", {}).get("podIPs") or [] if p.get("ip")}


def problems(sample: Sample, network: str) -> set[str]:
    """Every invariant broken in this sample, each as a stable key (so two samples can be matched).
    ``network``: the storm pool's subnet; addresses outside it are not the storm's."""
    net = ipaddress.ip_network(network)
    out: set[str] = set()
    holders: dict[str, list[str]] = {}
    for pod in sample.pods:
        if live(pod):
            for ip in pod_ips(pod):
                holders.setdefault(ip, []).append(pod["metadata"]["name"])
    for ip, names in holders.items():
        if len(names) > 1:
            out.add(f"duplicate: {ip} on live pods {sorted(names)}")
    by_ip = {r["spec"]["ip"]: r["spec"] for r in sample.records}
    per_nic = Counter((r["spec"]["podUID"], r["spec"]["interface"]) for r in sample.records if r["spec"]["podUID"])
    for (uid, nic), n in per_nic.items():
        if n > 1:
            out.add(f"duplicate: pod uid {uid} holds {n} records for {nic}")
    seen: dict[str, list[str]] = {}
    for node, spaces in sample.netns.items():
        for space, ips in (spaces or {}).items():
            for ip in ips:
                if ipaddress.ip_address(ip) in net:
                    seen.setdefault(ip, []).append(f"{node}/{space}")
    for ip, where in seen.items():
        if len(where) > 1:
            out.add(f"duplicate: {ip} configured in {sorted(where)}")
    pods_by_uid = {p["metadata"]["uid"]: p for p in sample.pods}
    for live_pod in sample.pods:
        if not running(live_pod):
            continue
        meta = live_pod["metadata"]
        for ip in pod_ips(live_pod):
            spec = by_ip.get(ip)
            if spec is None:
                out.add(f"unrecorded: Running pod {meta['name']} has {ip}, which no record holds")
            elif spec["podUID"] != meta["uid"]:
                out.add(
                    f"misrecorded: Running pod {meta['name']} has {ip}, recorded for {spec['pod']} {spec['podUID']}"
                )
    for spec in by_ip.values():
        holder = pods_by_uid.get(spec["podUID"])
        if holder is not None and running(holder) and spec["ip"] not in pod_ips(holder):
            out.add(f"mismatch: record {spec['ip']} names pod {spec['pod']}, which has {sorted(pod_ips(holder))}")
    return out


def duplicates(found: set[str]) -> set[str]:
    return {p for p in found if p.startswith("duplicate:")}


def converged(sample: Sample, want: int) -> bool:
    """``want`` pods Running, none pending or terminating, each with its record (no problem)."""
    pods = [p for p in sample.pods if not p["metadata"].get("deletionTimestamp")]
    held = {(r["spec"]["ip"], r["spec"]["podUID"]) for r in sample.records}
    return (
        len(pods) == want
        and all(running(p) for p in pods)
        and all((ip, p["metadata"]["uid"]) in held for p in pods for ip in pod_ips(p))
    )


def orphans(sample: Sample) -> list[str]:
    """Records of the storm whose pod is gone (a DEL or GC still to come; leaks if they stay)."""
    uids = {p["metadata"]["uid"] for p in sample.pods}
    return [r["spec"]["ip"] for r in sample.records if r["spec"]["podUID"] and r["spec"]["podUID"] not in uids]


def parse_netns_addresses(text: str) -> dict[str, set[str]]:
    """``ip -all netns exec ip -o -4 addr show scope global`` output -> namespace -> addresses."""
    out: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("netns: "):
            current = line.split(":", 1)[1].strip()
            out.setdefault(current, set())
            continue
        words = line.split()
        if current and "inet" in words:
            out[current].add(words[words.index("inet") + 1].split("/")[0])
    return out
