"""`kubectl spiderpool leaks`: what the records and the pods disagree on. Pure: lists in, findings out.

Four kinds of finding:
- ``record-without-pod``: a record whose pod is gone, re-created, finished, or stuck terminating on a
  node that is down, judged by GC's own rule (``spiderpool.ipam.gc.judge``), so this command and
  the garbage collector agree; a record younger than GC's ``min_age`` is not judged (an ADD may be
  in flight), nor one in quarantine until its quarantine is over by ``min_age`` (GC frees it then).
- ``ip-without-record``: a live pod holds an address of one of our pools (on its SpiderEndpoint, in
  ``status.podIPs`` or in Multus' network-status) that no record holds, or whose record names
  another pod. Addresses no pool hands out (another CNI's) are not ours to report.
- ``pool-status``: a pool's status (``allocatedIPCount``, ``allocatedIPs``, ``totalIPCount``) says
  other than its records and spec.
- ``netns-address``: an address of our pools configured in a pod network namespace of a node
  (the node's agent lists them) that no record holds.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from spiderpool.api.objects import RecordSpec
from spiderpool.cli.leaks_model import (
    ADOPT,
    IP_WITHOUT_RECORD,
    KIND_TITLES,
    KINDS,
    NETNS_ADDRESS,
    NETWORK_STATUS,
    POOL_STATUS,
    QUARANTINE,
    RECORD,
    RECORD_WITHOUT_POD,
    RECOUNT,
    RELEASE,
    Cluster,
    Finding,
    Obj,
    _ip,
    _ip_order,
    _key,
    age,
    handed_out,
    lease_ages,
    pod_alive,
    pools_of,
)
from spiderpool.cli.leaks_status import (
    pool_status,
    status_differs,
    status_drift,
    status_patch,
)
from spiderpool.ipam import gc
from spiderpool.ipam.allocate import record_name
from spiderpool.ipam.ranges import IPSet

#: what callers and tests use from here (the vocabulary is in leaks_model, kind 3 in leaks_status)
__all__ = [
    "ADOPT",
    "IP_WITHOUT_RECORD",
    "KINDS",
    "KIND_TITLES",
    "NETNS_ADDRESS",
    "NETWORK_STATUS",
    "POOL_STATUS",
    "QUARANTINE",
    "RECORD",
    "RECORD_WITHOUT_POD",
    "RECOUNT",
    "RELEASE",
    "Cluster",
    "Finding",
    "PodAddress",
    "adoption",
    "age",
    "agent_pod",
    "cast_obj",
    "find",
    "handed_out",
    "holders_elsewhere",
    "ips_without_record",
    "lease_ages",
    "netns_addresses",
    "pod_addresses",
    "pod_alive",
    "pool_status",
    "records_without_pod",
    "status_differs",
    "status_drift",
    "status_patch",
    "summary",
    "summary_line",
    "table_rows",
]


# --- kind 1: records without a live pod


def _record_detail(verdict: gc.Verdict, spec: Obj, pod: Obj | None, sts_name: str, lease_age: float | None) -> str:
    holder = f"pod {spec.get('namespace')}/{spec.get('pod')}"
    node = spec.get("node") or "(none)"
    texts = {
        "pod_deleted": f"{holder} is gone",
        "pod_recreated": f"{holder} was re-created (uid {(pod or {}).get('metadata', {}).get('uid')}; the record"
        f" names {spec.get('podUID')})",
        "statefulset_scaled_down": f"{holder} is gone and StatefulSet {spec.get('namespace')}/{sts_name} no longer"
        " has its ordinal",
        "statefulset_deleted": f"{holder} is gone and so is its StatefulSet {spec.get('namespace')}/{sts_name}",
        "pod_completed": f"{holder} has finished ({((pod or {}).get('status') or {}).get('phase')})",
        "node_deleted": f"{holder} is terminating on node {node}, which is gone",
        "node_out_of_service": f"{holder} is terminating on node {node}, which is out of service",
        "node_lost": f"{holder} is terminating on node {node}, whose Lease is {int(lease_age or 0)}s old",
        "terminating_pod_stopped": f"{holder} is terminating and its containers have stopped",
    }
    text = texts.get(verdict.reason, f"{holder}: {verdict.reason}")
    if verdict.quarantine:
        return text + "; GC would quarantine the address (the pod may still run somewhere)"
    return text + "; GC would release the address"


def records_without_pod(
    records: Iterable[Obj],
    pods: Iterable[Obj],
    nodes: Iterable[Obj],
    statefulsets: Iterable[Obj],
    leases: Mapping[str, float],
    now: float,
    settings: gc.Settings,
    namespace: str | None = None,
) -> list[Finding]:
    """Records GC would take back, judged as GC judges them (``now`` on the apiserver's clock)."""
    pods_by = {_key(p): p for p in pods}
    nodes_by = {str(n["metadata"]["name"]): n for n in nodes}
    sts_by = {_key(s): s for s in statefulsets}
    out = []
    for rec in records:
        spec = rec.get("spec") or {}
        ns, name = str(spec.get("namespace") or ""), str(spec.get("pod") or "")
        if namespace is not None and ns != namespace:
            continue
        common: dict[str, Any] = {
            "ip": str(spec.get("ip") or ""),
            "pool": str(spec.get("pool") or ""),
            "namespace": ns,
            "pod": name,
            "pod_uid": str(spec.get("podUID") or ""),
            "node": str(spec.get("node") or ""),
            "interface": str(spec.get("interface") or ""),
            "since": str((rec.get("metadata") or {}).get("creationTimestamp") or ""),
            "record": str((rec.get("metadata") or {}).get("name") or ""),
        }
        until = gc.parse_time(spec.get("quarantineUntil"))
        if until is not None:
            if now >= until + settings.min_age:  # GC frees it at its deadline: it has not
                over = int(now - until)
                detail = (
                    f"quarantined until {spec.get('quarantineUntil')} ({spec.get('releaseReason') or 'no reason'}),"
                    f" over for {over}s and not released: is spiderpool-controller leading?"
                )
                out.append(Finding(RECORD_WITHOUT_POD, "quarantine_over", detail, RELEASE, **common))
            continue
        node_name = str(spec.get("node") or "")
        lease_age = leases.get(node_name)
        health = gc.node_health(nodes_by.get(node_name), lease_age)
        sts_name = str(spec.get("ownerName") or "")
        sts = sts_by.get((ns, sts_name))
        pod = pods_by.get((ns, name))
        verdict = gc.judge(rec, pod, health, sts, now, settings)
        if not verdict.release:
            continue
        detail = _record_detail(verdict, spec, pod, sts_name, lease_age)
        action = QUARANTINE if verdict.quarantine else RELEASE
        out.append(Finding(RECORD_WITHOUT_POD, verdict.reason, detail, action, **common))
    return sorted(out, key=lambda f: _ip_order(f.ip))


# --- kind 2: pod addresses without a record


@dataclass(frozen=True)
class PodAddress:
    ip: str
    interface: str
    #: the pool the pod's SpiderEndpoint names for it ("" when only seen elsewhere)
    pool: str = ""
    clean_gateway: bool = False


def pod_addresses(pod: Obj, endpoint: Obj | None) -> list[PodAddress]:
    """The addresses a pod is known to hold: its SpiderEndpoint (when it is this pod's, not a
    predecessor's), Multus' network-status annotation, ``status.podIPs`` (its first NIC, eth0)."""
    found: dict[str, PodAddress] = {}
    uid = (pod.get("metadata") or {}).get("uid")
    current = ((endpoint or {}).get("status") or {}).get("current") or {}
    if endpoint is not None and current.get("uid") == uid:
        for nic in current.get("ips") or []:
            for fam in ("ipv4", "ipv6"):
                ip = _ip(str(nic.get(fam) or ""))
                if ip:
                    found[ip] = PodAddress(
                        ip,
                        str(nic.get("interface") or ""),
                        str(nic.get(f"{fam}Pool") or ""),
                        bool(nic.get("cleanGateway")),
                    )
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(NETWORK_STATUS)
    try:
        statuses = json.loads(raw) if raw else []
    except ValueError:
        statuses = []
    for entry in statuses if isinstance(statuses, list) else []:
        if not isinstance(entry, dict):
            continue
        for text in entry.get("ips") or []:
            ip = _ip(str(text))
            if ip and ip not in found:
                found[ip] = PodAddress(ip, str(entry.get("interface") or "eth0"))
    for item in (pod.get("status") or {}).get("podIPs") or []:
        ip = _ip(str((item or {}).get("ip") or ""))
        if ip and ip not in found:
            found[ip] = PodAddress(ip, "eth0")
    return sorted(found.values(), key=lambda a: _ip_order(a.ip))


def _owner(pod: Obj) -> tuple[str, str]:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind") or ""), str(ref.get("name") or "")
    return "", ""


def ips_without_record(
    pods: Iterable[Obj],
    endpoints: Iterable[Obj],
    records: Iterable[Obj],
    handed: Mapping[str, IPSet],
    namespace: str | None = None,
) -> list[Finding]:
    """Live pods' addresses of our pools that no record holds for them."""
    pod_list = list(pods)
    by_uid = {str(p["metadata"].get("uid")): p for p in pod_list}
    endpoints_by = {_key(e): e for e in endpoints}
    records_by_ip = {str(_ip(str((r.get("spec") or {}).get("ip") or ""))): r for r in records}
    out = []
    for pod in sorted(pod_list, key=_key):
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        ns, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))
        if namespace is not None and ns != namespace:
            continue
        if spec.get("hostNetwork") or not pod_alive(pod):
            continue
        for addr in pod_addresses(pod, endpoints_by.get((ns, name))):
            pools = pools_of(addr.ip, handed)
            if not pools:
                continue  # another CNI's address
            pool = addr.pool if addr.pool in pools else (pools[0] if len(pools) == 1 else "")
            common: dict[str, Any] = {
                "ip": addr.ip,
                "pool": pool or ",".join(pools),
                "namespace": ns,
                "pod": name,
                "pod_uid": uid,
                "node": str(spec.get("nodeName") or ""),
                "interface": addr.interface,
                "since": str(meta.get("creationTimestamp") or ""),
                "record": record_name(addr.ip),
            }
            rec = records_by_ip.get(addr.ip)
            ambiguous = "" if pool else f"; it is in pools {', '.join(pools)}: which one is ambiguous, so not fixed"
            if rec is None:
                detail = f"pod {ns}/{name} holds it on {addr.interface} and no SpiderIPAllocation does" + ambiguous
                out.append(Finding(IP_WITHOUT_RECORD, "no_record", detail, RECORD if pool else "", **common))
                continue
            rspec = rec.get("spec") or {}
            if rspec.get("podUID") == uid:
                continue
            if rspec.get("releaseReason") == "ip_conflict":
                detail = (
                    f"pod {ns}/{name} still shows it on {addr.interface}, but another host answered for it: its"
                    " record is quarantined (ip_conflict) and the pod's next sandbox gets another address"
                )
                out.append(Finding(IP_WITHOUT_RECORD, "ip_conflict", detail, "", **common))
                continue
            holder_uid = str(rspec.get("podUID") or "")
            holder = by_uid.get(holder_uid) if holder_uid else None
            other = f"{rspec.get('namespace')}/{rspec.get('pod')}"
            common["pool"] = str(rspec.get("pool") or common["pool"])
            if holder is not None and (pod_alive(holder) or not _stopped(holder)):
                detail = (
                    f"pod {ns}/{name} holds it on {addr.interface}, and its record is pod {other}'s, which is alive"
                    " too: two pods hold one address; delete one of them"
                )
                out.append(Finding(IP_WITHOUT_RECORD, "held_twice", detail, "", **common))
                continue
            was = (
                f"quarantined from pod {other} until {rspec.get('quarantineUntil')}"
                if rspec.get("quarantineUntil")
                else f"pod {other}'s (uid {holder_uid}), which is gone"
            )
            detail = f"pod {ns}/{name} holds it on {addr.interface}, but its record is {was}"
            out.append(Finding(IP_WITHOUT_RECORD, "recorded_for_another_pod", detail, ADOPT, **common))
    return out


