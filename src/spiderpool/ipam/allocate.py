"""Choosing an address from a pool. Pure: the caller brings what is used and what is reserved.

Concurrent agents must rarely pick the same address, because each pick is confirmed by creating an
API object named after the IP (the apiserver's uniqueness is the lock): a collision costs a failed
create and a retry, and an agent learns of the others' picks only through its watch, some
milliseconds late (under load, a hundred picks late). So each agent fills a stretch of its own
and remembers where it is (``Walker``). Its first stretch starts at its share of the pool: the nodes
the pool serves, sorted by name, split it evenly, so agents start as far apart as they can (without
that knowledge, at a point derived from the node name). It walks forward over free addresses and
its own. When the walk runs into an address another agent holds, it does not follow that agent,
where the two would race for every address, but starts a new stretch inside one of the largest free
gaps it knows of: whoever fills the gap from its left end reaches that point only after the point is
long taken and known. Agents meet only in the last gaps of a full pool.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spiderpool.ipam.ranges import Interval, IPSet, RangeError, parse_cidr, parse_ip
from spiderpool.ipam.selection import matches


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


def held_back(pool: Mapping[str, Any], reserved: Mapping[str, IPSet]) -> str:
    """Why some of a pool's IPs can never be handed out, for an "used out" message: which
    SpiderReservedIPs hold them, how many ``excludeIPs`` takes, and the gateway ("" if none)."""
    spec = pool.get("spec", {})
    try:
        family = parse_cidr(str(spec["subnet"])).version
        ips = IPSet.parse(family, spec.get("ips") or [])
        rest = ips.difference(IPSet.parse(family, spec.get("excludeIPs") or []))
    except (KeyError, RangeError):
        return ""
    parts: list[tuple[int, str]] = []
    excluded = ips.count() - rest.count()
    if excluded:
        parts.append((excluded, f"{excluded} by its excludeIPs"))
    for name in sorted(reserved):
        taken = rest.intersection(reserved[name]) if reserved[name].family == family else IPSet(family)
        if taken.count():
            parts.append((taken.count(), f"{taken.count()} by SpiderReservedIP {name} ({_short(taken)})"))
            rest = rest.difference(taken)
    gw = spec.get("gateway")
    if gw:
        try:
            g = int(parse_ip(str(gw)))
            if rest.intersection(IPSet(family, [Interval(g, g)])).count():
                parts.append((1, "1 is its gateway"))
        except RangeError:
            pass
    if not parts:
        return ""
    held = sum(n for n, _ in parts)
    verb = "is" if held == 1 else "are"
    return f"; of its {ips.count()} IPs, {held} {verb} held back: " + ", ".join(text for _, text in parts)


def _short(ips: IPSet, limit: int = 3) -> str:
    ranges = ips.to_ranges()
    return ", ".join(ranges[:limit]) + (f" and {len(ranges) - limit} more" if len(ranges) > limit else "")


#: what ``held_by`` says about an address
FREE, MINE, OTHER = 0, 1, 2
#: new stretches tried by one request before a plain scan of everything that is left
JUMPS = 4
#: a jump probes this many points, each for at most this many addresses
GAP_SAMPLES = 16
GAP_PROBE = 32

HeldBy = Callable[[str], int]


def _point(seed: str, k: int, total: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{k}".encode()).digest()[:8], "big") % total


def _walk(space: IPSet, start: int) -> Iterator[tuple[int, str]]:
    """(offset, address) for every address of ``space`` once, from offset ``start``, wrapping around."""
    make = ipaddress.IPv4Address if space.family == 4 else ipaddress.IPv6Address
    base = 0
    tail: list[tuple[int, int, int]] = []  # (base offset, first, last) of what lies before ``start``
    for iv in space.intervals:
        size = iv.end - iv.start + 1
        if base + size <= start:
            tail.append((base, iv.start, iv.end))
        elif base >= start:
            for v in range(iv.start, iv.end + 1):
                yield base + v - iv.start, str(make(v))
        else:
            lo = iv.start + start - base
            for v in range(lo, iv.end + 1):
                yield base + v - iv.start, str(make(v))
            tail.append((base, iv.start, lo - 1))
        base += size
    for b, first, last in tail:
        for v in range(first, last + 1):
            yield b + v - first, str(make(v))


def _gap_point(space: IPSet, held_by: HeldBy, seed: str, k: int) -> int | None:
    """A point inside a large run of free addresses, found by probing: ``GAP_SAMPLES`` points (which
    depend on the seed, so agents that jump at once land apart), each followed for at most
    ``GAP_PROBE`` addresses; the longest run seen wins, and the point is a quarter into it. None if
    no probe found a free address (a nearly full pool: the caller walks it).

    Bounded on purpose: finding the largest gap exactly walks the whole pool, which made every
    allocation in a 90 % full, fragmented /16 cost ~450 ms of CPU (docs/benchmarks.md)."""
    total = space.count()
    best: tuple[int, int] | None = None  # (run length, start offset)
    for j in range(GAP_SAMPLES):
        start = _point(seed, k * GAP_SAMPLES + j, total)
        run = 0
        for _, ip in _walk(space, start):
            if run >= GAP_PROBE or held_by(ip) != FREE:
                break
            run += 1
        if run and (best is None or run > best[0]):
            best = (run, start)
            if run >= GAP_PROBE:
                break
    if best is None:
        return None
    return (best[1] + best[0] // 4) % total


def _segments(total: int, eligible: Sequence[str], active: Collection[str], me: str) -> list[tuple[int, int]]:
    """This allocator's own parts of the pool, as [start, end) offsets, best first: its stripe (the
    pool split evenly among the nodes it serves, in name order), then its part of every stripe whose
    node holds none of the pool's addresses (such a stripe split evenly among the nodes that do).
    The parts of all allocators tile the pool exactly."""
    if me not in eligible:
        return []
    n = len(eligible)
    rank = list(eligible).index(me)
    out = [(rank * total // n, (rank + 1) * total // n)]
    users = sorted(set(active) | {me})
    sub, subs = users.index(me), len(users)
    for k in range(1, n):
        other = (rank + k) % n
        if eligible[other] in active:
            continue
        lo, hi = other * total // n, (other + 1) * total // n
        out.append((lo + sub * (hi - lo) // subs, lo + (sub + 1) * (hi - lo) // subs))
    return [(lo, hi) for lo, hi in out if hi > lo]


@dataclass
class Walker:
    """One allocator's walk through its pools: where its current stretch in each pool has reached."""

    seed: str
    cursor: dict[str, int] = field(default_factory=dict)
    jumps: int = 0

    def candidates(
        self,
        pool: str,
        space: IPSet,
        held_by: HeldBy = lambda _ip: FREE,
        eligible: Sequence[str] = (),
        active: Collection[str] = (),
    ) -> Iterator[str]:
        """Free addresses of ``space`` in the order to try them, each once.

        ``eligible``: the nodes the pool serves, sorted by name; ``active``: the nodes that hold
        addresses of the pool now. ``held_by(ip)`` is FREE, MINE (this allocator holds it or is
        taking it) or OTHER; it is asked afresh for every address, so a caller that loses a race
        marks the address OTHER and the walk moves on.
        """
        total = space.count()
        if total == 0:
            return
        segments = _segments(total, eligible, active, self.seed)
        # (start, end or None for "until another allocator's address")
        plan: list[tuple[int, int | None]] = []
        cur = self.cursor.get(pool)
        if cur is not None and cur < total:
            plan.append((cur, next((hi for lo, hi in segments if lo <= cur < hi), None)))
        plan += segments or [(_point(self.seed, 0, total), None)]
        offered: set[str] = set()
        jumps = 0
        while True:
            if plan:
                start, end = plan.pop(0)
            elif jumps < JUMPS:
                jumps += 1
                self.jumps += 1
                point = _gap_point(space, held_by, self.seed, self.jumps)
                if point is None:
                    break  # (no free address near any probe: the crowded walk below finds what is left)
                start, end = point, None
            else:
                break
            for offset, ip in _walk(space, start):
                if end is not None and not start <= offset < end:
                    break
                held = held_by(ip)
                if held == OTHER:
                    break
                if held == FREE and ip not in offered:
                    offered.add(ip)
                    self.cursor[pool] = offset
                    yield ip
        # Crowded: everything left, from a point of our own.
        for _, ip in _walk(space, _point(self.seed, JUMPS + 1, total)):
            if ip not in offered and held_by(ip) == FREE:
                offered.add(ip)
                yield ip


def eligible_nodes(pool: Mapping[str, Any], node_labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The nodes a pool serves (its ``nodeName``, else those its ``nodeAffinity`` selects), by name."""
    spec = pool.get("spec", {})
    names = spec.get("nodeName") or []
    if names:
        return sorted(set(names))
    if spec.get("nodeAffinity"):
        return sorted(n for n, labels in node_labels.items() if matches(spec["nodeAffinity"], labels))
    return sorted(node_labels)


def record_name(ip: str) -> str:
    """The allocation record's object name for an IP (DNS-subdomain safe, one per address)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return str(addr)
    return addr.exploded.replace(":", "-")


def prefix_of(pool: Mapping[str, Any]) -> int:
    return parse_cidr(str(pool["spec"]["subnet"])).prefixlen
