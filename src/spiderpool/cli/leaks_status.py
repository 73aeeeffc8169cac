"""`kubectl spiderpool leaks`, kind 3: a pool's status that says other than its records and spec,
and the compare-and-swap patch that mends it. Pure."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from spiderpool.cli.leaks_model import (
    POOL_STATUS,
    RECOUNT,
    SHOWN,
    Finding,
    Obj,
    _ip_order,
)
from spiderpool.cli.usage import usable_ips
from spiderpool.ipam import gc
from spiderpool.ipam.holders import holders

# --- kind 3: pool status


def pool_status(pool: Obj, records: Iterable[Obj]) -> dict[str, Any]:
    """The pool's status as the controller derives it from its records (``controller.status.pool_status``)."""
    name = str((pool.get("metadata") or {}).get("name"))
    allocated = holders(records, quarantined=False).get(name, {})
    ips = usable_ips(pool)
    return {
        "allocatedIPs": json.dumps(allocated, sort_keys=True) if allocated else None,
        "allocatedIPCount": len(allocated),
        "totalIPCount": ips.count() if ips is not None else 0,
    }


def _listed(status: Obj) -> set[str] | None:
    raw = status.get("allocatedIPs")
    if not raw:
        return set()
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return {str(k) for k in value} if isinstance(value, dict) else None


def _some(ips: Iterable[str]) -> str:
    ordered = sorted(ips, key=_ip_order)
    more = f" and {len(ordered) - SHOWN} more" if len(ordered) > SHOWN else ""
    return ", ".join(ordered[:SHOWN]) + more


def status_drift(
    pools: Iterable[Obj],
    records: Iterable[Obj],
    now: float,
    min_age: float,
    only: set[str] | None = None,
) -> list[Finding]:
    """Pools whose status differs from their records (count and addresses) or spec (total).

    A difference the controller is about to write away is none: records younger than ``min_age``
    missing from the status (it batches), a pool younger than that with no status yet."""
    by_pool: dict[str, list[Obj]] = {}
    for rec in records:
        by_pool.setdefault(str((rec.get("spec") or {}).get("pool")), []).append(rec)
    out = []
    for pool in sorted(pools, key=lambda p: str(p["metadata"]["name"])):
        meta = pool.get("metadata") or {}
        name = str(meta.get("name"))
        if only is not None and name not in only:
            continue
        mine = by_pool.get(name, [])
        want = pool_status(pool, mine)
        have = pool.get("status") or {}
        common: dict[str, Any] = {"pool": name, "since": str(meta.get("creationTimestamp") or "")}
        created = gc.parse_time(str(meta.get("creationTimestamp") or ""))
        if not have:
            if created is not None and now - created < min_age:
                continue
            detail = f"no status, the records {want['allocatedIPCount']}: is spiderpool-controller running?"
            out.append(Finding(POOL_STATUS, "no_status", detail, RECOUNT, **common))
            continue
        young = set()
        for rec in mine:
            born = gc.parse_time(str((rec.get("metadata") or {}).get("creationTimestamp") or ""))
            if born is not None and now - born < min_age:
                young.add(str((rec.get("spec") or {}).get("ip")))
        # (what a pod holds: a quarantined address is in no pool's status, ipam.holders)
        recorded = set(holders(mine, quarantined=False).get(name, {}))
        listed = _listed(have)
        count = have.get("allocatedIPCount")
        problems = []
        extra, missing = (listed - recorded, recorded - listed) if listed is not None else (set(), set())
        # (records the controller has not counted yet, and nothing else: it is about to)
        catching_up = listed is not None and not extra and missing <= young and count == len(listed)
        if listed is None:
            problems.append("status.allocatedIPs does not parse")
        elif not catching_up:
            if extra:
                problems.append(f"status.allocatedIPs lists {_some(extra)} without a record")
            if missing:
                problems.append(f"status.allocatedIPs misses {_some(missing)}")
        if count != want["allocatedIPCount"] and not catching_up:
            problems.append(f"status says {count} allocated, the records {want['allocatedIPCount']}")
        if have.get("totalIPCount") != want["totalIPCount"]:
            problems.append(f"status says {have.get('totalIPCount')} in total, the spec {want['totalIPCount']}")
        if problems:
            reason = "count_differs" if count != want["allocatedIPCount"] and not catching_up else "status_differs"
            out.append(Finding(POOL_STATUS, reason, "; ".join(problems), RECOUNT, **common))
    return out


def status_patch(pool: Obj, want: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that writes ``want`` only if the pool is still the one read (compare-and-swap)."""
    return {"metadata": {"resourceVersion": str(pool["metadata"]["resourceVersion"])}, "status": dict(want)}


def status_differs(pool: Obj, want: Mapping[str, Any]) -> bool:
    have = pool.get("status") or {}
    return any(have.get(k) != v for k, v in want.items())