def _stopped(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") or gc.containers_stopped(pod)


def adoption(pod: Obj, finding: Finding, endpoint_clean_gateway: bool = False) -> RecordSpec:
    """The record the pod would have had: its address, pool and NIC, its node and owner."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    kind, name = _owner(pod)
    return {
        "ip": finding.ip,
        "pool": finding.pool,
        "ipVersion": ipaddress.ip_address(finding.ip).version,
        "namespace": str(meta.get("namespace")),
        "pod": str(meta.get("name")),
        "podUID": str(meta.get("uid")),
        "interface": finding.interface or "eth0",
        "node": str(spec.get("nodeName") or ""),
        "containerID": "",
        "cleanGateway": endpoint_clean_gateway,
        "ownerKind": kind,
        "ownerName": name,
    }


# --- kind 4: what a node's agent sees in its pod namespaces


def netns_addresses(
    answer: Obj,
    records: Iterable[Obj],
    handed: Mapping[str, IPSet],
    node: str,
    reported: Iterable[str] = (),
) -> tuple[list[Finding], list[str]]:
    """Addresses of our pools in the node's pod namespaces that no record holds (none of those in
    ``reported``: already a finding of another kind), and the agent's warnings."""
    recorded = {str(_ip(str((r.get("spec") or {}).get("ip") or ""))) for r in records}
    skip = set(reported)
    out: list[Finding] = []
    warnings = []
    if answer.get("error"):
        warnings.append(f"node {node}: {answer['error']}")
    if answer.get("truncated"):
        warnings.append(f"node {node}: {answer['truncated']} pod namespaces were not read (limit or deadline)")
    seen: set[str] = set()
    for ns in answer.get("namespaces") or []:
        if ns.get("error"):
            warnings.append(f"node {node}: netns {ns.get('name')}: {ns['error']}")
            continue
        for iface in ns.get("interfaces") or []:
            for text in iface.get("addresses") or []:
                ip = _ip(str(text))
                if ip is None or ip in recorded or ip in skip or ip in seen:
                    continue
                pools = pools_of(ip, handed)
                if not pools:
                    continue  # another CNI's
                seen.add(ip)
                detail = (
                    f"configured on {iface.get('name')} in netns {ns.get('name')} of node {node}, and no"
                    " SpiderIPAllocation holds it (only reported: an address in a namespace cannot be proven ours)"
                )
                out.append(
                    Finding(
                        NETNS_ADDRESS,
                        "unrecorded",
                        detail,
                        "",
                        ip=ip,
                        pool=",".join(pools),
                        node=node,
                        interface=str(iface.get("name") or ""),
                    )
                )
    return sorted(out, key=lambda f: _ip_order(f.ip)), warnings


