"""Choosing an address from a pool. Pure: the caller brings what is used and what is reserved.

Concurrent agents must rarely pick the same address, because each pick is confirmed by creating an
API object named after the IP (the apiserver's uniqueness is the lock): a collision costs a failed
create and a retry. So each agent starts its walk at its own point of the free space (a hash of its
node name), and walks forward from there: agents fill disjoint stretches until they meet.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from spiderpool.ipam.ranges import Interval, IPSet, RangeError, parse_cidr, parse_ip


def usable(pool: Mapping[str, Any], reserved: Iterable[IPSet] = ()) -> IPSet:
    """What a pool may hand out: ips - excludeIPs - reserved IPs - its gateway."""
    spec = pool.get("spec", {})
    family = parse_cidr(str(spec["subnet"])).version
    out = IPSet.parse(family, spec.get("ips") or []).difference(IPSet.parse(family, spec.get("excludeIPs") or []))
    for r in reserved:
        if r.family == family:
            out = out.difference(r)
    gw = spec.get("gateway")
    if gw:
        try:
            g = int(parse_ip(str(gw)))
            out = out.difference(IPSet(family, [Interval(g, g)]))
        except RangeError:
            pass
    return out


def candidates(free: IPSet, seed: str) -> Iterator[str]:
    """Every free address once, starting at a point derived from ``seed`` and wrapping around."""
    total = free.count()
    if total == 0:
        return
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") % total
    # locate the interval holding the start offset
    intervals = free.intervals
    idx, offset = 0, start
    while offset > intervals[idx].end - intervals[idx].start:
        offset -= intervals[idx].end - intervals[idx].start + 1
        idx += 1
    make = ipaddress.IPv4Address if free.family == 4 else ipaddress.IPv6Address
    order = intervals[idx:] + intervals[:idx]
    first = True
    for iv in order:
        lo = iv.start + offset if first else iv.start
        for v in range(lo, iv.end + 1):
            yield str(make(v))
        first = False
    head = intervals[idx]
    for v in range(head.start, head.start + offset):
        yield str(make(v))


def record_name(ip: str) -> str:
    """The allocation record's object name for an IP (DNS-subdomain safe, one per address)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return str(addr)
    return addr.exploded.replace(":", "-")


def prefix_of(pool: Mapping[str, Any]) -> int:
    return parse_cidr(str(pool["spec"]["subnet"])).prefixlen
