"""Which of a StatefulSet predecessor's addresses its successor keeps. Pure.

A StatefulSet pod re-created under its name keeps its addresses, but only while the pools it now
names (its annotations, its namespace's or network's defaults, as ``plan_nic`` finds them) still
include the pool each address came from: a user who moves the application to another pool gets
addresses from that pool, and the old ones are released (upstream does the same since v0.9.4).
The agent and ``kubectl spiderpool why`` apply the same rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from spiderpool.ipam.selection import NicPlan

R = TypeVar("R", bound=Mapping[str, Any])


def allowed_pools(plan: NicPlan, family: int) -> tuple[str, ...]:
    """The pools the NIC may take a ``family`` address from now."""
    return next((c.pools for c in plan.families if c.family == family), ())


def _family(spec: Mapping[str, Any]) -> int:
    return int(spec.get("ipVersion") or ipaddress.ip_address(str(spec["ip"])).version)


def split_predecessors(plan: NicPlan, records: Iterable[R]) -> tuple[list[R], list[R]]:
    """(kept, moved): the records whose pool the plan still allows for their family, and the others.

    At most one address per family is kept (the first); a family the plan no longer has (the
    cluster or the pod dropped it) is moved out too."""
    kept: list[R] = []
    moved: list[R] = []
    families: set[int] = set()
    for record in records:
        spec = record["spec"]
        family = _family(spec)
        if family not in families and str(spec["pool"]) in allowed_pools(plan, family):
            kept.append(record)
            families.add(family)
        else:
            moved.append(record)
    return kept, moved


def move_reason(plan: NicPlan, spec: Mapping[str, Any]) -> str:
    """Why an address of a predecessor is not kept, for the pod's event and ``why``."""
    family = _family(spec)
    cand = next((c for c in plan.families if c.family == family), None)
    if cand is None:
        ip, nic = spec["ip"], spec["interface"]
        return f"IPv{family} address {ip} of interface {nic}: the pod takes no IPv{family} address now"
    where = ", ".join(cand.pools) or "none usable"
    return (
        f"IPv{family} address {spec['ip']} of interface {spec['interface']} came from pool {spec['pool']},"
        f" which the pod no longer names (pools from {cand.source}: {where})"
    )