# --- all of them


def find(
    cluster: Cluster,
    now: float,
    settings: gc.Settings,
    namespace: str | None = None,
) -> list[Finding]:
    """Kinds 1 to 3. A record whose address a live pod holds is that pod's to adopt, not GC's to
    take: it is reported once, as ``ip-without-record``. With ``namespace``, the pools looked at are
    those its records and its pods' addresses are in."""
    handed = handed_out(cluster.pools, cluster.reserved)
    unrecorded = ips_without_record(cluster.pods, cluster.endpoints, cluster.records, handed, namespace)
    adopted = {f.ip for f in unrecorded}
    orphans = [
        f
        for f in records_without_pod(
            cluster.records,
            cluster.pods,
            cluster.nodes,
            cluster.statefulsets,
            cluster.lease_ages,
            now,
            settings,
            namespace,
        )
        if f.ip not in adopted
    ]
    only: set[str] | None = None
    if namespace is not None:
        only = {str((r.get("spec") or {}).get("pool")) for r in cluster.records if _in(r, namespace)}
        only |= {p for f in unrecorded for p in f.pool.split(",") if p}
    drift = status_drift(cluster.pools, cluster.records, now, settings.min_age, only)
    return orphans + unrecorded + drift


def _in(record: Obj, namespace: str) -> bool:
    return (record.get("spec") or {}).get("namespace") == namespace


