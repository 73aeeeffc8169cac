"""`kubectl spiderpool who-has IP`: the record that holds an address (records are named after their
IP, so it is one read), or why nobody can: excluded, reserved, free, or in no pool at all. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from spiderpool.ipam.ranges import IPSet, RangeError
from spiderpool.ipam.selection import pool_family

Obj = Mapping[str, Any]


def _set(ranges: Iterable[str], family: int) -> IPSet:
    try:
        return IPSet.parse(family, list(ranges))
    except RangeError:
        return IPSet(family)


def who_has(
    ip: str,
    record: Obj | None,
    pools: Iterable[Obj],
    subnets: Iterable[Obj],
    reserved: Iterable[Obj],
    pod_uid: str | None = None,
) -> dict[str, Any]:
    """What is known of ``ip``: ``state`` is one of allocated, quarantined, free, excluded, reserved,
    unpooled; the rest says by whom and where. ``pod_uid``: the live pod's UID of the record's pod
    name, if there is one (a different UID means the record outlived its pod)."""
    addr = ipaddress.ip_address(ip)
    family = addr.version
    out: dict[str, Any] = {"ip": ip}
    in_pools: list[str] = []
    excluded_by: list[str] = []
    for pool in pools:
        if pool_family(pool) != family:
            continue
        spec = pool.get("spec") or {}
        name = str(pool["metadata"]["name"])
        if ip in _set(spec.get("ips") or [], family):
            (excluded_by if ip in _set(spec.get("excludeIPs") or [], family) else in_pools).append(name)
    reserved_by = [
        str(r["metadata"]["name"])
        for r in reserved
        if (r.get("spec") or {}).get("ipVersion", family) == family
        and ip in _set((r.get("spec") or {}).get("ips") or [], family)
    ]
    in_subnets = [
        str(s["metadata"]["name"])
        for s in subnets
        if pool_family(s) == family and ip in _set((s.get("spec") or {}).get("ips") or [], family)
    ]
    out.update(pools=in_pools, excludedBy=excluded_by, reservedBy=reserved_by, subnets=in_subnets)
    if record is not None:
        spec = record.get("spec") or {}
        out.update(
            pool=spec.get("pool"),
            namespace=spec.get("namespace"),
            pod=spec.get("pod"),
            podUID=spec.get("podUID") or None,
            node=spec.get("node"),
            interface=spec.get("interface"),
            since=record["metadata"].get("creationTimestamp"),
            record=record["metadata"]["name"],
        )
        if spec.get("quarantineUntil"):
            out.update(
                state="quarantined",
                quarantineUntil=spec["quarantineUntil"],
                releaseReason=spec.get("releaseReason") or None,
                explanation=(
                    f"taken back from pod {spec.get('namespace')}/{spec.get('pod')}"
                    f" ({spec.get('releaseReason') or 'no reason recorded'}); held for nobody until"
                    f" {spec['quarantineUntil']}, then released"
                ),
            )
        else:
            out["state"] = "allocated"
            alive = pod_uid is not None and pod_uid == spec.get("podUID")
            out["podAlive"] = alive
            out["explanation"] = f"held by pod {spec.get('namespace')}/{spec.get('pod')} on node {spec.get('node')}" + (
                "" if alive else "; that pod is gone (the garbage collector releases it; see `leaks`)"
            )
        return out
    if reserved_by:
        out.update(
            state="reserved", explanation=f"reserved by SpiderReservedIP {', '.join(reserved_by)}: never handed out"
        )
    elif in_pools:
        out.update(state="free", explanation=f"free in SpiderIPPool {', '.join(in_pools)}")
    elif excluded_by:
        out.update(
            state="excluded",
            explanation=f"in spec.excludeIPs of SpiderIPPool {', '.join(excluded_by)}: never handed out",
        )
    elif in_subnets:
        out.update(
            state="unpooled",
            explanation=f"offered by SpiderSubnet {', '.join(in_subnets)} but in no SpiderIPPool yet",
        )
    else:
        out.update(state="unpooled", explanation="in no SpiderIPPool and no SpiderSubnet")
    return out
