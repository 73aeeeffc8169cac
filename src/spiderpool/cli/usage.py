"""`kubectl spiderpool pools` and `subnets`: what each pool holds, counted from the records
(one object per held address), with the warnings an admin acts on. Pure: lists in, rows out."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spiderpool.ipam.autopool import A_DESIRED, owner_of
from spiderpool.ipam.ranges import IPSet, RangeError, usable
from spiderpool.ipam.selection import pool_family

#: over this share used, a pool is about to refuse pods
FULL_SHARE = 0.9
#: a finalizer still on a pool deleted this long ago with no record left is stuck
STALE_AFTER = datetime.timedelta(minutes=2)
BAR_WIDTH = 10

Obj = Mapping[str, Any]


def bar(used: int, total: int, width: int = BAR_WIDTH) -> str:
    """``▇▇▇▇▁▁ 40/60``: the share used, in blocks, then the counts."""
    filled = (width if used else 0) if total <= 0 else min(width, round(width * used / total))
    if used and not filled:
        filled = 1  # (one address used must not look like none)
    return "▇" * filled + "▁" * (width - filled) + f" {used}/{total}"


def usable_ips(obj: Obj) -> IPSet | None:
    """A pool's or subnet's usable addresses (ips less excludeIPs); None when its spec does not parse."""
    spec = obj.get("spec") or {}
    family = pool_family(obj)
    if family is None:
        return None
    try:
        return usable(spec.get("ips") or [], spec.get("excludeIPs") or [], family)
    except RangeError:
        return None


def _time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class PoolRow:
    name: str
    version: int | None
    subnet: str
    used: int
    total: int
    quarantined: int
    application: str
    desired: str
    nodes: str
    default: bool
    disabled: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ipVersion": self.version,
            "subnet": self.subnet,
            "allocated": self.used,
            "total": self.total,
            "free": self.free,
            "quarantined": self.quarantined,
            "application": self.application or None,
            "desiredIPNumber": int(self.desired) if self.desired.isdigit() else None,
            "nodes": self.nodes or None,
            "default": self.default,
            "disabled": self.disabled,
            "warnings": self.warnings,
        }


def pool_rows(pools: Iterable[Obj], records: Iterable[Obj], now: datetime.datetime) -> list[PoolRow]:
    """A row per pool, sorted by name. Counts come from the records; a status that says otherwise
    is a warning (the controller has not caught up, or something wrote it by hand)."""
    held: dict[str, int] = {}
    quarantined: dict[str, int] = {}
    for rec in records:
        spec = rec.get("spec") or {}
        of = str(spec.get("pool") or "")
        held[of] = held.get(of, 0) + 1
        if spec.get("quarantineUntil"):
            quarantined[of] = quarantined.get(of, 0) + 1
    ordered = sorted(pools, key=lambda p: str(p["metadata"]["name"]))
    sets = {str(p["metadata"]["name"]): usable_ips(p) for p in ordered}
    rows = []
    for pool in ordered:
        meta, spec, status = pool["metadata"], pool.get("spec") or {}, pool.get("status") or {}
        name = str(meta["name"])
        ips = sets[name]
        total = ips.count() if ips is not None else 0
        used = held.get(name, 0)
        owner = owner_of(pool)
        row = PoolRow(
            name=name,
            version=pool_family(pool),
            subnet=str(spec.get("subnet") or ""),
            used=used,
            total=total,
            quarantined=quarantined.get(name, 0),
            application="/".join(owner) if owner else "",
            desired=str((meta.get("annotations") or {}).get(A_DESIRED) or ""),
            nodes=",".join(spec.get("nodeName") or []) or ("(affinity)" if spec.get("nodeAffinity") else ""),
            default=bool(spec.get("default")),
            disabled=bool(spec.get("disable")),
        )
        if ips is None:
            row.warnings.append("spec does not parse: check ips, excludeIPs and subnet")
        if total and used / total > FULL_SHARE:
            row.warnings.append(f"over {FULL_SHARE:.0%} used")
        for other, other_ips in sets.items():
            if other != name and ips is not None and other_ips is not None and ips.overlaps(other_ips):
                row.warnings.append(f"overlaps {other}")
        counted = status.get("allocatedIPCount")
        if counted is not None and int(counted) != used:
            row.warnings.append(f"status says {counted} allocated, the records {used}")
        deleted = _time(meta.get("deletionTimestamp"))
        if deleted is not None and meta.get("finalizers") and not used and now - deleted > STALE_AFTER:
            row.warnings.append(
                f"stale finalizer: deleted {int((now - deleted).total_seconds())}s ago and holds nothing;"
                " is spiderpool-controller running?"
            )
        elif deleted is not None:
            row.warnings.append(f"terminating: waits for its {used} addresses" if used else "terminating")
        rows.append(row)
    return rows


@dataclass
class SubnetRow:
    name: str
    version: int | None
    subnet: str
    in_pools: int
    total: int
    pools: int
    warnings: list[str] = field(default_factory=list)

    @property
    def free(self) -> int:
        return max(0, self.total - self.in_pools)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ipVersion": self.version,
            "subnet": self.subnet,
            "allocatedToPools": self.in_pools,
            "total": self.total,
            "free": self.free,
            "pools": self.pools,
            "warnings": self.warnings,
        }


def subnet_rows(subnets: Iterable[Obj], pools: Iterable[Obj]) -> list[SubnetRow]:
    """A row per SpiderSubnet: how much of it its pools (those of its CIDR) took."""
    pool_list = list(pools)
    rows = []
    for subnet in sorted(subnets, key=lambda s: str(s["metadata"]["name"])):
        spec = subnet.get("spec") or {}
        cidr = str(spec.get("subnet") or "")
        ips = usable_ips(subnet)
        mine = [p for p in pool_list if str((p.get("spec") or {}).get("subnet") or "") == cidr]
        taken = 0
        if ips is not None:
            for pool in mine:
                pool_ips = usable_ips(pool)
                if pool_ips is not None:
                    taken += pool_ips.intersection(ips).count()
        total = ips.count() if ips is not None else 0
        row = SubnetRow(str(subnet["metadata"]["name"]), pool_family(subnet), cidr, taken, total, len(mine))
        if ips is None:
            row.warnings.append("spec does not parse: check ips, excludeIPs and subnet")
        if total and taken / total > FULL_SHARE:
            row.warnings.append(f"over {FULL_SHARE:.0%} given to pools")
        rows.append(row)
    return rows