def summary(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for f in findings:
        counts[f.kind] += 1
    return counts


def summary_line(findings: list[Finding], scope: str = "") -> str:
    where = f" ({scope})" if scope else ""
    if not findings:
        return f"No leaks found{where}."
    counts = summary(findings)
    parts = [f"{n} {KIND_TITLES[k][n > 1]}" for k, n in counts.items() if n]
    return f"{len(findings)} finding{'s' if len(findings) > 1 else ''}{where}: " + ", ".join(parts) + "."


def table_rows(findings: Iterable[Finding], now: float, *, wide: bool) -> tuple[list[str], list[list[Any]]]:
    headers = ["KIND", "IP", "POOL", "POD", "NODE", "AGE", "REASON"]
    if wide:
        headers += ["INTERFACE", "POD UID", "FIX", "DETAIL"]
    rows = []
    for f in findings:
        row: list[Any] = [f.kind, f.ip, f.pool, f.holder, f.node, age(f.since, now), f.reason]
        if wide:
            row += [f.interface, f.pod_uid, f.action or "(report only)", f.detail]
        rows.append(row)
    return headers, rows


def cast_obj(value: Any) -> Obj:
    """A JSON object (the agent's answer) as a mapping; anything else as an empty one."""
    return cast(Obj, value) if isinstance(value, dict) else {}


# --- which pods to read besides those of the namespace, which agent to ask


def holders_elsewhere(cluster: Cluster, namespace: str) -> set[tuple[str, str]]:
    """The pods of other namespaces that the records of this namespace's pods' addresses name: read
    them too, so that an address held twice is not mistaken for one to adopt."""
    records_by_ip = {str((r.get("spec") or {}).get("ip")): r for r in cluster.records}
    endpoints_by = {_key(e): e for e in cluster.endpoints}
    out = set()
    for pod in cluster.pods:
        if _key(pod)[0] != namespace:
            continue
        for addr in pod_addresses(pod, endpoints_by.get(_key(pod))):
            spec = (records_by_ip.get(addr.ip) or {}).get("spec") or {}
            if spec.get("pod") and spec.get("namespace") != namespace:
                out.add((str(spec["namespace"]), str(spec["pod"])))
    return out


def agent_pod(pods: Iterable[Obj]) -> Obj | None:
    """The node's agent pod: a running one not being deleted first, the newest first."""

    def rank(p: Obj) -> tuple[bool, bool, str]:
        meta = p.get("metadata") or {}
        running = (p.get("status") or {}).get("phase") == "Running"
        return (running, not meta.get("deletionTimestamp"), str(meta.get("creationTimestamp") or ""))

    ordered = sorted(pods, key=rank, reverse=True)
    return ordered[0] if ordered else None
